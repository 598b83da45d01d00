//! Turns listing pages into jobs: files are packed into Copy jobs bounded by count and bytes,
//! sub-directories become List jobs.

use btp_common::api::TaskOptions;
use btp_common::wire::{FileEntry, JobKind};

/// Between two local file systems, a file is split into parts from this size on (unless the
/// task sets a threshold other than the default): below it one job copying the whole file in
/// the kernel (`copy_file_range`) is faster than the Upload, Part and Complete jobs of a split
/// and their round trips through the server.
pub const LOCAL_MULTIPART_THRESHOLD: u64 = 1 << 30;

/// How the files of a task are split into parts: from which size, and into at most how many.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Split {
    /// Files of at least this size are split (see [`split`]).
    pub threshold: u64,
    /// Most parts of one file the destination can assemble.
    pub max_parts: u64,
}

impl Split {
    /// The options' threshold, and the parts S3 allows.
    pub fn of(opts: &TaskOptions) -> Self {
        Split {
            threshold: opts.multipart_threshold,
            max_parts: btp_common::api::MAX_PARTS,
        }
    }

    /// Part size for a file of `size` bytes: the task's, raised so that the file needs no
    /// more parts than the destination takes.
    pub fn part_size(&self, opts: &TaskOptions, size: u64) -> u64 {
        opts.part_size_for(size).max(size.div_ceil(self.max_parts))
    }
}

/// How the files of `task` are split: between two file systems the default threshold means
/// [`LOCAL_MULTIPART_THRESHOLD`]; the number of parts is the destination's limit.
pub fn split(task: &crate::store::TaskRow) -> Split {
    let given = task.info.options.multipart_threshold;
    let local = task.src.is_local() && task.dst.is_local();
    let threshold = if local && given == TaskOptions::default().multipart_threshold {
        given.max(LOCAL_MULTIPART_THRESHOLD)
    } else {
        given
    };
    Split {
        threshold,
        max_parts: task.dst.max_parts(),
    }
}

/// Packs files into Copy batches of at most `batch_files` files and about `batch_bytes` bytes;
/// a file larger than `batch_bytes` gets a batch of its own, a file of at least the split's
/// threshold (see [`split`]) an Upload job (its parts become jobs of their own).
/// Order is kept.
pub fn pack_copies(files: Vec<FileEntry>, opts: &TaskOptions, split: Split) -> Vec<JobKind> {
    let mut jobs = Vec::new();
    let mut batch: Vec<FileEntry> = Vec::new();
    let mut batch_bytes = 0u64;
    for f in files {
        if f.size >= split.threshold {
            jobs.push(JobKind::Upload {
                part_size: split.part_size(opts, f.size),
                file: f,
            });
            continue;
        }
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
        filter: opts.filter.clone(),
        sync: opts.mode == btp_common::api::Mode::Sync,
        delete_excluded: opts.delete_excluded,
        links: opts.links,
        manifest: None,
        check: opts.mode == btp_common::api::Mode::Check,
        one_way: opts.one_way,
    }
}

/// Check: packs files whose contents are to be compared into Hash jobs, bounded like Copy
/// batches (count and bytes); a file larger than `batch_bytes` gets a job of its own, never
/// parts (an MD5 is computed in one pass).
pub fn pack_hashes(files: Vec<FileEntry>, opts: &TaskOptions) -> Vec<JobKind> {
    let whole = Split {
        threshold: u64::MAX,
        ..Split::of(opts)
    };
    pack_copies(files, opts, whole)
        .into_iter()
        .map(|k| match k {
            JobKind::Copy { files } => JobKind::Hash { files },
            other => other,
        })
        .collect()
}

/// The jobs for the files of a listing page: Copy (and Upload) jobs, or Hash jobs for a check.
pub fn pack_files(files: Vec<FileEntry>, task: &crate::store::TaskRow) -> Vec<JobKind> {
    if task.info.options.mode == btp_common::api::Mode::Check {
        pack_hashes(files, &task.info.options)
    } else {
        pack_copies(files, &task.info.options, split(task))
    }
}

/// The List job of a task with a manifest: reads the manifest instead of listing the source.
pub fn manifest_job(manifest: &btp_common::manifest::Manifest, opts: &TaskOptions) -> JobKind {
    let mut job = list_job(String::new(), opts);
    if let JobKind::List { manifest: m, .. } = &mut job {
        *m = Some(manifest.clone());
    }
    job
}

/// The Part jobs of an upload: `part_size` ranges, the last one shorter.
pub fn part_jobs(file: &FileEntry, upload_id: &str, part_size: u64) -> Vec<JobKind> {
    let n = file.size.div_ceil(part_size).max(1);
    (0..n)
        .map(|i| {
            let offset = i * part_size;
            JobKind::Part {
                file: file.clone(),
                upload_id: upload_id.to_string(),
                number: i as u32 + 1,
                offset,
                len: part_size.min(file.size - offset),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, size: u64) -> FileEntry {
        FileEntry::new(path, size, None)
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
            sizes(&pack_copies(files, &opts, Split::of(&opts))),
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
            sizes(&pack_copies(files, &opts, Split::of(&opts))),
            vec![vec![4, 4], vec![4], vec![50], vec![0]]
        );
    }

    #[test]
    fn large_files_become_uploads_cut_into_parts() {
        let opts = TaskOptions {
            multipart_threshold: 100,
            part_size: 40,
            ..Default::default()
        };
        let jobs = pack_copies(
            vec![file("a", 10), file("big", 100)],
            &opts,
            Split::of(&opts),
        );
        assert_eq!(jobs.len(), 2);
        let JobKind::Upload { file: f, part_size } = &jobs[0] else {
            panic!("not an upload: {:?}", jobs[0]);
        };
        assert!(matches!(&jobs[1], JobKind::Copy { files } if files.len() == 1));
        // The part size never goes below S3's 5 MiB minimum.
        assert_eq!(*part_size, btp_common::api::MIN_PART_SIZE);
        let parts = part_jobs(f, "u1", 40);
        let ranges: Vec<(u32, u64, u64)> = parts
            .iter()
            .map(|p| match p {
                JobKind::Part {
                    number,
                    offset,
                    len,
                    ..
                } => (*number, *offset, *len),
                _ => panic!("not a part"),
            })
            .collect();
        assert_eq!(ranges, vec![(1, 0, 40), (2, 40, 40), (3, 80, 20)]);
        // Huge files get larger parts: never more than 9,000 of them.
        let huge = 5u64 << 40;
        assert!(huge.div_ceil(Split::of(&opts).part_size(&opts, huge)) <= 9_000);
        // A destination that assembles fewer parts (GCS: 1,024 components) gets larger ones.
        let gcs = Split {
            max_parts: 1024,
            ..Split::of(&opts)
        };
        assert!(huge.div_ceil(gcs.part_size(&opts, huge)) <= 1024);
        assert_eq!(gcs.part_size(&opts, 100), btp_common::api::MIN_PART_SIZE);
    }

    #[test]
    fn no_files_make_no_jobs() {
        assert!(pack_copies(
            Vec::new(),
            &TaskOptions::default(),
            Split::of(&TaskOptions::default())
        )
        .is_empty());
    }
}
