//! The request-reply API on `btp.api.v1.<verb>`: JSON requests, and responses that are either
//! `{"ok": ...}` or `{"error": {"code": ..., "message": ...}}`.

use serde::{Deserialize, Serialize};

pub use crate::timetable::SpeedLimit;
use crate::wire::FileFailure;

pub mod verbs {
    pub const TASK_CREATE: &str = "task.create";
    pub const TASK_START: &str = "task.start";
    pub const TASK_GET: &str = "task.get";
    pub const TASK_LIST: &str = "task.list";
    pub const TASK_REPORT: &str = "task.report";
    pub const TASK_PAUSE: &str = "task.pause";
    pub const TASK_RESUME: &str = "task.resume";
    pub const TASK_CANCEL: &str = "task.cancel";
    pub const TASK_RETRY: &str = "task.retry";
    pub const TASK_DELETE: &str = "task.delete";
    pub const TASK_SET: &str = "task.set";
    pub const TASK_FILES: &str = "task.files";
    pub const TASK_VERIFY: &str = "task.verify";
    pub const TASK_VERDICTS: &str = "task.verdicts";
    pub const CLIENT_LIST: &str = "client.list";
    pub const CLIENT_GET: &str = "client.get";
    pub const CLIENT_DRAIN: &str = "client.drain";
    pub const SERVER_HEALTH: &str = "server.health";
    pub const TENANT_CREATE: &str = "tenant.create";
    pub const TENANT_LIST: &str = "tenant.list";
    pub const TENANT_DELETE: &str = "tenant.delete";
    pub const TOKEN_CREATE: &str = "token.create";
    pub const TOKEN_LIST: &str = "token.list";
    pub const TOKEN_DELETE: &str = "token.delete";
    pub const ENDPOINT_CREATE: &str = "endpoint.create";
    pub const ENDPOINT_LIST: &str = "endpoint.list";
    pub const ENDPOINT_DELETE: &str = "endpoint.delete";
    pub const SCHEDULE_CREATE: &str = "schedule.create";
    pub const SCHEDULE_LIST: &str = "schedule.list";
    pub const SCHEDULE_GET: &str = "schedule.get";
    pub const SCHEDULE_PAUSE: &str = "schedule.pause";
    pub const SCHEDULE_RESUME: &str = "schedule.resume";
    pub const SCHEDULE_DELETE: &str = "schedule.delete";
    pub const SCHEDULE_RUNS: &str = "schedule.runs";
}

/// NATS header carrying the API token of a request.
pub const TOKEN_HEADER: &str = "Btp-Token";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is malformed or a value in it is invalid.
    InvalidArgument,
    /// The task (or client) does not exist.
    NotFound,
    /// The request is valid but not in the current state (starting a completed task).
    FailedPrecondition,
    /// Something the server depends on failed; retrying later may succeed.
    Unavailable,
    Internal,
    /// The request carries no token, or one that is unknown or deleted.
    Unauthenticated,
    /// The token is valid but may not do this (tenant tokens cannot manage tenants).
    PermissionDenied,
}

/// Longest error message sent back.
pub const MAX_ERROR_LEN: usize = 500;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
#[serde(deny_unknown_fields)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    /// An error; a message longer than [`MAX_ERROR_LEN`] (it may quote the request) is cut.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let mut message: String = message.into();
        if message.len() > MAX_ERROR_LEN {
            let mut cut = MAX_ERROR_LEN;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push_str("...");
        }
        Self { code, message }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }
    /// Valid, but not in the current state (or the name is taken).
    pub fn precondition(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::FailedPrecondition, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiResponse<T> {
    Ok(T),
    Error(ApiError),
}

impl<T> From<Result<T, ApiError>> for ApiResponse<T> {
    fn from(r: Result<T, ApiError>) -> Self {
        match r {
            Ok(v) => ApiResponse::Ok(v),
            Err(e) => ApiResponse::Error(e),
        }
    }
}

/// When a file already at the destination is skipped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Compare {
    /// Skip when the destination has the same size and is not older than the source
    /// (copies to file systems keep the source's modification time, so re-runs match).
    #[default]
    SizeMtime,
    /// Skip when the destination has the same size and the same content hash (MD5; object
    /// stores' ETags are used where they are one, otherwise the content is read and hashed).
    Checksum,
    /// Copy every file.
    None,
}

impl Compare {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "size-mtime" => Some(Compare::SizeMtime),
            "checksum" => Some(Compare::Checksum),
            "none" => Some(Compare::None),
            _ => None,
        }
    }
}

/// How a copy is verified once written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verify {
    /// The destination holds as many bytes as were read from the source.
    #[default]
    Size,
    /// Also the same content hash (MD5) as the bytes read from the source.
    Checksum,
}

impl Verify {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "size" => Some(Verify::Size),
            "checksum" => Some(Verify::Checksum),
            _ => None,
        }
    }
}

/// Whether objects are copied by the store itself when source and destination are on one
/// service (S3: CopyObject and UploadPartCopy), so that no byte goes through a client.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServerSideCopy {
    /// Server-side wherever source and destination are on the same service.
    #[default]
    Auto,
    /// Always through the clients.
    Off,
}

impl ServerSideCopy {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "auto" => Some(ServerSideCopy::Auto),
            "off" => Some(ServerSideCopy::Off),
            _ => None,
        }
    }

    pub fn is_auto(&self) -> bool {
        *self == ServerSideCopy::Auto
    }
}

/// What a task does with destination files that are not in the source.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Leave them.
    #[default]
    Copy,
    /// Delete them, so the destination mirrors the source.
    Sync,
    /// Copy nothing: compare source and destination and keep a verdict per path (`same`,
    /// `differs`, `missing`, `extra`, `error`). With `compare: checksum` contents are compared
    /// too. Nothing is written to either side.
    Check,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "copy" => Some(Mode::Copy),
            "sync" => Some(Mode::Sync),
            "check" => Some(Mode::Check),
            _ => None,
        }
    }
}

/// S3 allows at most 10,000 parts per upload; part sizes keep every file within 9,000.
pub const MAX_PARTS: u64 = 9_000;
/// Smallest part of a multipart upload (S3 refuses smaller ones but the last).
pub const MIN_PART_SIZE: u64 = 5 << 20;

/// Highest per-task attempt limit; the jobs consumer's MaxDeliver stays above it as a backstop.
pub const MAX_ATTEMPTS_LIMIT: u32 = 50;

/// How a task is split into jobs. Every field has a default.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TaskOptions {
    /// Most files in one Copy job.
    pub batch_files: u32,
    /// Most bytes in one Copy job (a larger file gets a job of its own).
    pub batch_bytes: u64,
    /// Most entries in one listing page.
    pub list_page_entries: u32,
    /// Most bytes of JSON in one listing page.
    pub list_page_bytes: u64,
    /// Attempts per file before a transient error counts as a failure.
    pub max_attempts: u32,
    /// Most bytes per second for the whole task, over all clients (None: unlimited): a number,
    /// or as text a rate (`"50MiB/s"`) or a timetable (`"08:00,20MiB/s 18:00,off"`, times UTC).
    pub speed_limit: Option<SpeedLimit>,
    /// Incremental copy: when a file already at the destination is skipped.
    pub compare: Compare,
    /// Files of at least this size are split into part jobs that run in parallel.
    pub multipart_threshold: u64,
    /// Size of those parts (raised for huge files so no file needs more than 9,000 parts).
    pub part_size: u64,
    pub verify: Verify,
    pub mode: Mode,
    /// Only find out what would change: nothing is copied or deleted.
    pub dry_run: bool,
    pub filter: crate::filter::Filter,
    /// What becomes of symbolic links in the source.
    pub links: Links,
    /// Sync: also delete destination files the filters leave out (by default a sync deletes
    /// only what is in the filters' scope).
    pub delete_excluded: bool,
    /// Copies between two endpoints of one S3 service made by the service itself.
    pub server_side_copy: ServerSideCopy,
    /// Metadata kept beyond what every copy keeps (`--preserve owner`: owner and group).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub preserve: Vec<Preserve>,
    /// Mode check: only check that the source's files are at the destination; destination
    /// entries the source lacks are not looked for (no `extra` verdicts).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub one_way: bool,
}

/// What `--preserve` adds to the metadata a copy keeps. File-system copies always keep the
/// mode and modification time; S3 copies the content headers and user metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preserve {
    /// The owner and group (uid, gid) of file-system files: needs root on the client.
    Owner,
}

impl Preserve {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "owner" => Some(Preserve::Owner),
            _ => None,
        }
    }
}

/// What a task does with symbolic links of a file-system source (`--links`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Links {
    /// Keep a link as a link where the destination can hold one (file systems); elsewhere
    /// report it skipped with the reason.
    #[default]
    Copy,
    /// Copy what the link points to; a link that leads back into a directory on its own path
    /// (a loop) is a failure.
    Follow,
    /// Report every link as skipped.
    Skip,
}

impl Links {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "copy" => Links::Copy,
            "follow" => Links::Follow,
            "skip" => Links::Skip,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Links::Copy => "copy",
            Links::Follow => "follow",
            Links::Skip => "skip",
        }
    }
}

impl TaskOptions {
    /// `--preserve owner` was asked.
    pub fn preserve_owner(&self) -> bool {
        self.preserve.contains(&Preserve::Owner)
    }

    /// Part size for a file of `size` bytes.
    pub fn part_size_for(&self, size: u64) -> u64 {
        self.part_size
            .max(size.div_ceil(MAX_PARTS))
            .max(MIN_PART_SIZE)
    }
}

impl Default for TaskOptions {
    fn default() -> Self {
        Self {
            batch_files: 256,
            batch_bytes: 64 << 20,
            list_page_entries: 1000,
            list_page_bytes: 256 << 10,
            max_attempts: 10,
            speed_limit: None,
            compare: Compare::SizeMtime,
            multipart_threshold: 64 << 20,
            part_size: 32 << 20,
            verify: Verify::Size,
            mode: Mode::Copy,
            dry_run: false,
            filter: Default::default(),
            links: Links::Copy,
            delete_excluded: false,
            server_side_copy: ServerSideCopy::Auto,
            preserve: Vec::new(),
            one_way: false,
        }
    }
}

impl TaskOptions {
    pub fn validate(&self) -> Result<(), ApiError> {
        if self.batch_files == 0 {
            return Err(ApiError::invalid("batch_files must be at least 1"));
        }
        if self.batch_bytes == 0 {
            return Err(ApiError::invalid("batch_bytes must be greater than zero"));
        }
        if !(1..=MAX_ATTEMPTS_LIMIT).contains(&self.max_attempts) {
            return Err(ApiError::invalid(format!(
                "max_attempts must be between 1 and {MAX_ATTEMPTS_LIMIT}"
            )));
        }
        if self.speed_limit.as_ref().is_some_and(SpeedLimit::has_zero) {
            return Err(ApiError::invalid("speed_limit must be greater than zero"));
        }
        if self.list_page_entries == 0 {
            return Err(ApiError::invalid("list_page_entries must be at least 1"));
        }
        if !(4096..=(768 << 10)).contains(&self.list_page_bytes) {
            return Err(ApiError::invalid(
                "list_page_bytes must be between 4KiB and 768KiB (a page is one NATS message)",
            ));
        }
        if self.part_size < MIN_PART_SIZE {
            return Err(ApiError::invalid(
                "part_size must be at least 5MiB (the smallest part S3 accepts)",
            ));
        }
        if self.multipart_threshold == 0 {
            return Err(ApiError::invalid(
                "multipart_threshold must be greater than zero",
            ));
        }
        self.filter.validate().map_err(ApiError::invalid)?;
        if self.one_way && self.mode != Mode::Check {
            return Err(ApiError::invalid(
                "one_way only applies to mode check (btp check --one-way)",
            ));
        }
        if self.mode == Mode::Check && self.dry_run {
            return Err(ApiError::invalid(
                "dry_run does not apply to mode check: a check never changes anything",
            ));
        }
        if self.delete_excluded && self.mode != Mode::Sync {
            return Err(ApiError::invalid(
                "delete_excluded only applies to mode sync (--mode sync --delete-excluded)",
            ));
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTask {
    pub src: String,
    pub dst: String,
    /// Options of the source endpoint (S3: endpoint, region, credentials).
    #[serde(default)]
    pub src_options: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub dst_options: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub options: TaskOptions,
    /// Start the task right away.
    #[serde(default)]
    pub start: bool,
    /// A manifest (`--files-from`): the file, on any endpoint, that names the files to copy,
    /// one path per line or CSV with a `path` column; read instead of listing the source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files_from: Option<String>,
    /// Options of the manifest's endpoint, as `src_options`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub files_from_options: std::collections::BTreeMap<String, String>,
    /// Where the report is written when the task ends (`--report-to`): any endpoint a
    /// destination may be; `<task id>/summary.json` and `<task id>/files-00001.jsonl`... under it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_to: Option<String>,
    /// Options of the report's endpoint, as `dst_options`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub report_to_options: std::collections::BTreeMap<String, String>,
    /// Which entries the exported per-file report holds (default `all`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_level: Option<ReportLevel>,
    /// An http or https URL that gets the summary as a POST when the task ends (`--notify`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<String>,
}

/// Which entries an exported per-file report holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportLevel {
    /// Every entry of the listing.
    #[default]
    All,
    /// Only entries neither copied nor skipped (failed, excluded).
    Errors,
}

impl ReportLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            ReportLevel::All => "all",
            ReportLevel::Errors => "errors",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "all" => Some(ReportLevel::All),
            "errors" => Some(ReportLevel::Errors),
            _ => None,
        }
    }
}

/// Where a delivery at the end of a task stands: `pending` (the task has not ended, or the
/// delivery is being tried), `done`, `failed` (its attempts are used up, or refused for good).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    Pending,
    Done,
    Failed,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Done => "done",
            DeliveryState::Failed => "failed",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(DeliveryState::Pending),
            "done" => Some(DeliveryState::Done),
            "failed" => Some(DeliveryState::Failed),
            _ => None,
        }
    }
}

/// A report export or a notification of a task, as `task get` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// The report's endpoint, or the notification's URL, without credentials (a URL's query
    /// is shown as `?***`).
    pub to: String,
    /// The report's level (report exports only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<ReportLevel>,
    pub state: DeliveryState,
    /// Attempts made so far.
    pub attempts: u32,
    /// Why the last attempt failed (empty once done).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// When the next attempt is due (a pending delivery of an ended task, after a failed
    /// attempt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_ms: Option<i64>,
    /// When it was done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done_ms: Option<i64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskRef {
    pub id: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    Created,
    Running,
    Paused,
    Completed,
    Failed,
    Cancelled,
}

impl TaskState {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Created => "created",
            TaskState::Running => "running",
            TaskState::Paused => "paused",
            TaskState::Completed => "completed",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "created" => TaskState::Created,
            "running" => TaskState::Running,
            "paused" => TaskState::Paused,
            "completed" => TaskState::Completed,
            "failed" => TaskState::Failed,
            "cancelled" => TaskState::Cancelled,
            _ => return None,
        })
    }
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            TaskState::Completed | TaskState::Failed | TaskState::Cancelled
        )
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskInfo {
    pub id: String,
    pub tenant: String,
    pub state: TaskState,
    pub src: String,
    pub dst: String,
    pub options: TaskOptions,
    pub created_ms: i64,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    /// Files and bytes found by the listing so far.
    pub files_found: u64,
    pub bytes_found: u64,
    pub files_copied: u64,
    pub bytes_copied: u64,
    /// Files already identical at the destination, not copied.
    pub files_skipped: u64,
    pub bytes_skipped: u64,
    pub files_failed: u64,
    pub bytes_failed: u64,
    /// Files the task's filters left out.
    #[serde(default)]
    pub files_excluded: u64,
    #[serde(default)]
    pub bytes_excluded: u64,
    /// Sync: destination entries that could not be deleted.
    #[serde(default)]
    pub deletes_failed: u64,
    /// Sync: destination files deleted because the source does not have them.
    /// In a dry run, `files_copied`/`bytes_copied`/`files_deleted` count what would change.
    #[serde(default)]
    pub files_deleted: u64,
    /// Bytes clients read from the source to copy them (0 for server-side copies).
    #[serde(default)]
    pub bytes_through_clients: u64,
    /// Times a file was scheduled again after a transient error.
    pub files_retried: u64,
    /// Highest copy speed seen so far (over a sliding window), bytes per second.
    pub peak_bytes_per_sec: u64,
    /// Copy speed over the last seconds (0 unless running).
    #[serde(default)]
    pub current_bytes_per_sec: u64,
    #[serde(default)]
    pub current_files_per_sec: f64,
    /// Estimated seconds to completion at the current speed, once the listing is done.
    #[serde(default)]
    pub eta_secs: Option<u64>,
    pub jobs_total: u64,
    pub jobs_done: u64,
    /// True once every List job has finished: `files_found` is then final.
    pub listing_done: bool,
    /// The manifest the task copies the files of, instead of listing its source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files_from: Option<String>,
    /// The speed limit in force now and its next change (tasks with a limit, not finished).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed_limit_now: Option<SpeedNow>,
    /// The report export of a task created with `report_to` (`task get`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_export: Option<Delivery>,
    /// The notification of a task created with `notify` (`task get`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notification: Option<Delivery>,
    /// A check task's verdicts so far (mode check only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<CheckCounts>,
}

/// The verdicts of a check task, by kind.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckCounts {
    pub same: u64,
    pub differs: u64,
    /// At the source, not at the destination.
    pub missing: u64,
    /// At the destination, not at the source (not looked for with `one_way`).
    pub extra: u64,
    pub errors: u64,
    /// Bytes read and hashed to compare contents (both sides).
    pub bytes_hashed: u64,
    /// False when contents were not compared (no `compare: checksum`): `same` then means same
    /// size and modification time.
    pub contents_compared: bool,
}

impl CheckCounts {
    /// Every path is the same (`one_way`: extra paths do not count).
    pub fn clean(&self, one_way: bool) -> bool {
        self.differs == 0 && self.missing == 0 && self.errors == 0 && (one_way || self.extra == 0)
    }
}

/// `task.verify`: a new check task of a task's source and destination, with its filters.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyTask {
    pub id: String,
    /// Compare contents too (MD5: plain ETags where both sides have them, else read).
    #[serde(default)]
    pub checksum: bool,
    #[serde(default)]
    pub one_way: bool,
}

/// `task.verdicts`: a check task's verdicts, one page, in path order.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerdictsRequest {
    pub id: String,
    /// The `next` of the previous page; absent for the first.
    #[serde(default)]
    pub after: Option<String>,
    #[serde(default = "default_files_limit")]
    pub limit: u32,
    /// Only the paths that are not `same`.
    #[serde(default)]
    pub differences: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VerdictList {
    pub verdicts: Vec<crate::wire::Verdict>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// The speed limit in force now (`bytes_per_sec` null: none) and, for a timetable, the next
/// change: when (`at_ms`) and to what.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpeedNow {
    pub bytes_per_sec: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_change: Option<SpeedChange>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpeedChange {
    pub at_ms: i64,
    pub bytes_per_sec: Option<u64>,
}

impl SpeedNow {
    /// What `limit` means at `now_ms`.
    pub fn of(limit: &SpeedLimit, now_ms: i64) -> Self {
        let (rate, next) = limit.at(now_ms);
        Self {
            bytes_per_sec: rate,
            next_change: next.map(|c| SpeedChange {
                at_ms: c.at_ms,
                bytes_per_sec: c.rate,
            }),
        }
    }
}

impl TaskInfo {
    /// A task just created: state `created`, every counter zero.
    pub fn new(
        id: String,
        tenant: String,
        src: String,
        dst: String,
        options: TaskOptions,
        created_ms: i64,
    ) -> Self {
        Self {
            id,
            tenant,
            state: TaskState::Created,
            src,
            dst,
            options,
            created_ms,
            started_ms: None,
            finished_ms: None,
            files_found: 0,
            bytes_found: 0,
            files_copied: 0,
            bytes_copied: 0,
            files_skipped: 0,
            files_excluded: 0,
            bytes_excluded: 0,
            deletes_failed: 0,
            files_deleted: 0,
            bytes_through_clients: 0,
            bytes_skipped: 0,
            files_failed: 0,
            bytes_failed: 0,
            files_retried: 0,
            peak_bytes_per_sec: 0,
            current_bytes_per_sec: 0,
            current_files_per_sec: 0.0,
            eta_secs: None,
            jobs_total: 0,
            jobs_done: 0,
            speed_limit_now: None,
            listing_done: false,
            files_from: None,
            report_export: None,
            notification: None,
            check: None,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TaskList {
    pub tasks: Vec<TaskInfo>,
}

/// Work done by one client for a task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClientShare {
    pub client: String,
    pub jobs: u64,
    pub files: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub task: TaskInfo,
    pub duration_ms: i64,
    /// Bytes copied per second over the whole run.
    pub avg_bytes_per_sec: f64,
    pub clients: Vec<ClientShare>,
    pub failures: Vec<FileFailure>,
    /// A dry run's findings: what would be copied and deleted (paged like `failures`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<Change>,
    /// Copied files whose destination could not hold some of their metadata, by path (paged
    /// like `failures`); the whole list is in `task.files`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_kept: Vec<crate::wire::NotKept>,
    /// Pass as `after` for the next page of `failures`, `changes` and `not_kept`; absent on the
    /// last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// A change a dry run found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Change {
    /// `copy` or `delete`.
    pub action: String,
    pub path: String,
    pub size: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClientInfo {
    pub id: String,
    /// True once the client was asked to drain: it takes no new jobs.
    #[serde(default)]
    pub draining: bool,
    pub host: String,
    pub tenant: String,
    pub workers: u32,
    pub busy: u32,
    pub jobs_done: u64,
    pub started_ms: i64,
    pub last_seen_ms: i64,
    pub online: bool,
    /// Bytes per second this client copied over the last seconds.
    #[serde(default)]
    pub bytes_per_sec: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClientList {
    pub clients: Vec<ClientInfo>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Health {
    /// Version of the server.
    pub version: String,
    /// Version of this API (the `v1` in the subjects).
    pub api: String,
    /// `sqlite` or `postgresql`.
    pub database: String,
    pub clients_online: u64,
    pub tasks_running: u64,
    /// The server answering, which is the one that leads (`host/pid`); standby servers sharing
    /// its PostgreSQL store answer nothing until they lead.
    #[serde(default)]
    pub leader: String,
}

/// Published on `btp.events.<tenant>.task` whenever a task changes state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskEvent {
    pub v: u32,
    pub tenant: String,
    pub task: String,
    pub state: TaskState,
    pub at_ms: i64,
    /// A check task's verdicts so far (mode check only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<CheckCounts>,
}

/// `task.list`: optionally only tasks in `state`, newest first, paged.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListTasks {
    #[serde(default)]
    pub state: Option<TaskState>,
    #[serde(default = "default_limit")]
    pub limit: u32,
    #[serde(default)]
    pub offset: u64,
}

impl Default for ListTasks {
    fn default() -> Self {
        Self {
            state: None,
            limit: default_limit(),
            offset: 0,
        }
    }
}

fn default_limit() -> u32 {
    100
}

/// Most items one page of a list may hold.
pub const MAX_PAGE: u32 = 10_000;

/// `task.report`: the report with one page of failed files.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportRequest {
    pub id: String,
    #[serde(default = "default_limit")]
    pub failures_limit: u32,
    /// Rows to skip, as earlier CLIs page; read only when `after` is absent.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub failures_offset: u64,
    /// The `next` of the previous page (an opaque cursor); absent for the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

/// Where a page of `task.files` starts: the opaque cursor of this version (`""` for the first
/// page), or the number earlier CLIs pass, answered with numbers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FilesCursor {
    Legacy(u64),
    Opaque(String),
}

/// `task.files`: the per-file report, one page: every entry the listing found, exactly once,
/// with its outcome (copied, skipped, excluded, failed) and the reason when not copied. First
/// the files of finished Copy and Upload jobs in job order, then the entries settled by the
/// listing, then the failed ones.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesRequest {
    pub id: String,
    /// The `next` of the previous page: `""` asks for the first page with opaque cursors; absent,
    /// the first page with the numbers of earlier versions.
    #[serde(default)]
    pub after: Option<FilesCursor>,
    /// At most this many files, and never more than `FILES_PAGE_BYTES` of them (with numeric
    /// cursors a page holds whole jobs, so it may hold up to one job more).
    #[serde(default = "default_files_limit")]
    pub limit: u32,
}

fn default_files_limit() -> u32 {
    1000
}

/// One entry of the per-file report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoneFile {
    pub path: String,
    pub size: u64,
    /// `copied`, `skipped`, `excluded` or `failed`.
    pub outcome: crate::wire::Outcome,
    /// Why the entry was not copied (empty for files found up to date).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Attempts made on a failed file.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempts: u32,
    /// Metadata of a copied file its destination could not hold (`content-type, mode`...);
    /// absent when everything was kept.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub not_kept: String,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FileList {
    pub files: Vec<DoneFile>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<FilesCursor>,
}

/// The most bytes of JSON the files of one `task.files` page take, well under the 1 MiB a NATS
/// message may carry by default.
pub const FILES_PAGE_BYTES: usize = 512 * 1024;

/// `task.set`: changes a task's settings while it exists (the speed limit takes effect within
/// seconds on a running task).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetTask {
    pub id: String,
    /// Bytes per second, or text: a rate (`"50MiB/s"`) or a timetable (`"08:00,20MiB/s
    /// 18:00,off"`), which replaces the one in force; `null` removes the limit.
    #[serde(deserialize_with = "crate::timetable::de_required")]
    pub speed_limit: Option<SpeedLimit>,
}

/// `client.get` and `client.drain`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientRef {
    pub id: String,
}

/// `tenant.create`: a tenant of a multi-tenant server.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    pub name: String,
    /// Most tasks of the tenant running (or paused) at once; starting one more is refused.
    #[serde(default)]
    pub max_running_tasks: Option<u32>,
    /// Bytes per second shared by all running tasks of the tenant.
    #[serde(default)]
    pub speed_limit: Option<u64>,
}

/// `tenant.delete`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantRef {
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TenantInfo {
    pub name: String,
    pub created_ms: i64,
    #[serde(default)]
    pub max_running_tasks: Option<u32>,
    #[serde(default)]
    pub speed_limit: Option<u64>,
    /// Live API tokens of the tenant.
    pub tokens: u64,
    /// Tasks of the tenant (any state).
    pub tasks: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TenantList {
    pub tenants: Vec<TenantInfo>,
}

/// `token.create`: a new API token for a tenant (`label` says what it is for).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    pub tenant: String,
    #[serde(default)]
    pub label: String,
}

/// A token's record; the secret itself is only in [`TokenCreated`], once.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub id: String,
    pub tenant: String,
    pub label: String,
    pub created_ms: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenCreated {
    #[serde(flatten)]
    pub info: TokenInfo,
    /// The token: shown once, stored only as a hash.
    pub token: String,
}

/// `token.list`: the tokens of one tenant, or of all with no tenant.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListTokens {
    #[serde(default)]
    pub tenant: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenList {
    pub tokens: Vec<TokenInfo>,
}

/// `token.delete`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRef {
    pub id: String,
}

/// Checks a tenant name: it becomes part of NATS subjects and consumer names, so 1 to 32
/// lowercase letters, digits, `-` and `_`, starting with a letter.
pub fn check_tenant_name(name: &str) -> Result<(), ApiError> {
    let ok = (1..=32).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "invalid tenant name '{}': use 1 to 32 lowercase letters, digits, '-' or '_', starting with a letter",
            name.chars().take(40).collect::<String>()
        )))
    }
}

/// `endpoint.create`: a named source or destination of the caller's tenant, with its options
/// (credentials included), referenced by tasks as `NAME:/path`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateEndpoint {
    pub name: String,
    pub url: String,
    #[serde(default)]
    pub options: std::collections::BTreeMap<String, String>,
}

/// A named endpoint as the API shows it: the URL without credentials and which options are set,
/// never their values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EndpointInfo {
    pub name: String,
    pub tenant: String,
    pub url: String,
    pub option_keys: Vec<String>,
    pub created_ms: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EndpointList {
    pub endpoints: Vec<EndpointInfo>,
}

/// `endpoint.delete`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointRef {
    pub name: String,
}

/// A reference to a named endpoint: `NAME:/path` (or `NAME:`), as opposed to a URL
/// (`scheme://...`) or an absolute path. Returns the name and the path below the endpoint.
pub fn named_endpoint(s: &str) -> Option<(&str, &str)> {
    if s.contains("://") {
        return None;
    }
    let (name, path) = s.split_once(':')?;
    let ok = (1..=32).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    (ok && (path.is_empty() || path.starts_with('/'))).then_some((name, path))
}

/// The URL of `base` with `path` below it; refuses `..` segments.
pub fn join_url(base: &str, path: &str) -> Result<String, ApiError> {
    if path.split('/').any(|seg| seg == "..") {
        return Err(ApiError::invalid(format!(
            "'{}' leaves its endpoint: '..' is not allowed",
            path.chars().take(100).collect::<String>()
        )));
    }
    let sub = path.trim_matches('/');
    if sub.is_empty() {
        return Ok(base.to_string());
    }
    Ok(format!("{}/{sub}", base.trim_end_matches('/')))
}

/// Failed runs in a row after which a schedule pauses itself, unless `max_failures` says.
pub const DEFAULT_MAX_FAILURES: u32 = 3;

/// `schedule.create`: a task template fired by a cron pattern (`cron`, in `timezone`) or every
/// `every_secs` seconds. Each firing creates and starts a task from `task` as `task.create`
/// would (`task.start` is ignored), unless the previous run is still going.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSchedule {
    pub name: String,
    /// A cron pattern: 5 fields (minute hour day month weekday), or 6 with seconds first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// A fixed interval in seconds; the first run is one interval after the creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every_secs: Option<u64>,
    /// IANA time zone of the cron pattern (`Europe/Paris`); UTC when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// Failed runs in a row after which the schedule pauses itself (3 when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failures: Option<u32>,
    pub task: CreateTask,
}

/// `schedule.get`, `schedule.pause`, `schedule.resume`, `schedule.delete`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleRef {
    pub name: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleState {
    Active,
    Paused,
}

impl ScheduleState {
    pub fn as_str(self) -> &'static str {
        match self {
            ScheduleState::Active => "active",
            ScheduleState::Paused => "paused",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(ScheduleState::Active),
            "paused" => Some(ScheduleState::Paused),
            _ => None,
        }
    }
}

/// A schedule as the API shows it: the template's endpoints without credentials (option keys
/// only) and its task options.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScheduleInfo {
    pub name: String,
    pub tenant: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every_secs: Option<u64>,
    pub timezone: String,
    pub state: ScheduleState,
    /// Why the schedule paused itself (empty when paused by a user, or active).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub paused_reason: String,
    pub max_failures: u32,
    /// Failed runs in a row so far.
    pub failures: u32,
    /// When it fires next (UTC milliseconds); a paused schedule fires once resumed.
    pub next_fire_ms: i64,
    pub src: String,
    pub dst: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub src_option_keys: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dst_option_keys: Vec<String>,
    pub options: TaskOptions,
    /// Where each run's report goes and its level, and the notification URL (query shown as
    /// `?***`), when the template has them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_level: Option<ReportLevel>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<String>,
    pub created_ms: i64,
    /// Runs recorded (skipped ones included).
    pub runs: u64,
    /// The task of the latest run that created one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_task: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScheduleList {
    pub schedules: Vec<ScheduleInfo>,
}

/// `schedule.runs`: a schedule's history, newest first, paged.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleRunsRequest {
    pub name: String,
    #[serde(default = "default_limit")]
    pub limit: u32,
    #[serde(default)]
    pub offset: u64,
}

/// One run of a schedule, with its task's state and counters as they are now.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScheduleRun {
    pub seq: u64,
    /// The firing time this run stands for (a run after a restart may be recorded later).
    pub fire_ms: i64,
    pub at_ms: i64,
    /// `pending`, `started`, `completed`, `failed`, `cancelled`, `deleted` (its task was
    /// deleted), `skipped` (the previous run was still going) or `error` (no task could be
    /// created or started).
    pub outcome: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<TaskState>,
    pub files_copied: u64,
    pub bytes_copied: u64,
    pub files_skipped: u64,
    pub files_failed: u64,
    /// From the task's start to its end (or now while it runs).
    pub duration_ms: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScheduleRunList {
    pub runs: Vec<ScheduleRun>,
}

/// The summary of an ended task: `<task id>/summary.json` of an exported report, and the body
/// of a notification (docs/api.md lists the fields).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskSummary {
    /// Version of this document (1).
    pub version: u32,
    pub task: String,
    pub tenant: String,
    /// The schedule whose run created the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    pub state: TaskState,
    /// Source and destination without credentials.
    pub src: String,
    pub dst: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files_from: Option<String>,
    /// The task's options (they hold no secrets: endpoint options are not among them).
    pub options: TaskOptions,
    pub counters: SummaryCounters,
    /// Start and end in RFC 3339 (UTC), and in milliseconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<i64>,
    pub duration_ms: i64,
    /// Bytes copied per second over the whole run, and the highest speed seen.
    pub avg_bytes_per_sec: u64,
    pub peak_bytes_per_sec: u64,
    /// Where the per-file report is written (tasks created with `report_to`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_level: Option<ReportLevel>,
}

/// The counters of a [`TaskSummary`]: those of `task get`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SummaryCounters {
    pub files_found: u64,
    pub bytes_found: u64,
    pub files_copied: u64,
    pub bytes_copied: u64,
    pub files_skipped: u64,
    pub bytes_skipped: u64,
    pub files_failed: u64,
    pub bytes_failed: u64,
    pub files_excluded: u64,
    pub bytes_excluded: u64,
    pub files_deleted: u64,
    pub deletes_failed: u64,
    pub files_retried: u64,
    pub bytes_through_clients: u64,
}

impl SummaryCounters {
    pub fn of(t: &TaskInfo) -> Self {
        Self {
            files_found: t.files_found,
            bytes_found: t.bytes_found,
            files_copied: t.files_copied,
            bytes_copied: t.bytes_copied,
            files_skipped: t.files_skipped,
            bytes_skipped: t.bytes_skipped,
            files_failed: t.files_failed,
            bytes_failed: t.bytes_failed,
            files_excluded: t.files_excluded,
            bytes_excluded: t.bytes_excluded,
            files_deleted: t.files_deleted,
            deletes_failed: t.deletes_failed,
            files_retried: t.files_retried,
            bytes_through_clients: t.bytes_through_clients,
        }
    }
}

/// One line of an exported per-file report (`files-NNNNN.jsonl`): the row of `task files`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportLine {
    pub path: String,
    pub size: u64,
    /// `copied`, `skipped`, `excluded` or `failed`.
    pub outcome: crate::wire::Outcome,
    /// Why the entry was not copied (null for copied files and files found up to date).
    pub reason: Option<String>,
    /// Attempts made on a failed file (0 for the others: not counted per file).
    pub attempts: u32,
    /// How a copied file was checked at its destination: `size`, or `checksum` (MD5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified: Option<Verify>,
    /// Metadata the destination could not hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_kept: Option<String>,
}
