//! Human output: aligned tables and the task report.

use btp_common::api::{ClientInfo, ClientList, Report, TaskInfo, TaskList};
use btp_common::now_ms;
use btp_common::units::{Bytes, Millis};
use btp_common::wire::FileFailure;

/// Prints rows as aligned columns; the first row is the header.
pub fn table(rows: &[Vec<String>]) {
    let cols = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, s)| format!("{s:<w$}", w = if i + 1 == r.len() { 0 } else { widths[i] }))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}

fn ago(ms: i64) -> String {
    format!("{} ago", Millis(now_ms() - ms))
}

pub fn task(t: &TaskInfo) {
    table(&task_rows(t));
}

fn task_rows(t: &TaskInfo) -> Vec<Vec<String>> {
    let kv = |k: &str, v: String| vec![k.to_string(), v];
    let mut rows = vec![
        kv("Task", t.id.clone()),
        kv("State", t.state.as_str().to_string()),
        kv("Source", t.src.clone()),
        kv("Destination", t.dst.clone()),
    ];
    if let Some(m) = &t.files_from {
        rows.push(kv("Files from", m.clone()));
    }
    rows.extend([
        kv("Files", {
            let copied = if t.options.dry_run {
                "would be copied"
            } else {
                "copied"
            };
            let mut line = format!(
                "{} found{}, {} {copied}, {} skipped, {} failed, {} retried",
                t.files_found,
                if t.listing_done { "" } else { " so far" },
                t.files_copied,
                t.files_skipped,
                t.files_failed,
                t.files_retried
            );
            if t.files_excluded > 0 {
                line.push_str(&format!(", {} excluded", t.files_excluded));
            }
            if t.options.mode == btp_common::api::Mode::Sync {
                let verb = if t.options.dry_run {
                    "would be deleted"
                } else {
                    "deleted"
                };
                line.push_str(&format!(", {} {verb}", t.files_deleted));
            }
            line
        }),
        kv(
            "Bytes",
            format!(
                "{} found, {} {}",
                Bytes(t.bytes_found),
                Bytes(t.bytes_copied),
                if t.options.dry_run {
                    "would be copied"
                } else {
                    "copied"
                }
            ),
        ),
        kv("Jobs", format!("{}/{} done", t.jobs_done, t.jobs_total)),
    ]);
    if let Some(c) = &t.check {
        rows.push(kv("Verdicts", check_line(c, t.options.one_way)));
        rows.push(kv(
            "Contents",
            if c.contents_compared {
                format!("compared ({} hashed)", Bytes(c.bytes_hashed))
            } else {
                "not compared (size and modification time only; --checksum compares them)".into()
            },
        ));
    }
    if t.state == btp_common::api::TaskState::Running {
        let eta = t
            .eta_secs
            .map(|s| Millis(s as i64 * 1000).to_string())
            .unwrap_or_else(|| "-".into());
        rows.push(kv(
            "Speed",
            format!(
                "{}/s, {:.1} files/s, ETA {eta}",
                Bytes(t.current_bytes_per_sec),
                t.current_files_per_sec
            ),
        ));
    }
    if let Some(l) = &t.options.speed_limit {
        let timetable = matches!(l, btp_common::api::SpeedLimit::Timetable(_));
        rows.push(kv(
            "Speed limit",
            if timetable {
                format!("{l} (UTC)")
            } else {
                l.to_string()
            },
        ));
        if let (true, Some(n)) = (timetable, &t.speed_limit_now) {
            let rate =
                |r: Option<u64>| r.map_or("no limit".to_string(), |r| format!("{}/s", Bytes(r)));
            let mut line = rate(n.bytes_per_sec);
            if let Some(c) = &n.next_change {
                line.push_str(&format!(
                    "; {} from {} UTC (in {})",
                    rate(c.bytes_per_sec),
                    btp_common::timetable::week_clock(c.at_ms),
                    Millis(c.at_ms - now_ms())
                ));
            }
            rows.push(kv("Limit now", line));
        }
    }
    if let Some(s) = t.started_ms {
        rows.push(kv("Started", ago(s)));
    }
    if let (Some(s), Some(f)) = (t.started_ms, t.finished_ms) {
        rows.push(kv("Duration", Millis(f - s).to_string()));
    }
    for (what, d) in [
        ("Report export", &t.report_export),
        ("Notification", &t.notification),
    ] {
        if let Some(d) = d {
            rows.push(kv(what, delivery_line(d)));
        }
    }
    rows
}

/// `pending, 2 attempts (last: ...) -> s3://audit/btp/`.
fn delivery_line(d: &btp_common::api::Delivery) -> String {
    let mut line = d.state.as_str().to_string();
    if let Some(l) = d.level {
        line.push_str(&format!(" ({})", l.as_str()));
    }
    line.push_str(&format!(" to {}", d.to));
    if d.attempts > 0 && d.state != btp_common::api::DeliveryState::Done {
        line.push_str(&format!(
            ", {} attempt{}",
            d.attempts,
            if d.attempts == 1 { "" } else { "s" }
        ));
    }
    if !d.reason.is_empty() {
        line.push_str(&format!(": {}", d.reason));
    }
    if let Some(at) = d.next_attempt_ms {
        line.push_str(&format!(", next in {}", Millis((at - now_ms()).max(0))));
    }
    line
}

pub fn task_list(l: &TaskList) {
    let mut rows = vec![["ID", "STATE", "FILES", "BYTES", "SOURCE", "DESTINATION"]
        .map(String::from)
        .to_vec()];
    for t in &l.tasks {
        rows.push(vec![
            t.id.clone(),
            t.state.as_str().into(),
            format!("{}/{}", t.files_copied, t.files_found),
            Bytes(t.bytes_copied).to_string(),
            t.src.clone(),
            t.dst.clone(),
        ]);
    }
    table(&rows);
}

pub fn report(r: &Report) {
    let t = &r.task;
    let mut rows = task_rows(t);
    rows.push(vec![
        "Avg speed".into(),
        format!("{}/s", Bytes(r.avg_bytes_per_sec as u64)),
    ]);
    rows.push(vec![
        "Peak speed".into(),
        format!("{}/s", Bytes(t.peak_bytes_per_sec)),
    ]);
    table(&rows);
    if !r.clients.is_empty() {
        println!();
        let mut rows = vec![["CLIENT", "JOBS", "FILES", "BYTES"]
            .map(String::from)
            .to_vec()];
        for c in &r.clients {
            rows.push(vec![
                c.client.clone(),
                c.jobs.to_string(),
                c.files.to_string(),
                Bytes(c.bytes).to_string(),
            ]);
        }
        table(&rows);
    }
    if !r.failures.is_empty() {
        println!();
        failures(&r.failures);
    }
    if !r.not_kept.is_empty() {
        println!();
        let mut rows = vec![["COPIED PATH", "METADATA NOT KEPT"]
            .map(String::from)
            .to_vec()];
        for f in &r.not_kept {
            rows.push(vec![f.path.clone(), f.what.clone()]);
        }
        table(&rows);
    }
    if !r.changes.is_empty() {
        println!();
        let mut rows = vec![["DRY RUN", "SIZE", "PATH"].map(String::from).to_vec()];
        for c in &r.changes {
            let action = if c.action == "delete" {
                "would delete"
            } else {
                "would copy"
            };
            rows.push(vec![
                action.into(),
                Bytes(c.size).to_string(),
                c.path.clone(),
            ]);
        }
        table(&rows);
    }
}

/// A check's verdict counts on one line.
pub fn check_line(c: &btp_common::api::CheckCounts, one_way: bool) -> String {
    let extra = if one_way {
        "extra not looked for".to_string()
    } else {
        format!("{} extra", c.extra)
    };
    format!(
        "{} same, {} differ, {} missing, {extra}, {} errors",
        c.same, c.differs, c.missing, c.errors
    )
}

/// Verdicts as a table: path, verdict, what differs (or why not compared), size.
pub fn verdicts(list: &[btp_common::wire::Verdict]) {
    let mut rows = vec![["VERDICT", "WHAT", "SIZE", "PATH"]
        .map(String::from)
        .to_vec()];
    for v in list {
        rows.push(vec![
            v.verdict.as_str().into(),
            v.what.clone(),
            Bytes(v.size).to_string(),
            v.path.clone(),
        ]);
    }
    table(&rows);
}

pub fn failures(list: &[FileFailure]) {
    let mut rows = vec![["FAILED PATH", "SIZE", "ATTEMPTS", "REASON"]
        .map(String::from)
        .to_vec()];
    for f in list {
        rows.push(vec![
            f.path.clone(),
            Bytes(f.size).to_string(),
            f.attempts.to_string(),
            f.reason.clone(),
        ]);
    }
    table(&rows);
}

pub fn client_list(l: &ClientList) {
    let mut rows = vec![[
        "ID",
        "HOST",
        "WORKERS",
        "BUSY",
        "JOBS",
        "LAST SEEN",
        "STATUS",
    ]
    .map(String::from)
    .to_vec()];
    for c in &l.clients {
        rows.push(vec![
            c.id.clone(),
            c.host.clone(),
            c.workers.to_string(),
            c.busy.to_string(),
            c.jobs_done.to_string(),
            ago(c.last_seen_ms),
            match (c.online, c.draining) {
                (false, _) => "offline",
                (true, true) => "draining",
                (true, false) => "online",
            }
            .into(),
        ]);
    }
    table(&rows);
}

fn csv_row(fields: &[String]) {
    print!("{}", btp_common::csv::line(fields));
}

/// The report's totals as one CSV row under a header.
pub fn report_csv(r: &Report) {
    let t = &r.task;
    csv_row(
        &[
            "task",
            "state",
            "source",
            "destination",
            "files_found",
            "files_copied",
            "files_failed",
            "files_skipped",
            "files_retried",
            "bytes_found",
            "bytes_copied",
            "bytes_failed",
            "duration_ms",
            "avg_bytes_per_sec",
            "peak_bytes_per_sec",
        ]
        .map(String::from),
    );
    csv_row(&[
        t.id.clone(),
        t.state.as_str().into(),
        t.src.clone(),
        t.dst.clone(),
        t.files_found.to_string(),
        t.files_copied.to_string(),
        t.files_failed.to_string(),
        t.files_skipped.to_string(),
        t.files_retried.to_string(),
        t.bytes_found.to_string(),
        t.bytes_copied.to_string(),
        t.bytes_failed.to_string(),
        r.duration_ms.to_string(),
        (r.avg_bytes_per_sec as u64).to_string(),
        t.peak_bytes_per_sec.to_string(),
    ]);
}

pub fn failures_csv(list: &[FileFailure]) {
    csv_row(&["path", "size", "attempts", "reason"].map(String::from));
    for f in list {
        csv_row(&[
            f.path.clone(),
            f.size.to_string(),
            f.attempts.to_string(),
            f.reason.clone(),
        ]);
    }
}

pub fn task_list_csv(l: &TaskList) {
    csv_row(
        &[
            "id",
            "state",
            "files_found",
            "files_copied",
            "files_failed",
            "bytes_copied",
            "source",
            "destination",
        ]
        .map(String::from),
    );
    for t in &l.tasks {
        csv_row(&[
            t.id.clone(),
            t.state.as_str().into(),
            t.files_found.to_string(),
            t.files_copied.to_string(),
            t.files_failed.to_string(),
            t.bytes_copied.to_string(),
            t.src.clone(),
            t.dst.clone(),
        ]);
    }
}

pub fn client(c: &ClientInfo) {
    let status = match (c.online, c.draining) {
        (false, _) => "offline",
        (true, true) => "online, draining",
        (true, false) => "online",
    };
    table(&[
        vec!["Client".into(), c.id.clone()],
        vec!["Host".into(), c.host.clone()],
        vec!["Tenant".into(), c.tenant.clone()],
        vec!["Workers".into(), format!("{} ({} busy)", c.workers, c.busy)],
        vec!["Jobs done".into(), c.jobs_done.to_string()],
        vec!["Started".into(), ago(c.started_ms)],
        vec!["Last seen".into(), ago(c.last_seen_ms)],
        vec!["Status".into(), status.into()],
    ]);
}
