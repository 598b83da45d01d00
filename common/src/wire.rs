//! Messages that travel on JetStream and core NATS between the server and the clients.

use serde::{Deserialize, Serialize};

use crate::filter::Filter;
use crate::{Endpoint, WIRE_VERSION};

/// One unit of work on the jobs work queue. Carries everything a worker needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Job {
    pub v: u32,
    /// Unique and stable: also the `Nats-Msg-Id`, so a re-publish is deduplicated.
    pub id: String,
    pub tenant: String,
    pub task: String,
    pub src: Endpoint,
    pub dst: Endpoint,
    /// Attempt this job starts at: 1, or more for a job that retries files of an earlier one.
    #[serde(default = "one")]
    pub attempt: u32,
    /// The task's limit: at attempt `max_attempts` transient errors become failures.
    #[serde(default = "ten")]
    pub max_attempts: u32,
    /// How to decide that a file already at the destination needs no copy.
    #[serde(default)]
    pub compare: crate::api::Compare,
    #[serde(default)]
    pub verify: crate::api::Verify,
    /// Find out what would change, change nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// This client's share of the task's speed limit when the job was published (bytes/s);
    /// `Limit` control messages update it while the task runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed_share: Option<u64>,
    /// Whether the store copies objects itself where source and destination share it.
    #[serde(default, skip_serializing_if = "crate::api::ServerSideCopy::is_auto")]
    pub server_side_copy: crate::api::ServerSideCopy,
    /// `--preserve owner`: file-system copies get the source's owner and group too (listings
    /// of file systems then carry them).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub preserve_owner: bool,
    pub kind: JobKind,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn one() -> u32 {
    1
}
fn ten() -> u32 {
    10
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum JobKind {
    /// List one directory (prefix) of the source; results come back in bounded pages.
    List {
        /// Directory relative to the source root: `""` for the root, otherwise ending in `/`.
        dir: String,
        /// A page holds at most this many entries...
        page_entries: u32,
        /// ...and at most about this many bytes of JSON.
        page_bytes: u64,
        /// Which files are copied; the others are counted as excluded.
        #[serde(default, skip_serializing_if = "Filter::is_empty")]
        filter: Filter,
        /// Also find what the destination has in this directory and the source has not
        /// (reported as `extra`; the server deletes it once the task's copies are done).
        #[serde(default)]
        sync: bool,
        /// Sync: destination files the filters leave out are deleted too.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        delete_excluded: bool,
        /// What becomes of symbolic links.
        #[serde(default)]
        links: crate::api::Links,
        /// Instead of listing `dir`, read this manifest and look up each path it names at the
        /// source: the pages carry those entries, as a listing's would (`--files-from`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        manifest: Option<crate::manifest::Manifest>,
        /// Mode check: also list the same directory at the destination, merge both listings
        /// in key order and send a verdict per path instead of files to copy (files whose
        /// contents are to be compared go back as `files`, for Hash jobs).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        check: bool,
        /// Check: no `extra` verdicts (destination entries the source lacks are not looked for).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        one_way: bool,
    },
    /// Check: compare the contents (MD5) of these files at source and destination, which the
    /// listings found of the same size and time.
    Hash { files: Vec<FileEntry> },
    /// Copy a batch of files from source to destination.
    Copy { files: Vec<FileEntry> },
    /// Start a multipart upload of one large file (or skip it when already there); the server
    /// then publishes one Part job per part and, when all are in, a Complete job.
    Upload { file: FileEntry, part_size: u64 },
    /// Copy one byte range of a large file into its upload.
    Part {
        file: FileEntry,
        upload_id: String,
        /// 1-based.
        number: u32,
        offset: u64,
        len: u64,
    },
    /// Assemble the uploaded parts into the destination file.
    Complete {
        file: FileEntry,
        upload_id: String,
        parts: Vec<PartDone>,
    },
    /// Abort an upload (cancelled task or failed file): no part is left behind.
    Abort { path: String, upload_id: String },
    /// Sync: delete these destination entries (directories end in `/`), which the source does
    /// not have; published once every copy of the task is done.
    Delete {
        files: Vec<FileEntry>,
        /// Inside a deleted directory, only what the filters accept is deleted (unless
        /// `delete_excluded`).
        #[serde(default, skip_serializing_if = "Filter::is_empty")]
        filter: Filter,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        delete_excluded: bool,
    },
}

impl JobKind {
    pub fn name(&self) -> &'static str {
        match self {
            JobKind::List { .. } => "list",
            JobKind::Copy { .. } => "copy",
            JobKind::Upload { .. } => "upload",
            JobKind::Part { .. } => "part",
            JobKind::Complete { .. } => "complete",
            JobKind::Abort { .. } => "abort",
            JobKind::Delete { .. } => "delete",
            JobKind::Hash { .. } => "hash",
        }
    }
}

/// An uploaded part.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartDone {
    pub number: u32,
    /// The store's tag of the part (S3 ETag; empty on file systems).
    pub etag: String,
    /// MD5 of the source bytes of the part, when verifying checksums.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub md5: Option<String>,
}

/// Most failures one Delete result carries; more are summed up in a last one.
pub const DELETE_FAILURES_MAX: usize = 1000;

/// A file found by a listing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Path relative to the endpoint root, `/`-separated.
    pub path: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime_ms: Option<i64>,
    /// The List job compared this file with a listing of the destination and found no
    /// up-to-date copy there: the copy needs no look at the destination first.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stale: bool,
    /// A symbolic link copied as a link: its target, as the link holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    /// In a finished Copy job's payload (the per-file report): the file was found up to date
    /// and not copied.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skipped: bool,
    /// Permission bits (`st_mode & 0o7777`) of a file of a file-system source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    /// Owner and group of a file of a file-system source, listed only with `--preserve owner`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
}

impl FileEntry {
    /// An entry of a listing: a file of `size` bytes.
    pub fn new(path: impl Into<String>, size: u64, mtime_ms: Option<i64>) -> Self {
        Self {
            path: path.into(),
            size,
            mtime_ms,
            stale: false,
            link: None,
            skipped: false,
            mode: None,
            uid: None,
            gid: None,
        }
    }

    /// The source file's mode and owner as this entry carries them.
    pub fn posix(&self) -> Posix {
        Posix {
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
        }
    }

    /// Takes the mode and owner of `p`.
    pub fn with_posix(mut self, p: Posix) -> Self {
        (self.mode, self.uid, self.gid) = (p.mode, p.uid, p.gid);
        self
    }
}

/// Mode and owner of a file-system source file, carried from its listing to its copy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Posix {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
}

impl Posix {
    pub fn is_empty(&self) -> bool {
        self.mode.is_none() && self.uid.is_none() && self.gid.is_none()
    }
}

/// A copied file whose destination could not hold some of its metadata: `what` names it
/// (`content-type`, `cache-control`, `x-amz-meta-<key>`, `mode`, `owner`, ...), comma-separated,
/// with the reason where one helps (`owner (chown: Operation not permitted)`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotKept {
    pub path: String,
    pub what: String,
}

/// What became of a listed entry that gets no copy: the per-file report's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Copied,
    /// Not copied on purpose: up to date at the destination, or a class the user (or the
    /// destination) leaves out, such as symbolic links on an object store.
    Skipped,
    /// Left out by the task's filters.
    Excluded,
    /// Could not be copied: the reason says why.
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Copied => "copied",
            Outcome::Skipped => "skipped",
            Outcome::Excluded => "excluded",
            Outcome::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "copied" => Outcome::Copied,
            "skipped" => Outcome::Skipped,
            "excluded" => Outcome::Excluded,
            "failed" => Outcome::Failed,
            _ => return None,
        })
    }
}

/// What a check found for one path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerdictKind {
    Same,
    /// At both sides, not the same: `what` says what differs (`size`, `mtime`, `content`,
    /// `type`, `link`).
    Differs,
    /// At the source, not at the destination.
    Missing,
    /// At the destination, not at the source (a directory ends in `/`).
    Extra,
    /// Could not be compared: `what` says why.
    Error,
}

impl VerdictKind {
    pub const ALL: [VerdictKind; 5] = [
        VerdictKind::Same,
        VerdictKind::Differs,
        VerdictKind::Missing,
        VerdictKind::Extra,
        VerdictKind::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            VerdictKind::Same => "same",
            VerdictKind::Differs => "differs",
            VerdictKind::Missing => "missing",
            VerdictKind::Extra => "extra",
            VerdictKind::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// The verdict of a check for one path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Verdict {
    pub path: String,
    /// The source's size (the destination's for `extra`).
    pub size: u64,
    /// The source's modification time, kept so a copy of the path keeps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime_ms: Option<i64>,
    pub verdict: VerdictKind,
    /// What differs, or why it could not be compared.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub what: String,
}

impl Verdict {
    pub fn new(f: &FileEntry, verdict: VerdictKind, what: impl Into<String>) -> Self {
        Self {
            path: f.path.clone(),
            size: f.size,
            mtime_ms: f.mtime_ms,
            verdict,
            what: what.into(),
        }
    }
}

/// A listed entry that is not copied (skipped, excluded or failed at listing time), for the
/// per-file report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Noted {
    pub path: String,
    pub size: u64,
    pub outcome: Outcome,
    /// Why it was not copied; empty for files found up to date.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

impl FileEntry {
    /// Approximate size of this entry in a JSON page, used to bound pages.
    pub fn wire_len(&self) -> u64 {
        self.path.len() as u64 + 48 + if self.posix().is_empty() { 0 } else { 40 }
    }
}

/// A result of a job, published to the results stream. A List job may send several pages
/// (`seq` 0, 1, ...), the final one with `last = true`; every other job sends one result.
/// The server applies each `(job, seq)` once, however often it arrives.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobResult {
    pub v: u32,
    pub job: String,
    pub tenant: String,
    pub task: String,
    /// Id of the client that ran the job.
    pub client: String,
    pub seq: u32,
    pub last: bool,
    /// Delivery attempt that produced this result (1 for the first).
    pub attempt: u32,
    /// Bytes the client read from the source for this result (0 when the store copied them).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bytes_through: u64,
    pub body: ResultBody,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ResultBody {
    /// One page of a listing: files to copy and sub-directories to list next.
    ListPage {
        files: Vec<FileEntry>,
        dirs: Vec<String>,
        /// Files left out by the task's filters.
        #[serde(default)]
        excluded: u64,
        /// Sync: destination files deleted (in a dry run: that would be deleted).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        deleted: Vec<FileEntry>,
        /// Files the destination's listing showed up to date: skipped without a Copy job.
        #[serde(default)]
        skipped: u64,
        #[serde(default)]
        bytes_skipped: u64,
        /// Entries that get no Copy job, each with its outcome: up to date, excluded, or not
        /// copyable (with the reason).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        noted: Vec<Noted>,
        /// Sync: destination entries the source directory does not have (directories end in
        /// `/`), to delete once the copies are done. Only sent when the listing of the source
        /// directory was complete and every entry of it could be inspected.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        extra: Vec<FileEntry>,
        /// Check: the verdicts of the paths of this page (files to hash are in `files`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        verdicts: Vec<Verdict>,
    },
    /// Outcome of a Hash job: one verdict per file.
    Checked {
        verdicts: Vec<Verdict>,
        /// Bytes read to hash them (ETags used as MD5s read nothing).
        #[serde(default)]
        bytes_hashed: u64,
    },
    /// Outcome of a Copy job: what was copied and what failed, per file.
    Copy {
        files_copied: u64,
        bytes_copied: u64,
        /// Files already identical at the destination (see `Compare`).
        #[serde(default)]
        files_skipped: u64,
        #[serde(default)]
        bytes_skipped: u64,
        failures: Vec<FileFailure>,
        /// Files that failed transiently: the server schedules them again after `retry_after_ms`.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        retry: Vec<FileFailure>,
        #[serde(default)]
        retry_after_ms: u64,
        /// Dry run: files that would be copied (nothing was).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        would_copy: Vec<FileEntry>,
        /// Paths of the files counted in `files_skipped` (found up to date), for the per-file
        /// report.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        up_to_date: Vec<String>,
        /// Files a retry found changed since the listing: their size and modification time
        /// now, which this copy used (and counted). The server corrects the bytes found.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        changed: Vec<FileEntry>,
        /// Copied files whose destination could not hold some of their metadata (only those).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        not_kept: Vec<NotKept>,
    },
    /// An Upload job started the upload of its file.
    Begun {
        upload_id: String,
        /// Set when a retry found the file changed since the listing: the file as it is now,
        /// which the upload's parts are to cover.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        file: Option<FileEntry>,
    },
    /// A Part job uploaded its part of `bytes` bytes.
    Part { part: PartDone, bytes: u64 },
    /// An Abort job aborted its upload.
    Aborted,
    /// A Delete job's outcome: the files deleted (inside deleted directories too), and the
    /// entries that could not be.
    Deleted {
        deleted: u64,
        /// At most `DELETE_FAILURES_MAX` entries.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        failures: Vec<FileFailure>,
    },
    /// The whole job failed permanently (or ran out of attempts).
    Failed { reason: String },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileFailure {
    pub path: String,
    pub size: u64,
    pub reason: String,
    /// Attempts made on this file.
    #[serde(default)]
    pub attempts: u32,
    /// Kept so a retried copy still gets the source's modification time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime_ms: Option<i64>,
    /// Kept so a retried copy still gets the source's mode and owner.
    #[serde(default, skip_serializing_if = "Posix::is_empty")]
    pub posix: Posix,
}

/// Heartbeat of a client on core NATS; its first one registers the client.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    pub v: u32,
    pub id: String,
    pub host: String,
    pub tenant: String,
    pub workers: u32,
    pub busy: u32,
    pub started_ms: i64,
    pub jobs_done: u64,
    /// False in the last heartbeat a stopping client sends.
    pub online: bool,
    #[serde(default)]
    pub draining: bool,
    /// Tasks this client ran jobs of in the last seconds (for the speed-limit allocator).
    #[serde(default)]
    pub tasks: Vec<String>,
    /// Every tenant a shared client serves. A shared client sends one heartbeat per tenant, on
    /// that tenant's subject, with `tenant` set to it; the server counts each only for the
    /// tenant of its subject.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tenants: Vec<String>,
    /// The directories (absolute, normalized) inside which this client touches file systems
    /// (`--fs-root`); `None` when it is not confined (a single-tenant client without
    /// `--fs-root`, or a client of an earlier version). An empty list allows no fs path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs_roots: Option<Vec<String>>,
}

/// A control message from the server to all clients of a tenant, on core NATS.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Control {
    pub v: u32,
    /// The task concerned (cancel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// The client concerned (drain).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// A client's share of the task's speed limit (limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_per_sec: Option<u64>,
    pub action: ControlAction,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlAction {
    /// Abort in-flight jobs of the task; their partial files are removed.
    Cancel,
    /// The client stops taking new jobs; in-flight ones finish.
    Drain,
    /// Each client's share of the task's speed limit is now `bytes_per_sec` (None: unlimited).
    Limit,
}

impl Versioned for Control {
    fn version(&self) -> u32 {
        self.v
    }
}

/// Errors decoding a message from NATS.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not a valid message: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unsupported message version {0} (this build speaks {WIRE_VERSION})")]
    Version(u32),
}

/// Decodes a versioned wire message, refusing other versions.
pub fn decode<T: serde::de::DeserializeOwned + Versioned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let msg: T = serde_json::from_slice(bytes)?;
    if msg.version() != WIRE_VERSION {
        return Err(DecodeError::Version(msg.version()));
    }
    Ok(msg)
}

pub trait Versioned {
    fn version(&self) -> u32;
}

impl Versioned for Job {
    fn version(&self) -> u32 {
        self.v
    }
}
impl Versioned for JobResult {
    fn version(&self) -> u32 {
        self.v
    }
}
impl Versioned for Heartbeat {
    fn version(&self) -> u32 {
        self.v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_round_trip_and_other_versions_are_refused() {
        let job = Job {
            v: WIRE_VERSION,
            id: "t1.0".into(),
            tenant: "default".into(),
            task: "t1".into(),
            src: Endpoint::parse("/a").unwrap(),
            dst: Endpoint::parse("/b").unwrap(),
            attempt: 1,
            max_attempts: 3,
            speed_share: None,
            server_side_copy: Default::default(),
            preserve_owner: false,
            compare: Default::default(),
            verify: Default::default(),
            dry_run: false,
            kind: JobKind::Copy {
                files: vec![FileEntry::new("x y#%?.txt", 3, None)],
            },
        };
        let bytes = serde_json::to_vec(&job).unwrap();
        assert_eq!(decode::<Job>(&bytes).unwrap(), job);
        let mut other = job.clone();
        other.v = 99;
        let bytes = serde_json::to_vec(&other).unwrap();
        assert!(matches!(
            decode::<Job>(&bytes),
            Err(DecodeError::Version(99))
        ));
        assert!(matches!(decode::<Job>(b"hello"), Err(DecodeError::Json(_))));
    }
}
