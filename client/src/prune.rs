//! Delete jobs of a sync: destination entries the source does not have, deleted once every copy
//! of the task is done. A directory is deleted whole, unless filters limit the sync's scope:
//! then only the files inside it that the filters accept are deleted.

use futures::TryStreamExt;

use btp_common::filter::Filter;
use btp_common::wire::{FileEntry, FileFailure, Job, ResultBody, DELETE_FAILURES_MAX};

use crate::errors::JobError;
use crate::exec::JobContext;

pub(crate) async fn delete(
    job: &Job,
    files: &[FileEntry],
    filter: &Filter,
    delete_excluded: bool,
    ctx: &JobContext<'_>,
) -> Result<(), JobError> {
    let dst = job.dst.operator()?;
    let scoped = !delete_excluded && !filter.is_empty();
    let filter = filter.compile().map_err(JobError::Permanent)?;
    let mut deleted = 0u64;
    let mut failures: Vec<FileFailure> = Vec::new();
    let mut more_failures = 0u64;
    let mut fail = |path: &str, size: u64, reason: String| {
        if failures.len() < DELETE_FAILURES_MAX {
            failures.push(FileFailure {
                path: path.to_string(),
                size,
                reason: format!("not deleted: {reason}"),
                attempts: ctx.attempt,
                mtime_ms: None,
                posix: Default::default(),
            });
        } else {
            more_failures += 1;
        }
    };
    for f in files {
        if ctx.cancel.is_cancelled() {
            return Err(JobError::Cancelled);
        }
        if let Err(reason) = btp_common::paths::check_relative(&f.path) {
            fail(&f.path, f.size, reason);
            continue;
        }
        if let Some(root) = job.dst.local_root() {
            // A file system: never through a link, on the way or inside.
            let checked = crate::dstpath::DstCheck::new(&job.dst).check(&f.path);
            let done = checked.and_then(|()| {
                let keep = |p: &str, size: u64| !filter.accepts(p, size);
                crate::local::delete_local(std::path::Path::new(root), &f.path, &keep, scoped)
                    .map_err(|e| crate::errors::io_error("delete", &f.path, e))
            });
            match done {
                Ok(n) => deleted += n,
                Err(e) => fail(&f.path, f.size, e.to_string()),
            }
            continue;
        }
        if let btp_common::Endpoint::Sftp { .. } = job.dst {
            // Never through a link, on the way or inside.
            let keep = |p: &str, size: u64| !filter.accepts(p, size);
            let parent = btp_common::paths::parent_dir(&f.path);
            let done = match crate::sftp::check_dirs(&job.id, &job.dst, parent).await {
                Ok(()) => crate::sftp::delete_tree(&job.id, &job.dst, &f.path, &keep, scoped).await,
                Err(e) => Err(e),
            };
            match done {
                Ok(n) => deleted += n,
                Err(e) => fail(&f.path, f.size, e.to_string()),
            }
            continue;
        }
        if !f.path.ends_with('/') {
            match dst.delete(&f.path).await {
                Ok(()) => deleted += 1,
                Err(e) => fail(&f.path, f.size, e.to_string()),
            }
            continue;
        }
        // A directory: count (and with filters, choose) the files inside, then delete.
        let mut lister = match dst.lister_with(&f.path).recursive(true).await {
            Ok(l) => l,
            Err(e) if e.kind() == opendal::ErrorKind::NotFound => continue,
            Err(e) => return Err(e.into()),
        };
        let mut inside = 0u64;
        while let Some(entry) = lister.try_next().await? {
            let path = entry.path();
            if path.ends_with('/') || crate::exec::is_upload_temp(path) {
                continue;
            }
            let size = entry.metadata().content_length();
            if scoped {
                if filter.accepts(path, size) {
                    match dst.delete(path).await {
                        Ok(()) => deleted += 1,
                        Err(e) => fail(path, size, e.to_string()),
                    }
                }
            } else {
                inside += 1;
            }
        }
        if !scoped {
            match dst.delete_with(&f.path).recursive(true).await {
                Ok(()) => deleted += inside,
                Err(e) => fail(&f.path, f.size, e.to_string()),
            }
        }
    }
    if more_failures > 0 {
        failures.push(FileFailure {
            path: format!("({more_failures} more)"),
            size: 0,
            reason: format!("{more_failures} more entries could not be deleted"),
            attempts: ctx.attempt,
            mtime_ms: None,
            posix: Default::default(),
        });
    }
    let body = ResultBody::Deleted { deleted, failures };
    ctx.sink.send(job, 0, true, body).await
}
