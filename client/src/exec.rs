//! Job executors on OpenDAL: List pages a directory of the source, Copy streams files from source
//! to destination. Both are bounded in memory: a page holds a bounded number of entries, a copy
//! holds one chunk of a file at a time.

use futures::TryStreamExt;
use opendal::{EntryMode, Operator};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use btp_common::api::{Compare, Verify};
use btp_common::wire::{
    FileEntry, FileFailure, Job, JobKind, JobResult, Noted, Outcome, ResultBody,
};
use btp_common::Endpoint;

use crate::errors::{self, JobError};

/// Bytes read from a file system per request while copying.
pub const COPY_CHUNK: usize = 4 << 20;

/// A stream of a file's bytes in `range`. Files are read in `COPY_CHUNK` pieces; objects in one
/// streaming GET per range (a request per chunk would cost a round trip each, and some
/// S3-compatible servers copy the whole object for every ranged read).
pub(crate) async fn read_stream(
    ep: &Endpoint,
    op: &Operator,
    path: &str,
    range: impl std::ops::RangeBounds<u64>,
) -> Result<opendal::BufferStream, JobError> {
    let reader = if ep.is_local() {
        op.reader_with(path).chunk(COPY_CHUNK).await?
    } else {
        op.reader_with(path).await?
    };
    Ok(reader.into_stream(range).await?)
}

/// Where a job sends its results (one per List page, one per Copy): the results stream.
pub struct ResultSink {
    pub js: async_nats::jetstream::Context,
    pub client: String,
    pub attempt: u32,
    /// Bytes read from the source by this client since the last result (sent with it).
    pub through: std::sync::atomic::AtomicU64,
}

impl ResultSink {
    /// Publishes a result and waits until JetStream has stored it.
    pub async fn send(
        &self,
        job: &Job,
        seq: u32,
        last: bool,
        body: ResultBody,
    ) -> Result<(), JobError> {
        let result = JobResult {
            v: btp_common::WIRE_VERSION,
            job: job.id.clone(),
            tenant: job.tenant.clone(),
            task: job.task.clone(),
            client: self.client.clone(),
            seq,
            last,
            attempt: self.attempt,
            bytes_through: self.through.swap(0, std::sync::atomic::Ordering::Relaxed),
            body,
        };
        let payload = serde_json::to_vec(&result).expect("serializing a result cannot fail");
        let subject = btp_common::subjects::results(&job.tenant, &job.task);
        let ack = self
            .js
            .publish(subject, payload.into())
            .await
            .map_err(|e| JobError::Transient(format!("publish result: {e}")))?;
        ack.await
            .map_err(|e| JobError::Transient(format!("result not stored: {e}")))?;
        Ok(())
    }
}

/// What a job needs besides itself.
pub struct JobContext<'a> {
    pub sink: &'a ResultSink,
    pub cancel: &'a CancellationToken,
    /// On the last allowed attempt, transient per-file errors are reported as failures.
    pub last_attempt: bool,
    /// This run's attempt number (the job's first attempt plus redeliveries).
    pub attempt: u32,
    /// Delay before files that failed transiently are tried again.
    pub retry_after: std::time::Duration,
    /// The destination is an object store: large files go up as parallel multipart uploads.
    pub multipart: bool,
    /// The client-wide speed limit, if any.
    pub limiter: Option<&'a crate::limiter::RateLimiter>,
    /// This client's share of the task's speed limit, if any.
    pub task_limiter: Option<&'a crate::limiter::RateLimiter>,
}

pub async fn execute(job: &Job, ctx: &JobContext<'_>) -> Result<(), JobError> {
    match &job.kind {
        JobKind::List {
            dir,
            page_entries,
            page_bytes,
            filter,
            sync,
            delete_excluded,
            links,
            manifest,
            check,
            one_way,
        } => {
            let filter = filter.compile().map_err(JobError::Permanent)?;
            let opts = ListOpts {
                page_entries: *page_entries as usize,
                page_bytes: *page_bytes,
                filter: &filter,
                sync: *sync,
                delete_excluded: *delete_excluded,
                links: *links,
            };
            match manifest {
                // A check's manifest pages carry the files found at the source; their Hash
                // jobs compare each with the destination.
                Some(m) => crate::manifest::list(job, m, &opts, ctx).await,
                None if *check => crate::check::list(job, dir, &opts, *one_way, ctx).await,
                None => list(job, dir, &opts, ctx).await,
            }
        }
        JobKind::Copy { files } => copy(job, files, ctx).await,
        JobKind::Hash { files } => crate::check::hash(job, files, ctx).await,
        JobKind::Upload { file, .. } => crate::parts::upload(job, file, ctx).await,
        JobKind::Part {
            file,
            upload_id,
            number,
            offset,
            len,
        } => crate::parts::part(job, file, upload_id, *number, *offset, *len, ctx).await,
        JobKind::Complete {
            file,
            upload_id,
            parts,
        } => crate::parts::complete(job, file, upload_id, parts, ctx).await,
        JobKind::Abort { path, upload_id } => crate::parts::abort(job, path, upload_id, ctx).await,
        JobKind::Delete {
            files,
            filter,
            delete_excluded,
        } => crate::prune::delete(job, files, filter, *delete_excluded, ctx).await,
    }
}

pub(crate) struct ListOpts<'a> {
    pub page_entries: usize,
    pub page_bytes: u64,
    pub filter: &'a btp_common::filter::CompiledFilter,
    pub sync: bool,
    pub delete_excluded: bool,
    pub links: btp_common::api::Links,
}

/// Room a reason takes in a page, at most (reasons are cut to this length).
pub(crate) const REASON_MAX: usize = 240;

/// One page of a listing being filled.
#[derive(Default)]
pub(crate) struct Page {
    pub files: Vec<FileEntry>,
    pub(crate) dirs: Vec<String>,
    noted: Vec<Noted>,
    extra: Vec<FileEntry>,
    pub(crate) verdicts: Vec<btp_common::wire::Verdict>,
    /// Entries in the page, whatever became of them, and their weight in bytes.
    entries: usize,
    bytes: u64,
}

impl Page {
    pub(crate) fn add(&mut self, path: &str, reason: bool) {
        self.entries += 1;
        self.bytes += path.len() as u64 + 48 + if reason { REASON_MAX as u64 } else { 0 };
    }

    pub(crate) fn full(&self, opts: &ListOpts<'_>) -> bool {
        self.entries >= opts.page_entries || self.bytes >= opts.page_bytes
    }

    pub(crate) fn note(&mut self, path: &str, size: u64, outcome: Outcome, reason: String) {
        let mut reason = reason;
        if reason.len() > REASON_MAX {
            let mut cut = REASON_MAX;
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason.truncate(cut);
        }
        self.noted.push(Noted {
            path: path.trim_end_matches('/').to_string(),
            size,
            outcome,
            reason,
        });
    }

    pub(crate) fn take(&mut self) -> ResultBody {
        let page = std::mem::take(self);
        ResultBody::ListPage {
            files: page.files,
            dirs: page.dirs,
            excluded: 0,
            deleted: Vec::new(),
            skipped: 0,
            bytes_skipped: 0,
            noted: page.noted,
            extra: page.extra,
            verdicts: page.verdicts,
        }
    }
}

/// Lists one directory of the source. Pages are cut by the entries listed, whatever becomes of
/// each (copied, up to date, excluded, failed), so a List job that runs again over the same
/// directory sends the same pages, and the server, which applies each page number once, can
/// never lose a file to a redelivery. Every entry is in exactly one page: as a file to copy, a
/// directory to list, or noted with its outcome and reason.
async fn list(
    job: &Job,
    dir: &str,
    opts: &ListOpts<'_>,
    ctx: &JobContext<'_>,
) -> Result<(), JobError> {
    // Sync: every name of this source directory, to find what the destination has extra.
    let mut names = std::collections::HashSet::new();
    let policy = crate::local::LinkPolicy {
        links: opts.links,
        dst_holds_links: job.dst.is_local(),
        owner: job.preserve_owner,
    };
    let mut lister = Entries::open(&job.src, dir, policy).await?;
    let dst_index = destination_index(job, dir).await?;
    let mut seq = 0u32;
    let mut page = Page::default();
    let mut total = 0usize;
    // Sync deletes nothing in a directory with an entry that could not be looked at.
    let mut clean = true;
    while let Some(entry) = lister.next().await? {
        if ctx.cancel.is_cancelled() {
            return Err(JobError::Cancelled);
        }
        let path = entry.path.as_str();
        if path == dir || path == "/" || path.is_empty() {
            continue;
        }
        total += 1;
        if opts.sync {
            names.insert(path.trim_end_matches('/').to_string());
        }
        let checked = btp_common::paths::check_relative(path)
            .map_err(|e| format!("name cannot be a destination path: {e}"));
        page.add(path, entry.problem.is_some() || checked.is_err());
        let size = entry.size;
        if let Some((outcome, reason)) = entry.problem {
            clean &= outcome != Outcome::Failed;
            page.note(path, size, outcome, reason);
        } else if let Err(reason) = checked {
            clean = false;
            page.note(path, size, Outcome::Failed, reason);
        } else {
            match entry.mode {
                EntryMode::DIR => page.dirs.push(path.to_string()),
                EntryMode::FILE if !opts.filter.accepts(path, size) => {
                    page.note(path, size, Outcome::Excluded, String::new());
                }
                EntryMode::FILE => {
                    let mut f = FileEntry::new(path, size, entry.mtime_ms).with_posix(entry.posix);
                    f.link = entry.link;
                    // Room the mode (and owner) take in the page.
                    page.bytes += match (f.mode, f.uid) {
                        (None, _) => 0,
                        (Some(_), None) => 12,
                        (Some(_), Some(_)) => 40,
                    };
                    let index = dst_index.as_ref().filter(|_| f.link.is_none());
                    match index.map(|index| index.get(path)) {
                        Some(Some(&(dst_size, dst_ms))) if is_up_to_date(&f, dst_size, dst_ms) => {
                            metrics::counter!(crate::telemetry::FILES_SKIPPED).increment(1);
                            page.note(path, size, Outcome::Skipped, String::new());
                        }
                        Some(_) => {
                            f.stale = true;
                            page.files.push(f);
                        }
                        None => page.files.push(f),
                    }
                }
                EntryMode::Unknown => {
                    clean = false;
                    page.note(path, size, Outcome::Failed, crate::local::NOT_A_FILE.into());
                }
            }
        }
        if page.full(opts) {
            if let Some(delay) = faults().list_page_delay {
                tokio::time::sleep(delay).await;
            }
            ctx.sink.send(job, seq, false, page.take()).await?;
            seq += 1;
        }
    }
    if total == 0 && !dir.is_empty() && job.dst.is_local() && !job.dry_run {
        // An empty directory is part of the tree too (never created through a link).
        crate::dstpath::DstCheck::new(&job.dst).check(dir)?;
        job.dst.operator()?.create_dir(dir).await?;
    }
    let dst = if opts.sync && clean {
        destination(job)?
    } else {
        None
    };
    if let Some(dst) = dst {
        let mut extra = DstEntries::open(job, &dst, dir).await?;
        while let Some((path, size)) = extra.next().await? {
            let path = path.as_str();
            if path == dir || path == "/" || path.is_empty() {
                continue;
            }
            if names.contains(path.trim_end_matches('/')) || is_upload_temp(path) {
                continue;
            }
            let is_dir = path.ends_with('/');
            if !is_dir && !opts.delete_excluded && !opts.filter.accepts(path, size) {
                // Out of the filters' scope: a sync keeps it, as rsync and rclone do.
                continue;
            }
            page.add(path, false);
            page.extra.push(FileEntry::new(path, size, None));
            if page.full(opts) {
                ctx.sink.send(job, seq, false, page.take()).await?;
                seq += 1;
            }
        }
    } else if opts.sync {
        debug!(job = %job.id, dir, "an entry could not be inspected: nothing is deleted in this directory");
    }
    debug!(job = %job.id, dir, entries = total, pages = seq + 1, "listed");
    ctx.sink.send(job, seq, true, page.take()).await
}

/// The entries of a destination directory for a sync: read without following links on file
/// systems, through OpenDAL's lister elsewhere; `(path, size)`, directories ending in `/`.
enum DstEntries {
    None,
    Local(crate::local::DstLister),
    Dal(opendal::Lister),
    Listed(std::vec::IntoIter<(String, u64)>),
}

impl DstEntries {
    async fn open(job: &Job, dst: &Operator, dir: &str) -> Result<Self, JobError> {
        if let Some(root) = job.dst.local_root() {
            return Ok(match crate::local::DstLister::open(root, dir).await? {
                Some(l) => DstEntries::Local(l),
                None => DstEntries::None,
            });
        }
        if let Endpoint::Sftp { .. } = job.dst {
            return Ok(
                match crate::sftp::dst_entries(&job.id, &job.dst, dir).await? {
                    Some(entries) => DstEntries::Listed(entries.into_iter()),
                    None => DstEntries::None,
                },
            );
        }
        match dst
            .lister_with(if dir.is_empty() { "/" } else { dir })
            .await
        {
            Ok(l) => Ok(DstEntries::Dal(l)),
            Err(e) if e.kind() == opendal::ErrorKind::NotFound => Ok(DstEntries::None),
            Err(e) => Err(e.into()),
        }
    }

    async fn next(&mut self) -> Result<Option<(String, u64)>, JobError> {
        match self {
            DstEntries::None => Ok(None),
            DstEntries::Local(l) => l.next().await,
            DstEntries::Listed(l) => Ok(l.next()),
            DstEntries::Dal(l) => Ok(l
                .try_next()
                .await?
                .map(|e| (e.path().to_string(), e.metadata().content_length()))),
        }
    }
}

/// The entries of a source directory: read in batches for file systems, by their own types
/// over a direct session for SFTP, through OpenDAL's lister (with a stat for entries it cannot
/// tell) for the rest.
enum Entries {
    Local(crate::local::LocalLister),
    Listed(std::vec::IntoIter<crate::local::Listed>),
    Dal(Operator, opendal::Lister),
}

impl Entries {
    async fn open(
        src: &Endpoint,
        dir: &str,
        policy: crate::local::LinkPolicy,
    ) -> Result<Self, JobError> {
        if let Some(root) = src.local_root() {
            // The same check as OpenDAL's source operator: a missing root is an error.
            src.source_operator()?;
            return Ok(Entries::Local(
                crate::local::LocalLister::open(root, dir, policy).await?,
            ));
        }
        let op = src.source_operator()?;
        if let Endpoint::Sftp { .. } = src {
            let entries = crate::sftp::source_entries(src, dir, policy).await?;
            return Ok(Entries::Listed(entries.into_iter()));
        }
        let lister = op
            .lister_with(if dir.is_empty() { "/" } else { dir })
            .await?;
        Ok(Entries::Dal(op, lister))
    }

    async fn next(&mut self) -> Result<Option<crate::local::Listed>, JobError> {
        let (op, lister) = match self {
            Entries::Local(l) => return l.next().await,
            Entries::Listed(l) => return Ok(l.next()),
            Entries::Dal(op, lister) => (op, lister),
        };
        let Some(entry) = lister.try_next().await? else {
            return Ok(None);
        };
        let meta = entry.metadata();
        let path = entry.path();
        let listed = |m: &opendal::Metadata| crate::local::Listed {
            path: path.to_string(),
            mode: m.mode(),
            size: m.content_length(),
            mtime_ms: mtime_ms(m),
            posix: Default::default(),
            link: None,
            problem: None,
        };
        if meta.mode() != EntryMode::Unknown {
            return Ok(Some(listed(meta)));
        }
        Ok(Some(match op.stat(path).await {
            Ok(m) => listed(&m),
            Err(e) => crate::local::Listed::problem(
                path.to_string(),
                Outcome::Failed,
                format!("cannot be inspected: {e}"),
            ),
        }))
    }
}

/// Destination directories of at most this many files are listed once by the List job and
/// compared in memory; larger ones are checked file by file, so memory stays bounded.
const DST_INDEX_MAX: usize = 50_000;

/// Size and modification time of the files of one destination directory.
type DstIndex = std::collections::HashMap<String, (u64, Option<i64>)>;

/// The files of the destination directory `dir`, when the task compares by size and time and
/// the destination is remote: one listing request per page instead of a request per file.
/// None: files are checked one by one.
async fn destination_index(job: &Job, dir: &str) -> Result<Option<DstIndex>, JobError> {
    if job.compare != Compare::SizeMtime || job.dst.is_local() {
        return Ok(None);
    }
    if let Endpoint::Sftp { .. } = job.dst {
        let files = crate::sftp::dst_files(&job.id, &job.dst, dir).await?;
        return Ok(files
            .filter(|f| f.len() <= DST_INDEX_MAX)
            .map(|f| f.into_iter().map(|(p, s, m)| (p, (s, m))).collect()));
    }
    let dst = job.dst.operator()?;
    let mut lister = match dst
        .lister_with(if dir.is_empty() { "/" } else { dir })
        .await
    {
        Ok(l) => l,
        Err(e) if e.kind() == opendal::ErrorKind::NotFound => return Ok(Some(DstIndex::new())),
        Err(e) => return Err(e.into()),
    };
    let mut index = DstIndex::new();
    while let Some(entry) = lister.try_next().await? {
        let meta = entry.metadata();
        if meta.mode() != EntryMode::FILE {
            continue;
        }
        if index.len() >= DST_INDEX_MAX {
            return Ok(None);
        }
        index.insert(
            entry.path().to_string(),
            (meta.content_length(), mtime_ms(meta)),
        );
    }
    Ok(Some(index))
}

/// A temporary file of an upload in progress (see `parts`): never a sync deletion.
pub(crate) fn is_upload_temp(path: &str) -> bool {
    let path = path.trim_end_matches('/');
    let name = path.rsplit('/').next().unwrap_or(path);
    name.starts_with('.') && name.contains(".btp-")
}

/// Files smaller than this are copied several at a time within a job (their memory is their
/// size); larger ones one after another, each streamed in chunks.
pub const SMALL_FILE: u64 = 256 << 10;
/// How many small files of one job are in flight at once.
pub const SMALL_FILES_IN_FLIGHT: usize = 16;

/// What happened to one file of a Copy job.
enum FileOutcome {
    /// Copied: its bytes, and what of its metadata the destination could not keep.
    Copied(u64, String),
    Skipped,
    WouldCopy,
    Failed(JobError),
}

/// Skips the file when the destination already has it, copies it otherwise.
async fn one_file<'f>(
    job: &Job,
    src: &Operator,
    dst: &Operator,
    f: &'f FileEntry,
    ctx: &JobContext<'_>,
) -> (&'f FileEntry, FileOutcome) {
    match already_there(job, src, dst, f).await {
        Ok(true) => return (f, FileOutcome::Skipped),
        Ok(false) => {}
        Err(e) => return (f, FileOutcome::Failed(e)),
    }
    if job.dry_run {
        return (f, FileOutcome::WouldCopy);
    }
    match copy_file(job, src, dst, f, ctx).await {
        // File-system copies got their modification time before they were put in place.
        Ok((n, lost)) => (f, FileOutcome::Copied(n, lost)),
        Err(e) => (f, FileOutcome::Failed(e)),
    }
}

/// True when the destination already holds this file, by the task's `compare`.
pub(crate) async fn already_there(
    job: &Job,
    src: &Operator,
    dst: &Operator,
    f: &FileEntry,
) -> Result<bool, JobError> {
    Ok(match job.compare {
        // A file the listing found stale needs no second look.
        Compare::SizeMtime => !f.stale && up_to_date(job, dst, f).await,
        Compare::None => false,
        Compare::Checksum => {
            let Ok(meta) = dst.stat(&f.path).await else {
                return Ok(false);
            };
            if !meta.is_file() || meta.content_length() != f.size {
                return Ok(false);
            }
            let theirs = content_md5(&job.dst, dst, &f.path, Some(&meta)).await?;
            let ours = content_md5(&job.src, src, &f.path, None).await?;
            ours == theirs
        }
    })
}

/// The MD5 of a stored object given by its ETag, where it is a plain MD5 (uploaded in one
/// piece); None on file systems and for other ETags. `meta`: the object's metadata when
/// already known (else it is looked up).
pub(crate) async fn etag_md5(
    ep: &Endpoint,
    op: &Operator,
    path: &str,
    meta: Option<&opendal::Metadata>,
) -> Result<Option<String>, JobError> {
    if ep.is_local() {
        return Ok(None);
    }
    let stat;
    let meta = match meta {
        Some(m) => m,
        None => {
            stat = op.stat(path).await?;
            &stat
        }
    };
    Ok(meta
        .etag()
        .map(btp_common::s3mp::unquote)
        .filter(|e| btp_common::checksum::is_plain_md5(e))
        .map(|e| e.to_ascii_lowercase()))
}

/// MD5 of a stored file: an object store's ETag where it is one (uploaded in one piece),
/// otherwise computed by reading the content.
pub(crate) async fn content_md5(
    ep: &Endpoint,
    op: &Operator,
    path: &str,
    meta: Option<&opendal::Metadata>,
) -> Result<String, JobError> {
    if let Some(md5) = etag_md5(ep, op, path, meta).await? {
        return Ok(md5);
    }
    let mut stream = read_stream(ep, op, path, ..).await?;
    let mut h = btp_common::checksum::Md5Stream::default();
    while let Some(chunk) = stream.try_next().await? {
        h.update(&chunk.to_bytes());
    }
    Ok(h.finish())
}

/// The result of one file found up to date; `changed`: it changed since the listing.
pub(crate) fn skipped_body(f: &FileEntry, changed: bool) -> ResultBody {
    ResultBody::Copy {
        files_copied: 0,
        bytes_copied: 0,
        files_skipped: 1,
        bytes_skipped: f.size,
        failures: Vec::new(),
        retry: Vec::new(),
        retry_after_ms: 0,
        would_copy: Vec::new(),
        up_to_date: vec![f.path.clone()],
        changed: changed.then(|| f.clone()).into_iter().collect(),
        not_kept: Vec::new(),
    }
}

/// The result of one file a dry run would copy; `changed`: it changed since the listing.
pub(crate) fn would_copy_body(f: &FileEntry, changed: bool) -> ResultBody {
    ResultBody::Copy {
        files_copied: 1,
        bytes_copied: f.size,
        files_skipped: 0,
        bytes_skipped: 0,
        failures: Vec::new(),
        retry: Vec::new(),
        retry_after_ms: 0,
        would_copy: vec![f.clone()],
        up_to_date: Vec::new(),
        changed: changed.then(|| f.clone()).into_iter().collect(),
        not_kept: Vec::new(),
    }
}

/// Content type for an object written to an object store: the source object's, or one
/// guessed from the file name for files.
pub(crate) async fn content_type(src: &Operator, src_ep: &Endpoint, path: &str) -> Option<String> {
    if !src_ep.is_local() {
        if let Ok(m) = src.stat(path).await {
            if let Some(ct) = m.content_type() {
                return Some(ct.to_string());
            }
        }
    }
    guess_content_type(path).map(str::to_string)
}

/// A content type from a file name's extension, for the common cases.
pub fn guess_content_type(path: &str) -> Option<&'static str> {
    let ext = path.rsplit_once('.')?.1.to_ascii_lowercase();
    Some(match ext.as_str() {
        "txt" | "log" => "text/plain",
        "csv" => "text/csv",
        "html" | "htm" => "text/html",
        "css" => "text/css",
        "js" => "text/javascript",
        "json" => "application/json",
        "xml" => "application/xml",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "gz" | "tgz" => "application/gzip",
        "tar" => "application/x-tar",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "svg" => "image/svg+xml",
        "webp" => "image/webp",
        "mp4" => "video/mp4",
        "mp3" => "audio/mpeg",
        "parquet" => "application/vnd.apache.parquet",
        _ => return None,
    })
}

/// Modification time of stored metadata, in milliseconds.
pub(crate) fn mtime_ms(m: &opendal::Metadata) -> Option<i64> {
    m.last_modified()
        .map(std::time::SystemTime::from)
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as i64)
}

/// After `n` bytes went by without passing through here: stop when cancelled, wait for the
/// speed limits, count.
pub(crate) async fn pace_bytes(n: u64, ctx: &JobContext<'_>) -> Result<(), JobError> {
    if ctx.cancel.is_cancelled() {
        return Err(JobError::Cancelled);
    }
    for l in [ctx.task_limiter, ctx.limiter].into_iter().flatten() {
        l.acquire(n).await;
    }
    metrics::counter!(crate::telemetry::BYTES_COPIED).increment(n);
    metrics::counter!(crate::telemetry::BYTES_THROUGH).increment(n);
    ctx.sink
        .through
        .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// Before each chunk: stop when cancelled, wait for the speed limits, count, hash.
pub(crate) async fn pace(
    chunk: &opendal::Buffer,
    ctx: &JobContext<'_>,
    md5: Option<&mut btp_common::checksum::Md5Stream>,
) -> Result<(), JobError> {
    pace_bytes(chunk.len() as u64, ctx).await?;
    if let Some(h) = md5 {
        for piece in chunk.clone() {
            h.update(&piece);
        }
    }
    Ok(())
}

/// The destination's operator. None in a dry run whose file-system destination does not exist
/// yet: building the operator would create its root, and a dry run changes nothing (there is
/// nothing at the destination to compare with or delete either).
pub(crate) fn destination(job: &Job) -> Result<Option<Operator>, JobError> {
    if job.dry_run {
        Ok(job.dst.operator_if_exists()?)
    } else {
        Ok(Some(job.dst.operator()?))
    }
}

/// The files of a retried copy as the source has them now (size, modification time), and apart
/// those that changed since the listing. A file that cannot be looked at keeps its entry: its
/// copy says why.
pub(crate) async fn restat(
    src: &Operator,
    files: &[FileEntry],
) -> (Vec<FileEntry>, Vec<FileEntry>) {
    let mut now = Vec::with_capacity(files.len());
    for chunk in files.chunks(SMALL_FILES_IN_FLIGHT) {
        let stats = futures::future::join_all(chunk.iter().map(|f| src.stat(&f.path))).await;
        for (f, m) in chunk.iter().zip(stats) {
            now.push(match m {
                Ok(m) if m.is_file() && f.link.is_none() => FileEntry {
                    size: m.content_length(),
                    mtime_ms: mtime_ms(&m).or(f.mtime_ms),
                    ..f.clone()
                },
                _ => f.clone(),
            });
        }
    }
    let changed = now
        .iter()
        .zip(files)
        .filter(|(n, f)| n.size != f.size || n.mtime_ms != f.mtime_ms)
        .map(|(n, _)| n.clone())
        .collect();
    (now, changed)
}

async fn copy(job: &Job, files: &[FileEntry], ctx: &JobContext<'_>) -> Result<(), JobError> {
    use futures::StreamExt;
    let src = job.src.source_operator()?;
    let Some(dst) = destination(job)? else {
        // A dry run into a destination that does not exist: every file would be copied.
        let body = ResultBody::Copy {
            files_copied: files.len() as u64,
            bytes_copied: files.iter().map(|f| f.size).sum(),
            files_skipped: 0,
            bytes_skipped: 0,
            failures: Vec::new(),
            retry: Vec::new(),
            retry_after_ms: 0,
            would_copy: files.to_vec(),
            up_to_date: Vec::new(),
            changed: Vec::new(),
            not_kept: Vec::new(),
        };
        return ctx.sink.send(job, 0, true, body).await;
    };
    // A retry (a later attempt or a redelivery) copies each file as it is now: the listing's
    // size and time may be stale, and a file that changed would fail every attempt.
    let current;
    let (files, changed) = if ctx.attempt > 1 {
        let (now, changed) = restat(&src, files).await;
        if !changed.is_empty() {
            debug!(job = %job.id, files = changed.len(), "files changed since the listing");
        }
        current = now;
        (current.as_slice(), changed)
    } else {
        (files, Vec::new())
    };
    // Entries without the source's mode (a retry of a report of an earlier build, `btp task
    // retry`) get it from the source now.
    let filled: Vec<FileEntry>;
    let files = if job.src.local_root().is_some()
        && files.iter().any(|f| f.mode.is_none() && f.link.is_none())
    {
        filled = files
            .iter()
            .map(|f| match f.link {
                None => crate::keep::fill_posix(job, f),
                Some(_) => f.clone(),
            })
            .collect();
        filled.as_slice()
    } else {
        files
    };
    for f in files {
        injected_growth(&job.src, &f.path);
    }
    // Every destination path is checked before anything is written.
    let mut check = crate::dstpath::DstCheck::new(&job.dst);
    let mut refused = Vec::new();
    let files: Vec<&FileEntry> = files
        .iter()
        .filter(|f| match check.check(&f.path) {
            Ok(()) => true,
            Err(e) => {
                refused.push((*f, FileOutcome::Failed(e)));
                false
            }
        })
        .collect();
    let (links, files): (Vec<&FileEntry>, Vec<&FileEntry>) =
        files.into_iter().partition(|f| f.link.is_some());
    let (small, large): (Vec<&FileEntry>, Vec<&FileEntry>) =
        files.into_iter().partition(|f| f.size < SMALL_FILE);
    let mut outcomes = refused;
    for f in links {
        outcomes.push((f, copy_link(job, f).await));
    }
    let mut queue = small.into_iter();
    if let Some(roots) = crate::local::roots(job) {
        // Both ends local: small files in a few blocking calls instead of ten hops each.
        let local = crate::local::copy_small(job, roots, queue.by_ref().collect(), ctx).await;
        outcomes.extend(local.into_iter().map(|(f, o)| {
            (
                f,
                match o {
                    Ok(crate::local::Local::Copied(n, lost)) => FileOutcome::Copied(n, lost),
                    Ok(crate::local::Local::Skipped) => FileOutcome::Skipped,
                    Err(e) => FileOutcome::Failed(e),
                },
            )
        }));
    }
    let mut in_flight = futures::stream::FuturesUnordered::new();
    loop {
        while in_flight.len() < SMALL_FILES_IN_FLIGHT {
            let Some(f) = queue.next() else { break };
            in_flight.push(one_file(job, &src, &dst, f, ctx));
        }
        match in_flight.next().await {
            Some(o) => outcomes.push(o),
            None => break,
        }
    }
    for f in large {
        if ctx.cancel.is_cancelled() {
            return Err(JobError::Cancelled);
        }
        outcomes.push(one_file(job, &src, &dst, f, ctx).await);
    }

    let (mut files_copied, mut bytes_copied) = (0u64, 0u64);
    let (mut files_skipped, mut bytes_skipped) = (0u64, 0u64);
    let (mut failures, mut retry) = (Vec::new(), Vec::new());
    let mut would_copy = Vec::new();
    let mut up_to_date = Vec::new();
    let mut not_kept = Vec::new();
    for (f, outcome) in outcomes {
        match outcome {
            FileOutcome::WouldCopy => {
                files_copied += 1;
                bytes_copied += f.size;
                would_copy.push(f.clone());
            }
            FileOutcome::Copied(n, lost) => {
                files_copied += 1;
                bytes_copied += n;
                not_kept.extend(crate::keep::entry(&f.path, lost));
                metrics::counter!(crate::telemetry::FILES_COPIED).increment(1);
            }
            FileOutcome::Skipped => {
                files_skipped += 1;
                bytes_skipped += f.size;
                up_to_date.push(f.path.clone());
                metrics::counter!(crate::telemetry::FILES_SKIPPED).increment(1);
            }
            FileOutcome::Failed(JobError::Cancelled) => return Err(JobError::Cancelled),
            FileOutcome::Failed(e) => {
                let failure = FileFailure {
                    path: f.path.clone(),
                    size: f.size,
                    reason: e.to_string(),
                    attempts: ctx.attempt,
                    mtime_ms: f.mtime_ms,
                    posix: f.posix(),
                };
                if e.is_transient() && !ctx.last_attempt {
                    debug!(job = %job.id, path = %f.path, error = %e, "file will be retried");
                    retry.push(failure);
                } else {
                    warn!(job = %job.id, path = %f.path, error = %e, attempts = ctx.attempt, "file failed");
                    metrics::counter!(crate::telemetry::FILES_FAILED).increment(1);
                    failures.push(failure);
                }
            }
        }
    }
    if ctx.cancel.is_cancelled() {
        return Err(JobError::Cancelled);
    }
    let body = ResultBody::Copy {
        files_copied,
        bytes_copied,
        files_skipped,
        bytes_skipped,
        failures,
        retry,
        retry_after_ms: ctx.retry_after.as_millis() as u64,
        would_copy,
        up_to_date,
        changed,
        not_kept,
    };
    ctx.sink.send(job, 0, true, body).await
}

/// A symbolic link kept as a link (`--links copy` to a file system).
async fn copy_link(job: &Job, f: &FileEntry) -> FileOutcome {
    let (Some(root), Some(target)) = (job.dst.local_root(), f.link.clone()) else {
        return FileOutcome::Failed(JobError::Permanent(
            "symbolic link: the destination cannot hold links".into(),
        ));
    };
    if job.dry_run {
        let at = std::path::Path::new(root).join(&f.path);
        if std::fs::read_link(&at).is_ok_and(|t| t.as_os_str() == target.as_str()) {
            return FileOutcome::Skipped;
        }
        if std::fs::symlink_metadata(&at).is_ok_and(|m| m.is_dir()) {
            return FileOutcome::Failed(JobError::Permanent(format!(
                "the destination has a directory where the source has a link: {}",
                f.path
            )));
        }
        return FileOutcome::WouldCopy;
    }
    let (root, rel) = (std::path::PathBuf::from(root), f.path.clone());
    let done =
        tokio::task::spawn_blocking(move || crate::local::copy_link(&root, &rel, &target)).await;
    match done {
        Ok(Ok(crate::local::Local::Copied(n, _))) => FileOutcome::Copied(n, String::new()),
        Ok(Ok(crate::local::Local::Skipped)) => FileOutcome::Skipped,
        // Permanent: a link is not scheduled again (a retry would copy it as a file).
        Ok(Err(e)) => FileOutcome::Failed(JobError::Permanent(e.to_string())),
        Err(e) => FileOutcome::Failed(JobError::Permanent(format!("copy stopped: {e}"))),
    }
}

/// Smallest part of a multipart upload (S3 refuses smaller ones but the last).
pub const MIN_PART: u64 = 8 << 20;

/// Part size for a file of `size` bytes: at least 8 MiB, and large enough for 9,000 parts.
pub fn part_size(size: u64) -> usize {
    MIN_PART.max(size.div_ceil(9_000)) as usize
}

/// True when the destination already holds this file: same size and not older than the source.
async fn up_to_date(job: &Job, dst: &Operator, f: &FileEntry) -> bool {
    if let Some(root) = job.dst.local_root() {
        // A link at the destination is replaced, never taken for the file (a stat follows it).
        let at = std::path::Path::new(root).join(&f.path);
        if std::fs::symlink_metadata(at).is_ok_and(|m| m.file_type().is_symlink()) {
            return false;
        }
    }
    let Ok(meta) = dst.stat(&f.path).await else {
        return false;
    };
    meta.is_file() && is_up_to_date(f, meta.content_length(), mtime_ms(&meta))
}

/// The comparison by size and time: the destination has the listed size and is not older than
/// the source. Object stores keep whole seconds: compared at that precision.
pub(crate) fn is_up_to_date(f: &FileEntry, dst_size: u64, dst_ms: Option<i64>) -> bool {
    match (f.mtime_ms, dst_ms) {
        (Some(src_ms), Some(dst_ms)) if dst_size == f.size => {
            dst_ms.div_euclid(1000) >= src_ms.div_euclid(1000)
        }
        _ => false,
    }
}

/// Gives a copy on a file system the source's modification time, so that an unchanged file
/// matches on the next run. Best effort: a failure only costs a re-copy later.
pub(crate) fn keep_mtime(dst: &Endpoint, f: &FileEntry) {
    let (Some(root), Some(ms)) = (dst.local_root(), f.mtime_ms) else {
        return;
    };
    let path = std::path::Path::new(root).join(&f.path);
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    if let Err(e) = std::fs::File::options()
        .write(true)
        .open(&path)
        .and_then(|file| file.set_modified(time))
    {
        debug!(path = %path.display(), error = %e, "keeping the modification time failed");
    }
}

/// Faults injected through the environment, for the fault tests: as root, permissions cannot
/// make a file unreadable or a directory unwritable, so the tests ask for the errors instead.
/// Read once; none is set in production.
/// `BTP_FAULT_WRITE_ERRORS=N` fails the first N file writes of this process with a transient
/// error; `BTP_FAULT_UNREADABLE=TEXT` fails reads of paths containing TEXT with permission denied;
/// `BTP_FAULT_LIST_PAGE_DELAY_MS=N` waits N ms before each listing page is sent (a slow listing,
/// so that a test can stop a client in the middle of one);
/// `BTP_FAULT_WRITE_MIDWAY=N` fails the first N writes to file-system destinations after their
/// first bytes were written (the first chunk of a streamed file, the data of a small one);
/// `BTP_FAULT_CRASH=TEXT` aborts the process when a copy of a path containing TEXT starts;
/// `BTP_FAULT_GROW=TEXT` appends to a (local) source file whose path contains TEXT just before
/// its first copy (or upload) reads it, as if it changed after the listing;
/// `BTP_FAULT_ABORT_BEFORE_COMPLETE=TEXT` aborts the first upload of each path containing TEXT
/// just before its Complete job completes it, as a lifecycle rule would;
/// `BTP_FAULT_GARBLE_COMPLETION=TEXT` changes a digit of the ETag in every S3 completion answer
/// for a path containing TEXT, as a garbled answer (or one read wrong) would.
struct Faults {
    write_errors: std::sync::atomic::AtomicI64,
    unreadable: Option<String>,
    crash: Option<String>,
    list_page_delay: Option<std::time::Duration>,
    midway_errors: std::sync::atomic::AtomicI64,
    grow: Option<String>,
    abort_before_complete: Option<String>,
    garble_completion: Option<String>,
    /// Paths the one-time faults happened to already.
    grown: std::sync::Mutex<std::collections::HashSet<String>>,
    aborted: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// `BTP_FAULT_LIST_PAGE_DELAY_MS`: the pause before each listing page (tests only).
pub(crate) fn list_page_delay() -> Option<std::time::Duration> {
    faults().list_page_delay
}

fn faults() -> &'static Faults {
    static FAULTS: std::sync::OnceLock<Faults> = std::sync::OnceLock::new();
    FAULTS.get_or_init(|| Faults {
        write_errors: std::env::var("BTP_FAULT_WRITE_ERRORS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
            .into(),
        unreadable: text_fault("BTP_FAULT_UNREADABLE"),
        crash: text_fault("BTP_FAULT_CRASH"),
        grow: text_fault("BTP_FAULT_GROW"),
        abort_before_complete: text_fault("BTP_FAULT_ABORT_BEFORE_COMPLETE"),
        garble_completion: text_fault("BTP_FAULT_GARBLE_COMPLETION"),
        list_page_delay: std::env::var("BTP_FAULT_LIST_PAGE_DELAY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(std::time::Duration::from_millis),
        midway_errors: std::env::var("BTP_FAULT_WRITE_MIDWAY")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
            .into(),
        grown: Default::default(),
        aborted: Default::default(),
    })
}

/// The fault injected in the middle of a write to a file-system destination, if any.
pub(crate) fn injected_midway_fault(path: &str) -> Result<(), JobError> {
    if faults()
        .midway_errors
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed)
        > 0
    {
        return Err(JobError::Transient(format!(
            "unexpected: injected fault in the middle of writing {path}"
        )));
    }
    Ok(())
}

/// True the first time in this process that the one-time fault `TEXT` applies to `path`.
fn once(
    fault: &Option<String>,
    done: &std::sync::Mutex<std::collections::HashSet<String>>,
    path: &str,
) -> bool {
    fault.as_deref().is_some_and(|t| path.contains(t))
        && done.lock().expect("faults lock").insert(path.to_string())
}

/// `BTP_FAULT_GROW`: the source file grows just before its first copy reads it.
pub(crate) fn injected_growth(src: &Endpoint, path: &str) {
    let f = faults();
    let Some(root) = src.local_root() else { return };
    if !once(&f.grow, &f.grown, path) {
        return;
    }
    use std::io::Write;
    let full = std::path::Path::new(root).join(path);
    let grown = std::fs::OpenOptions::new()
        .append(true)
        .open(&full)
        .and_then(|mut file| file.write_all(b"grown after the listing\n"));
    warn!(path, ok = grown.is_ok(), "injected growth of the source");
}

/// `BTP_FAULT_ABORT_BEFORE_COMPLETE`: true the first time the upload of `path` is about to be
/// completed; the caller aborts it.
pub(crate) fn injected_abort_before_complete(path: &str) -> bool {
    let f = faults();
    once(&f.abort_before_complete, &f.aborted, path)
}

/// `BTP_FAULT_GARBLE_COMPLETION`: the ETag of a completion answer for `path`, one digit changed.
pub(crate) fn injected_garbled_completion(path: &str, etag: String) -> String {
    let garble = faults()
        .garble_completion
        .as_deref()
        .is_some_and(|t| path.contains(t));
    if !garble {
        return etag;
    }
    tracing::warn!(path, "injected garbled completion answer");
    let mut chars: Vec<char> = etag.chars().collect();
    if let Some(c) = chars.iter_mut().find(|c| c.is_ascii_hexdigit()) {
        *c = if *c == '0' { '1' } else { '0' };
    }
    chars.into_iter().collect()
}

/// A fault naming part of a path, when set.
fn text_fault(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|s| !s.is_empty())
}

/// The fault injected for a copy of `path`, if any: a crash, an unreadable source, or one of the
/// first N writes failing.
pub(crate) fn injected_fault(path: &str) -> Result<(), JobError> {
    let faults = faults();
    if faults.crash.as_deref().is_some_and(|t| path.contains(t)) {
        tracing::error!(path, "injected crash");
        // SAFETY: setrlimit(2) with a valid struct; a test crash leaves no core file behind.
        unsafe {
            let none = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &none);
        }
        std::process::abort();
    }
    if faults
        .unreadable
        .as_deref()
        .is_some_and(|t| path.contains(t))
    {
        return Err(opendal::Error::new(
            opendal::ErrorKind::PermissionDenied,
            "injected read fault",
        )
        .into());
    }
    if faults
        .write_errors
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed)
        > 0
    {
        let e = opendal::Error::new(opendal::ErrorKind::Unexpected, "injected write fault")
            .set_temporary();
        return Err(e.into());
    }
    Ok(())
}

/// Streams one file; returns the bytes written. The destination is only closed (made complete)
/// when every byte arrived and the size matches the listing; otherwise the partial file is
/// removed, so nothing incomplete is left under the final name. Then the copy is verified: its
/// size, and with `--verify checksum` its MD5 against the bytes read from the source. On file
/// systems all of this happens before the new file replaces the old one ([`copy_to_fs`]).
async fn copy_file(
    job: &Job,
    src: &Operator,
    dst: &Operator,
    f: &FileEntry,
    ctx: &JobContext<'_>,
) -> Result<(u64, String), JobError> {
    injected_fault(&f.path)?;
    if let Some(cp) = crate::s3copy::copier(job) {
        // The service copies the metadata with the object.
        let n = crate::s3copy::copy_file(job, &cp, src, dst, f, ctx).await?;
        return Ok((n, String::new()));
    }
    if let Some(roots) = crate::local::roots(job) {
        if job.verify != Verify::Checksum && f.link.is_none() {
            // Between two local file systems, with nothing to hash: the kernel copies.
            let (n, fs_lost) = crate::local::copy_whole(roots, f, ctx).await?;
            let lost = crate::keep::posix_lost(job, f);
            return Ok((n, crate::keep::join(&[&lost, &fs_lost])));
        }
    }
    // What the destination cannot hold of the source object's metadata, looked up while the
    // read starts.
    let (meta, stream) = futures::join!(
        crate::keep::source_object_meta(job, src, &f.path),
        read_stream(&job.src, src, &f.path, ..)
    );
    let mut stream = stream?;
    let meta_lost = meta
        .map(|m| crate::keep::object_meta_lost(job, &f.path, &m))
        .unwrap_or_default();
    let lost = crate::keep::join(&[&meta_lost, &crate::keep::posix_lost(job, f)]);
    if let Some(root) = job.dst.local_root() {
        let (n, fs_lost) = copy_to_fs(job, root, f, stream, ctx).await?;
        return Ok((n, crate::keep::join(&[&lost, &fs_lost])));
    }
    if let Endpoint::Sftp { .. } = job.dst {
        let (n, sftp_lost) = crate::sftp::copy_file(job, dst, f, stream, ctx).await?;
        return Ok((n, crate::keep::join(&[&lost, &sftp_lost])));
    }
    if let Some(dav) = btp_common::webdav::WebdavClient::new(&job.dst) {
        if f.size >= SMALL_FILE {
            // OpenDAL's WebDAV writer would hold the whole file: stream it instead.
            let mut md5 =
                (job.verify == Verify::Checksum).then(btp_common::checksum::Md5Stream::default);
            let sent = crate::parts::upload_stream(vec![stream], ctx, md5.as_mut(), |body| {
                dav.put(&f.path, f.size, body)
            })
            .await;
            let result = match sent {
                Ok((n, ())) if n == f.size => verify(job, dst, f, md5.map(|h| h.finish())).await,
                Ok((n, ())) => Err(JobError::Transient(format!(
                    "source changed during copy: listed {} bytes, read {n}",
                    f.size
                ))),
                Err(e) => Err(e),
            };
            return match result {
                Ok(()) => Ok((f.size, lost)),
                Err(e) => {
                    let _ = dst.delete(&f.path).await;
                    Err(e)
                }
            };
        }
    }
    if matches!(job.dst, Endpoint::Gcs { .. }) && f.size > part_size(f.size) as u64 {
        // More than one chunk: one streamed upload (see `gcs::put`).
        let n = crate::gcs::put(job, f, stream, ctx).await?;
        return Ok((n, lost));
    }
    let mut writer = if ctx.multipart {
        // Object stores: files above the multipart threshold are Upload jobs; smaller ones
        // still go up in parts when large, sized so no file needs more than 9,000 parts.
        let mut w = dst
            .writer_with(&f.path)
            .chunk(part_size(f.size))
            .concurrent(4);
        let meta = crate::s3copy::object_meta(src, &job.src, &f.path).await;
        if let Some(v) = &meta.content_type {
            w = w.content_type(v);
        }
        if let Some(v) = &meta.cache_control {
            w = w.cache_control(v);
        }
        if let Some(v) = &meta.content_encoding {
            w = w.content_encoding(v);
        }
        if let Some(v) = &meta.content_disposition {
            w = w.content_disposition(v);
        }
        if !meta.user.is_empty() {
            w = w.user_metadata(meta.user.clone());
        }
        w.await?
    } else {
        dst.writer_with(&f.path).await?
    };
    let mut md5 = (job.verify == Verify::Checksum).then(btp_common::checksum::Md5Stream::default);
    let mut written = 0u64;
    // OpenDAL's WebDAV writer takes one write per file: gather the (small) file first.
    let one_shot = matches!(job.dst, Endpoint::Webdav { .. });
    let mut gathered: Vec<bytes::Bytes> = Vec::new();
    let result: Result<(), JobError> = async {
        while let Some(chunk) = stream.try_next().await? {
            pace(&chunk, ctx, md5.as_mut()).await?;
            written += chunk.len() as u64;
            if one_shot {
                gathered.extend(chunk);
            } else {
                writer.write(chunk).await?;
            }
        }
        if one_shot {
            writer
                .write(opendal::Buffer::from(std::mem::take(&mut gathered)))
                .await?;
        }
        if written != f.size {
            return Err(JobError::Transient(format!(
                "source changed during copy: listed {} bytes, read {written}",
                f.size
            )));
        }
        Ok(())
    }
    .await;
    let stored = match result {
        Ok(()) => writer.close().await?,
        Err(e) => {
            if writer.abort().await.is_err() {
                // Backends without abort wrote in place: remove it.
                let _ = writer.close().await;
                let _ = dst.delete(&f.path).await;
            }
            return Err(e);
        }
    };
    if let Err(e) = verify_put(job, dst, f, md5.map(|h| h.finish()), &stored).await {
        // Nothing wrong stays under the final name.
        let _ = dst.delete(&f.path).await;
        return Err(e);
    }
    Ok((written, lost))
}

/// Runs `op` on the blocking pool.
async fn blocking<T: Send + 'static>(
    op: impl FnOnce() -> Result<T, JobError> + Send + 'static,
) -> Result<T, JobError> {
    join(tokio::task::spawn_blocking(op)).await
}

async fn join<T>(h: tokio::task::JoinHandle<Result<T, JobError>>) -> Result<T, JobError> {
    h.await
        .map_err(|e| JobError::Transient(format!("copy stopped: {e}")))?
}

/// Bytes gathered before a write to a file-system destination (an object store's stream comes
/// in small pieces; file-system sources in `COPY_CHUNK`s, each written at once).
const WRITE_BATCH: usize = 1 << 20;

/// A new file-system copy between writes, or with a write running on the blocking pool (which
/// gives the file back); the next chunk is read meanwhile. Dropped with a write running, the
/// file is removed when the write ends.
enum Writing {
    Idle(crate::fswrite::FsWrite),
    Busy(tokio::task::JoinHandle<Result<crate::fswrite::FsWrite, JobError>>),
}

impl Writing {
    async fn idle(self) -> Result<crate::fswrite::FsWrite, JobError> {
        match self {
            Writing::Idle(out) => Ok(out),
            Writing::Busy(h) => join(h).await,
        }
    }
}

/// Streams one file into a new file beside its file-system destination (paced, hashed with
/// `--verify checksum`), checks the size the listing gave, the size stored and with `--verify
/// checksum` the bytes read back, and only then gives it the source's modification time,
/// flushes it (as OpenDAL's fs writer did) and renames it over the destination. A failure or a
/// cancellation at any point removes the new file: the previous copy stays as it was.
async fn copy_to_fs(
    job: &Job,
    root: &str,
    f: &FileEntry,
    mut stream: opendal::BufferStream,
    ctx: &JobContext<'_>,
) -> Result<(u64, String), JobError> {
    let target = std::path::Path::new(root).join(&f.path);
    let shown = std::sync::Arc::new(target.to_string_lossy().into_owned());
    let s = shown.clone();
    let mut writing = Writing::Idle(
        blocking(move || {
            crate::fswrite::FsWrite::create(&target).map_err(|e| errors::io_error("create", &s, e))
        })
        .await?,
    );
    let mut md5 = (job.verify == Verify::Checksum).then(btp_common::checksum::Md5Stream::default);
    let mut written = 0u64;
    let (mut batch, mut batch_len) = (Vec::<bytes::Bytes>::new(), 0usize);
    let mut first = true;
    loop {
        let chunk = stream.try_next().await?;
        let end = chunk.is_none();
        if let Some(chunk) = chunk {
            pace(&chunk, ctx, md5.as_mut()).await?;
            written += chunk.len() as u64;
            batch_len += chunk.len();
            batch.extend(chunk);
        }
        if batch_len >= WRITE_BATCH || (end && batch_len > 0) {
            let mut out = writing.idle().await?;
            let (pieces, s) = (std::mem::take(&mut batch), shown.clone());
            let fault = first.then(|| f.path.clone());
            (batch_len, first) = (0, false);
            writing = Writing::Busy(tokio::task::spawn_blocking(move || {
                for piece in pieces {
                    out.write_all(&piece)
                        .map_err(|e| errors::io_error("write", &s, e))?;
                }
                if let Some(path) = fault {
                    injected_midway_fault(&path)?;
                }
                Ok(out)
            }));
        }
        if end {
            break;
        }
    }
    let mut out = writing.idle().await?;
    if written != f.size {
        return Err(JobError::Transient(format!(
            "source changed during copy: listed {} bytes, read {written}",
            f.size
        )));
    }
    let want = md5.map(|h| h.finish());
    let mtime = f
        .mtime_ms
        .map(|ms| std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64));
    let posix = f.posix();
    let lost = blocking(move || {
        let err = |op: &str, e: std::io::Error| errors::io_error(op, &shown, e);
        let stored = out.stored_len().map_err(|e| err("stat", e))?;
        if stored != written {
            return Err(JobError::Transient(format!(
                "size mismatch: {stored} bytes at the destination, {written} read from the source"
            )));
        }
        if let Some(want) = want {
            let mut h = btp_common::checksum::Md5Stream::default();
            out.read_back(|b| h.update(b))
                .map_err(|e| err("read back", e))?;
            let got = h.finish();
            if got != want {
                return Err(md5_mismatch(&got, &want));
            }
        }
        out.keep(posix);
        out.commit(mtime, true, crate::fswrite::Before::Unknown)
            .map_err(|e| err("rename", e))
    })
    .await?;
    Ok((written, lost))
}

/// Checks a file written by one writer: on S3 from what the write returned, without another
/// request where that suffices. S3 takes a PUT (or a completed multipart upload) only whole,
/// with the length the request declared, so the size stands; the ETag a plain PUT returns is
/// the MD5 of the bytes stored. Elsewhere, or with a multipart ETag, as [`verify`].
async fn verify_put(
    job: &Job,
    dst: &Operator,
    f: &FileEntry,
    md5: Option<String>,
    stored: &opendal::Metadata,
) -> Result<(), JobError> {
    if !matches!(job.dst, Endpoint::S3 { .. }) {
        return verify(job, dst, f, md5).await;
    }
    let Some(want) = md5 else { return Ok(()) };
    match stored.etag().map(btp_common::s3mp::unquote) {
        Some(etag) if btp_common::checksum::is_plain_md5(&etag) => {
            let got = etag.to_ascii_lowercase();
            if got != want {
                return Err(md5_mismatch(&got, &want));
            }
            Ok(())
        }
        _ => verify(job, dst, f, Some(want)).await,
    }
}

/// The error of a copy whose bytes differ from the source's.
pub(crate) fn md5_mismatch(got: &str, want: &str) -> JobError {
    JobError::Transient(format!(
        "checksum mismatch: the destination has md5 {got}, the source bytes {want}"
    ))
}

/// Checks a written file: its size, and its MD5 when `md5` (of the source bytes) is given.
async fn verify(
    job: &Job,
    dst: &Operator,
    f: &FileEntry,
    md5: Option<String>,
) -> Result<(), JobError> {
    let meta = dst.stat(&f.path).await?;
    if meta.content_length() != f.size {
        return Err(JobError::Transient(format!(
            "size mismatch: {} bytes at the destination, {} read from the source",
            meta.content_length(),
            f.size
        )));
    }
    if let Some(want) = md5 {
        let got = content_md5(&job.dst, dst, &f.path, Some(&meta)).await?;
        if got != want {
            return Err(md5_mismatch(&got, &want));
        }
    }
    Ok(())
}
