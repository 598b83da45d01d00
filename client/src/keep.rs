//! Metadata a copy keeps besides the bytes, and the names of what it could not keep (the per-file
//! report's `not_kept` column).
//!
//! * File-system sources carry each file's mode, and with `--preserve owner` its owner and group,
//!   from the listing ([`posix_of`]) to the copy. A file-system destination gets them on the new
//!   file before it has its final name (`fswrite::FsWrite::keep`). Other destinations have no
//!   place for them but SFTP (setstat on the temporary file before its rename): with
//!   `--preserve owner` the report names `mode, owner`.
//! * Object-store sources (S3) carry content type, cache control, content encoding, content
//!   disposition and user metadata (`btp_common::s3copy::ObjectMeta`). Object stores keep them;
//!   file systems, SFTP and WebDAV cannot, and the report names those the object had.

use btp_common::s3copy::ObjectMeta;
use btp_common::wire::{FileEntry, Job, NotKept, Posix};
use btp_common::Endpoint;

/// The mode (and with `owner` the owner and group) of a listed source file.
pub(crate) fn posix_of(meta: &std::fs::Metadata, owner: bool) -> Posix {
    use std::os::unix::fs::MetadataExt;
    Posix {
        mode: Some(meta.mode() & 0o7777),
        uid: owner.then(|| meta.uid()),
        gid: owner.then(|| meta.gid()),
    }
}

/// The entry with its source file's mode and owner filled in where it has none (a retry made
/// from a report of an earlier build, or `btp task retry`); the source is a file system.
pub(crate) fn fill_posix(job: &Job, f: &FileEntry) -> FileEntry {
    let (Some(root), None) = (job.src.local_root(), f.mode) else {
        return f.clone();
    };
    match std::fs::metadata(std::path::Path::new(root).join(&f.path)) {
        Ok(m) => f.clone().with_posix(posix_of(&m, job.preserve_owner)),
        Err(_) => f.clone(),
    }
}

/// The destination holds content type, cache control and user metadata.
fn holds_object_meta(dst: &Endpoint) -> bool {
    matches!(
        dst,
        Endpoint::S3 { .. } | Endpoint::Azblob { .. } | Endpoint::Gcs { .. }
    )
}

/// True when a copy from `job.src` may lose object metadata: an object-store source whose
/// destination has no place for it. Only then is the source object's metadata looked up.
pub(crate) fn needs_object_meta(job: &Job) -> bool {
    matches!(job.src, Endpoint::S3 { .. }) && !holds_object_meta(&job.dst)
}

/// What the destination of `job` cannot hold of a source object's metadata ("" when nothing).
pub(crate) fn object_meta_lost(job: &Job, path: &str, meta: &ObjectMeta) -> String {
    if holds_object_meta(&job.dst) {
        return String::new();
    }
    meta.not_kept_on_fs(crate::exec::guess_content_type(path))
}

/// What a destination other than a file system or SFTP (which get them, `sftp::keep_mode_owner`)
/// cannot hold of a file's mode and owner: named only when `--preserve owner` asked for them
/// (object stores never hold modes).
pub(crate) fn posix_lost(job: &Job, f: &FileEntry) -> String {
    let holds = job.dst.is_local() || matches!(job.dst, Endpoint::Sftp { .. });
    if holds || !job.preserve_owner || f.mode.is_none() {
        return String::new();
    }
    "mode, owner".to_string()
}

/// Gives the file `file` (not yet under its final name) the modification time `mtime` and the
/// source's mode and owner `p`; returns what it could not take ("" when all).
pub(crate) fn apply(
    file: &std::fs::File,
    p: Posix,
    mtime: Option<std::time::SystemTime>,
) -> String {
    use std::os::unix::fs::PermissionsExt;
    if let Some(t) = mtime {
        let _ = file.set_modified(t);
    }
    let mut lost = Vec::new();
    // The owner first: a change of owner clears set-user-ID and set-group-ID bits.
    if p.uid.is_some() || p.gid.is_some() {
        if let Err(e) = std::os::unix::fs::fchown(file, p.uid, p.gid) {
            lost.push(format!("owner (chown: {})", short(&e)));
        }
    }
    if let Some(mode) = p.mode {
        if let Err(e) = file.set_permissions(std::fs::Permissions::from_mode(mode)) {
            lost.push(format!("mode (chmod: {})", short(&e)));
        }
    }
    lost.join(", ")
}

/// An error's text without the `(os error N)` tail.
pub(crate) fn short(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// Joins the names of what was not kept.
pub(crate) fn join(parts: &[&str]) -> String {
    parts
        .iter()
        .filter(|p| !p.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(", ")
}

/// The report entry of a copied file, when something was not kept.
pub(crate) fn entry(path: &str, what: String) -> Option<NotKept> {
    (!what.is_empty()).then(|| NotKept {
        path: path.to_string(),
        what,
    })
}

/// The metadata of the source object `path`, for what a destination cannot hold; None where no
/// metadata can be lost or the stat fails (the copy's own read then says why).
pub(crate) async fn source_object_meta(
    job: &Job,
    src: &opendal::Operator,
    path: &str,
) -> Option<ObjectMeta> {
    if !needs_object_meta(job) {
        return None;
    }
    src.stat(path).await.ok().map(|m| ObjectMeta::from_stat(&m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_metadata_a_file_system_cannot_hold_is_named() {
        let meta = ObjectMeta {
            content_type: Some("text/csv".into()),
            cache_control: Some("max-age=60".into()),
            content_encoding: None,
            content_disposition: None,
            user: vec![("color".into(), "blue".into())],
        };
        assert_eq!(
            meta.not_kept_on_fs(None),
            "content-type, cache-control, x-amz-meta-color"
        );
        // A content type the name gives back, or the default one, is not lost.
        assert_eq!(
            meta.not_kept_on_fs(Some("text/csv")),
            "cache-control, x-amz-meta-color"
        );
        for default in ["binary/octet-stream", "application/octet-stream"] {
            assert_eq!(
                ObjectMeta::with_content_type(Some(default)).not_kept_on_fs(None),
                ""
            );
        }
        assert_eq!(ObjectMeta::default().not_kept_on_fs(None), "");
        assert_eq!(join(&["", "mode", "", "owner"]), "mode, owner");
    }
}
