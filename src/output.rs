//! Human output: aligned tables and the task report.

use btp_common::api::{ClientList, Report, TaskInfo, TaskList};
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
    let kv = |k: &str, v: String| vec![k.to_string(), v];
    let mut rows = vec![
        kv("Task", t.id.clone()),
        kv("State", t.state.as_str().to_string()),
        kv("Source", t.src.clone()),
        kv("Destination", t.dst.clone()),
        kv(
            "Files",
            format!(
                "{} found{}, {} copied, {} failed, {} retried",
                t.files_found,
                if t.listing_done { "" } else { " so far" },
                t.files_copied,
                t.files_failed,
                t.files_retried
            ),
        ),
        kv(
            "Bytes",
            format!(
                "{} found, {} copied",
                Bytes(t.bytes_found),
                Bytes(t.bytes_copied)
            ),
        ),
        kv("Jobs", format!("{}/{} done", t.jobs_done, t.jobs_total)),
    ];
    if let Some(s) = t.started_ms {
        rows.push(kv("Started", ago(s)));
    }
    if let (Some(s), Some(f)) = (t.started_ms, t.finished_ms) {
        rows.push(kv("Duration", Millis(f - s).to_string()));
    }
    table(&rows);
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
    task(t);
    println!("Avg speed    {}/s", Bytes(r.avg_bytes_per_sec as u64));
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
            if c.online { "online" } else { "offline" }.into(),
        ]);
    }
    table(&rows);
}
