//! Large files in parts: an Upload job starts a multipart upload (S3) or a sparse temporary file
//! beside the destination (file systems); Part jobs, on any worker of any client, each copy one
//! byte range into it; the Complete job assembles and verifies the file; an Abort job removes
//! what a cancelled or failed file left. Nothing appears under the final name before Complete.

use std::io::SeekFrom;
use std::path::PathBuf;

use bytes::Bytes;
use futures::{SinkExt, TryStreamExt};
use opendal::Operator;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tracing::{debug, info, warn};

use btp_common::api::Verify;
use btp_common::checksum::{self, Md5Stream};
use btp_common::s3mp::{PartTag, S3Multipart};
use btp_common::webdav::WebdavClient;
use btp_common::wire::{FileEntry, FileFailure, Job, PartDone, ResultBody};
use btp_common::Endpoint;

use crate::errors::JobError;
use crate::exec::{self, JobContext, COPY_CHUNK};
use crate::keep;

/// The temporary file parts of `path` go to on a file system destination.
fn temp_path(root: &str, path: &str, upload_id: &str) -> PathBuf {
    let full = std::path::Path::new(root).join(path);
    let name = full
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    full.with_file_name(format!(".{name}.btp-{upload_id}"))
}

fn multipart(dst: &Endpoint) -> Result<S3Multipart, JobError> {
    S3Multipart::new(dst).ok_or_else(|| JobError::Permanent(format!("{dst} takes no uploads")))
}

/// Starts the upload of a large file, or reports it skipped (already there) or, in a dry
/// run, as a file that would be copied.
pub async fn upload(job: &Job, file: &FileEntry, ctx: &JobContext<'_>) -> Result<(), JobError> {
    crate::dstpath::DstCheck::new(&job.dst).check(&file.path)?;
    let src = job.src.source_operator()?;
    let Some(dst) = exec::destination(job)? else {
        // A dry run into a destination that does not exist yet.
        return ctx
            .sink
            .send(job, 0, true, exec::would_copy_body(file, false))
            .await;
    };
    // A retry uploads the file as it is now (see `exec::restat`).
    let current;
    let (file, changed) = if ctx.attempt > 1 {
        let (now, changed) = exec::restat(&src, std::slice::from_ref(file)).await;
        current = now.into_iter().next().unwrap_or_else(|| file.clone());
        (&current, !changed.is_empty())
    } else {
        (file, false)
    };
    exec::injected_growth(&job.src, &file.path);
    if exec::already_there(job, &src, &dst, file).await? {
        let body = exec::skipped_body(file, changed);
        return ctx.sink.send(job, 0, true, body).await;
    }
    if job.dry_run {
        let body = exec::would_copy_body(file, changed);
        return ctx.sink.send(job, 0, true, body).await;
    }
    let upload_id = match &job.dst {
        Endpoint::Fs { root } => {
            let id = uuid::Uuid::new_v4().simple().to_string();
            let temp = temp_path(root, &file.path, &id);
            if let Some(parent) = temp.parent() {
                tokio::fs::create_dir_all(parent).await?;
            }
            let f = tokio::fs::File::create(&temp).await?;
            f.set_len(file.size).await?;
            id
        }
        Endpoint::Webdav { .. } => {
            let id = uuid::Uuid::new_v4().simple().to_string();
            webdav(&job.dst)?
                .mkdirs(&staging_dir(&file.path, &id))
                .await?;
            id
        }
        // Blocks are staged on the blob itself, named after this id.
        Endpoint::Azblob { .. } => uuid::Uuid::new_v4().simple().to_string(),
        Endpoint::Sftp { .. } => crate::sftp::begin(job, &file.path).await?,
        Endpoint::S3 { .. } => {
            let meta = crate::s3copy::object_meta(&src, &job.src, &file.path).await;
            btp_common::s3copy::create_upload(&multipart(&job.dst)?, &file.path, &meta).await?
        }
        Endpoint::Gcs { .. } => crate::gcs::begin(&job.dst, &file.path).await?,
    };
    debug!(job = %job.id, path = %file.path, %upload_id, "upload begun");
    let body = ResultBody::Begun {
        upload_id,
        file: changed.then(|| file.clone()),
    };
    ctx.sink.send(job, 0, true, body).await
}

/// Copies bytes `offset..offset + len` of the file into part `number` of the upload.
/// The error of a part whose upload was completed or aborted meanwhile.
fn gone(upload_id: &str, file: &FileEntry) -> JobError {
    JobError::Permanent(format!(
        "upload {upload_id} of {} no longer exists",
        file.path
    ))
}

pub async fn part(
    job: &Job,
    file: &FileEntry,
    upload_id: &str,
    number: u32,
    offset: u64,
    len: u64,
    ctx: &JobContext<'_>,
) -> Result<(), JobError> {
    if let Some(cp) = crate::s3copy::copier(job) {
        return crate::s3copy::part(job, &cp, file, upload_id, number, offset, len, ctx).await;
    }
    let src = job.src.source_operator()?;
    let mut stream = exec::read_stream(&job.src, &src, &file.path, offset..offset + len).await?;
    let mut md5 = (job.verify == Verify::Checksum).then(Md5Stream::default);
    let etag = match &job.dst {
        Endpoint::S3 { .. } => {
            let mp = multipart(&job.dst)?;
            let (n, etag) = upload_stream(vec![stream], ctx, md5.as_mut(), |body| {
                mp.upload_part(&file.path, upload_id, number, len, body)
            })
            .await?;
            if n != len {
                return Err(source_changed(file, len, n));
            }
            etag
        }
        Endpoint::Azblob { .. } => {
            let md5 = md5.as_mut();
            crate::azblob::put_part(job, file, upload_id, number, len, stream, ctx, md5).await?
        }
        Endpoint::Webdav { .. } => {
            let dav = webdav(&job.dst)?;
            let part = staged_part(&file.path, upload_id, number);
            let (n, ()) = upload_stream(vec![stream], ctx, md5.as_mut(), |body| {
                dav.put(&part, len, body)
            })
            .await?;
            if n != len {
                return Err(source_changed(file, len, n));
            }
            String::new()
        }
        Endpoint::Gcs { .. } => {
            let (n, tag) = crate::gcs::part(
                &job.dst,
                file,
                upload_id,
                number,
                len,
                stream,
                ctx,
                md5.as_mut(),
            )
            .await?;
            if n != len {
                return Err(source_changed(file, len, n));
            }
            tag
        }
        Endpoint::Sftp { .. } => {
            let (n, md5) = (len, md5.as_mut());
            crate::sftp::part(job, file, upload_id, number, n, stream, ctx, md5).await?;
            String::new()
        }
        Endpoint::Fs { root } if job.src.local_root().is_some() && md5.is_none() => {
            // Between two local files the kernel copies the range (no bytes through here), in
            // chunks so that limits and cancellation still apply.
            let temp = temp_path(root, &file.path, upload_id);
            if !temp.exists() {
                return Err(gone(upload_id, file));
            }
            let src_path =
                std::path::Path::new(job.src.local_root().unwrap_or_default()).join(&file.path);
            let mut n = 0u64;
            while n < len {
                if ctx.cancel.is_cancelled() {
                    return Err(JobError::Cancelled);
                }
                let chunk = (len - n).min(crate::local::RANGE_CHUNK);
                let (s, d, at) = (src_path.clone(), temp.clone(), offset + n);
                let copied = tokio::task::spawn_blocking(move || {
                    crate::local::copy_range(&s, &d, at, chunk)
                })
                .await
                .map_err(|e| JobError::Transient(format!("part copy stopped: {e}")))??;
                exec::pace_bytes(copied, ctx).await?;
                n += copied;
                if copied < chunk {
                    break;
                }
            }
            if n != len {
                return Err(source_changed(file, len, n));
            }
            let out = tokio::fs::OpenOptions::new()
                .write(true)
                .open(&temp)
                .await?;
            out.sync_data().await?;
            String::new()
        }
        Endpoint::Fs { root } => {
            let temp = temp_path(root, &file.path, upload_id);
            let mut out = match tokio::fs::OpenOptions::new().write(true).open(&temp).await {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(gone(upload_id, file))
                }
                Err(e) => return Err(e.into()),
            };
            out.seek(SeekFrom::Start(offset)).await?;
            let mut n = 0u64;
            while let Some(chunk) = stream.try_next().await? {
                exec::pace(&chunk, ctx, md5.as_mut()).await?;
                n += chunk.len() as u64;
                for piece in chunk {
                    out.write_all(&piece).await?;
                }
            }
            if n != len {
                return Err(source_changed(file, len, n));
            }
            out.sync_data().await?;
            String::new()
        }
    };
    let md5 = md5.map(Md5Stream::finish);
    if let Some(want) = &md5 {
        let got = match &job.dst {
            Endpoint::S3 { .. } => etag.clone(),
            // Azure's MD5 of the block it received, when it gives one; the Complete job reads
            // every block back otherwise.
            Endpoint::Azblob { .. } if etag.is_empty() => want.clone(),
            Endpoint::Azblob { .. } => etag.clone(),
            Endpoint::Gcs { .. } => crate::gcs::stored_md5(&etag),
            Endpoint::Webdav { .. } => {
                let part = staged_part(&file.path, upload_id, number);
                let dst = job.dst.operator()?;
                exec::content_md5(&job.dst, &dst, &part, None).await?
            }
            // Read back and compared by the part's write.
            Endpoint::Sftp { .. } => want.clone(),
            Endpoint::Fs { root } => {
                md5_of_file_range(&temp_path(root, &file.path, upload_id), offset, len).await?
            }
        };
        if &got != want {
            return Err(JobError::Transient(format!(
                "part {number} of {}: the destination holds other bytes than were sent (md5 {want}, stored {got})",
                file.path
            )));
        }
    }
    info!(task = %job.task, path = %file.path, part = number, bytes = len, client = %ctx.sink.client, "part copied");
    let body = ResultBody::Part {
        part: PartDone { number, etag, md5 },
        bytes: len,
    };
    ctx.sink.send(job, 0, true, body).await
}

/// Streams `streams`, one after the other, into the request `upload` makes of the body: paced
/// (cancel, speed limits, metrics) and hashed on the way. Returns the bytes sent and what the
/// upload answered. An upload that ends early wins: its error says why.
pub(crate) async fn upload_stream<T, E, F>(
    streams: Vec<opendal::BufferStream>,
    ctx: &JobContext<'_>,
    mut md5: Option<&mut Md5Stream>,
    upload: impl FnOnce(reqwest::Body) -> F,
) -> Result<(u64, T), JobError>
where
    F: std::future::Future<Output = Result<T, E>>,
    JobError: From<E>,
{
    let (mut tx, rx) = futures::channel::mpsc::channel::<Result<Bytes, std::io::Error>>(2);
    let feed = async {
        let mut n = 0u64;
        for mut stream in streams {
            while let Some(chunk) = stream.try_next().await? {
                exec::pace(&chunk, ctx, md5.as_deref_mut()).await?;
                n += chunk.len() as u64;
                for piece in chunk {
                    if tx.send(Ok(piece)).await.is_err() {
                        return Ok(n);
                    }
                }
            }
        }
        drop(tx);
        Ok::<_, JobError>(n)
    };
    let (fed, uploaded) = futures::join!(feed, upload(reqwest::Body::wrap_stream(rx)));
    let n = fed?;
    Ok((n, uploaded?))
}

fn webdav(dst: &Endpoint) -> Result<WebdavClient, JobError> {
    WebdavClient::new(dst)
        .ok_or_else(|| JobError::Permanent(format!("{dst} is no WebDAV endpoint")))
}

/// Where the parts of `path` are staged on a WebDAV destination (a hidden directory beside it).
fn staging_dir(path: &str, upload_id: &str) -> String {
    let (dir, name) = match path.rsplit_once('/') {
        Some((d, n)) => (format!("{d}/"), n),
        None => (String::new(), path),
    };
    format!("{dir}.{name}.btp-{upload_id}/")
}

fn staged_part(path: &str, upload_id: &str, number: u32) -> String {
    format!("{}{number:05}", staging_dir(path, upload_id))
}

fn source_changed(file: &FileEntry, want: u64, got: u64) -> JobError {
    JobError::Transient(format!(
        "source {} changed during copy: expected {want} bytes of a part, read {got}",
        file.path
    ))
}

async fn md5_of_file_range(
    path: &std::path::Path,
    offset: u64,
    len: u64,
) -> Result<String, JobError> {
    let mut f = tokio::fs::File::open(path).await?;
    f.seek(SeekFrom::Start(offset)).await?;
    let mut left = len;
    let mut h = Md5Stream::default();
    let mut buf = vec![0u8; COPY_CHUNK.min(len.max(1) as usize)];
    while left > 0 {
        let want = buf.len().min(left as usize);
        let n = f.read(&mut buf[..want]).await?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(h.finish())
}

/// Assembles the parts into the destination file and verifies it.
pub async fn complete(
    job: &Job,
    file: &FileEntry,
    upload_id: &str,
    parts: &[PartDone],
    ctx: &JobContext<'_>,
) -> Result<(), JobError> {
    let src = job.src.source_operator()?;
    let dst = job.dst.operator()?;
    // The parts were read at different times: the source must not have changed meanwhile.
    let now = src.stat(&file.path).await?;
    if now.content_length() != file.size
        || (file.mtime_ms.is_some() && exec::mtime_ms(&now) != file.mtime_ms)
    {
        abort_upload(&job.dst, &file.path, upload_id).await?;
        let e = JobError::Transient(format!("source {} changed during copy", file.path));
        return report(job, file, ctx, Err(e), String::new()).await;
    }
    // What the destination cannot hold of the source's metadata (the stat above has it).
    let meta_lost = if keep::needs_object_meta(job) {
        keep::object_meta_lost(
            job,
            &file.path,
            &btp_common::s3copy::ObjectMeta::from_stat(&now),
        )
    } else {
        String::new()
    };
    let mut lost = keep::join(&[&meta_lost, &keep::posix_lost(job, file)]);
    if exec::injected_abort_before_complete(&file.path) {
        warn!(path = %file.path, %upload_id, "injected abort of the upload before its completion");
        abort_upload(&job.dst, &file.path, upload_id).await?;
    }
    let outcome = match &job.dst {
        Endpoint::S3 { .. } => complete_s3(job, &dst, file, upload_id, parts, ctx).await,
        Endpoint::Azblob { .. } => {
            crate::azblob::complete(job, &src, &dst, file, upload_id, parts).await
        }
        Endpoint::Webdav { .. } => complete_webdav(job, &dst, file, upload_id, parts, ctx).await,
        Endpoint::Fs { root } => match complete_fs(root, &dst, file, upload_id).await {
            Ok(fs_lost) => {
                lost = keep::join(&[&lost, &fs_lost]);
                Ok(())
            }
            Err(e) => Err(e),
        },
        Endpoint::Gcs { .. } => crate::gcs::complete(job, &src, file, upload_id, parts).await,
        Endpoint::Sftp { .. } => {
            let numbers: Vec<u32> = parts.iter().map(|p| p.number).collect();
            match crate::sftp::complete(job, file, upload_id, &numbers, ctx).await {
                Ok(Some(sftp_lost)) => {
                    lost = keep::join(&[&lost, &sftp_lost]);
                    Ok(())
                }
                Ok(None) => Err(vanished(upload_id, file)),
                Err(e) => Err(e),
            }
        }
    };
    if outcome.is_ok() {
        exec::keep_mtime(&job.dst, file);
    }
    report(job, file, ctx, outcome, lost).await
}

/// Sends the result of a Complete job: the file copied, to be retried, or failed.
async fn report(
    job: &Job,
    file: &FileEntry,
    ctx: &JobContext<'_>,
    outcome: Result<(), JobError>,
    lost: String,
) -> Result<(), JobError> {
    let (mut failures, mut retry) = (Vec::new(), Vec::new());
    match outcome {
        Ok(()) => {}
        Err(JobError::Cancelled) => return Err(JobError::Cancelled),
        Err(e) => {
            let f = FileFailure {
                path: file.path.clone(),
                size: file.size,
                reason: e.to_string(),
                attempts: ctx.attempt,
                mtime_ms: file.mtime_ms,
                posix: file.posix(),
            };
            if e.is_transient() && !ctx.last_attempt {
                warn!(job = %job.id, path = %file.path, error = %e, "the file will be copied again");
                retry.push(f);
            } else {
                warn!(job = %job.id, path = %file.path, error = %e, "file failed");
                failures.push(f);
            }
        }
    }
    let copied = failures.is_empty() && retry.is_empty();
    let not_kept = if copied {
        keep::entry(&file.path, lost).into_iter().collect()
    } else {
        Vec::new()
    };
    let body = ResultBody::Copy {
        files_copied: copied as u64,
        // The bytes were counted part by part.
        bytes_copied: 0,
        files_skipped: 0,
        bytes_skipped: 0,
        failures,
        retry,
        retry_after_ms: ctx.retry_after.as_millis() as u64,
        would_copy: Vec::new(),
        up_to_date: Vec::new(),
        changed: Vec::new(),
        not_kept,
    };
    ctx.sink.send(job, 0, true, body).await
}

/// The error of an upload that is gone before its completion: aborted behind our back (a
/// lifecycle rule, someone's cleanup), or completed by an earlier run of the Complete job whose
/// result was lost and whose object cannot be told apart from another one. Never a success: the
/// file is copied again from the start (or fails when its attempts are used up).
pub(crate) fn vanished(upload_id: &str, file: &FileEntry) -> JobError {
    JobError::Transient(format!(
        "upload vanished before completion (upload {upload_id} of {})",
        file.path
    ))
}

async fn complete_s3(
    job: &Job,
    dst: &Operator,
    file: &FileEntry,
    upload_id: &str,
    parts: &[PartDone],
    ctx: &JobContext<'_>,
) -> Result<(), JobError> {
    let mp = multipart(&job.dst)?;
    let tags: Vec<PartTag> = parts
        .iter()
        .map(|p| PartTag {
            number: p.number,
            etag: p.etag.clone(),
        })
        .collect();
    let etag = match mp.complete(&file.path, upload_id, &tags).await {
        Ok(e) => Some(exec::injected_garbled_completion(&file.path, e)),
        Err(e) => {
            // Gone (S3 answers NoSuchUpload; some compatible servers, moto among them, an
            // internal error): completed by an earlier run whose result was lost, or aborted.
            let gone = e.is_no_such_upload()
                || matches!(mp.upload_exists(&file.path, upload_id).await, Ok(false));
            if gone {
                // Only an object with the ETag S3 gives these very parts is ours (one of the
                // same size is not).
                Some(completed_before(dst, file, upload_id, parts).await?)
            } else if e.is_transient() {
                return Err(e.into());
            } else {
                abort_upload(&job.dst, &file.path, upload_id).await?;
                return Err(e.into());
            }
        }
    };
    let meta = dst.stat(&file.path).await?;
    if meta.content_length() != file.size {
        return Err(JobError::Permanent(format!(
            "{} has {} bytes at the destination, expected {}",
            file.path,
            meta.content_length(),
            file.size
        )));
    }
    if job.verify == Verify::Checksum && crate::s3copy::copier(job).is_some() {
        let got = etag.unwrap_or_else(|| {
            meta.etag()
                .map(btp_common::s3mp::unquote)
                .unwrap_or_default()
        });
        if let Err(e) = crate::s3copy::verify_complete(job, dst, file, &got, ctx).await {
            let _ = dst.delete(&file.path).await;
            return Err(e);
        }
    } else if job.verify == Verify::Checksum {
        let md5s: Option<Vec<String>> = parts.iter().map(|p| p.md5.clone()).collect();
        let want = md5s.and_then(|m| checksum::multipart_etag(&m));
        let got = etag.unwrap_or_else(|| {
            meta.etag()
                .map(btp_common::s3mp::unquote)
                .unwrap_or_default()
        });
        if want.as_deref() != Some(got.as_str()) {
            let _ = dst.delete(&file.path).await;
            return Err(JobError::Transient(format!(
                "{}: {} was stored with ETag {got}, its source parts give {}",
                checksum::MISMATCH,
                file.path,
                want.unwrap_or_else(|| "nothing".into())
            )));
        }
    }
    Ok(())
}

/// The ETag of the object at the destination when an earlier run completed this upload from
/// these parts; the upload vanished otherwise.
async fn completed_before(
    dst: &Operator,
    file: &FileEntry,
    upload_id: &str,
    parts: &[PartDone],
) -> Result<String, JobError> {
    let etags: Vec<String> = parts
        .iter()
        .map(|p| btp_common::s3mp::unquote(&p.etag).to_ascii_lowercase())
        .collect();
    let want = checksum::multipart_etag(&etags);
    let have = match dst.stat(&file.path).await {
        Ok(m) => m.etag().map(btp_common::s3mp::unquote),
        Err(e) if e.kind() == opendal::ErrorKind::NotFound => None,
        Err(e) => return Err(e.into()),
    };
    match (want, have) {
        (Some(w), Some(h)) if w == h.to_ascii_lowercase() => Ok(h),
        _ => Err(vanished(upload_id, file)),
    }
}

/// Concatenates the staged parts into the file in one streaming PUT, verifies it, and removes
/// the staging directory.
async fn complete_webdav(
    job: &Job,
    dst: &Operator,
    file: &FileEntry,
    upload_id: &str,
    parts: &[PartDone],
    ctx: &JobContext<'_>,
) -> Result<(), JobError> {
    let staging = staging_dir(&file.path, upload_id);
    if !dst.exists(&staging).await? {
        // Completed before and the result of that run lost, or removed: WebDAV keeps nothing
        // that tells our copy from another one of the same size.
        return Err(vanished(upload_id, file));
    }
    let mut streams = Vec::with_capacity(parts.len());
    for p in parts {
        let part = staged_part(&file.path, upload_id, p.number);
        streams.push(exec::read_stream(&job.dst, dst, &part, ..).await?);
    }
    let mut md5 = (job.verify == Verify::Checksum).then(Md5Stream::default);
    let dav = webdav(&job.dst)?;
    // Assembling is not a transfer from the source: it is not counted against speed limits.
    let unpaced = JobContext {
        limiter: None,
        task_limiter: None,
        ..*ctx
    };
    let (n, ()) = upload_stream(streams, &unpaced, md5.as_mut(), |body| {
        dav.put(&file.path, file.size, body)
    })
    .await?;
    // Assembling reads the destination's staged parts, not the source.
    ctx.sink
        .through
        .fetch_sub(n, std::sync::atomic::Ordering::Relaxed);
    if n != file.size {
        return Err(JobError::Transient(format!(
            "{}: assembled {n} bytes from its parts, expected {}",
            file.path, file.size
        )));
    }
    let meta = dst.stat(&file.path).await?;
    if meta.content_length() != file.size {
        let _ = dst.delete(&file.path).await;
        return Err(JobError::Transient(format!(
            "{} has {} bytes at the destination, expected {}",
            file.path,
            meta.content_length(),
            file.size
        )));
    }
    if let Some(want) = md5.map(Md5Stream::finish) {
        let got = exec::content_md5(&job.dst, dst, &file.path, None).await?;
        if got != want {
            let _ = dst.delete(&file.path).await;
            return Err(JobError::Transient(format!(
                "{}: {} reads back as md5 {got}, its parts gave {want}",
                checksum::MISMATCH,
                file.path
            )));
        }
    }
    dst.delete_with(&staging).recursive(true).await?;
    Ok(())
}

async fn complete_fs(
    root: &str,
    dst: &Operator,
    file: &FileEntry,
    upload_id: &str,
) -> Result<String, JobError> {
    let temp = temp_path(root, &file.path, upload_id);
    let target = std::path::Path::new(root).join(&file.path);
    match tokio::fs::metadata(&temp).await {
        Ok(m) if m.len() == file.size => {
            // Modification time, mode and owner before the file has its name.
            let (posix, mtime) = (
                file.posix(),
                file.mtime_ms.map(|ms| {
                    std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64)
                }),
            );
            let f = tokio::fs::File::open(&temp).await?.into_std().await;
            let lost = tokio::task::spawn_blocking(move || {
                let lost = keep::apply(&f, posix, mtime);
                f.sync_all().map(|()| lost)
            })
            .await
            .map_err(|e| JobError::Transient(format!("completion stopped: {e}")))??;
            tokio::fs::rename(&temp, &target).await?;
            Ok(lost)
        }
        Ok(m) => Err(JobError::Permanent(format!(
            "{} has {} bytes in its upload, expected {}",
            file.path,
            m.len(),
            file.size
        ))),
        // Renamed before and the result of that run lost (the copy then has the source's size
        // and modification time, which that run gave it), or removed.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let meta = match dst.stat(&file.path).await {
                Ok(m) => Some(m),
                Err(e) if e.kind() == opendal::ErrorKind::NotFound => None,
                Err(e) => return Err(e.into()),
            };
            match (meta, file.mtime_ms) {
                (Some(m), Some(ms))
                    if m.content_length() == file.size && exec::mtime_ms(&m) == Some(ms) =>
                {
                    Ok(String::new())
                }
                _ => Err(vanished(upload_id, file)),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Removes an upload and its parts. Gone already is fine.
pub async fn abort_upload(dst: &Endpoint, path: &str, upload_id: &str) -> Result<(), JobError> {
    match dst {
        Endpoint::S3 { .. } => Ok(multipart(dst)?.abort(path, upload_id).await?),
        Endpoint::Azblob { .. } => Ok(crate::azblob::blocks(dst)?.discard(path).await?),
        Endpoint::Gcs { .. } => crate::gcs::abort(dst, path, upload_id).await,
        Endpoint::Webdav { .. } => {
            let op = dst.operator()?;
            Ok(op
                .delete_with(&staging_dir(path, upload_id))
                .recursive(true)
                .await?)
        }
        Endpoint::Sftp { .. } => crate::sftp::abort(dst, path, upload_id).await,
        Endpoint::Fs { root } => {
            match tokio::fs::remove_file(temp_path(root, path, upload_id)).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e.into()),
            }
        }
    }
}

pub async fn abort(
    job: &Job,
    path: &str,
    upload_id: &str,
    ctx: &JobContext<'_>,
) -> Result<(), JobError> {
    abort_upload(&job.dst, path, upload_id).await?;
    info!(task = %job.task, %path, %upload_id, "upload aborted");
    ctx.sink.send(job, 0, true, ResultBody::Aborted).await
}
