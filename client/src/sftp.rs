//! Writes to SFTP destinations. OpenDAL's SFTP writer writes in place, so every file is
//! streamed to a temporary name beside its target (`.<name>.btp-<id>`, a name sync leaves
//! alone), checked (size, and with `--verify checksum` the MD5 read back), and renamed over the
//! target (OpenSSH's `posix-rename`, which replaces it atomically). Nothing partial ever stands
//! under a final name; a failure or a cancellation removes the temporary file.
//!
//! Large files go in parts as to WebDAV: the Upload job makes a staging directory beside the
//! target (`.<name>.btp-<id>/`), each Part job writes one part into it (any worker of any
//! client), the Complete job streams the parts in order into a temporary file, renames it into
//! place and removes the staging directory; an Abort job removes both.
//!
//! OpenDAL's SFTP service follows symbolic links (its `stat`, and its listings, which stat
//! every entry SFTP lists as neither file nor directory), so what must not follow them goes
//! through a direct SFTP session (`btp_common::sftp::Raw`): before a write, a sync listing or
//! a delete every directory on the way must be a real directory by `lstat` (checked ones are
//! remembered for a minute); sync lists destination directories with each entry's own type
//! and deletes links as links.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use opendal::Operator;

use btp_common::api::Verify;
use btp_common::checksum::Md5Stream;
use btp_common::sftp::{Kind, Raw};
use btp_common::wire::{FileEntry, Job};
use btp_common::Endpoint;

use crate::errors::JobError;
use crate::exec::{self, JobContext};

/// How long a directory found real is trusted without another look, within one job (as
/// `dstpath::DstCheck` remembers them for its job).
const SAFE_FOR: Duration = Duration::from_secs(60);

static SAFE_DIRS: Mutex<Vec<(String, Instant)>> = Mutex::new(Vec::new());

fn known_safe(key: &str) -> bool {
    let mut safe = SAFE_DIRS.lock().unwrap_or_else(|e| e.into_inner());
    safe.retain(|(_, at)| at.elapsed() < SAFE_FOR);
    safe.iter().any(|(k, _)| k == key)
}

fn remember_safe(key: String) {
    let mut safe = SAFE_DIRS.lock().unwrap_or_else(|e| e.into_inner());
    if safe.len() >= 4096 {
        safe.remove(0);
    }
    safe.push((key, Instant::now()));
}

/// Ok when every existing directory on the way to `dir` (relative, `a/b/` or `a/b`) is a real
/// directory (by `lstat`; those found so are remembered for the rest of `job`); a symbolic link or a file on the way is a permanent error naming
/// it. Missing directories are fine (they will be created).
pub(crate) async fn check_dirs(job: &str, ep: &Endpoint, dir: &str) -> Result<(), JobError> {
    let dir = dir.trim_matches('/');
    if dir.is_empty() {
        return Ok(());
    }
    let key = format!("{job}\n{ep}\n{dir}");
    if known_safe(&key) {
        return Ok(());
    }
    let raw = Raw::get(ep).await?;
    let mut here = String::new();
    for seg in dir.split('/') {
        if !here.is_empty() {
            here.push('/');
        }
        here.push_str(seg);
        let key_here = format!("{job}\n{ep}\n{here}");
        if known_safe(&key_here) {
            continue;
        }
        match raw.lstat(&here).await? {
            Some(Kind::Dir) => remember_safe(key_here),
            Some(Kind::File) => {
                return Err(JobError::Permanent(format!(
                    "the destination has a file at {here}, where the source has a directory"
                )))
            }
            Some(Kind::Link) => {
                return Err(JobError::Permanent(format!(
                    "the destination has a symbolic link at {here}: writing through it would leave the destination"
                )))
            }
            Some(Kind::Other) => {
                return Err(JobError::Permanent(format!(
                    "the destination has a special file at {here}, where the source has a directory"
                )))
            }
            None => return Ok(()),
        }
    }
    Ok(())
}

/// The entries of the destination directory `dir` (`""` or `a/b/`) for a sync, by their own
/// types: `(path, size)`, directories ending in `/`, links as files (deleting one removes the
/// link). None when it is missing, or when it or a directory on its way is not a real
/// directory (a listing through a link would offer what the link points to for deletion).
pub(crate) async fn dst_entries(
    job: &str,
    ep: &Endpoint,
    dir: &str,
) -> Result<Option<Vec<(String, u64)>>, JobError> {
    match check_dirs(job, ep, dir).await {
        Ok(()) => {}
        Err(JobError::Permanent(_)) => return Ok(None),
        Err(e) => return Err(e),
    }
    if !dir.is_empty() && Raw::get(ep).await?.lstat(dir).await? != Some(Kind::Dir) {
        return Ok(None);
    }
    let Some(entries) = Raw::get(ep).await?.list(dir).await? else {
        return Ok(None);
    };
    Ok(Some(
        entries
            .into_iter()
            .map(|e| match e.kind {
                Kind::Dir => (format!("{dir}{}/", e.name), 0),
                _ => (format!("{dir}{}", e.name), e.size),
            })
            .collect(),
    ))
}

/// The regular files of the destination directory `dir`: `(path, size, mtime)`, for the
/// comparison of a List job; None when the directory cannot be listed as one.
pub(crate) async fn dst_files(
    job: &str,
    ep: &Endpoint,
    dir: &str,
) -> Result<Option<Vec<(String, u64, Option<i64>)>>, JobError> {
    if check_dirs(job, ep, dir).await.is_err() {
        return Ok(None);
    }
    let Some(entries) = Raw::get(ep).await?.list(dir).await? else {
        return Ok(Some(Vec::new()));
    };
    Ok(Some(
        entries
            .into_iter()
            .filter(|e| e.kind == Kind::File)
            .map(|e| (format!("{dir}{}", e.name), e.size, e.mtime_ms))
            .collect(),
    ))
}

/// Deletes the destination directory `dir` (`a/b/`) of a sync and what is inside, links
/// removed, never followed; with `scoped`, only the files `keep` does not hold, and no
/// directory. Returns the files and links deleted.
pub(crate) async fn delete_tree(
    job: &str,
    ep: &Endpoint,
    dir: &str,
    keep: &(dyn Fn(&str, u64) -> bool + Sync),
    scoped: bool,
) -> Result<u64, JobError> {
    check_dirs(job, ep, btp_common::paths::parent_dir(dir)).await?;
    let raw = Raw::get(ep).await?;
    match raw.lstat(dir).await? {
        None => return Ok(0),
        Some(Kind::Dir) => {}
        Some(_) => {
            raw.remove_file(dir).await?;
            return Ok(1);
        }
    }
    let mut deleted = 0u64;
    // Depth first: directories are removed after what they hold.
    let mut stack = vec![(dir.to_string(), false)];
    while let Some((d, listed)) = stack.pop() {
        if listed {
            if !scoped {
                raw.remove_dir(&d).await?;
            }
            continue;
        }
        stack.push((d.clone(), true));
        for e in raw.list(&d).await?.unwrap_or_default() {
            let path = format!("{d}{}", e.name);
            if e.kind == Kind::Dir {
                stack.push((format!("{path}/"), false));
                continue;
            }
            if scoped && keep(&path, e.size) {
                continue;
            }
            raw.remove_file(&path).await?;
            if !exec::is_upload_temp(&path) {
                deleted += 1;
            }
        }
    }
    Ok(deleted)
}

/// The temporary name a file is written under before it is renamed over `path`.
fn temp_name(path: &str, id: &str) -> String {
    let (dir, name) = match path.rsplit_once('/') {
        Some((d, n)) => (format!("{d}/"), n),
        None => (String::new(), path),
    };
    format!("{dir}.{name}.btp-{id}")
}

/// The staging directory of the parts of `path`.
pub(crate) fn staging_dir(path: &str, upload_id: &str) -> String {
    format!("{}/", temp_name(path, upload_id))
}

pub(crate) fn staged_part(path: &str, upload_id: &str, number: u32) -> String {
    format!("{}{number:05}", staging_dir(path, upload_id))
}

/// The temporary file a Complete job assembles the parts into.
fn assembly_name(path: &str, upload_id: &str) -> String {
    temp_name(path, &format!("{upload_id}-file"))
}

/// Streams `streams`, in order, into `target` (`paced`: counted against speed limits) and
/// returns the bytes written; checks the size stored and, when `md5` is given (it hashes the
/// bytes sent), the MD5 of the stored file read back. `target` is removed on any failure.
/// `raw`: written through the direct session, into an existing directory only (a part whose
/// staging directory was removed by an abort must not bring it back).
#[allow(clippy::too_many_arguments)]
async fn write_checked(
    job: &Job,
    dst: &Operator,
    target: &str,
    size: u64,
    streams: Vec<opendal::BufferStream>,
    ctx: &JobContext<'_>,
    paced: bool,
    mut md5: Option<&mut Md5Stream>,
    raw: bool,
) -> Result<u64, JobError> {
    let mut written = 0u64;
    let result: Result<(), JobError> = async {
        let mut writer = if raw {
            Sink::Raw(Box::pin(Raw::get(&job.dst).await?.create(target).await?))
        } else {
            Sink::Dal(dst.writer(target).await?)
        };
        let sent: Result<(), JobError> = async {
            for mut stream in streams {
                while let Some(chunk) = stream.try_next().await? {
                    if paced {
                        exec::pace(&chunk, ctx, md5.as_deref_mut()).await?;
                    } else {
                        if ctx.cancel.is_cancelled() {
                            return Err(JobError::Cancelled);
                        }
                        if let Some(h) = md5.as_deref_mut() {
                            for piece in chunk.clone() {
                                h.update(&piece);
                            }
                        }
                    }
                    written += chunk.len() as u64;
                    writer.write(chunk).await?;
                }
            }
            Ok(())
        }
        .await;
        // SFTP writes in place: close the handle whatever happened; the file is removed below.
        let closed = writer.close().await;
        sent?;
        closed?;
        if written != size {
            return Err(JobError::Transient(format!(
                "source changed during copy: listed {size} bytes, read {written}"
            )));
        }
        let meta = dst.stat(target).await?;
        if meta.content_length() != size {
            return Err(JobError::Transient(format!(
                "size mismatch: {} bytes at the destination, {size} read from the source",
                meta.content_length()
            )));
        }
        if let Some(want) = md5.as_deref().cloned().map(Md5Stream::finish) {
            let got = exec::content_md5(&job.dst, dst, target, Some(&meta)).await?;
            if got != want {
                return Err(exec::md5_mismatch(&got, &want));
            }
        }
        Ok(())
    }
    .await;
    match result {
        Ok(()) => Ok(written),
        Err(e) => {
            let _ = dst.delete(target).await;
            Err(e)
        }
    }
}

/// Where [`write_checked`] writes.
enum Sink {
    Dal(opendal::Writer),
    Raw(std::pin::Pin<Box<btp_common::sftp::RawFile>>),
}

impl Sink {
    async fn write(&mut self, chunk: opendal::Buffer) -> Result<(), JobError> {
        use tokio::io::AsyncWriteExt;
        match self {
            Sink::Dal(w) => Ok(w.write(chunk).await?),
            Sink::Raw(f) => {
                for piece in chunk {
                    f.write_all(&piece).await?;
                }
                Ok(())
            }
        }
    }

    async fn close(&mut self) -> Result<(), JobError> {
        use tokio::io::AsyncWriteExt;
        match self {
            Sink::Dal(w) => {
                w.close().await?;
                Ok(())
            }
            Sink::Raw(f) => Ok(f.shutdown().await?),
        }
    }
}

/// Renames the finished temporary file over the target.
async fn put_in_place(dst: &Operator, temp: &str, target: &str) -> Result<(), JobError> {
    match dst.rename(temp, target).await {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = dst.delete(temp).await;
            Err(e.into())
        }
    }
}

/// Copies one file to an SFTP destination: a temporary file beside it, checked, then renamed.
pub(crate) async fn copy_file(
    job: &Job,
    dst: &Operator,
    f: &FileEntry,
    stream: opendal::BufferStream,
    ctx: &JobContext<'_>,
) -> Result<(u64, String), JobError> {
    check_dirs(&job.id, &job.dst, btp_common::paths::parent_dir(&f.path)).await?;
    let temp = temp_name(&f.path, &uuid::Uuid::new_v4().simple().to_string());
    let mut md5 = (job.verify == Verify::Checksum).then(Md5Stream::default);
    let n = write_checked(
        job,
        dst,
        &temp,
        f.size,
        vec![stream],
        ctx,
        true,
        md5.as_mut(),
        false,
    )
    .await?;
    let lost = keep_mode_owner(job, f, &temp).await;
    put_in_place(dst, &temp, &f.path).await?;
    Ok((n, lost))
}

/// Gives the temporary file `temp` the source file's mode (and with `--preserve owner` its owner
/// and group) before it takes the final name; returns what the server refused.
async fn keep_mode_owner(job: &Job, f: &FileEntry, temp: &str) -> String {
    let owner = f.uid.zip(f.gid);
    if f.mode.is_none() && owner.is_none() {
        return String::new();
    }
    match Raw::get(&job.dst).await {
        Ok(raw) => raw.set_mode_owner(temp, f.mode, owner).await,
        Err(e) => format!("mode (sftp session: {e})"),
    }
}

/// Starts an upload in parts: its staging directory.
pub(crate) async fn begin(job: &Job, path: &str) -> Result<String, JobError> {
    let dst = job.dst.operator()?;
    check_dirs(&job.id, &job.dst, btp_common::paths::parent_dir(path)).await?;
    let id = uuid::Uuid::new_v4().simple().to_string();
    dst.create_dir(&staging_dir(path, &id)).await?;
    Ok(id)
}

/// Writes one part into the staging directory; with `md5` (`--verify checksum`) it hashes the
/// bytes sent and the stored part is checked against them.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn part(
    job: &Job,
    f: &FileEntry,
    upload_id: &str,
    number: u32,
    len: u64,
    stream: opendal::BufferStream,
    ctx: &JobContext<'_>,
    md5: Option<&mut Md5Stream>,
) -> Result<(), JobError> {
    let dst = job.dst.operator()?;
    let part = staged_part(&f.path, upload_id, number);
    match write_checked(job, &dst, &part, len, vec![stream], ctx, true, md5, true).await {
        Ok(_) => Ok(()),
        // The staging directory is gone: the upload was aborted (or completed).
        Err(JobError::Permanent(e)) if e.starts_with("not found") => Err(JobError::Permanent(
            format!("upload {upload_id} of {} no longer exists", f.path),
        )),
        Err(e) => Err(e),
    }
}

/// Assembles the parts into the file, verifies it, puts it in place and removes the staging
/// directory; what of the source's mode and owner the server refused. `Ok(None)`: the staging
/// directory is gone (completed before, or removed).
pub(crate) async fn complete(
    job: &Job,
    f: &FileEntry,
    upload_id: &str,
    numbers: &[u32],
    ctx: &JobContext<'_>,
) -> Result<Option<String>, JobError> {
    let dst = job.dst.operator()?;
    check_dirs(&job.id, &job.dst, btp_common::paths::parent_dir(&f.path)).await?;
    let staging = staging_dir(&f.path, upload_id);
    if !dst.exists(&staging).await? {
        return Ok(None);
    }
    let mut streams = Vec::with_capacity(numbers.len());
    for n in numbers {
        let part = staged_part(&f.path, upload_id, *n);
        streams.push(exec::read_stream(&job.dst, &dst, &part, ..).await?);
    }
    let temp = assembly_name(&f.path, upload_id);
    // Assembling is not a transfer from the source: not counted against speed limits.
    let mut md5 = (job.verify == Verify::Checksum).then(Md5Stream::default);
    write_checked(
        job,
        &dst,
        &temp,
        f.size,
        streams,
        ctx,
        false,
        md5.as_mut(),
        false,
    )
    .await?;
    let lost = keep_mode_owner(job, f, &temp).await;
    put_in_place(&dst, &temp, &f.path).await?;
    dst.delete_with(&staging).recursive(true).await?;
    Ok(Some(lost))
}

/// Removes what an upload left: its staging directory and its temporary file.
pub(crate) async fn abort(dst: &Endpoint, path: &str, upload_id: &str) -> Result<(), JobError> {
    let op = dst.operator()?;
    op.delete_with(&staging_dir(path, upload_id))
        .recursive(true)
        .await?;
    op.delete(&assembly_name(path, upload_id)).await?;
    Ok(())
}

/// The entries of the source directory `dir` (`""` or `a/b/`), listed by their own types over
/// the direct session (OpenDAL's lister follows links, leaves dangling ones out and cannot
/// carry a name that is not UTF-8): every entry comes out, as a file, a directory, a link to
/// keep, or a problem with its reason, as a local listing gives them. With `--links follow`, a
/// link to a directory whose real path holds `dir`'s real path is a loop. One directory's
/// entries are held at once, as the SFTP protocol reads them.
pub(crate) async fn source_entries(
    ep: &Endpoint,
    dir: &str,
    policy: crate::local::LinkPolicy,
) -> Result<Vec<crate::local::Listed>, JobError> {
    use crate::local::{self as l, Listed};
    use btp_common::api::Links;
    use btp_common::wire::Outcome;
    use opendal::EntryMode;
    let mut raw = Raw::get(ep).await?;
    let listed = match raw.list_source(dir).await {
        // The session broke while reading (this directory, or another one listed on the shared
        // session at the same time): once more on a session of its own, and if that breaks
        // too, the directory fails with the reason instead of ten more attempts.
        Err(e) if e.kind() == opendal::ErrorKind::Unsupported => {
            raw = std::sync::Arc::new(Raw::connect(ep).await?);
            raw.list_source(dir).await.map_err(|e| match e.kind() {
                opendal::ErrorKind::Unsupported => JobError::Permanent(
                    "the SFTP session broke twice while reading this directory: it holds a name \
                     the SFTP client cannot read (a name that is not valid UTF-8 does this), so \
                     none of its entries can be listed; rename it at the source"
                        .into(),
                ),
                _ => e.into(),
            })?
        }
        other => other?,
    };
    let Some(entries) = listed else {
        return Err(opendal::Error::new(
            opendal::ErrorKind::NotFound,
            format!("source directory {dir} does not exist"),
        )
        .into());
    };
    let file = |path: String, size, mtime_ms| Listed {
        path,
        mode: EntryMode::FILE,
        size,
        mtime_ms,
        posix: Default::default(),
        link: None,
        problem: None,
    };
    let dir_entry = |path: String| Listed {
        mode: EntryMode::DIR,
        ..file(format!("{path}/"), 0, None)
    };
    let failed = |path: String, reason: &str| Listed::problem(path, Outcome::Failed, reason);
    let mut dir_real: Option<std::path::PathBuf> = None;
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        let path = format!("{dir}{}", e.name);
        if !e.utf8 {
            out.push(failed(path, l::NAME_NOT_UTF8));
            continue;
        }
        let listed = match e.kind {
            Kind::Dir => dir_entry(path),
            Kind::File => file(path, e.size, e.mtime_ms),
            Kind::Other => failed(path, l::NOT_A_FILE),
            Kind::Link => match (policy.links, policy.dst_holds_links) {
                (Links::Skip, _) => Listed::problem(path, Outcome::Skipped, l::LINK_SKIPPED),
                (Links::Copy, false) => Listed::problem(path, Outcome::Skipped, l::LINK_NOT_HELD),
                (Links::Copy, true) => match raw.read_link(&path).await? {
                    Some(target) => Listed {
                        link: Some(target),
                        ..file(path, 0, e.mtime_ms)
                    },
                    None => failed(path, l::LINK_TARGET_NOT_UTF8),
                },
                (Links::Follow, _) => match raw.stat(&path).await? {
                    None => failed(path, l::DANGLING),
                    Some((Kind::File, size, mtime)) => file(path, size, mtime),
                    Some((Kind::Dir, ..)) => {
                        let here = match &dir_real {
                            Some(p) => p.clone(),
                            None => dir_real.insert(raw.real_path(dir).await?).clone(),
                        };
                        if here.starts_with(raw.real_path(&path).await?) {
                            failed(path, l::LINK_LOOP)
                        } else {
                            dir_entry(path)
                        }
                    }
                    Some(_) => failed(path, l::NOT_A_FILE),
                },
            },
        };
        out.push(listed);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_names_are_hidden_siblings_that_sync_leaves_alone() {
        assert_eq!(temp_name("a/b.txt", "x1"), "a/.b.txt.btp-x1");
        assert_eq!(temp_name("b.txt", "x1"), ".b.txt.btp-x1");
        assert_eq!(staged_part("d/big", "u", 3), "d/.big.btp-u/00003");
        assert_eq!(assembly_name("d/big", "u"), "d/.big.btp-u-file");
        for p in [
            temp_name("a/b.txt", "x1"),
            staging_dir("d/big", "u"),
            assembly_name("big", "u"),
        ] {
            assert!(exec::is_upload_temp(&p), "{p}");
        }
    }
}
