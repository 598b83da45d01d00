//! Small files between two local file systems. Through OpenDAL's fs service a small file costs
//! about ten hops to the blocking thread pool (stat, open, read, create the parent, open, write,
//! close, stat again); here the same system calls run in one blocking call per file: compare,
//! read, write beside the destination (`fswrite`) with the source's modification time, check the
//! size (and with `--verify checksum` the bytes read back), rename over the destination. Memory
//! is the file's size, below `exec::SMALL_FILE`.

use std::io::Read;
use std::path::{Path, PathBuf};

use btp_common::api::{Compare, Links, Verify};
use btp_common::wire::{FileEntry, Job, Outcome, Posix};

use crate::errors::{io_error, JobError};
use crate::exec::{JobContext, SMALL_FILE};
use crate::fswrite::{Before, FsWrite};

/// What happened to a file.
pub(crate) enum Local {
    /// Copied, its bytes and what of its metadata it could not keep ("" when all).
    Copied(u64, String),
    Skipped,
}

/// The roots of a job whose small files take this path: both ends local, real copies, and a
/// comparison that needs no hashing of the destination.
pub(crate) fn roots(job: &Job) -> Option<(&str, &str)> {
    if job.dry_run || job.compare == Compare::Checksum {
        return None;
    }
    Some((job.src.local_root()?, job.dst.local_root()?))
}

/// Small files of one job go to the blocking pool in groups of at most this many files...
const GROUP_FILES: usize = 32;
/// ...and about this many bytes,
const GROUP_BYTES: u64 = 4 << 20;
/// with this many groups of a job in flight (each group's files one after another).
const GROUPS_IN_FLIGHT: usize = 4;

/// Copies `files` (each smaller than `SMALL_FILE`) from `src_root` to `dst_root`, skipping those
/// the destination already has; one outcome per file, in no particular order. A copy that fails
/// leaves nothing under the final name and the previous copy, if any, as it was.
pub(crate) async fn copy_small<'f>(
    job: &Job,
    (src_root, dst_root): (&str, &str),
    files: Vec<&'f FileEntry>,
    ctx: &JobContext<'_>,
) -> Vec<(&'f FileEntry, Result<Local, JobError>)> {
    use futures::StreamExt;
    let mut groups: Vec<Vec<&'f FileEntry>> = Vec::new();
    let mut bytes = 0u64;
    for f in files {
        debug_assert!(f.size < SMALL_FILE);
        match groups.last_mut() {
            Some(g) if g.len() < GROUP_FILES && bytes + f.size <= GROUP_BYTES => {
                bytes += f.size;
                g.push(f);
            }
            _ => {
                bytes = f.size;
                groups.push(vec![f]);
            }
        }
    }
    let setting = Setting {
        src: PathBuf::from(src_root),
        dst: PathBuf::from(dst_root),
        compare: job.compare == Compare::SizeMtime,
        check_bytes: job.verify == Verify::Checksum,
    };
    let mut groups = groups.into_iter();
    let mut in_flight = futures::stream::FuturesUnordered::new();
    let mut out = Vec::new();
    loop {
        while in_flight.len() < GROUPS_IN_FLIGHT {
            let Some(g) = groups.next() else { break };
            in_flight.push(run_group(&setting, g, ctx));
        }
        match in_flight.next().await {
            Some(done) => out.extend(done),
            None => return out,
        }
    }
}

/// One group's files, one after another in one blocking call; then the speed limits and the
/// byte counter for what was copied.
async fn run_group<'f>(
    setting: &Setting,
    group: Vec<&'f FileEntry>,
    ctx: &JobContext<'_>,
) -> Vec<(&'f FileEntry, Result<Local, JobError>)> {
    let owned: Vec<(String, u64, Option<i64>, Posix)> = group
        .iter()
        .map(|f| (f.path.clone(), f.size, f.mtime_ms, f.posix()))
        .collect();
    let (s, cancel) = (setting.clone(), ctx.cancel.clone());
    let outcomes = tokio::task::spawn_blocking(move || {
        owned
            .iter()
            .map(|(rel, size, mtime_ms, posix)| {
                if cancel.is_cancelled() {
                    return Err(JobError::Cancelled);
                }
                s.one(rel, *size, *mtime_ms, *posix)
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_else(|e| {
        let e = format!("copy stopped: {e}");
        group
            .iter()
            .map(|_| Err(JobError::Transient(e.clone())))
            .collect()
    });
    let copied: u64 = outcomes
        .iter()
        .map(|o| match o {
            Ok(Local::Copied(n, _)) => *n,
            _ => 0,
        })
        .sum();
    if copied > 0 {
        // A cancellation shows in the next group's outcomes.
        let _ = crate::exec::pace_bytes(copied, ctx).await;
    }
    group.into_iter().zip(outcomes).collect()
}

/// What every file of a job shares.
#[derive(Clone)]
struct Setting {
    src: PathBuf,
    dst: PathBuf,
    compare: bool,
    check_bytes: bool,
}

impl Setting {
    fn one(
        &self,
        rel: &str,
        size: u64,
        mtime_ms: Option<i64>,
        posix: Posix,
    ) -> Result<Local, JobError> {
        let file = Paths {
            rel: rel.to_string(),
            src: self.src.join(rel),
            dst: self.dst.join(rel),
        };
        // The look at the destination also tells the writer whether it replaces a file.
        let before = if self.compare {
            // Not through a link: a link at the destination is replaced, never taken for the file.
            match std::fs::symlink_metadata(&file.dst) {
                Ok(m) if m.file_type().is_symlink() => Before::Unknown,
                Ok(m) if is_current(&m, size, mtime_ms) => return Ok(Local::Skipped),
                Ok(m) => Before::Present(m),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Before::Absent,
                Err(_) => Before::Unknown,
            }
        } else {
            Before::Unknown
        };
        crate::exec::injected_fault(rel)?;
        copy_blocking(&file, size, mtime_ms, posix, self.check_bytes, before)
    }
}

/// An entry of a listing: path relative to the root (directories end in `/`), kind, size and
/// modification time; for a symbolic link kept as a link its target; for an entry that cannot
/// be copied (or is skipped on purpose) its outcome and the reason.
pub(crate) struct Listed {
    pub path: String,
    pub mode: opendal::EntryMode,
    pub size: u64,
    pub mtime_ms: Option<i64>,
    /// A file's mode (and owner, when asked).
    pub posix: Posix,
    pub link: Option<String>,
    pub problem: Option<(Outcome, String)>,
}

impl Listed {
    pub(crate) fn problem(path: String, outcome: Outcome, reason: impl Into<String>) -> Self {
        Listed {
            path,
            mode: opendal::EntryMode::Unknown,
            size: 0,
            mtime_ms: None,
            posix: Posix::default(),
            link: None,
            problem: Some((outcome, reason.into())),
        }
    }
}

/// Reasons a listing gives for entries it does not copy as files, the same for every source.
pub(crate) const LINK_SKIPPED: &str = "symbolic link (--links skip)";
pub(crate) const LINK_NOT_HELD: &str =
    "symbolic link: the destination cannot hold links (--links follow copies what it points to)";
pub(crate) const LINK_TARGET_NOT_UTF8: &str = "symbolic link whose target is not valid UTF-8";
pub(crate) const DANGLING: &str = "dangling symbolic link: what it points to does not exist";
pub(crate) const LINK_LOOP: &str =
    "symbolic link loop: it leads back to a directory on its own path";
pub(crate) const NAME_NOT_UTF8: &str =
    "name is not valid UTF-8: it cannot be carried to the destination";
pub(crate) const NOT_A_FILE: &str = "neither a file nor a directory: it cannot be copied";

/// Entries read per blocking call while listing a local directory.
const LIST_BATCH: usize = 256;

/// How a local listing treats symbolic links.
#[derive(Clone, Copy)]
pub(crate) struct LinkPolicy {
    pub links: Links,
    /// The destination can hold a link (a file system).
    pub dst_holds_links: bool,
    /// `--preserve owner`: files are listed with their owner and group.
    pub owner: bool,
}

/// The entries of one local directory, read with `read_dir` in batches in the blocking pool
/// (OpenDAL's fs lister makes a blocking hop per entry for its metadata). Every entry comes
/// out: one that cannot be inspected, a name that is not UTF-8, a special file, a link loop
/// come out as problems with their reason, never as a log line only.
pub(crate) struct LocalLister {
    dir: String,
    base: PathBuf,
    rd: Option<std::fs::ReadDir>,
    batch: std::collections::VecDeque<Listed>,
    policy: LinkPolicy,
    /// Device and inode of every directory on the path from the root to `dir` (links
    /// followed): a followed link into one of them is a loop.
    ancestors: std::sync::Arc<std::collections::HashSet<(u64, u64)>>,
}

impl LocalLister {
    pub(crate) async fn open(root: &str, dir: &str, policy: LinkPolicy) -> Result<Self, JobError> {
        let base = Path::new(root).join(dir);
        let rel = dir.to_string();
        let (dir, b, r) = (dir.to_string(), base.clone(), PathBuf::from(root));
        let follow = policy.links == Links::Follow;
        let (rd, ancestors) = tokio::task::spawn_blocking(move || {
            let rd = std::fs::read_dir(&b).map_err(|e| io_error("list", &dir, e))?;
            let mut ancestors = std::collections::HashSet::new();
            if follow {
                use std::os::unix::fs::MetadataExt;
                let mut p = r;
                let mut add = |p: &Path| {
                    if let Ok(m) = std::fs::metadata(p) {
                        ancestors.insert((m.dev(), m.ino()));
                    }
                };
                add(&p);
                for seg in dir.split('/').filter(|s| !s.is_empty()) {
                    p.push(seg);
                    add(&p);
                }
            }
            Ok::<_, JobError>((rd, ancestors))
        })
        .await
        .map_err(|e| JobError::Transient(format!("listing stopped: {e}")))??;
        Ok(Self {
            dir: rel,
            base,
            rd: Some(rd),
            batch: Default::default(),
            policy,
            ancestors: std::sync::Arc::new(ancestors),
        })
    }

    pub(crate) async fn next(&mut self) -> Result<Option<Listed>, JobError> {
        if self.batch.is_empty() {
            let Some(rd) = self.rd.take() else {
                return Ok(None);
            };
            let (dir, base, policy) = (self.dir.clone(), self.base.clone(), self.policy);
            let ancestors = self.ancestors.clone();
            let (rd, batch) = tokio::task::spawn_blocking(move || {
                read_batch(rd, &dir, &base, policy, &ancestors)
            })
            .await
            .map_err(|e| JobError::Transient(format!("listing stopped: {e}")))??;
            self.rd = rd;
            self.batch = batch;
        }
        Ok(self.batch.pop_front())
    }
}

fn mtime_of(meta: &std::fs::Metadata) -> Option<i64> {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as i64)
}

/// Up to `LIST_BATCH` entries; the `ReadDir` back unless it is exhausted.
#[allow(clippy::type_complexity)]
fn read_batch(
    mut rd: std::fs::ReadDir,
    dir: &str,
    base: &Path,
    policy: LinkPolicy,
    ancestors: &std::collections::HashSet<(u64, u64)>,
) -> Result<(Option<std::fs::ReadDir>, std::collections::VecDeque<Listed>), JobError> {
    use std::os::unix::ffi::OsStrExt;
    let mut out = std::collections::VecDeque::with_capacity(LIST_BATCH);
    while out.len() < LIST_BATCH {
        let Some(entry) = rd.next() else {
            return Ok((None, out));
        };
        let entry = entry.map_err(|e| io_error("list", dir, e))?;
        let os_name = entry.file_name();
        let Some(name) = os_name.to_str() else {
            let shown = btp_common::paths::escape_name(os_name.as_bytes());
            out.push_back(Listed::problem(
                format!("{dir}{shown}"),
                Outcome::Failed,
                NAME_NOT_UTF8,
            ));
            continue;
        };
        let path = base.join(name);
        let is_link = matches!(entry.file_type(), Ok(t) if t.is_symlink());
        out.push_back(inspect(
            format!("{dir}{name}"),
            &path,
            is_link,
            || entry.metadata(),
            policy,
            ancestors,
        ));
    }
    Ok((Some(rd), out))
}

/// A path named by a manifest (relative and checked), looked at as a listing of its directory
/// would. Unless links are followed, no symbolic link on the way to it is gone through: a
/// manifest reaches nothing a listing would not. A path missing at the source gets `missing`
/// as its reason.
pub(crate) fn inspect_named(root: &Path, rel: &str, policy: LinkPolicy, missing: &str) -> Listed {
    let gone = |e: &std::io::Error| {
        e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR)
    };
    if policy.links != Links::Follow {
        let mut p = root.to_path_buf();
        let mut segs: Vec<&str> = rel.split('/').collect();
        segs.pop();
        for (i, seg) in segs.iter().enumerate() {
            p.push(seg);
            match std::fs::symlink_metadata(&p) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Listed::problem(
                        rel.to_string(),
                        Outcome::Failed,
                        format!(
                            "{}/ is a symbolic link: a manifest names nothing through a link (--links follow goes through)",
                            segs[..=i].join("/")
                        ),
                    )
                }
                Ok(_) => {}
                Err(e) if gone(&e) => return Listed::problem(rel.to_string(), Outcome::Failed, missing),
                Err(e) => {
                    return Listed::problem(
                        rel.to_string(),
                        Outcome::Failed,
                        format!("cannot be inspected: {e}"),
                    )
                }
            }
        }
    }
    let path = root.join(rel);
    match std::fs::symlink_metadata(&path) {
        Err(e) if gone(&e) => Listed::problem(rel.to_string(), Outcome::Failed, missing),
        Err(e) => Listed::problem(
            rel.to_string(),
            Outcome::Failed,
            format!("cannot be inspected: {e}"),
        ),
        Ok(m) => inspect(
            rel.to_string(),
            &path,
            m.file_type().is_symlink(),
            || Ok(m),
            policy,
            &Default::default(),
        ),
    }
}

/// What a listing makes of the entry `rel` (its path `path`; `is_link` when it is a symbolic
/// link, `meta` its metadata when it is not).
fn inspect(
    rel: String,
    path: &Path,
    is_link: bool,
    meta: impl FnOnce() -> std::io::Result<std::fs::Metadata>,
    policy: LinkPolicy,
    ancestors: &std::collections::HashSet<(u64, u64)>,
) -> Listed {
    use std::os::unix::fs::MetadataExt;
    if is_link {
        match (policy.links, policy.dst_holds_links) {
            (Links::Skip, _) => {
                return Listed::problem(rel.clone(), Outcome::Skipped, LINK_SKIPPED);
            }
            (Links::Copy, false) => {
                return Listed::problem(rel.clone(), Outcome::Skipped, LINK_NOT_HELD);
            }
            (Links::Copy, true) => {
                let listed = std::fs::read_link(path)
                    .and_then(|t| Ok((t, std::fs::symlink_metadata(path)?)));
                return match listed {
                    Ok((target, meta)) => match target.to_str() {
                        Some(t) => Listed {
                            path: rel.clone(),
                            mode: opendal::EntryMode::FILE,
                            size: 0,
                            mtime_ms: mtime_of(&meta),
                            posix: Posix::default(),
                            link: Some(t.to_string()),
                            problem: None,
                        },
                        None => Listed::problem(rel.clone(), Outcome::Failed, LINK_TARGET_NOT_UTF8),
                    },
                    Err(e) => Listed::problem(
                        rel.clone(),
                        Outcome::Failed,
                        format!("cannot read the symbolic link: {e}"),
                    ),
                };
            }
            (Links::Follow, _) => {}
        }
    }
    let meta = if is_link {
        std::fs::metadata(path)
    } else {
        meta()
    };
    let meta = match meta {
        Ok(m) => m,
        Err(e) => {
            let reason = if is_link && e.kind() == std::io::ErrorKind::NotFound {
                DANGLING.to_string()
            } else {
                format!("cannot be inspected: {e}")
            };
            return Listed::problem(rel.clone(), Outcome::Failed, reason);
        }
    };
    if meta.is_dir() && is_link && ancestors.contains(&(meta.dev(), meta.ino())) {
        return Listed::problem(rel.clone(), Outcome::Failed, LINK_LOOP);
    }
    let (mode, path) = if meta.is_dir() {
        (opendal::EntryMode::DIR, format!("{rel}/"))
    } else if meta.is_file() {
        (opendal::EntryMode::FILE, rel.clone())
    } else {
        return Listed::problem(
            rel.clone(),
            Outcome::Failed,
            "special file (socket, fifo or device): only files, directories and links are copied",
        );
    };
    let size = if meta.is_file() { meta.len() } else { 0 };
    Listed {
        path,
        mode,
        size,
        mtime_ms: mtime_of(&meta),
        posix: if meta.is_file() {
            crate::keep::posix_of(&meta, policy.owner)
        } else {
            Posix::default()
        },
        link: None,
        problem: None,
    }
}

/// The entries of one directory of a file-system destination, for a sync, read in batches in
/// the blocking pool. Links are never followed: a link is an entry of its own (its size 0), a
/// directory ends in `/`. (OpenDAL's fs lister looks through links.)
pub(crate) struct DstLister {
    dir: String,
    rd: Option<std::fs::ReadDir>,
    batch: std::collections::VecDeque<(String, u64)>,
}

impl DstLister {
    /// None when the directory does not exist (yet).
    pub(crate) async fn open(root: &str, dir: &str) -> Result<Option<Self>, JobError> {
        let base = Path::new(root).join(dir);
        let rel = dir.to_string();
        let root_ep = btp_common::Endpoint::Fs {
            root: root.to_string(),
        };
        if !dir.is_empty() && crate::dstpath::DstCheck::new(&root_ep).check(dir).is_err() {
            // Reached through a link at the destination: nothing there is this sync's to delete.
            return Ok(None);
        }
        let rd = tokio::task::spawn_blocking(move || {
            // A link or a file where the source has a directory: nothing to delete in it (the
            // copies into it fail with their reason).
            // (Looked at without the trailing `/`, which would follow a link.)
            let bare = base.to_string_lossy().trim_end_matches('/').to_string();
            if std::fs::symlink_metadata(&bare).is_ok_and(|m| !m.is_dir()) {
                return Ok(None);
            }
            match std::fs::read_dir(&base) {
                Ok(rd) => Ok(Some(rd)),
                Err(e)
                    if e.kind() == std::io::ErrorKind::NotFound
                        || e.raw_os_error() == Some(libc::ENOTDIR) =>
                {
                    Ok(None)
                }
                Err(e) => Err(io_error("list the destination", &rel, e)),
            }
        })
        .await
        .map_err(|e| JobError::Transient(format!("listing stopped: {e}")))??;
        Ok(rd.map(|rd| Self {
            dir: dir.to_string(),
            rd: Some(rd),
            batch: Default::default(),
        }))
    }

    pub(crate) async fn next(&mut self) -> Result<Option<(String, u64)>, JobError> {
        if self.batch.is_empty() {
            let Some(mut rd) = self.rd.take() else {
                return Ok(None);
            };
            let dir = self.dir.clone();
            let (rd, batch) = tokio::task::spawn_blocking(move || {
                let mut out = std::collections::VecDeque::with_capacity(LIST_BATCH);
                while out.len() < LIST_BATCH {
                    let Some(entry) = rd.next() else {
                        return Ok((None, out));
                    };
                    let entry = entry.map_err(|e| io_error("list the destination", &dir, e))?;
                    // A name that is not UTF-8 is no copy of any source entry; it stays.
                    let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                        continue;
                    };
                    let meta = entry
                        .metadata()
                        .map_err(|e| io_error("inspect the destination", &dir, e))?;
                    out.push_back(if meta.is_dir() {
                        (format!("{dir}{name}/"), 0)
                    } else if meta.is_file() {
                        (format!("{dir}{name}"), meta.len())
                    } else {
                        (format!("{dir}{name}"), 0)
                    });
                }
                Ok::<_, JobError>((Some(rd), out))
            })
            .await
            .map_err(|e| JobError::Transient(format!("listing stopped: {e}")))??;
            self.rd = rd;
            self.batch = batch;
        }
        Ok(self.batch.pop_front())
    }
}

/// Deletes one destination entry of a sync on a file system, never through a link: a file or a
/// link is unlinked, a directory removed whole (`remove_dir_all` does not follow links), or with
/// `keep` only the files (and links) inside it `keep` does not hold. Returns the files and links
/// deleted.
pub(crate) fn delete_local(
    root: &Path,
    rel: &str,
    keep: &dyn Fn(&str, u64) -> bool,
    scoped: bool,
) -> std::io::Result<u64> {
    let path = root.join(rel.trim_end_matches('/'));
    let meta = match std::fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        std::fs::remove_file(&path)?;
        return Ok(1);
    }
    // Count (and with filters, choose) what is inside, without following links.
    let mut deleted = 0u64;
    let mut stack = vec![(path.clone(), rel.trim_end_matches('/').to_string())];
    while let Some((dir, rel_dir)) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let (full, rel_path) = (entry.path(), format!("{rel_dir}/{name}"));
            let m = entry.metadata()?;
            if m.is_dir() {
                stack.push((full, rel_path));
            } else if crate::exec::is_upload_temp(&rel_path) {
                continue;
            } else if !scoped {
                deleted += 1;
            } else if !keep(&rel_path, if m.is_file() { m.len() } else { 0 }) {
                std::fs::remove_file(&full)?;
                deleted += 1;
            }
        }
    }
    if !scoped {
        std::fs::remove_dir_all(&path)?;
    }
    Ok(deleted)
}

/// Makes `rel` under `dst_root` a symbolic link to `target`: created under a temporary name
/// beside it and renamed over what was there, so the old entry stands until the new one is
/// complete. Skipped when the destination already is that link.
pub(crate) fn copy_link(dst_root: &Path, rel: &str, target: &str) -> Result<Local, JobError> {
    btp_common::paths::check_relative(rel).map_err(JobError::Permanent)?;
    let dst = dst_root.join(rel);
    if std::fs::read_link(&dst).is_ok_and(|t| t.as_os_str() == target) {
        return Ok(Local::Skipped);
    }
    let parent = dst.parent().unwrap_or(dst_root);
    std::fs::create_dir_all(parent).map_err(|e| io_error("create", rel, e))?;
    let name = dst.file_name().and_then(|n| n.to_str()).unwrap_or("link");
    let tmp = parent.join(format!(".{name}.btp-{:016x}", rand_u64()));
    std::os::unix::fs::symlink(target, &tmp).map_err(|e| io_error("create link", rel, e))?;
    if let Err(e) = std::fs::rename(&tmp, &dst) {
        let _ = std::fs::remove_file(&tmp);
        if dst.is_dir() {
            return Err(JobError::Permanent(format!(
                "the destination has a directory where the source has a link: {rel}"
            )));
        }
        return Err(io_error("create link", rel, e));
    }
    Ok(Local::Copied(0, String::new()))
}

/// A random number for temporary names.
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// Bytes of a large file copied per blocking call between two local files.
pub(crate) const RANGE_CHUNK: u64 = 8 << 20;
/// The same under a speed limit.
const LIMITED_CHUNK: u64 = 1 << 20;

/// Copies up to `len` bytes at `offset` of `src` to the same offset of the existing file `dst`
/// inside the kernel (`copy_file_range`; `pread`/`pwrite` where the file systems do not allow
/// it); returns the bytes copied, fewer than `len` only at the end of the source.
pub(crate) fn copy_range(src: &Path, dst: &Path, offset: u64, len: u64) -> std::io::Result<u64> {
    let input = std::fs::File::open(src)?;
    let output = std::fs::OpenOptions::new().write(true).open(dst)?;
    copy_range_between(&input, &output, offset, len)
}

/// [`copy_range`] between two open files.
pub(crate) fn copy_range_between(
    input: &std::fs::File,
    output: &std::fs::File,
    offset: u64,
    len: u64,
) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd;
    let mut done = 0u64;
    while done < len {
        let (mut off_in, mut off_out) = ((offset + done) as i64, (offset + done) as i64);
        let want = (len - done).min(1 << 30) as usize;
        // SAFETY: two open descriptors and offsets owned by this frame.
        let n = unsafe {
            libc::copy_file_range(
                input.as_raw_fd(),
                &mut off_in,
                output.as_raw_fd(),
                &mut off_out,
                want,
                0,
            )
        };
        match n {
            0 => break,
            n if n > 0 => done += n as u64,
            _ => {
                let e = std::io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EXDEV | libc::ENOSYS | libc::EINVAL | libc::EOPNOTSUPP) => {
                        return copy_range_plain(input, output, offset + done, len - done)
                            .map(|m| done + m);
                    }
                    Some(libc::EINTR) => continue,
                    _ => return Err(e),
                }
            }
        }
    }
    Ok(done)
}

/// Copies one file between two local file systems inside the kernel, in [`RANGE_CHUNK`]
/// pieces (speed limits, progress and cancellation apply between them), into a new file that
/// replaces the target only once it is whole: the large-file path of a Copy job when nothing
/// has to read the bytes (no checksum). Returns the bytes copied and the metadata not kept.
pub(crate) async fn copy_whole(
    (src_root, dst_root): (&str, &str),
    f: &FileEntry,
    ctx: &JobContext<'_>,
) -> Result<(u64, String), JobError> {
    let src = Path::new(src_root).join(&f.path);
    let target = Path::new(dst_root).join(&f.path);
    let shown = target.to_string_lossy().into_owned();
    let (rel, s) = (f.path.clone(), shown.clone());
    let opened = tokio::task::spawn_blocking(move || {
        let input = std::fs::File::open(&src).map_err(|e| io_error("open", &rel, e))?;
        let out = FsWrite::create(&target).map_err(|e| io_error("create", &s, e))?;
        Ok::<_, JobError>((input, out))
    })
    .await
    .map_err(|e| JobError::Transient(format!("copy stopped: {e}")))?;
    let (mut input, mut out) = opened?;
    // Under a speed limit, smaller calls: the limiter is charged after each one, and 8 MiB at a
    // time would make the rate come in bursts.
    let limited = ctx.limiter.is_some() || ctx.task_limiter.is_some();
    let chunk = if limited { LIMITED_CHUNK } else { RANGE_CHUNK };
    let mut n = 0u64;
    loop {
        if ctx.cancel.is_cancelled() {
            return Err(JobError::Cancelled);
        }
        let first = n == 0;
        let (rel, s) = (f.path.clone(), shown.clone());
        let done = tokio::task::spawn_blocking(move || {
            let copied = copy_range_between(&input, out.file(), n, chunk)
                .map_err(|e| io_error("copy", &s, e))?;
            if first {
                crate::exec::injected_midway_fault(&rel)?;
            }
            Ok::<_, JobError>((input, out, copied))
        })
        .await
        .map_err(|e| JobError::Transient(format!("copy stopped: {e}")))?;
        let copied;
        (input, out, copied) = done?;
        crate::exec::pace_bytes(copied, ctx).await?;
        n += copied;
        // Past the listed size: the source grew; short of a chunk: its end.
        if copied < chunk || n > f.size {
            break;
        }
    }
    drop(input);
    if n != f.size {
        return Err(JobError::Transient(format!(
            "source changed during copy: listed {} bytes, read {n}",
            f.size
        )));
    }
    let mtime = f
        .mtime_ms
        .map(|ms| std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64));
    let posix = f.posix();
    let lost = tokio::task::spawn_blocking(move || {
        let err = |op: &str, e: std::io::Error| io_error(op, &shown, e);
        let stored = out.stored_len().map_err(|e| err("stat", e))?;
        if stored != n {
            return Err(JobError::Transient(format!(
                "size mismatch: {stored} bytes at the destination, {n} read from the source"
            )));
        }
        out.keep(posix);
        out.commit(mtime, true, Before::Unknown)
            .map_err(|e| err("rename", e))
    })
    .await
    .map_err(|e| JobError::Transient(format!("copy stopped: {e}")))??;
    Ok((n, lost))
}

fn copy_range_plain(
    input: &std::fs::File,
    output: &std::fs::File,
    offset: u64,
    len: u64,
) -> std::io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len.min(1 << 20) as usize];
    let mut done = 0u64;
    while done < len {
        let want = (len - done).min(buf.len() as u64) as usize;
        let n = input.read_at(&mut buf[..want], offset + done)?;
        if n == 0 {
            break;
        }
        output.write_all_at(&buf[..n], offset + done)?;
        done += n as u64;
    }
    Ok(done)
}

struct Paths {
    rel: String,
    src: PathBuf,
    dst: PathBuf,
}

/// True when `dst` has the listed size and is not older than the source.
#[cfg(test)]
fn up_to_date(dst: &Path, size: u64, mtime_ms: Option<i64>) -> bool {
    std::fs::metadata(dst).is_ok_and(|m| is_current(&m, size, mtime_ms))
}

/// True when a destination file of metadata `meta` has the listed size and is not older than
/// the source.
fn is_current(meta: &std::fs::Metadata, size: u64, mtime_ms: Option<i64>) -> bool {
    let dst_ms = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as i64);
    let listed = FileEntry::new(String::new(), size, mtime_ms);
    meta.is_file() && crate::exec::is_up_to_date(&listed, meta.len(), dst_ms)
}

fn copy_blocking(
    p: &Paths,
    size: u64,
    mtime_ms: Option<i64>,
    posix: Posix,
    check_bytes: bool,
    before: Before,
) -> Result<Local, JobError> {
    let mut data = Vec::with_capacity(size as usize + 1);
    std::fs::File::open(&p.src)
        .and_then(|mut s| s.read_to_end(&mut data))
        .map_err(|e| io_error("read", &p.rel, e))?;
    if data.len() as u64 != size {
        return Err(JobError::Transient(format!(
            "source changed during copy: listed {size} bytes, read {}",
            data.len()
        )));
    }
    write_checked(p, &data, mtime_ms, posix, check_bytes, before)
}

/// Writes `data` beside the destination, checks what landed there and only then puts it under
/// the final name. A failure leaves the previous copy, if any, as it was.
fn write_checked(
    p: &Paths,
    data: &[u8],
    mtime_ms: Option<i64>,
    posix: Posix,
    check_bytes: bool,
    before: Before,
) -> Result<Local, JobError> {
    let size = data.len() as u64;
    let err = |op: &str, e: std::io::Error| io_error(op, &p.dst.to_string_lossy(), e);
    let mut out = FsWrite::create(&p.dst).map_err(|e| err("create", e))?;
    out.write_all(data).map_err(|e| err("write", e))?;
    crate::exec::injected_midway_fault(&p.rel)?;
    let written = out.stored_len().map_err(|e| err("stat", e))?;
    if written != size {
        return Err(JobError::Transient(format!(
            "size mismatch: {written} bytes at the destination, {size} read from the source"
        )));
    }
    if check_bytes {
        let mut back = Vec::with_capacity(data.len());
        out.read_back(|b| back.extend_from_slice(b))
            .map_err(|e| err("read back", e))?;
        if back != data {
            return Err(crate::exec::md5_mismatch(&md5_hex(&back), &md5_hex(data)));
        }
    }
    // Best effort, as for every copy: a failure only costs a re-copy on the next run.
    let mtime = mtime_ms
        .map(|ms| std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64));
    out.keep(posix);
    let lost = out
        .commit(mtime, false, before)
        .map_err(|e| err("rename", e))?;
    Ok(Local::Copied(size, lost))
}

fn md5_hex(data: &[u8]) -> String {
    let mut h = btp_common::checksum::Md5Stream::default();
    h.update(data);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(dir: &Path) -> Paths {
        Paths {
            rel: "a/b/f.bin".into(),
            src: dir.join("src/a/b/f.bin"),
            dst: dir.join("dst/a/b/f.bin"),
        }
    }

    #[test]
    fn copies_into_missing_directories_keeps_mtime_and_then_skips() {
        let dir = tempfile::tempdir().unwrap();
        let p = paths(dir.path());
        std::fs::create_dir_all(p.src.parent().unwrap()).unwrap();
        std::fs::write(&p.src, b"hello world").unwrap();
        let mtime = 1_600_000_000_123;
        assert!(!up_to_date(&p.dst, 11, Some(mtime)));
        assert!(matches!(
            copy_blocking(&p, 11, Some(mtime), Posix::default(), true, Before::Unknown),
            Ok(Local::Copied(11, _))
        ));
        assert_eq!(std::fs::read(&p.dst).unwrap(), b"hello world");
        assert!(up_to_date(&p.dst, 11, Some(mtime)));
        assert!(!up_to_date(&p.dst, 11, Some(mtime + 1000)), "newer source");
        assert!(!up_to_date(&p.dst, 12, Some(mtime)), "other size");
    }

    #[test]
    fn a_source_of_another_size_or_a_missing_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = paths(dir.path());
        std::fs::create_dir_all(p.src.parent().unwrap()).unwrap();
        std::fs::write(&p.src, b"grown since listed").unwrap();
        let e = copy_blocking(&p, 5, None, Posix::default(), false, Before::Unknown)
            .err()
            .unwrap();
        assert!(e.is_transient(), "{e}");
        assert!(e.to_string().contains("source changed"), "{e}");
        assert!(!p.dst.exists(), "nothing left under the final name");
        // A vanished source is permanent, and an earlier copy at the destination stays.
        std::fs::remove_file(&p.src).unwrap();
        std::fs::create_dir_all(p.dst.parent().unwrap()).unwrap();
        std::fs::write(&p.dst, b"older").unwrap();
        let e = copy_blocking(&p, 5, None, Posix::default(), false, Before::Unknown)
            .err()
            .unwrap();
        assert!(!e.is_transient(), "{e}");
        assert!(
            e.to_string().starts_with("not found: read a/b/f.bin"),
            "{e}"
        );
        assert_eq!(std::fs::read(&p.dst).unwrap(), b"older");
    }

    const FOLLOW: LinkPolicy = LinkPolicy {
        links: Links::Follow,
        dst_holds_links: true,
        owner: false,
    };

    #[tokio::test]
    async fn local_listing_gives_every_entry_across_batches_and_follows_links() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir_all(sub.join("inner")).unwrap();
        for i in 0..(LIST_BATCH + 10) {
            std::fs::write(sub.join(format!("f{i:04}")), vec![7u8; i % 5]).unwrap();
        }
        std::os::unix::fs::symlink(sub.join("f0004"), sub.join("link")).unwrap();
        let root = dir.path().to_str().unwrap();
        let mut l = LocalLister::open(root, "sub/", FOLLOW).await.unwrap();
        let mut seen = std::collections::BTreeMap::new();
        while let Some(e) = l.next().await.unwrap() {
            assert!(e.mtime_ms.is_some(), "{}", e.path);
            seen.insert(e.path, (e.mode, e.size));
        }
        assert_eq!(seen.len(), LIST_BATCH + 12);
        assert_eq!(seen["sub/inner/"].0, opendal::EntryMode::DIR);
        assert_eq!(seen["sub/f0003"], (opendal::EntryMode::FILE, 3));
        assert_eq!(
            seen["sub/link"],
            (opendal::EntryMode::FILE, 4),
            "a link is its target"
        );
        let e = LocalLister::open(root, "missing/", FOLLOW)
            .await
            .err()
            .unwrap();
        assert!(e.to_string().starts_with("not found: list missing/"), "{e}");
    }

    #[test]
    fn ranges_are_copied_in_place_and_stop_at_the_end_of_the_source() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&src, &data).unwrap();
        let out = std::fs::File::create(&dst).unwrap();
        out.set_len(data.len() as u64).unwrap();
        assert_eq!(
            copy_range(&src, &dst, 1_000_000, 1_000_000).unwrap(),
            1_000_000
        );
        assert_eq!(copy_range(&src, &dst, 0, 1_000_000).unwrap(), 1_000_000);
        // The last range asks for more than is left.
        assert_eq!(
            copy_range(&src, &dst, 2_000_000, 5_000_000).unwrap(),
            1_000_000
        );
        assert_eq!(std::fs::read(&dst).unwrap(), data);
        let out = std::fs::OpenOptions::new().write(true).open(&dst).unwrap();
        assert_eq!(
            copy_range_plain(&std::fs::File::open(&src).unwrap(), &out, 10, 20).unwrap(),
            20
        );
    }
}
