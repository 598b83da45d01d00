//! Large files to Google Cloud Storage in parts (the GCS twin of the S3 multipart jobs): the
//! Upload job writes a marker object into a staging directory beside the file
//! (`.<name>.btp-<id>/`, a name sync never deletes, see `exec::is_upload_temp`); each Part job
//! uploads its range as the staged object `<staging>/<number>`; the Complete job composes the
//! parts into the file (in rounds of at most 32 sources), checks the composite's size and, with
//! `--verify checksum`, its CRC32C against the one combined from the parts' CRC32Cs (each part's
//! MD5 was checked against the source bytes when it was uploaded), then deletes the staging
//! directory. The Abort job deletes it. Nothing appears under the final name before Complete.

use btp_common::checksum::Md5Stream;
use btp_common::gcs::{self, GcsClient, ObjectMeta, MAX_COMPONENTS, MAX_COMPOSE};
use btp_common::wire::{FileEntry, Job, PartDone};
use btp_common::Endpoint;
use opendal::Operator;

use crate::errors::JobError;
use crate::exec::{self, JobContext};

pub(crate) fn client(dst: &Endpoint) -> Result<GcsClient, JobError> {
    GcsClient::new(dst).ok_or_else(|| JobError::Permanent(format!("{dst} is no GCS endpoint")))
}

/// Where the parts of `path` are staged (a hidden directory beside it).
fn staging_dir(path: &str, upload_id: &str) -> String {
    let (dir, name) = match path.rsplit_once('/') {
        Some((d, n)) => (format!("{d}/"), n),
        None => (String::new(), path),
    };
    format!("{dir}.{name}.btp-{upload_id}/")
}

/// The object that says the upload is open: parts are kept only while it exists.
fn marker(path: &str, upload_id: &str) -> String {
    format!("{}upload", staging_dir(path, upload_id))
}

fn staged_part(path: &str, upload_id: &str, number: u32) -> String {
    format!("{}{number:05}", staging_dir(path, upload_id))
}

/// A part as the Part job reports it (the `etag` of [`PartDone`]): CRC32C, length and MD5 of
/// the staged object, as GCS stored it.
fn part_tag(meta: &ObjectMeta) -> String {
    format!(
        "{:08x}/{}/{}",
        meta.crc32c.unwrap_or(0),
        meta.size,
        meta.md5.as_deref().unwrap_or("")
    )
}

fn parse_tag(tag: &str) -> Option<(u32, u64, &str)> {
    let mut it = tag.splitn(3, '/');
    let crc = u32::from_str_radix(it.next()?, 16).ok()?;
    let len = it.next()?.parse().ok()?;
    Some((crc, len, it.next().unwrap_or("")))
}

/// The MD5 GCS computed of a staged part (from its tag).
pub(crate) fn stored_md5(tag: &str) -> String {
    parse_tag(tag)
        .map(|(_, _, md5)| md5.to_string())
        .unwrap_or_default()
}

/// Opens an upload: a fresh id and its marker object.
pub(crate) async fn begin(dst: &Endpoint, path: &str) -> Result<String, JobError> {
    let id = uuid::Uuid::new_v4().simple().to_string();
    client(dst)?
        .upload(&marker(path, &id), 0, reqwest::Body::from(""))
        .await?;
    Ok(id)
}

/// Uploads one range of the file as a staged part; returns its tag. A part that finds the
/// upload aborted (no marker) removes itself, so an abort leaves nothing staged however the
/// two race.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn part(
    dst: &Endpoint,
    file: &FileEntry,
    upload_id: &str,
    number: u32,
    len: u64,
    stream: opendal::BufferStream,
    ctx: &JobContext<'_>,
    md5: Option<&mut Md5Stream>,
) -> Result<(u64, String), JobError> {
    let c = client(dst)?;
    let gone = || {
        JobError::Permanent(format!(
            "upload {upload_id} of {} no longer exists",
            file.path
        ))
    };
    let mark = marker(&file.path, upload_id);
    if c.stat(&mark).await?.is_none() {
        return Err(gone());
    }
    let name = staged_part(&file.path, upload_id, number);
    let (n, meta) = upload_primed(stream, ctx, md5, |body| c.upload(&name, len, body)).await?;
    if c.stat(&mark).await?.is_none() {
        c.delete(&name).await?;
        return Err(gone());
    }
    if meta.size != n {
        return Err(JobError::Transient(format!(
            "part {number} of {}: GCS stored {} bytes, {n} were sent",
            file.path, meta.size
        )));
    }
    Ok((n, part_tag(&meta)))
}

/// Composes the staged parts into the file, verifies it and deletes the staging directory.
pub(crate) async fn complete(
    job: &Job,
    src: &Operator,
    file: &FileEntry,
    upload_id: &str,
    parts: &[PartDone],
) -> Result<(), JobError> {
    let c = client(&job.dst)?;
    let mut parts = parts.to_vec();
    parts.sort_by_key(|p| p.number);
    let pieces: Option<Vec<(u32, u64)>> = parts
        .iter()
        .map(|p| parse_tag(&p.etag).map(|(crc, len, _)| (crc, len)))
        .collect();
    let pieces = pieces.ok_or_else(|| {
        JobError::Permanent(format!(
            "{}: a part was reported without its CRC32C",
            file.path
        ))
    })?;
    let want = gcs::crc32c_concat(&pieces);
    if c.stat(&marker(&file.path, upload_id)).await?.is_none() {
        // Completed by an earlier run whose result was lost (the object then has the CRC32C of
        // these very parts), or aborted.
        return match c.stat(&file.path).await? {
            Some(m) if m.size == file.size && m.crc32c == Some(want) => Ok(()),
            _ => Err(JobError::Transient(format!(
                "upload vanished before completion (upload {upload_id} of {})",
                file.path
            ))),
        };
    }
    if parts.len() > MAX_COMPONENTS {
        abort(&job.dst, &file.path, upload_id).await?;
        return Err(JobError::Permanent(format!(
            "{} came in {} parts, GCS composes at most {MAX_COMPONENTS}: raise --part-size",
            file.path,
            parts.len()
        )));
    }
    let staging = staging_dir(&file.path, upload_id);
    let mut names: Vec<String> = parts
        .iter()
        .map(|p| staged_part(&file.path, upload_id, p.number))
        .collect();
    let mut round = 0;
    while names.len() > MAX_COMPOSE {
        round += 1;
        let mut next = Vec::with_capacity(names.len().div_ceil(MAX_COMPOSE));
        for (i, group) in names.chunks(MAX_COMPOSE).enumerate() {
            let name = format!("{staging}r{round}-{i:05}");
            c.compose(&name, group, None).await?;
            next.push(name);
        }
        names = next;
    }
    let ct = exec::content_type(src, &job.src, &file.path).await;
    let meta = c.compose(&file.path, &names, ct.as_deref()).await?;
    if meta.size != file.size {
        let _ = c.delete(&file.path).await;
        return Err(JobError::Transient(format!(
            "{} has {} bytes at the destination, expected {}",
            file.path, meta.size, file.size
        )));
    }
    if job.verify == btp_common::api::Verify::Checksum && meta.crc32c != Some(want) {
        let _ = c.delete(&file.path).await;
        return Err(JobError::Transient(format!(
            "checksum mismatch: {} was composed with crc32c {}, its parts give {want:08x}",
            file.path,
            meta.crc32c
                .map(|v| format!("{v:08x}"))
                .unwrap_or_else(|| "none".into())
        )));
    }
    abort(&job.dst, &file.path, upload_id).await
}

/// Deletes the staging directory of an upload: the marker first (late parts then remove
/// themselves), then every staged object. Gone already is fine.
pub(crate) async fn abort(dst: &Endpoint, path: &str, upload_id: &str) -> Result<(), JobError> {
    let c = client(dst)?;
    c.delete(&marker(path, upload_id)).await?;
    for o in c.list(&staging_dir(path, upload_id)).await? {
        c.delete(&o.path).await?;
    }
    Ok(())
}

/// Streams a file that OpenDAL's writer would upload in parts (the XML multipart API, which
/// emulators such as fake-gcs-server lack) in one media upload instead; checks the size GCS
/// stored and, with `--verify checksum`, the MD5 it computed. Returns the bytes written.
pub(crate) async fn put(
    job: &Job,
    f: &FileEntry,
    stream: opendal::BufferStream,
    ctx: &JobContext<'_>,
) -> Result<u64, JobError> {
    let c = client(&job.dst)?;
    let mut md5 = (job.verify == btp_common::api::Verify::Checksum).then(Md5Stream::default);
    let sent = upload_primed(stream, ctx, md5.as_mut(), |body| {
        c.upload(&f.path, f.size, body)
    })
    .await;
    let result = match sent {
        Ok((n, _)) if n != f.size => Err(JobError::Transient(format!(
            "source changed during copy: listed {} bytes, read {n}",
            f.size
        ))),
        Ok((_, meta)) if meta.size != f.size => Err(JobError::Transient(format!(
            "size mismatch: {} bytes at the destination, {} read from the source",
            meta.size, f.size
        ))),
        Ok((_, meta)) => match md5.map(Md5Stream::finish) {
            Some(want) if meta.md5.as_deref() != Some(want.as_str()) => Err(exec::md5_mismatch(
                meta.md5.as_deref().unwrap_or("none"),
                &want,
            )),
            _ => Ok(f.size),
        },
        Err(e) => Err(e),
    };
    if result.is_err() {
        // Nothing wrong stays under the final name.
        let _ = c.delete(&f.path).await;
    }
    result
}

/// As `parts::upload_stream` for one stream, but the upload starts only once the source's first
/// bytes arrived: a server that holds a lock while it receives an upload (fake-gcs-server holds
/// its store's lock) must never wait for a read of itself that has not begun.
async fn upload_primed<T, F>(
    mut stream: opendal::BufferStream,
    ctx: &JobContext<'_>,
    mut md5: Option<&mut Md5Stream>,
    upload: impl FnOnce(reqwest::Body) -> F,
) -> Result<(u64, T), JobError>
where
    F: std::future::Future<Output = Result<T, gcs::GcsError>>,
{
    use futures::{SinkExt, TryStreamExt};
    let first = stream.try_next().await?;
    let (mut tx, rx) = futures::channel::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(2);
    let feed = async {
        let mut n = 0u64;
        let mut next = first;
        while let Some(chunk) = next {
            exec::pace(&chunk, ctx, md5.as_deref_mut()).await?;
            n += chunk.len() as u64;
            for piece in chunk {
                if tx.send(Ok(piece)).await.is_err() {
                    return Ok(n);
                }
            }
            next = stream.try_next().await?;
        }
        drop(tx);
        Ok::<_, JobError>(n)
    };
    let (fed, uploaded) = futures::join!(feed, upload(reqwest::Body::wrap_stream(rx)));
    let n = fed?;
    Ok((n, uploaded?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staged_names_are_upload_temps_and_tags_round_trip() {
        assert_eq!(staging_dir("a/b.bin", "x1"), "a/.b.bin.btp-x1/");
        assert_eq!(staged_part("b.bin", "x1", 7), ".b.bin.btp-x1/00007");
        assert!(exec::is_upload_temp(&staging_dir("a/b.bin", "x1")));
        let meta = ObjectMeta {
            path: "p".into(),
            size: 42,
            crc32c: Some(0xdead_beef),
            md5: Some("00ff".into()),
        };
        let tag = part_tag(&meta);
        assert_eq!(parse_tag(&tag), Some((0xdead_beef, 42, "00ff")));
        assert_eq!(stored_md5(&tag), "00ff");
    }
}
