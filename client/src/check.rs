//! Check tasks: List jobs that list one directory at both sides and merge the two listings in
//! key order into a verdict per path, and Hash jobs that compare contents. Nothing is written
//! to either side: file-system sides are read with `read_dir`, object stores through OpenDAL
//! listers and readers; no operator that would create a missing root is built.
//!
//! Memory: an object store lists in key order (S3, GCS and Azure Blob do), page by page, so the
//! merge holds the entries one side is ahead by, never a whole prefix: a flat prefix of
//! millions of objects is merged in constant memory. Within a page S3 puts the common prefixes
//! before the objects; files and directories are merged as two ordered streams of their own.
//! A file-system directory is read whole and sorted (one directory at a time).

use std::collections::VecDeque;

use futures::TryStreamExt;
use opendal::{EntryMode, Operator};
use tracing::debug;

use btp_common::api::Compare;
use btp_common::wire::{FileEntry, Job, Outcome, ResultBody, Verdict, VerdictKind};
use btp_common::Endpoint;

use crate::errors::JobError;
use crate::exec::{is_upload_temp, mtime_ms, JobContext, ListOpts, Page};

/// One entry of one side of a directory.
struct Item {
    /// Relative to the endpoint root; directories end in `/`.
    path: String,
    dir: bool,
    size: u64,
    mtime_ms: Option<i64>,
    etag: Option<String>,
    link: Option<String>,
    /// Could not be looked at (or left out on purpose, as links with `--links skip`).
    problem: Option<(Outcome, String)>,
}

enum Feed {
    /// A file-system directory, read and sorted.
    Sorted(VecDeque<Item>),
    /// An object store's listing, in key order.
    Dal(Operator, opendal::Lister),
}

/// One side of the merge: its listing and what was read of it ahead of the other side.
struct Side {
    feed: Feed,
    files: VecDeque<Item>,
    dirs: VecDeque<Item>,
    done: bool,
}

impl Side {
    fn empty() -> Self {
        Self {
            feed: Feed::Sorted(VecDeque::new()),
            files: VecDeque::new(),
            dirs: VecDeque::new(),
            done: false,
        }
    }

    /// Opens the listing of `dir` at `ep`; a directory that does not exist is empty.
    async fn open(
        ep: &Endpoint,
        dir: &str,
        policy: crate::local::LinkPolicy,
        source: bool,
    ) -> Result<Self, JobError> {
        if let Some(root) = ep.local_root() {
            let at = std::path::Path::new(root).join(dir);
            match std::fs::metadata(&at) {
                Ok(m) if m.is_dir() => {}
                // The source's root must exist (as for a copy); a missing destination
                // directory holds nothing.
                Err(e) if source && dir.is_empty() => {
                    return Err(JobError::Permanent(format!("source {}: {e}", at.display())))
                }
                _ => return Ok(Self::empty()),
            }
            let mut lister = crate::local::LocalLister::open(root, dir, policy).await?;
            let mut items = Vec::new();
            while let Some(l) = lister.next().await? {
                if l.path == dir || l.path.is_empty() {
                    continue;
                }
                items.push(Item {
                    dir: l.mode == EntryMode::DIR,
                    path: l.path,
                    size: l.size,
                    mtime_ms: l.mtime_ms,
                    etag: None,
                    link: l.link,
                    problem: match (l.problem, l.mode) {
                        (Some(p), _) => Some(p),
                        (None, EntryMode::Unknown) => Some((
                            Outcome::Failed,
                            "neither a file nor a directory: it cannot be compared".into(),
                        )),
                        (None, _) => None,
                    },
                });
            }
            items.sort_unstable_by(|a, b| a.path.cmp(&b.path));
            return Ok(Self {
                feed: Feed::Sorted(items.into()),
                ..Self::empty()
            });
        }
        let op = if source {
            ep.source_operator()?
        } else {
            ep.operator()?
        };
        match op.lister_with(if dir.is_empty() { "/" } else { dir }).await {
            Ok(l) => Ok(Self {
                feed: Feed::Dal(op, l),
                ..Self::empty()
            }),
            Err(e) if e.kind() == opendal::ErrorKind::NotFound && !source => Ok(Self::empty()),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads one more entry into `files` or `dirs`, or marks the side done.
    async fn pull(&mut self, dir: &str) -> Result<(), JobError> {
        let item = match &mut self.feed {
            Feed::Sorted(items) => items.pop_front(),
            Feed::Dal(op, lister) => loop {
                let Some(entry) = lister.try_next().await? else {
                    break None;
                };
                let path = entry.path();
                if path == dir || path == "/" || path.is_empty() {
                    continue;
                }
                let stat;
                let meta = if entry.metadata().mode() == EntryMode::Unknown {
                    match op.stat(path).await {
                        Ok(m) => {
                            stat = m;
                            &stat
                        }
                        Err(e) => {
                            break Some(Item {
                                path: path.to_string(),
                                dir: false,
                                size: 0,
                                mtime_ms: None,
                                etag: None,
                                link: None,
                                problem: Some((
                                    Outcome::Failed,
                                    format!("cannot be inspected: {e}"),
                                )),
                            });
                        }
                    }
                } else {
                    entry.metadata()
                };
                break Some(Item {
                    path: path.to_string(),
                    dir: meta.mode() == EntryMode::DIR,
                    size: meta.content_length(),
                    mtime_ms: mtime_ms(meta),
                    etag: meta
                        .etag()
                        .map(|e| btp_common::s3mp::unquote(e).to_string()),
                    link: None,
                    problem: None,
                });
            },
        };
        match item {
            Some(i) if i.dir => self.dirs.push_back(i),
            Some(i) => self.files.push_back(i),
            None => self.done = true,
        }
        Ok(())
    }
}

/// What the merge decided for a pair (or a lone entry).
enum Step {
    Verdict(Verdict),
    /// Same size and time, contents to compare in a Hash job.
    Hash(FileEntry),
    Noted(Outcome, String, u64),
    /// Nothing to report (a destination entry out of scope).
    Nothing,
}

/// MD5 ETags of both sides, when both are plain MD5s (objects uploaded in one piece).
fn plain_md5s(s: &Item, d: &Item) -> Option<(String, String)> {
    let plain = |e: &Option<String>| {
        e.as_deref()
            .filter(|e| btp_common::checksum::is_plain_md5(e))
            .map(str::to_ascii_lowercase)
    };
    Some((plain(&s.etag)?, plain(&d.etag)?))
}

/// The comparison by metadata: size, then modification time where both sides keep one (the
/// destination not older than the source, at whole seconds, as a copy's `size-mtime` rule).
fn compare_meta(
    size: u64,
    mtime: Option<i64>,
    dst_size: u64,
    dst_mtime: Option<i64>,
) -> Option<&'static str> {
    if size != dst_size {
        return Some("size");
    }
    match (mtime, dst_mtime) {
        (Some(s), Some(d)) if d.div_euclid(1000) < s.div_euclid(1000) => Some("mtime"),
        _ => None,
    }
}

fn compare(s: Item, d: Item, checksum: bool, opts: &ListOpts<'_>) -> Step {
    if let Some((outcome, reason)) = s.problem {
        return match outcome {
            Outcome::Failed => Step::Verdict(Verdict {
                path: s.path,
                size: s.size,
                mtime_ms: None,
                verdict: VerdictKind::Error,
                what: reason,
            }),
            other => Step::Noted(other, reason, s.size),
        };
    }
    let f = FileEntry::new(s.path.clone(), s.size, s.mtime_ms);
    if !opts.filter.accepts(&s.path, s.size) {
        return Step::Noted(Outcome::Excluded, String::new(), s.size);
    }
    if let Some((_, reason)) = d.problem {
        return Step::Verdict(Verdict::new(
            &f,
            VerdictKind::Error,
            format!("destination: {reason}"),
        ));
    }
    if s.link.is_some() || d.link.is_some() {
        return Step::Verdict(if s.link == d.link {
            Verdict::new(&f, VerdictKind::Same, "")
        } else {
            Verdict::new(&f, VerdictKind::Differs, "link")
        });
    }
    if let Some(what) = compare_meta(s.size, s.mtime_ms, d.size, d.mtime_ms) {
        return Step::Verdict(Verdict::new(&f, VerdictKind::Differs, what));
    }
    if !checksum {
        return Step::Verdict(Verdict::new(&f, VerdictKind::Same, ""));
    }
    match plain_md5s(&s, &d) {
        Some((a, b)) if a == b => Step::Verdict(Verdict::new(&f, VerdictKind::Same, "")),
        Some(_) => Step::Verdict(Verdict::new(&f, VerdictKind::Differs, "content")),
        None => Step::Hash(f),
    }
}

fn only_at_source(s: Item, opts: &ListOpts<'_>) -> Step {
    if let Some((outcome, reason)) = s.problem {
        return match outcome {
            Outcome::Failed => Step::Verdict(Verdict {
                path: s.path,
                size: s.size,
                mtime_ms: None,
                verdict: VerdictKind::Error,
                what: reason,
            }),
            other => Step::Noted(other, reason, s.size),
        };
    }
    if !opts.filter.accepts(&s.path, s.size) {
        return Step::Noted(Outcome::Excluded, String::new(), s.size);
    }
    let f = FileEntry::new(s.path, s.size, s.mtime_ms);
    Step::Verdict(Verdict::new(&f, VerdictKind::Missing, ""))
}

fn only_at_destination(d: Item, one_way: bool, opts: &ListOpts<'_>) -> Step {
    if one_way || is_upload_temp(&d.path) {
        return Step::Nothing;
    }
    // Out of the filters' scope: not the check's business (as for a sync).
    if !d.dir && !opts.filter.accepts(&d.path, d.size) {
        return Step::Nothing;
    }
    Step::Verdict(Verdict {
        path: d.path,
        size: d.size,
        mtime_ms: None,
        verdict: VerdictKind::Extra,
        what: String::new(),
    })
}

/// Lists directory `dir` at both sides and sends pages of verdicts (directories of the source
/// go back as sub-directories to list, files to hash as `files`). Pages are cut by the entries
/// merged, so a run again over unchanged sides sends the same pages.
pub(crate) async fn list(
    job: &Job,
    dir: &str,
    opts: &ListOpts<'_>,
    one_way: bool,
    ctx: &JobContext<'_>,
) -> Result<(), JobError> {
    let checksum = job.compare == Compare::Checksum;
    let policy = |dst_holds_links| crate::local::LinkPolicy {
        links: opts.links,
        dst_holds_links,
        owner: false,
    };
    let mut src = Side::open(&job.src, dir, policy(job.dst.is_local()), true).await?;
    let mut dst = Side::open(&job.dst, dir, policy(true), false).await?;
    let mut page = Page::default();
    let (mut seq, mut merged) = (0u32, 0usize);
    loop {
        if ctx.cancel.is_cancelled() {
            return Err(JobError::Cancelled);
        }
        let ready = |a: &VecDeque<Item>, a_done: bool, b: &VecDeque<Item>, b_done: bool| {
            (!a.is_empty() || a_done)
                && (!b.is_empty() || b_done)
                && !(a.is_empty() && b.is_empty())
        };
        let (path, step) = if ready(&src.files, src.done, &dst.files, dst.done) {
            let order = match (src.files.front(), dst.files.front()) {
                (Some(s), Some(d)) => s.path.cmp(&d.path),
                (Some(_), None) => std::cmp::Ordering::Less,
                _ => std::cmp::Ordering::Greater,
            };
            match order {
                std::cmp::Ordering::Less => {
                    let s = src.files.pop_front().expect("a source file");
                    (s.path.clone(), only_at_source(s, opts))
                }
                std::cmp::Ordering::Greater => {
                    let d = dst.files.pop_front().expect("a destination file");
                    (d.path.clone(), only_at_destination(d, one_way, opts))
                }
                std::cmp::Ordering::Equal => {
                    let s = src.files.pop_front().expect("a source file");
                    let d = dst.files.pop_front().expect("a destination file");
                    (s.path.clone(), compare(s, d, checksum, opts))
                }
            }
        } else if ready(&src.dirs, src.done, &dst.dirs, dst.done) {
            let order = match (src.dirs.front(), dst.dirs.front()) {
                (Some(s), Some(d)) => s.path.cmp(&d.path),
                (Some(_), None) => std::cmp::Ordering::Less,
                _ => std::cmp::Ordering::Greater,
            };
            match order {
                std::cmp::Ordering::Greater => {
                    // A whole directory only at the destination: one verdict for it.
                    let d = dst.dirs.pop_front().expect("a destination directory");
                    (d.path.clone(), only_at_destination(d, one_way, opts))
                }
                o => {
                    if o == std::cmp::Ordering::Equal {
                        dst.dirs.pop_front();
                    }
                    let s = src.dirs.pop_front().expect("a source directory");
                    if let Some((outcome, reason)) = s.problem {
                        (s.path, Step::Noted(outcome, reason, 0))
                    } else {
                        page.add(&s.path, false);
                        page.dirs.push(s.path);
                        merged += 1;
                        if page.full(opts) {
                            ctx.sink.send(job, seq, false, page.take()).await?;
                            seq += 1;
                        }
                        continue;
                    }
                }
            }
        } else {
            // Read on at the side the merge waits for (one whose queue is empty), so neither
            // side is read further ahead than the other needs; done when both sides are.
            let side = if src.files.is_empty() && !src.done {
                &mut src
            } else if dst.files.is_empty() && !dst.done {
                &mut dst
            } else if src.dirs.is_empty() && !src.done {
                &mut src
            } else if dst.dirs.is_empty() && !dst.done {
                &mut dst
            } else {
                break;
            };
            side.pull(dir).await?;
            continue;
        };
        merged += 1;
        match step {
            Step::Nothing => continue,
            Step::Verdict(v) => {
                page.add(&path, !v.what.is_empty());
                page.verdicts.push(v);
            }
            Step::Hash(f) => {
                page.add(&path, false);
                page.files.push(f);
            }
            Step::Noted(outcome, reason, size) => {
                page.add(&path, !reason.is_empty());
                page.note(&path, size, outcome, reason);
            }
        }
        if page.full(opts) {
            ctx.sink.send(job, seq, false, page.take()).await?;
            seq += 1;
        }
    }
    debug!(job = %job.id, dir, entries = merged, pages = seq + 1, "compared");
    ctx.sink.send(job, seq, true, page.take()).await
}

/// Before each chunk read to hash: stop when cancelled, wait for the speed limits, count.
async fn pace_hash(n: u64, ctx: &JobContext<'_>) -> Result<(), JobError> {
    if ctx.cancel.is_cancelled() {
        return Err(JobError::Cancelled);
    }
    for l in [ctx.task_limiter, ctx.limiter].into_iter().flatten() {
        l.acquire(n).await;
    }
    metrics::counter!(crate::telemetry::BYTES_HASHED).increment(n);
    Ok(())
}

/// MD5 of a stored file: an object's ETag where it is a plain MD5, otherwise read and hashed
/// (paced by the speed limits). Returns the digest and the bytes read.
async fn md5_of(
    ep: &Endpoint,
    op: &Operator,
    path: &str,
    meta: Option<&opendal::Metadata>,
    ctx: &JobContext<'_>,
) -> Result<(String, u64), JobError> {
    if let Some(md5) = crate::exec::etag_md5(ep, op, path, meta).await? {
        return Ok((md5, 0));
    }
    crate::exec::injected_fault(path)?;
    let mut stream = crate::exec::read_stream(ep, op, path, ..).await?;
    let mut h = btp_common::checksum::Md5Stream::default();
    let mut read = 0u64;
    while let Some(chunk) = stream.try_next().await? {
        pace_hash(chunk.len() as u64, ctx).await?;
        read += chunk.len() as u64;
        for piece in chunk {
            h.update(&piece);
        }
    }
    Ok((h.finish(), read))
}

/// The verdict of one file of a Hash job: the destination looked at again (it may have
/// changed since the listing), then both contents hashed at once.
async fn hash_one(
    job: &Job,
    src: &Operator,
    dst: Option<&Operator>,
    f: &FileEntry,
    ctx: &JobContext<'_>,
) -> Result<(Verdict, u64), JobError> {
    let Some(dst) = dst else {
        return Ok((Verdict::new(f, VerdictKind::Missing, ""), 0));
    };
    let meta = match dst.stat(&f.path).await {
        Ok(m) => m,
        Err(e) if e.kind() == opendal::ErrorKind::NotFound => {
            return Ok((Verdict::new(f, VerdictKind::Missing, ""), 0))
        }
        Err(e) => return Err(e.into()),
    };
    if !meta.is_file() {
        return Ok((Verdict::new(f, VerdictKind::Differs, "type"), 0));
    }
    if let Some(what) = compare_meta(f.size, f.mtime_ms, meta.content_length(), mtime_ms(&meta)) {
        return Ok((Verdict::new(f, VerdictKind::Differs, what), 0));
    }
    if job.compare != Compare::Checksum {
        return Ok((Verdict::new(f, VerdictKind::Same, ""), 0));
    }
    let ((ours, a), (theirs, b)) = tokio::try_join!(
        md5_of(&job.src, src, &f.path, None, ctx),
        md5_of(&job.dst, dst, &f.path, Some(&meta), ctx),
    )?;
    let v = if ours == theirs {
        Verdict::new(f, VerdictKind::Same, "")
    } else {
        Verdict::new(f, VerdictKind::Differs, "content")
    };
    Ok((v, a + b))
}

/// A Hash job: compares each file at both sides (contents with `compare: checksum`) and sends
/// one verdict per file. A transient error runs the job again (hashing changes nothing); on
/// the last attempt, or for a permanent error, the file's verdict is `error` with the reason.
pub(crate) async fn hash(
    job: &Job,
    files: &[FileEntry],
    ctx: &JobContext<'_>,
) -> Result<(), JobError> {
    let src = job.src.source_operator()?;
    // Never the operator that would create a missing file-system root.
    let dst = job.dst.operator_if_exists()?;
    let mut verdicts = Vec::with_capacity(files.len());
    let mut hashed = 0u64;
    for f in files {
        let v = match hash_one(job, &src, dst.as_ref(), f, ctx).await {
            Ok((v, n)) => {
                hashed += n;
                v
            }
            Err(JobError::Cancelled) => return Err(JobError::Cancelled),
            Err(e @ JobError::Transient(_)) if !ctx.last_attempt => return Err(e),
            Err(e) => Verdict::new(f, VerdictKind::Error, format!("cannot compare: {e}")),
        };
        verdicts.push(v);
    }
    let body = ResultBody::Checked {
        verdicts,
        bytes_hashed: hashed,
    };
    ctx.sink.send(job, 0, true, body).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(path: &str, size: u64, etag: Option<&str>) -> Item {
        Item {
            path: path.into(),
            dir: false,
            size,
            mtime_ms: None,
            etag: etag.map(String::from),
            link: None,
            problem: None,
        }
    }

    #[test]
    fn metadata_differs_by_size_then_by_an_older_destination() {
        assert_eq!(compare_meta(3, Some(5_000), 4, Some(9_000)), Some("size"));
        assert_eq!(compare_meta(3, Some(5_999), 3, Some(4_000)), Some("mtime"));
        // Whole seconds, and a newer destination (an upload time) is the same.
        assert_eq!(compare_meta(3, Some(5_999), 3, Some(5_000)), None);
        assert_eq!(compare_meta(3, Some(5_000), 3, Some(99_000)), None);
        // A side without times compares by size only.
        assert_eq!(compare_meta(3, None, 3, Some(1)), None);
    }

    #[test]
    fn only_plain_md5_etags_stand_for_contents() {
        let md5 = "9e107d9d372bb6826bd81d3542a419d6";
        let a = item("a", 1, Some(md5));
        assert!(plain_md5s(&a, &item("a", 1, Some(&md5.to_uppercase()))).is_some());
        assert!(plain_md5s(
            &a,
            &item("a", 1, Some("9e107d9d372bb6826bd81d3542a419d6-2"))
        )
        .is_none());
        assert!(plain_md5s(&a, &item("a", 1, None)).is_none());
    }
}
