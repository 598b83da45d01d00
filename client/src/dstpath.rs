//! The one check every write goes through before it touches the destination: the name must be a
//! relative path strictly below the root (`btp_common::paths::check_relative`), and on a file
//! system no directory on its way may be a symbolic link, which would carry the write outside
//! the destination root (a link copied there by an earlier run, or placed there by anyone).

use std::collections::HashSet;
use std::path::PathBuf;

use btp_common::Endpoint;

use crate::errors::JobError;

/// Checks destination paths of one job; directories found safe are remembered for the job.
pub(crate) struct DstCheck {
    root: Option<PathBuf>,
    safe_dirs: HashSet<String>,
}

impl DstCheck {
    pub(crate) fn new(dst: &Endpoint) -> Self {
        Self {
            root: dst.local_root().map(PathBuf::from),
            safe_dirs: HashSet::new(),
        }
    }

    /// Ok when `rel` may be written; otherwise the per-file reason.
    pub(crate) fn check(&mut self, rel: &str) -> Result<(), JobError> {
        btp_common::paths::check_relative(rel)
            .map_err(|e| JobError::Permanent(format!("name cannot be a destination path: {e}")))?;
        let Some(root) = &self.root else {
            return Ok(());
        };
        let parent = btp_common::paths::parent_dir(rel);
        if parent.is_empty() || self.safe_dirs.contains(parent) {
            return Ok(());
        }
        let mut p = root.clone();
        for (i, seg) in parent.trim_end_matches('/').split('/').enumerate() {
            p.push(seg);
            match std::fs::symlink_metadata(&p) {
                Ok(m) if m.file_type().is_symlink() => {
                    let at: Vec<&str> = parent.split('/').take(i + 1).collect();
                    return Err(JobError::Permanent(format!(
                        "the destination has a symbolic link at {}: writing through it would leave the destination",
                        at.join("/")
                    )));
                }
                Ok(m) if !m.is_dir() => {
                    let at: Vec<&str> = parent.split('/').take(i + 1).collect();
                    return Err(JobError::Permanent(format!(
                        "the destination has a file at {}, where the source has a directory",
                        at.join("/")
                    )));
                }
                Ok(_) => {}
                // The rest does not exist yet: it will be created as directories.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) => {
                    return Err(JobError::Transient(format!(
                        "cannot inspect the destination directory {}: {e}",
                        p.display()
                    )))
                }
            }
        }
        self.safe_dirs.insert(parent.to_string());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_outside_the_root_and_writes_through_links_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("dst");
        std::fs::create_dir_all(root.join("real/sub")).unwrap();
        std::os::unix::fs::symlink(dir.path(), root.join("real/escape")).unwrap();
        let ep = Endpoint::parse(root.to_str().unwrap()).unwrap();
        let mut c = DstCheck::new(&ep);
        assert!(c.check("top.txt").is_ok());
        assert!(c.check("real/sub/f.txt").is_ok());
        assert!(
            c.check("new/dirs/f.txt").is_ok(),
            "missing directories are fine"
        );
        let e = c.check("real/escape/f.txt").unwrap_err().to_string();
        assert!(e.contains("symbolic link at real/escape"), "{e}");
        for bad in ["../x", "a//b", "/etc/passwd"] {
            let e = c.check(bad).unwrap_err().to_string();
            assert!(e.contains("cannot be a destination path"), "{bad}: {e}");
        }
    }
}
