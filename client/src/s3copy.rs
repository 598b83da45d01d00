//! Server-side copies between two endpoints of one S3 service: a Copy job copies each object with
//! CopyObject (objects above 5 GiB in UploadPartCopy parts within the job), a Part job of a large
//! file copies its range with UploadPartCopy; no byte goes through the client. Also the metadata
//! a destination object gets from its source object (both for server-side and client-side
//! copies).

use opendal::Operator;
use tracing::info;

use btp_common::api::{ServerSideCopy, Verify};
use btp_common::s3copy::{ObjectMeta, S3Copy, COPY_OBJECT_MAX};
use btp_common::s3mp::{unquote, PartTag};
use btp_common::wire::{FileEntry, Job, PartDone, ResultBody};
use btp_common::Endpoint;

use crate::errors::JobError;
use crate::exec::{self, JobContext};

/// Part size of a copy above CopyObject's limit made inside one job.
const COPY_PART: u64 = 512 << 20;

/// The server-side copier of a job, when its task allows it and its endpoints share a service.
pub(crate) fn copier(job: &Job) -> Option<S3Copy> {
    if job.server_side_copy == ServerSideCopy::Off {
        return None;
    }
    S3Copy::new(&job.src, &job.dst)
}

/// What the destination object of `path` gets besides its bytes: the source object's metadata
/// (S3), or a content type guessed from the file name.
pub(crate) async fn object_meta(src: &Operator, src_ep: &Endpoint, path: &str) -> ObjectMeta {
    if matches!(src_ep, Endpoint::S3 { .. }) {
        if let Ok(m) = src.stat(path).await {
            let mut meta = ObjectMeta::from_stat(&m);
            if meta.content_type.is_none() {
                meta.content_type = exec::guess_content_type(path).map(str::to_string);
            }
            return meta;
        }
    }
    ObjectMeta::with_content_type(exec::content_type(src, src_ep, path).await.as_deref())
}

/// `n` bytes copied by the store: stop when cancelled, take them from the task's speed limit
/// (the client-wide limit is the client's own network, which they did not cross), count them.
async fn pace_store(n: u64, ctx: &JobContext<'_>) -> Result<(), JobError> {
    if ctx.cancel.is_cancelled() {
        return Err(JobError::Cancelled);
    }
    if let Some(l) = ctx.task_limiter {
        l.acquire(n).await;
    }
    metrics::counter!(crate::telemetry::BYTES_COPIED).increment(n);
    Ok(())
}

fn source_changed(f: &FileEntry, now: u64) -> JobError {
    JobError::Transient(format!(
        "source changed during copy: listed {} bytes, now {now}",
        f.size
    ))
}

/// Copies one object of a Copy job on the service; returns the bytes copied.
pub(crate) async fn copy_file(
    job: &Job,
    cp: &S3Copy,
    src: &Operator,
    dst: &Operator,
    f: &FileEntry,
    ctx: &JobContext<'_>,
) -> Result<u64, JobError> {
    if ctx.cancel.is_cancelled() {
        return Err(JobError::Cancelled);
    }
    let meta = src.stat(&f.path).await?;
    if meta.content_length() != f.size {
        return Err(source_changed(f, meta.content_length()));
    }
    let src_etag = meta.etag().map(unquote);
    let etag = if f.size > COPY_OBJECT_MAX {
        copy_in_parts(cp, f, &ObjectMeta::from_stat(&meta), ctx).await?
    } else {
        match cp.copy_object(&f.path, src_etag.as_deref()).await {
            Ok(e) => e,
            // The source changed since its stat: copied again as it is then.
            Err(e) if e.status == Some(412) => {
                return Err(JobError::Transient(format!(
                    "source {} changed during copy: {e}",
                    f.path
                )))
            }
            Err(e) => return Err(e.into()),
        }
    };
    pace_store(f.size, ctx).await?;
    if job.verify == Verify::Checksum {
        if let Err(e) = verify(job, src, dst, f, src_etag.as_deref(), &etag, ctx).await {
            let _ = dst.delete(&f.path).await;
            return Err(e);
        }
    }
    Ok(f.size)
}

/// A copy above CopyObject's limit inside one job: UploadPartCopy parts one after another.
async fn copy_in_parts(
    cp: &S3Copy,
    f: &FileEntry,
    meta: &ObjectMeta,
    ctx: &JobContext<'_>,
) -> Result<String, JobError> {
    let upload_id = btp_common::s3copy::create_upload(&cp.dst, &f.path, meta).await?;
    // The service copies each part in one request: large parts, few requests.
    let part = (exec::part_size(f.size) as u64).max(COPY_PART);
    let copied = async {
        let mut tags = Vec::new();
        let mut offset = 0u64;
        while offset < f.size {
            if ctx.cancel.is_cancelled() {
                return Err(JobError::Cancelled);
            }
            let len = part.min(f.size - offset);
            let number = tags.len() as u32 + 1;
            let etag = cp
                .upload_part_copy(&f.path, &upload_id, number, offset, len)
                .await?;
            tags.push(PartTag { number, etag });
            offset += len;
        }
        Ok(cp.dst.complete(&f.path, &upload_id, &tags).await?)
    }
    .await;
    if copied.is_err() {
        let _ = cp.dst.abort(&f.path, &upload_id).await;
    }
    copied
}

/// MD5 of an object's content, read and hashed.
async fn read_md5(ep: &Endpoint, op: &Operator, path: &str) -> Result<String, JobError> {
    let mut stream = exec::read_stream(ep, op, path, ..).await?;
    let mut h = btp_common::checksum::Md5Stream::default();
    while let Some(chunk) = futures::TryStreamExt::try_next(&mut stream).await? {
        h.update(&chunk.to_bytes());
    }
    Ok(h.finish())
}

/// `--verify checksum` of a server-side copy whose destination has ETag `got`: equal to the
/// source's ETag (a copy in one piece of an object uploaded in one piece, or a copy in the same
/// parts), or else the destination read back and hashed against the source's MD5 (its ETag when
/// it is one; otherwise the source is read and hashed too, and counted as bytes through the
/// client).
async fn verify(
    job: &Job,
    src: &Operator,
    dst: &Operator,
    f: &FileEntry,
    src_etag: Option<&str>,
    got: &str,
    ctx: &JobContext<'_>,
) -> Result<(), JobError> {
    let src_etag = src_etag.map(str::to_ascii_lowercase);
    // An ETag taken from an answer with its quotes escaped (`&#34;`, `&quot;`) is the same ETag.
    let got = unquote(&got.replace("&#34;", "\"").replace("&quot;", "\"")).to_ascii_lowercase();
    let got = got.as_str();
    if src_etag.as_deref() == Some(got) {
        return Ok(());
    }
    tracing::info!(path = %f.path, source = ?src_etag, copy = got, "the ETags do not tell: the copy is read back");
    let want = match src_etag {
        Some(e) if btp_common::checksum::is_plain_md5(&e) => e,
        _ => {
            ctx.sink
                .through
                .fetch_add(f.size, std::sync::atomic::Ordering::Relaxed);
            metrics::counter!(crate::telemetry::BYTES_THROUGH).increment(f.size);
            read_md5(&job.src, src, &f.path).await?
        }
    };
    let have = if btp_common::checksum::is_plain_md5(got) {
        got.to_string()
    } else {
        read_md5(&job.dst, dst, &f.path).await?
    };
    if have != want {
        return Err(exec::md5_mismatch(&have, &want));
    }
    Ok(())
}

/// A Part job of a server-side copy: UploadPartCopy of its range.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn part(
    job: &Job,
    cp: &S3Copy,
    file: &FileEntry,
    upload_id: &str,
    number: u32,
    offset: u64,
    len: u64,
    ctx: &JobContext<'_>,
) -> Result<(), JobError> {
    if ctx.cancel.is_cancelled() {
        return Err(JobError::Cancelled);
    }
    let etag = cp
        .upload_part_copy(&file.path, upload_id, number, offset, len)
        .await?;
    pace_store(len, ctx).await?;
    info!(task = %job.task, path = %file.path, part = number, bytes = len, client = %ctx.sink.client, server_side = true, "part copied");
    let body = ResultBody::Part {
        part: PartDone {
            number,
            etag,
            md5: None,
        },
        bytes: len,
    };
    ctx.sink.send(job, 0, true, body).await
}

/// `--verify checksum` of a completed server-side multipart copy with ETag `got`.
pub(crate) async fn verify_complete(
    job: &Job,
    dst: &Operator,
    file: &FileEntry,
    got: &str,
    ctx: &JobContext<'_>,
) -> Result<(), JobError> {
    let src = job.src.source_operator()?;
    let meta = src.stat(&file.path).await?;
    let src_etag = meta.etag().map(unquote);
    verify(job, &src, dst, file, src_etag.as_deref(), got, ctx).await
}
