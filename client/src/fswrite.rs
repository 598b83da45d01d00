//! The one writer of files on file-system destinations: the new content goes into a file
//! beside the target and replaces the target (one `rename`) only once it is complete and
//! checked. A failure, a cancellation or a drop before [`FsWrite::commit`] removes the new
//! file and leaves the previous target as it was, so no partial file ever stands under a final
//! name and no good old copy is lost to a failed new one.
//!
//! Where the file system allows it the new file has no name while it is written
//! (`open(dir, O_TMPFILE)`): a killed client leaves nothing behind, the kernel frees it. The
//! commit links it (through `/proc/self/fd/N`) under the final name when there is no file
//! there yet, and otherwise to a temporary name `.<name>.btp-<random>` which it renames over
//! the target. Where `O_TMPFILE` is refused the file is created under that temporary name at
//! once (the names sync never deletes, see `exec::is_upload_temp`).
//!
//! No fsync unless asked: the small-file path never had one.

use std::ffi::{CString, OsString};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Longest file name most file systems take (`NAME_MAX`).
const NAME_MAX: usize = 255;

/// Set once linking an unnamed file failed for a reason of the mechanism (no `/proc`, a
/// refusal): from then on this process writes named temporary files.
static UNNAMED_BROKEN: AtomicBool = AtomicBool::new(false);

/// A new file being written for `target`. Dropped before [`FsWrite::commit`], it is removed.
pub(crate) struct FsWrite {
    file: File,
    target: PathBuf,
    /// The temporary name the file has: from the start in the fallback, after the link in
    /// [`FsWrite::commit`] for an unnamed file.
    named: Option<PathBuf>,
    /// The file's mode and owner, once [`FsWrite::stored_len`] looked.
    meta: Option<Owner>,
    /// Its size then.
    len: Option<u64>,
    /// The source file's mode and owner, given to the new file before it has its final name.
    want: btp_common::wire::Posix,
}

impl FsWrite {
    /// Starts a new file for `target`, creating missing parent directories.
    pub(crate) fn create(target: &Path) -> io::Result<FsWrite> {
        match Self::open(target, false) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                Self::open(target, false)
            }
            other => other,
        }
    }

    /// `named`: skip `O_TMPFILE` (the fallback, and its tests).
    fn open(target: &Path, named: bool) -> io::Result<FsWrite> {
        let dir = match target.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if !named && !UNNAMED_BROKEN.load(Ordering::Relaxed) {
            let c = cstring(dir.as_os_str().as_bytes())?;
            // SAFETY: a valid C string; the descriptor returned is owned by the File below.
            let fd = unsafe {
                libc::open(
                    c.as_ptr(),
                    libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC,
                    0o666 as libc::c_uint,
                )
            };
            if fd >= 0 {
                return Ok(FsWrite {
                    // SAFETY: `fd` is a fresh descriptor nothing else owns.
                    file: unsafe { File::from_raw_fd(fd) },
                    target: target.to_path_buf(),
                    named: None,
                    meta: None,
                    len: None,
                    want: Default::default(),
                });
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                // The file system (or an old kernel) does not do unnamed files.
                Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL) => {}
                _ => return Err(e),
            }
        }
        loop {
            let temp = temp_name(target);
            match std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&temp)
            {
                Ok(file) => {
                    return Ok(FsWrite {
                        file,
                        target: target.to_path_buf(),
                        named: Some(temp),
                        meta: None,
                        len: None,
                        want: Default::default(),
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// The new file, for writes that do not go through [`FsWrite::write_all`] (a range copied
    /// in the kernel).
    pub(crate) fn file(&mut self) -> &File {
        (self.meta, self.len) = (None, None);
        &self.file
    }

    pub(crate) fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        (self.meta, self.len) = (None, None);
        self.file.write_all(data)
    }

    /// The size of what was written, as the file system has it (`fstat`).
    pub(crate) fn stored_len(&mut self) -> io::Result<u64> {
        let meta = self.file.metadata()?;
        self.meta = Some(Owner::of(&meta));
        self.len = Some(meta.len());
        Ok(meta.len())
    }

    /// Reads the written content back from the file system, in pieces of at most 1 MiB.
    pub(crate) fn read_back(&self, mut each: impl FnMut(&[u8])) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let piece = self.len.map_or(64 << 10, |n| n.clamp(1, 1 << 20));
        let mut buf = vec![0u8; piece as usize];
        let mut at = 0u64;
        loop {
            let n = match self.file.read_at(&mut buf, at) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            each(&buf[..n]);
            at += n as u64;
        }
    }

    /// The new file is to get the source file's mode (and owner and group, where `p` has
    /// them) instead of those of the file it replaces.
    pub(crate) fn keep(&mut self, p: btp_common::wire::Posix) {
        self.want = p;
    }

    /// Makes the new file the target: gives it `mtime` (best effort, as every copy) and the
    /// source's mode and owner ([`FsWrite::keep`]), flushes it to disk when `sync`, and puts it
    /// under the final name; all of it before the name, so no one ever sees the target with
    /// another mode. An unnamed file is linked there directly when there is no target yet (one
    /// system call); one that replaces a file first gets the mode and owner of the file it
    /// replaces where the source gave none (an overwrite in place kept them) and is renamed
    /// over it. `before` saves the look at the target where the caller had one.
    ///
    /// Returns what of the source's mode and owner the file could not get ("" when all),
    /// such as `owner (chown: Operation not permitted)` for a client that is not root.
    pub(crate) fn commit(
        mut self,
        mtime: Option<std::time::SystemTime>,
        sync: bool,
        before: Before,
    ) -> io::Result<String> {
        if let Some(t) = mtime {
            let _ = self.file.set_modified(t);
        }
        let lost = if self.want.is_empty() {
            String::new()
        } else {
            self.settle(None, true)
        };
        if sync {
            self.file.sync_all()?;
        }
        let old = match before {
            Before::Present(m) => Some(m),
            Before::Absent | Before::Unknown if self.named.is_none() => {
                match self.link(&self.target) {
                    Ok(()) => return Ok(lost),
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(e),
                }
                std::fs::metadata(&self.target).ok()
            }
            Before::Absent => None,
            Before::Unknown => std::fs::metadata(&self.target).ok(),
        };
        if let Some(old) = old.filter(|m| m.is_file()) {
            self.settle(Some(&old), false);
        }
        if self.named.is_none() {
            self.named = Some(self.link_temp()?);
        }
        let temp = self.named.as_ref().expect("named above");
        std::fs::rename(temp, &self.target)?;
        self.named = None;
        Ok(lost)
    }

    /// Gives the new file the source's mode and owner, and what the source did not give of the
    /// file it replaces (`old`), where they differ. `report`: the names of what the source gave
    /// and the file could not take; otherwise best effort.
    fn settle(&mut self, old: Option<&std::fs::Metadata>, report: bool) -> String {
        let new = match self.meta.take() {
            Some(m) => m,
            None => match self.file.metadata() {
                Ok(m) => Owner::of(&m),
                Err(e) => {
                    return if report {
                        format!("mode (stat: {e})")
                    } else {
                        String::new()
                    }
                }
            },
        };
        let old = old.map(Owner::of);
        let uid = self.want.uid.or(old.as_ref().map(|o| o.uid));
        let gid = self.want.gid.or(old.as_ref().map(|o| o.gid));
        let mode = self.want.mode.or(old.as_ref().map(|o| o.mode));
        let mut lost = Vec::new();
        let mut now = new;
        // The owner first: a change of owner clears set-user-ID and set-group-ID bits.
        let mut chowned = false;
        if (uid.is_some() && uid != Some(now.uid)) || (gid.is_some() && gid != Some(now.gid)) {
            match std::os::unix::fs::fchown(&self.file, uid, gid) {
                Ok(()) => {
                    chowned = true;
                    (now.uid, now.gid) = (uid.unwrap_or(now.uid), gid.unwrap_or(now.gid));
                }
                Err(e) if report && self.want.uid.is_some() => {
                    lost.push(format!("owner (chown: {})", crate::keep::short(&e)))
                }
                Err(_) => {}
            }
        }
        if let Some(mode) = mode {
            if mode != now.mode || (chowned && mode & 0o6000 != 0) {
                match self
                    .file
                    .set_permissions(std::fs::Permissions::from_mode(mode))
                {
                    Ok(()) => now.mode = mode,
                    Err(e) if report && self.want.mode.is_some() => {
                        lost.push(format!("mode (chmod: {})", crate::keep::short(&e)))
                    }
                    Err(_) => {}
                }
            }
        }
        self.meta = Some(now);
        lost.join(", ")
    }

    /// Gives the unnamed file a temporary name beside the target.
    fn link_temp(&self) -> io::Result<PathBuf> {
        loop {
            let temp = temp_name(&self.target);
            match self.link(&temp) {
                Ok(()) => return Ok(temp),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Links the unnamed file to `name` (through `/proc/self/fd/N`: linking a descriptor
    /// directly needs a capability).
    fn link(&self, name: &Path) -> io::Result<()> {
        let proc = cstring(format!("/proc/self/fd/{}", self.file.as_raw_fd()).as_bytes())?;
        let c = cstring(name.as_os_str().as_bytes())?;
        // SAFETY: two valid C strings.
        let r = unsafe {
            libc::linkat(
                libc::AT_FDCWD,
                proc.as_ptr(),
                libc::AT_FDCWD,
                c.as_ptr(),
                libc::AT_SYMLINK_FOLLOW,
            )
        };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        let broken = match e.raw_os_error() {
            Some(libc::ENOENT) => !Path::new("/proc/self/fd").is_dir(),
            Some(libc::EXDEV | libc::EPERM | libc::EOPNOTSUPP) => true,
            _ => false,
        };
        if broken {
            // No /proc, or a refusal: this attempt fails, later ones write named files.
            UNNAMED_BROKEN.store(true, Ordering::Relaxed);
        }
        Err(e)
    }
}

/// What is known of a target before its new content is put in place.
pub(crate) enum Before {
    /// Nobody looked.
    Unknown,
    /// There was no file (a look that found nothing).
    Absent,
    /// There was one, with this metadata (symbolic links followed).
    Present(std::fs::Metadata),
}

/// Permission bits and owner of a file.
struct Owner {
    mode: u32,
    uid: u32,
    gid: u32,
}

impl Owner {
    fn of(m: &std::fs::Metadata) -> Owner {
        Owner {
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
        }
    }
}

impl Drop for FsWrite {
    fn drop(&mut self) {
        // An unnamed file goes with its descriptor; a named one is removed.
        if let Some(temp) = &self.named {
            let _ = std::fs::remove_file(temp);
        }
    }
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// `.<name>.btp-<random>` beside `target`, the name shortened to fit `NAME_MAX`.
fn temp_name(target: &Path) -> PathBuf {
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = *SEED.get_or_init(|| uuid::Uuid::new_v4().as_u64_pair().0);
    let n = splitmix(seed ^ COUNTER.fetch_add(1, Ordering::Relaxed));
    let suffix = format!(".btp-{n:016x}");
    let name = target.file_name().map(|n| n.as_bytes()).unwrap_or(b"");
    let keep = name.len().min(NAME_MAX - 1 - suffix.len());
    let mut temp = Vec::with_capacity(1 + keep + suffix.len());
    temp.push(b'.');
    temp.extend_from_slice(&name[..keep]);
    temp.extend_from_slice(suffix.as_bytes());
    target.with_file_name(OsString::from_vec(temp))
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names in `dir` other than `keep`.
    fn others(dir: &Path, keep: &[&str]) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !keep.contains(&n.as_str()))
            .collect()
    }

    fn mtime(p: &Path) -> std::time::SystemTime {
        std::fs::metadata(p).unwrap().modified().unwrap()
    }

    #[test]
    fn commit_replaces_the_target_keeping_mtime_mode_owner_and_leaves_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("a/b/f.bin");
        // A new file, in directories that do not exist yet.
        let mut w = FsWrite::create(&target).unwrap();
        w.write_all(b"first").unwrap();
        assert!(
            !target.exists(),
            "nothing under the final name before the commit"
        );
        if w.named.is_none() {
            // Unnamed (tmpfs, ext4, xfs, btrfs): nothing in the directory at all.
            assert_eq!(others(target.parent().unwrap(), &[]), Vec::<String>::new());
        }
        assert_eq!(w.stored_len().unwrap(), 5);
        let t1 = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_600_000_000_123);
        w.commit(Some(t1), false, Before::Unknown).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"first");
        assert_eq!(mtime(&target), t1);
        // The replaced file's mode stays.
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o640)).unwrap();
        let mut w = FsWrite::create(&target).unwrap();
        w.write_all(b"second, longer").unwrap();
        let mut back = Vec::new();
        w.read_back(|b| back.extend_from_slice(b)).unwrap();
        assert_eq!(back, b"second, longer");
        assert_eq!(
            std::fs::read(&target).unwrap(),
            b"first",
            "old copy while writing"
        );
        w.commit(None, true, Before::Unknown).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"second, longer");
        let mode = std::fs::metadata(&target).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o640);
        // And its owner, where this process may give it (as root).
        if std::os::unix::fs::chown(&target, Some(4321), Some(4321)).is_ok() {
            let mut w = FsWrite::create(&target).unwrap();
            w.write_all(b"third").unwrap();
            w.commit(None, false, Before::Unknown).unwrap();
            let m = std::fs::metadata(&target).unwrap();
            assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (4321, 4321, 0o640));
        }
        assert_eq!(
            others(target.parent().unwrap(), &["f.bin"]),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_drop_before_commit_leaves_the_previous_target_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("f.bin");
        std::fs::write(&target, b"good old copy").unwrap();
        let before = mtime(&target);
        for named in [false, true] {
            let mut w = FsWrite::open(&target, named).unwrap();
            assert!(w.named.is_some() || !named);
            w.write_all(&[0u8; 100_000]).unwrap();
            drop(w);
            assert_eq!(std::fs::read(&target).unwrap(), b"good old copy");
            assert_eq!(mtime(&target), before);
            assert_eq!(others(dir.path(), &["f.bin"]), Vec::<String>::new());
        }
        // Dropped after a failed rename (the target became a directory): removed too.
        let target = dir.path().join("d");
        let mut w = FsWrite::create(&target).unwrap();
        std::fs::create_dir_all(target.join("inner")).unwrap();
        w.write_all(b"x").unwrap();
        assert!(w.commit(None, false, Before::Unknown).is_err());
        assert_eq!(others(dir.path(), &["f.bin", "d"]), Vec::<String>::new());
    }

    #[test]
    fn the_named_fallback_writes_a_hidden_temporary_beside_the_target() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("report.csv");
        std::fs::write(&target, b"old").unwrap();
        let mut w = FsWrite::open(&target, true).unwrap();
        w.write_all(b"new content").unwrap();
        let temps = others(dir.path(), &["report.csv"]);
        assert_eq!(temps.len(), 1, "{temps:?}");
        assert!(
            temps[0].starts_with(".report.csv.btp-"),
            "the naming sync leaves alone: {temps:?}"
        );
        assert_eq!(std::fs::read(&target).unwrap(), b"old");
        assert_eq!(w.stored_len().unwrap(), 11);
        w.commit(None, false, Before::Unknown).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"new content");
        assert_eq!(others(dir.path(), &["report.csv"]), Vec::<String>::new());
    }

    #[test]
    fn what_the_caller_knows_of_the_target_is_used_and_a_stale_look_is_safe() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("f");
        std::fs::write(&target, b"old").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
        // Known to be there: its mode is taken from the look.
        let before = Before::Present(std::fs::metadata(&target).unwrap());
        let mut w = FsWrite::create(&target).unwrap();
        w.write_all(b"new").unwrap();
        w.commit(None, false, before).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        let mode = std::fs::metadata(&target).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600);
        // Looked absent, created since: replaced all the same.
        for named in [false, true] {
            let mut w = FsWrite::open(&target, named).unwrap();
            w.write_all(b"newer").unwrap();
            w.commit(None, false, Before::Absent).unwrap();
            assert_eq!(std::fs::read(&target).unwrap(), b"newer");
        }
        // Absent and absent: linked in place.
        let fresh = dir.path().join("g");
        let mut w = FsWrite::create(&fresh).unwrap();
        w.write_all(b"g").unwrap();
        w.commit(None, false, Before::Absent).unwrap();
        assert_eq!(std::fs::read(&fresh).unwrap(), b"g");
        assert_eq!(others(dir.path(), &["f", "g"]), Vec::<String>::new());
    }

    #[test]
    fn the_source_mode_and_owner_win_over_the_replaced_file_and_are_there_before_the_name() {
        use btp_common::wire::Posix;
        let dir = tempfile::tempdir().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o7777;
        for named in [false, true] {
            // A new file: linked (or renamed) with the source's mode, whatever the umask.
            let target = dir.path().join(format!("new-{named}"));
            let mut w = FsWrite::open(&target, named).unwrap();
            w.write_all(b"x").unwrap();
            w.keep(Posix {
                mode: Some(0o751),
                ..Posix::default()
            });
            assert_eq!(w.commit(None, false, Before::Unknown).unwrap(), "");
            assert_eq!(mode(&target), 0o751);
            // Replacing a file of another mode: the source's wins.
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o666)).unwrap();
            let mut w = FsWrite::open(&target, named).unwrap();
            w.write_all(b"y").unwrap();
            w.keep(Posix {
                mode: Some(0o4700),
                ..Posix::default()
            });
            assert_eq!(w.commit(None, false, Before::Unknown).unwrap(), "");
            assert_eq!(mode(&target), 0o4700);
        }
        // The owner, where this process may give it (as root); set-user-ID survives the chown.
        let target = dir.path().join("owned");
        let mut w = FsWrite::create(&target).unwrap();
        w.write_all(b"z").unwrap();
        w.keep(Posix {
            mode: Some(0o4750),
            uid: Some(4321),
            gid: Some(8765),
        });
        let lost = w.commit(None, false, Before::Unknown).unwrap();
        let m = std::fs::metadata(&target).unwrap();
        if lost.is_empty() {
            assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (4321, 8765, 0o4750));
        } else {
            assert!(lost.starts_with("owner (chown: "), "{lost}");
            assert_eq!(m.mode() & 0o7777, 0o4750);
        }
    }

    #[test]
    fn temporary_names_fit_and_differ() {
        let long = "x".repeat(NAME_MAX);
        let t = temp_name(&Path::new("/d").join(&long));
        let name = t.file_name().unwrap().as_bytes();
        assert_eq!(name.len(), NAME_MAX);
        assert!(name.starts_with(b".xxx"));
        assert_ne!(temp_name(Path::new("/d/f")), temp_name(Path::new("/d/f")));
        // A name that long still commits.
        let dir = tempfile::tempdir().unwrap();
        for named in [false, true] {
            let target = dir.path().join(&long);
            let mut w = FsWrite::open(&target, named).unwrap();
            w.write_all(b"ok").unwrap();
            w.commit(None, false, Before::Unknown).unwrap();
            assert_eq!(std::fs::read(&target).unwrap(), b"ok");
        }
    }
}
