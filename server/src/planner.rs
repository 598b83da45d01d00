//! Turns listing pages into jobs: files are packed into Copy jobs bounded by count and bytes,
//! sub-directories become List jobs.

use btp_common::api::TaskOptions;
use btp_common::wire::{FileEntry, JobKind};

/// Packs files into Copy batches of at most `batch_files` files and about `batch_bytes` bytes;
/// a file larger than `batch_bytes` gets a batch of its own. Order is kept.
pub fn pack_copies(files: Vec<FileEntry>, opts: &TaskOptions) -> Vec<JobKind> {
    let mut jobs = Vec::new();
    let mut batch: Vec<FileEntry> = Vec::new();
    let mut batch_bytes = 0u64;
    for f in files {
        let full = batch.len() as u32 >= opts.batch_files
            || (!batch.is_empty() && batch_bytes.saturating_add(f.size) > opts.batch_bytes);
        if full {
            jobs.push(JobKind::Copy {
                files: std::mem::take(&mut batch),
            });
            batch_bytes = 0;
        }
        batch_bytes = batch_bytes.saturating_add(f.size);
        batch.push(f);
    }
    if !batch.is_empty() {
        jobs.push(JobKind::Copy { files: batch });
    }
    jobs
}

/// A List job for one directory of the source.
pub fn list_job(dir: String, opts: &TaskOptions) -> JobKind {
    JobKind::List {
        dir,
        page_entries: opts.list_page_entries,
        page_bytes: opts.list_page_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, size: u64) -> FileEntry {
        FileEntry {
            path: path.into(),
            size,
            mtime_ms: None,
        }
    }

    fn sizes(jobs: &[JobKind]) -> Vec<Vec<u64>> {
        jobs.iter()
            .map(|j| match j {
                JobKind::Copy { files } => files.iter().map(|f| f.size).collect(),
                _ => panic!("not a copy job"),
            })
            .collect()
    }

    #[test]
    fn batches_are_bounded_by_file_count() {
        let opts = TaskOptions {
            batch_files: 2,
            ..Default::default()
        };
        let files = (0..5).map(|i| file(&format!("f{i}"), 1)).collect();
        assert_eq!(
            sizes(&pack_copies(files, &opts)),
            vec![vec![1, 1], vec![1, 1], vec![1]]
        );
    }

    #[test]
    fn batches_are_bounded_by_bytes_and_big_files_go_alone() {
        let opts = TaskOptions {
            batch_files: 100,
            batch_bytes: 10,
            ..Default::default()
        };
        let files = vec![
            file("a", 4),
            file("b", 4),
            file("c", 4),
            file("big", 50),
            file("d", 0),
        ];
        assert_eq!(
            sizes(&pack_copies(files, &opts)),
            vec![vec![4, 4], vec![4], vec![50], vec![0]]
        );
    }

    #[test]
    fn no_files_make_no_jobs() {
        assert!(pack_copies(Vec::new(), &TaskOptions::default()).is_empty());
    }
}
