//! What a done job keeps for the per-file report (migration 0013): its files' path, size and
//! whether they were found up to date, as a compact JSON with no endpoint and so no credential
//! (`{"done":[["a/b.txt",12,0],...]}`, stored as is, unsealed). Stores of earlier builds kept the
//! whole job payload; both are read.

use btp_common::api::ApiError;
use btp_common::wire::{FileEntry, Job, JobKind};
use serde::{Deserialize, Serialize};

/// A file of a done job: path, size, flags ([`SKIPPED`]).
pub type DoneEntry = (String, u64, u8);

/// The file was found up to date and not copied.
pub const SKIPPED: u8 = 1;

/// The compact form.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kept {
    pub done: Vec<DoneEntry>,
    /// Kept by an Upload job that found its file up to date: the report names it only when the
    /// file did not fail later.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub upload: bool,
}

const START: &str = "{\"done\":";

/// True when `stored` is the compact form (which is stored unsealed).
pub fn is_compact(stored: &str) -> bool {
    stored.starts_with(START)
}

fn entry(f: &FileEntry) -> DoneEntry {
    (f.path.clone(), f.size, if f.skipped { SKIPPED } else { 0 })
}

/// The compact form of a finished job's files, as the report shows them.
pub fn compact(job: &Job) -> String {
    let kept = match &job.kind {
        JobKind::Copy { files } => Kept {
            done: files.iter().map(entry).collect(),
            upload: false,
        },
        JobKind::Complete { file, .. } => Kept {
            done: vec![entry(file)],
            upload: false,
        },
        JobKind::Upload { file, .. } => Kept {
            done: vec![entry(file)],
            upload: true,
        },
        _ => Kept {
            done: Vec::new(),
            upload: false,
        },
    };
    let text = serde_json::to_string(&kept).expect("a kept job serializes");
    debug_assert!(is_compact(&text));
    text
}

/// The files a done job kept, compact or (stores of earlier builds) as its whole payload.
pub fn read(payload: &str) -> Result<Kept, String> {
    if is_compact(payload) {
        return serde_json::from_str(payload).map_err(|e| e.to_string());
    }
    let job: Job = serde_json::from_str(payload).map_err(|e| e.to_string())?;
    serde_json::from_str(&compact(&job)).map_err(|e| e.to_string())
}

/// [`read`] with the error the API gives.
pub fn read_job(payload: &str, task: &str, seq: i64) -> Result<Kept, ApiError> {
    read(payload).map_err(|e| ApiError::internal(format!("corrupt job {seq} of task {task}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use btp_common::{Endpoint, WIRE_VERSION};

    fn job(kind: JobKind) -> Job {
        Job {
            v: WIRE_VERSION,
            id: "t1.4".into(),
            tenant: "default".into(),
            task: "t1".into(),
            src: Endpoint::parse("/secret-root/src").unwrap(),
            dst: Endpoint::parse("/secret-root/dst").unwrap(),
            attempt: 1,
            max_attempts: 3,
            speed_share: None,
            server_side_copy: Default::default(),
            preserve_owner: false,
            compare: Default::default(),
            verify: Default::default(),
            dry_run: false,
            kind,
        }
    }

    #[test]
    fn done_jobs_keep_their_files_without_endpoints_and_earlier_payloads_still_read() {
        let mut up_to_date = FileEntry::new("b \"quoted\" é.txt", 7, Some(1));
        up_to_date.skipped = true;
        up_to_date.mode = Some(0o644);
        let copy = job(JobKind::Copy {
            files: vec![FileEntry::new("a.txt", 3, Some(2)), up_to_date],
        });
        let full = serde_json::to_string(&copy).unwrap();
        let kept = compact(&copy);
        assert!(is_compact(&kept) && !is_compact(&full));
        assert!(!kept.contains("secret-root"), "{kept}");
        assert!(kept.len() * 3 < full.len(), "{kept} against {full}");
        let want = Kept {
            done: vec![
                ("a.txt".into(), 3, 0),
                ("b \"quoted\" é.txt".into(), 7, SKIPPED),
            ],
            upload: false,
        };
        // The compact form, and the whole payload that stores of earlier builds kept.
        assert_eq!(read(&kept).unwrap(), want);
        assert_eq!(read(&full).unwrap(), want);
        let upload = job(JobKind::Upload {
            file: FileEntry::new("big.bin", 1 << 30, None),
            part_size: 8 << 20,
        });
        let kept = read(&compact(&upload)).unwrap();
        assert!(kept.upload);
        assert_eq!(kept.done, [("big.bin".to_string(), 1 << 30, 0)]);
        assert!(read("{\"done\":[[1]]}").is_err());
        assert!(read("not json").is_err());
    }
}
