//! Large files to Azure Blob storage in blocks (see `parts`): each Part job stages one block of
//! the destination blob (Put Block), the Complete job commits the blocks in order (Put Block
//! List), checks that the blob is made of exactly these blocks, and with `--verify checksum`
//! reads it back and compares every block's MD5 with the source's. Abort drops the staged
//! blocks when the blob has no committed version.

use futures::TryStreamExt;
use opendal::Operator;

use btp_common::api::Verify;
use btp_common::azblob::{block_id, AzureBlocks};
use btp_common::checksum::Md5Stream;
use btp_common::wire::{FileEntry, Job, PartDone};
use btp_common::Endpoint;

use crate::errors::JobError;
use crate::exec::{self, JobContext};

pub(crate) fn blocks(dst: &Endpoint) -> Result<AzureBlocks, JobError> {
    AzureBlocks::new(dst)
        .ok_or_else(|| JobError::Permanent(format!("{dst} is no Azure Blob endpoint")))
}

/// Stages part `number` (`len` bytes of `stream`) as a block of the blob; returns the MD5 (hex)
/// Azure computed of the block, or an empty string when it gave none.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn put_part(
    job: &Job,
    file: &FileEntry,
    upload_id: &str,
    number: u32,
    len: u64,
    stream: opendal::BufferStream,
    ctx: &JobContext<'_>,
    md5: Option<&mut Md5Stream>,
) -> Result<String, JobError> {
    let az = blocks(&job.dst)?;
    let (n, stored) = crate::parts::upload_stream(vec![stream], ctx, md5, |body| {
        az.put_block(&file.path, upload_id, number, len, body)
    })
    .await?;
    if ctx.cancel.is_cancelled() {
        // The task was cancelled while this block went up, and its Abort job may have run
        // already: drop what is staged again, or this block would stay.
        az.discard(&file.path).await?;
        return Err(JobError::Cancelled);
    }
    if n != len {
        return Err(JobError::Transient(format!(
            "source {} changed during copy: expected {len} bytes of a part, read {n}",
            file.path
        )));
    }
    Ok(stored.unwrap_or_default())
}

/// Commits the staged blocks as the blob and verifies it.
pub(crate) async fn complete(
    job: &Job,
    src: &Operator,
    dst: &Operator,
    file: &FileEntry,
    upload_id: &str,
    parts: &[PartDone],
) -> Result<(), JobError> {
    let az = blocks(&job.dst)?;
    let mut parts: Vec<&PartDone> = parts.iter().collect();
    parts.sort_by_key(|p| p.number);
    let numbers: Vec<u32> = parts.iter().map(|p| p.number).collect();
    let ct = exec::content_type(src, &job.src, &file.path).await;
    if let Err(e) = az
        .put_block_list(&file.path, upload_id, &numbers, ct.as_deref(), None)
        .await
    {
        if e.is_invalid_block_list() {
            // The blocks are gone: never staged on this blob, dropped by another commit, or
            // garbage collected. The file is copied again.
            return Err(crate::parts::vanished(upload_id, file));
        }
        if !e.is_transient() {
            let _ = az.discard(&file.path).await;
        }
        return Err(e.into());
    }
    // The blob must be made of exactly these blocks, in this order, of the file's size.
    let committed = az.blocks(&file.path, "CommittedBlocks").await?;
    let committed = committed.unwrap_or_default();
    let ours: Vec<String> = numbers.iter().map(|n| block_id(upload_id, *n)).collect();
    let ids: Vec<&String> = committed.iter().map(|(id, _)| id).collect();
    let total: u64 = committed.iter().map(|(_, size)| size).sum();
    if ids != ours.iter().collect::<Vec<_>>() || total != file.size {
        return Err(JobError::Transient(format!(
            "{}: the committed blob has {} blocks of {total} bytes, expected {} blocks of {} bytes",
            file.path,
            committed.len(),
            ours.len(),
            file.size
        )));
    }
    let meta = dst.stat(&file.path).await?;
    if meta.content_length() != file.size {
        return Err(JobError::Permanent(format!(
            "{} has {} bytes at the destination, expected {}",
            file.path,
            meta.content_length(),
            file.size
        )));
    }
    if job.verify == Verify::Checksum {
        let sizes: Vec<u64> = committed.iter().map(|(_, size)| *size).collect();
        let got = block_md5s(job, dst, &file.path, &sizes).await?;
        for (p, got) in parts.iter().zip(&got) {
            if p.md5.as_deref() != Some(got.as_str()) {
                let _ = dst.delete(&file.path).await;
                return Err(JobError::Transient(format!(
                    "checksum mismatch: block {} of {} reads back as md5 {got}, its source part gave {}",
                    p.number,
                    file.path,
                    p.md5.as_deref().unwrap_or("nothing")
                )));
            }
        }
    }
    Ok(())
}

/// Reads blob `path` back and returns the MD5 (hex) of each of its consecutive ranges of
/// `sizes` bytes.
async fn block_md5s(
    job: &Job,
    dst: &Operator,
    path: &str,
    sizes: &[u64],
) -> Result<Vec<String>, JobError> {
    let mut stream = exec::read_stream(&job.dst, dst, path, ..).await?;
    let mut out = Vec::with_capacity(sizes.len());
    let mut left = sizes.iter().copied();
    let mut current = left.next();
    let mut h = Md5Stream::default();
    while let Some(chunk) = stream.try_next().await? {
        let bytes = chunk.to_bytes();
        let mut at = 0usize;
        while at < bytes.len() {
            let Some(want) = current.as_mut() else {
                return Err(JobError::Transient(format!(
                    "{path} reads back longer than its blocks"
                )));
            };
            let take = ((bytes.len() - at) as u64).min(*want) as usize;
            h.update(&bytes[at..at + take]);
            at += take;
            *want -= take as u64;
            if *want == 0 {
                out.push(std::mem::take(&mut h).finish());
                current = left.next();
            }
        }
    }
    if out.len() != sizes.len() {
        return Err(JobError::Transient(format!(
            "{path} reads back shorter than its blocks"
        )));
    }
    Ok(out)
}
