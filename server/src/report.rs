//! What happens when a task ends: its report written to an endpoint (`report_to`: a summary,
//! `<task>/summary.json`, and the per-file report in JSON Lines, `<task>/files-00001.jsonl`...,
//! parts of bounded size) and its summary posted to a URL (`notify`). Both are rows of
//! `task_deliveries`, stored with the task; the leading server's loop delivers the pending rows
//! of ended tasks, so a delivery survives a server stopped after its task ended. A failed
//! attempt is tried again with backoff, [`MAX_ATTEMPTS`] times in all; the task's own state
//! never changes.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use btp_common::api::{
    ApiError, CreateTask, Delivery, DeliveryState, FilesRequest, ReportLevel, ReportLine,
    SummaryCounters, TaskInfo, TaskSummary,
};
use btp_common::wire::Outcome;
use btp_common::{now_ms, Endpoint};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::api::Api;
use crate::store::{delivery_kind, DeliveryRow, NewDelivery};

/// Attempts of a delivery before it counts as failed (about two minutes with [`backoff_ms`]).
pub const MAX_ATTEMPTS: i64 = 8;
/// How often the loop looks for due deliveries.
const POLL: Duration = Duration::from_secs(1);
/// Deliveries made at once.
const CONCURRENT: usize = 8;
/// Most lines of one part of the per-file report.
pub const PART_LINES: u64 = 100_000;
/// Most bytes of one part.
pub const PART_BYTES: u64 = 64 << 20;
/// Bytes handed to the store's writer at a time (S3 parts need 5 MiB but the last).
const WRITE_CHUNK: usize = 8 << 20;
/// Entries of the per-file report read per page.
const PAGE: u32 = 1000;
/// Longest time a notification's POST may take.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest time an export may take before its attempt counts as failed.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(1800);

/// Lines per part: [`PART_LINES`], or `BTP_REPORT_PART_LINES` (for tests: makes several parts
/// of a small report), read once by the server.
fn part_lines() -> u64 {
    static LINES: OnceLock<u64> = OnceLock::new();
    *LINES.get_or_init(|| {
        std::env::var("BTP_REPORT_PART_LINES")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|n| *n > 0)
            .unwrap_or(PART_LINES)
    })
}

/// The wait after `attempts` failed attempts: 1 s, 2 s, 4 s... at most 60 s.
pub fn backoff_ms(attempts: i64) -> i64 {
    (1000i64 << (attempts - 1).clamp(0, 6)).min(60_000)
}

/// Why an attempt failed, and whether trying again can help.
#[derive(Debug)]
struct Failure {
    message: String,
    permanent: bool,
}

impl Failure {
    fn transient(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            permanent: false,
        }
    }
    fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            permanent: true,
        }
    }
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        Failure::transient(e.message)
    }
}

impl From<opendal::Error> for Failure {
    fn from(e: opendal::Error) -> Self {
        Failure::transient(e.to_string())
    }
}

/// A notification URL as shown: without its query, which may hold the receiver's token.
pub fn shown_url(url: &reqwest::Url) -> String {
    let mut shown = url.clone();
    let had_query = shown.query().is_some();
    shown.set_query(None);
    shown.set_fragment(None);
    let mut s = shown.to_string();
    if had_query {
        s.push_str("?***");
    }
    s
}

/// Checks a notification URL: http or https, no credentials in it.
pub fn parse_notify_url(given: &str) -> Result<reqwest::Url, ApiError> {
    let invalid = |e: String| ApiError::invalid(format!("notify URL: {e}"));
    let url = reqwest::Url::parse(given.trim()).map_err(|e| {
        invalid(format!(
            "'{}' is not a URL ({e})",
            given.chars().take(100).collect::<String>()
        ))
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(format!(
            "the scheme must be http or https, not '{}'",
            url.scheme()
        )));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(format!(
            "credentials in a notify URL ({}://...@{}) are refused: they would show in task \
             info and logs",
            url.scheme(),
            url.host_str().unwrap_or_default()
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("it names no host".into()));
    }
    Ok(url)
}

impl Api {
    /// The deliveries a `task.create` request asks for, checked: the report's endpoint
    /// resolved like the task's and usable as a destination, the notification URL valid.
    pub(crate) async fn deliveries_of(
        &self,
        req: &CreateTask,
        tenant: &str,
    ) -> Result<Vec<NewDelivery>, ApiError> {
        let mut out = Vec::new();
        match &req.report_to {
            Some(url) => {
                let ep = self
                    .endpoint_of(tenant, url.trim(), &req.report_to_options, "report_to")
                    .await?;
                if matches!(ep, Endpoint::Fs { .. }) && self.admin_hash.is_some() {
                    return Err(ApiError::invalid(format!(
                        "report_to {ep}: a file-system report is written by the server itself, \
                         which a server with tenants (--admin-token-file) refuses: use an object \
                         store"
                    )));
                }
                let checked = ep.clone();
                tokio::task::spawn_blocking(move || checked.check_destination())
                    .await
                    .map_err(|e| ApiError::internal(e.to_string()))?
                    .map_err(|e| ApiError::invalid(format!("report_to: {e}")))?;
                match tokio::time::timeout(Duration::from_secs(20), ep.check_remote("report_to"))
                    .await
                {
                    Ok(r) => r.map_err(ApiError::invalid)?,
                    Err(_) => {
                        return Err(ApiError::invalid(format!(
                            "report_to {ep} cannot be reached: timed out"
                        )))
                    }
                }
                out.push(NewDelivery {
                    kind: delivery_kind::REPORT,
                    target: serde_json::to_string(&ep).expect("an endpoint serializes"),
                    shown: ep.to_string(),
                    level: req.report_level.unwrap_or_default().as_str().to_string(),
                });
            }
            None if !req.report_to_options.is_empty() => {
                return Err(ApiError::invalid(
                    "report_to_options given without report_to (--report-to-opt needs --report-to)",
                ))
            }
            None if req.report_level.is_some() => {
                return Err(ApiError::invalid(
                    "report_level given without report_to (--report-level needs --report-to)",
                ))
            }
            None => {}
        }
        if let Some(given) = &req.notify {
            let url = parse_notify_url(given)?;
            out.push(NewDelivery {
                kind: delivery_kind::NOTIFY,
                target: serde_json::to_string(url.as_str()).expect("a string serializes"),
                shown: shown_url(&url),
                level: String::new(),
            });
        }
        Ok(out)
    }

    /// Adds the task's report export and notification, as they stand, to its info.
    pub(crate) async fn add_deliveries(&self, t: &mut TaskInfo) -> Result<(), ApiError> {
        for d in self.ctx.store.deliveries(&t.id).await? {
            let state = DeliveryState::parse(&d.state).unwrap_or(DeliveryState::Pending);
            let shown = Delivery {
                to: d.shown.clone(),
                level: ReportLevel::parse(&d.level),
                state,
                attempts: d.attempts as u32,
                reason: d.last_error.clone(),
                next_attempt_ms: (state == DeliveryState::Pending && d.attempts > 0)
                    .then_some(d.next_ms),
                done_ms: d.done_ms,
            };
            match d.kind.as_str() {
                delivery_kind::REPORT => t.report_export = Some(shown),
                delivery_kind::NOTIFY => t.notification = Some(shown),
                _ => {}
            }
        }
        Ok(())
    }

    /// The summary of a task, as exported and posted.
    pub(crate) async fn summary(&self, id: &str) -> Result<TaskSummary, ApiError> {
        let store = &self.ctx.store;
        let t = store.task(id).await?.info;
        let report = store
            .deliveries(id)
            .await?
            .into_iter()
            .find(|d| d.kind == delivery_kind::REPORT);
        let duration_ms = match t.started_ms {
            Some(s) => (t.finished_ms.unwrap_or_else(now_ms) - s).max(0),
            None => 0,
        };
        let avg = if duration_ms > 0 {
            (t.bytes_copied as f64 * 1000.0 / duration_ms as f64) as u64
        } else {
            0
        };
        let rfc3339 = |ms: Option<i64>| {
            ms.and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
                .map(|t| t.to_string())
        };
        Ok(TaskSummary {
            version: 1,
            schedule: store.schedule_of_task(id).await?,
            state: t.state,
            src: crate::store::redact(&t.src),
            dst: crate::store::redact(&t.dst),
            files_from: t.files_from.as_deref().map(crate::store::redact),
            counters: SummaryCounters::of(&t),
            start: rfc3339(t.started_ms),
            end: rfc3339(t.finished_ms),
            started_ms: t.started_ms,
            finished_ms: t.finished_ms,
            duration_ms,
            avg_bytes_per_sec: avg,
            peak_bytes_per_sec: t.peak_bytes_per_sec.max(avg),
            report_to: report.as_ref().map(|d| d.shown.clone()),
            report_level: report.and_then(|d| ReportLevel::parse(&d.level)),
            options: t.options,
            task: t.id,
            tenant: t.tenant,
        })
    }
}

/// Delivers the pending deliveries of ended tasks until `cancel` fires (leading server only).
pub async fn run(api: Api, cancel: CancellationToken) -> anyhow::Result<()> {
    let busy: Arc<Mutex<HashSet<(String, String)>>> = Arc::default();
    let mut running = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(POLL) => {}
        }
        while running.try_join_next().is_some() {}
        if running.len() >= CONCURRENT {
            continue;
        }
        let due = match api.ctx.store.due_deliveries(now_ms(), 32).await {
            Ok(d) => d,
            Err(e) => {
                warn!(error = %e.message, "cannot look for deliveries to make");
                continue;
            }
        };
        for d in due {
            if running.len() >= CONCURRENT {
                break;
            }
            let key = (d.task_id.clone(), d.kind.clone());
            if !busy.lock().expect("not poisoned").insert(key.clone()) {
                continue;
            }
            let (api, busy) = (api.clone(), busy.clone());
            running.spawn(async move {
                deliver(&api, d).await;
                busy.lock().expect("not poisoned").remove(&key);
            });
        }
    }
    // An attempt cut short stays pending: the next leader makes it again.
    running.shutdown().await;
    Ok(())
}

/// Makes one attempt of a delivery and records its outcome.
async fn deliver(api: &Api, d: DeliveryRow) {
    let attempt = d.attempts + 1;
    let result = match d.kind.as_str() {
        delivery_kind::REPORT => {
            match tokio::time::timeout(EXPORT_TIMEOUT, export(api, &d)).await {
                Ok(r) => r,
                Err(_) => Err(Failure::transient(format!(
                    "timed out after {} s",
                    EXPORT_TIMEOUT.as_secs()
                ))),
            }
        }
        delivery_kind::NOTIFY => notify(api, &d).await,
        other => Err(Failure::permanent(format!("unknown delivery kind {other}"))),
    };
    let now = now_ms();
    let (state, next, error) = match result {
        Ok(()) => {
            info!(task = %d.task_id, kind = %d.kind, to = %d.shown, attempt, "delivered");
            (DeliveryState::Done, now, String::new())
        }
        Err(f) => {
            let last = f.permanent || attempt >= MAX_ATTEMPTS;
            warn!(task = %d.task_id, kind = %d.kind, to = %d.shown, attempt, error = %f.message,
                gives_up = last, "delivery failed");
            if last {
                (DeliveryState::Failed, now, f.message)
            } else {
                (DeliveryState::Pending, now + backoff_ms(attempt), f.message)
            }
        }
    };
    if let Err(e) = api
        .ctx
        .store
        .settle_delivery(&d.task_id, &d.kind, state, attempt, next, &error)
        .await
    {
        warn!(task = %d.task_id, kind = %d.kind, error = %e.message, "cannot record a delivery");
    }
}

/// The parts of a per-file report being written: `files-00001.jsonl`... under `dir`.
struct Parts {
    op: opendal::Operator,
    dir: String,
    max_lines: u64,
    max_bytes: u64,
    /// OpenDAL's WebDAV writer takes one write per file: a part is written whole.
    one_shot: bool,
    /// Parts started so far.
    n: u32,
    writer: Option<opendal::Writer>,
    lines: u64,
    bytes: u64,
    buf: Vec<u8>,
}

impl Parts {
    fn name(dir: &str, n: u32) -> String {
        format!("{dir}files-{n:05}.jsonl")
    }

    async fn push(&mut self, line: &ReportLine) -> opendal::Result<()> {
        let mut text = serde_json::to_vec(line).expect("a report line serializes");
        text.push(b'\n');
        if self.lines > 0
            && (self.lines >= self.max_lines || self.bytes + text.len() as u64 > self.max_bytes)
        {
            self.close_part().await?;
        }
        if self.lines == 0 {
            self.n += 1;
            if !self.one_shot {
                let name = Self::name(&self.dir, self.n);
                self.writer = Some(self.op.writer_with(&name).chunk(WRITE_CHUNK).await?);
            }
        }
        self.lines += 1;
        self.bytes += text.len() as u64;
        self.buf.extend_from_slice(&text);
        if !self.one_shot && self.buf.len() >= WRITE_CHUNK {
            let chunk = std::mem::take(&mut self.buf);
            if let Some(w) = self.writer.as_mut() {
                w.write(chunk).await?;
            }
        }
        Ok(())
    }

    async fn close_part(&mut self) -> opendal::Result<()> {
        let chunk = std::mem::take(&mut self.buf);
        if self.one_shot {
            self.op.write(&Self::name(&self.dir, self.n), chunk).await?;
        } else if let Some(mut w) = self.writer.take() {
            if !chunk.is_empty() {
                w.write(chunk).await?;
            }
            w.close().await?;
        }
        self.lines = 0;
        self.bytes = 0;
        Ok(())
    }

    /// Writes the last part; returns how many parts there are.
    async fn finish(&mut self) -> opendal::Result<u32> {
        if self.lines > 0 {
            self.close_part().await?;
        }
        Ok(self.n)
    }

    /// Drops the part being written (an S3 multipart upload is aborted).
    async fn abort(&mut self) {
        if let Some(mut w) = self.writer.take() {
            let _ = w.abort().await;
        }
    }
}

/// Writes the task's per-file report, part by part, page by page of `task.files`, then its
/// summary (last: once the summary is there, the parts are complete).
async fn export(api: &Api, d: &DeliveryRow) -> Result<(), Failure> {
    let ep: Endpoint = serde_json::from_str(&d.target)
        .map_err(|e| Failure::permanent(format!("corrupt report destination: {e}")))?;
    let op = ep.operator()?;
    let level = ReportLevel::parse(&d.level).unwrap_or_default();
    let summary = api.summary(&d.task_id).await?;
    let verified = summary.options.verify;
    let dir = format!("{}/", d.task_id);
    let mut parts = Parts {
        op: op.clone(),
        dir: dir.clone(),
        max_lines: part_lines(),
        max_bytes: PART_BYTES,
        one_shot: matches!(ep, Endpoint::Webdav { .. }),
        n: 0,
        writer: None,
        lines: 0,
        bytes: 0,
        buf: Vec::new(),
    };
    let written: Result<u32, Failure> = async {
        // Opaque cursors: each page starts after the last file given, on an index.
        let mut after = Some(btp_common::api::FilesCursor::Opaque(String::new()));
        loop {
            let page = api
                .files(Ok(FilesRequest {
                    id: d.task_id.clone(),
                    after,
                    limit: PAGE,
                }))
                .await?;
            for f in page.files {
                let copied = f.outcome == Outcome::Copied;
                if level == ReportLevel::Errors && (copied || f.outcome == Outcome::Skipped) {
                    continue;
                }
                let line = ReportLine {
                    reason: (!f.reason.is_empty()).then_some(f.reason),
                    not_kept: (!f.not_kept.is_empty()).then_some(f.not_kept),
                    verified: copied.then_some(verified),
                    path: f.path,
                    size: f.size,
                    outcome: f.outcome,
                    attempts: f.attempts,
                };
                parts.push(&line).await?;
            }
            match page.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        Ok(parts.finish().await?)
    }
    .await;
    let n = match written {
        Ok(n) => n,
        Err(e) => {
            parts.abort().await;
            return Err(e);
        }
    };
    // Parts beyond these, left by an export of an earlier run of the task (before a retry).
    let mut extra = n + 1;
    while op.exists(&Parts::name(&dir, extra)).await? {
        op.delete(&Parts::name(&dir, extra)).await?;
        extra += 1;
    }
    let body = serde_json::to_vec_pretty(&summary).expect("a summary serializes");
    op.write(&format!("{dir}summary.json"), body).await?;
    Ok(())
}

fn http_client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .timeout(NOTIFY_TIMEOUT)
            .user_agent(concat!("btp/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("an HTTP client with a timeout builds")
    })
}

/// Posts the task's summary to the notification URL: a 2xx answer is done; no answer, 408,
/// 429 and 5xx are tried again; any other answer fails it for good.
async fn notify(api: &Api, d: &DeliveryRow) -> Result<(), Failure> {
    let url: String = serde_json::from_str(&d.target)
        .map_err(|e| Failure::permanent(format!("corrupt notify URL: {e}")))?;
    let summary = api.summary(&d.task_id).await?;
    let body = serde_json::to_vec(&summary).expect("a summary serializes");
    let answer = http_client()
        .post(&url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        // Without the URL: its query may hold a token.
        .map_err(|e| Failure::transient(format!("POST failed: {}", e.without_url())))?;
    let status = answer.status();
    if status.is_success() {
        return Ok(());
    }
    let message = format!("POST answered HTTP {status}");
    if status.is_server_error()
        || status == reqwest::StatusCode::REQUEST_TIMEOUT
        || status == reqwest::StatusCode::TOO_MANY_REQUESTS
    {
        Err(Failure::transient(message))
    } else {
        Err(Failure::permanent(message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_a_minute() {
        let waits: Vec<i64> = (1..=MAX_ATTEMPTS).map(backoff_ms).collect();
        assert_eq!(waits, [1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000]);
    }

    #[test]
    fn notify_urls_are_checked_and_shown_without_their_query() {
        let u = parse_notify_url("https://hooks.example.com/t/1?token=abc").unwrap();
        assert_eq!(shown_url(&u), "https://hooks.example.com/t/1?***");
        let u = parse_notify_url("http://127.0.0.1:8080/hook").unwrap();
        assert_eq!(shown_url(&u), "http://127.0.0.1:8080/hook");
        for (bad, why) in [
            ("ftp://example.com/x", "http or https"),
            ("http://user:hunter2@example.com/x", "credentials"),
            ("not a url", "not a URL"),
        ] {
            let e = parse_notify_url(bad).unwrap_err().message;
            assert!(e.starts_with("notify URL: ") && e.contains(why), "{e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
    }
}
