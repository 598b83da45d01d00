//! Writes to file-system destinations are all or nothing, with real processes: a full
//! destination (a small tmpfs), a write failing midway, a cancelled task. No partial file ever
//! stands under a final name, a previous good copy survives a failed new one, no temporary file
//! is left behind; and a dry run creates no destination.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, UNIX_EPOCH};

use support::*;

/// A tmpfs of a fixed size mounted for one test (root only), unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// None (the test is skipped, with a message) where mounting is refused.
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs(dir.to_path_buf())),
            Ok(o) => {
                eprintln!(
                    "SKIPPED: mounting a tmpfs at {} was refused (needs root): {}",
                    dir.display(),
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run mount: {e}");
                None
            }
        }
    }

    /// Bytes in use on the file system.
    fn used(&self) -> u64 {
        let (blocks, free, frsize) = statvfs(&self.0);
        (blocks - free) * frsize
    }

    fn free(&self) -> u64 {
        let (_, free, frsize) = statvfs(&self.0);
        free * frsize
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

fn statvfs(p: &Path) -> (u64, u64, u64) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut s) }, 0);
    (s.f_blocks, s.f_bfree, s.f_frsize)
}

/// `len` pseudo-random bytes from `seed`.
fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn write(path: &Path, data: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}

/// A previous copy at the destination: other content, older than its source.
fn place_old_copy(path: &Path, data: &[u8]) {
    write(path, data);
    let old = UNIX_EPOCH + Duration::from_secs(1_500_000_000);
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(old)
        .unwrap();
}

/// Names of temporary files (`.<name>.btp-<id>`) anywhere under `dir`.
fn temporaries(dir: &Path) -> Vec<PathBuf> {
    walk(dir)
        .into_keys()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().contains(".btp-"))
        })
        .collect()
}

/// `btp copy SRC DST ARGS --output json` with `env`: exit status and report.
fn copy(src: &Path, dst: &Path, args: &[&str], env: &[(&str, &str)]) -> (bool, serde_json::Value) {
    let out = Command::new(btp_bin())
        .arg("copy")
        .arg(src)
        .arg(dst)
        .args(args)
        .args(["--output", "json"])
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no report ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.success(), report)
}

/// The failed files of a report: path -> reason.
fn failures(report: &serde_json::Value) -> std::collections::BTreeMap<String, String> {
    report["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap().to_string(),
                f["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Every file at the destination is its source's bytes, or for the failed files in `old` the
/// previous copy's; a failed file is absent unless it had a previous copy; the report counts
/// add up; no temporary file is left.
fn check_outcome(
    src: &Path,
    dst: &Path,
    report: &serde_json::Value,
    old: &[(&str, &[u8])],
) -> std::collections::BTreeMap<String, String> {
    let failed = failures(report);
    let source = tree_files(src);
    let at_dst = tree_files(dst);
    for path in at_dst.keys() {
        assert!(source.contains_key(path), "{path} is not from the source");
    }
    for path in source.keys() {
        let there = std::fs::read(dst.join(path)).ok();
        if failed.contains_key(path) {
            let previous = old.iter().find(|(p, _)| p == path).map(|(_, d)| d.to_vec());
            assert!(
                there == previous,
                "{path} failed: its previous copy stays, or nothing ({} at the destination)",
                shown(&there)
            );
        } else {
            let want = Some(std::fs::read(src.join(path)).unwrap());
            assert!(
                there == want,
                "{path} copied byte for byte: {} at the destination, {} in the source",
                shown(&there),
                shown(&want)
            );
        }
    }
    let t = &report["task"];
    let n = |k: &str| t[k].as_u64().unwrap();
    assert_eq!(
        n("files_copied") + n("files_skipped") + n("files_failed"),
        source.len() as u64,
        "{report}"
    );
    assert_eq!(temporaries(dst), Vec::<PathBuf>::new(), "no temporary file");
    failed
}

/// The counters of a report, for the test's output.
fn summary(report: &serde_json::Value) -> String {
    let t = &report["task"];
    format!(
        "{} copied, {} failed, {} retried",
        t["files_copied"], t["files_failed"], t["files_retried"]
    )
}

/// What a file holds, for messages: its length and MD5.
fn shown(data: &Option<Vec<u8>>) -> String {
    match data {
        None => "no file".into(),
        Some(d) => {
            let mut h = btp_common::checksum::Md5Stream::default();
            h.update(d);
            format!("{} bytes (md5 {})", d.len(), h.finish())
        }
    }
}

/// Asserts that `path` holds `want`.
fn assert_holds(path: &Path, want: &[u8]) {
    let there = std::fs::read(path).ok();
    assert!(
        there.as_deref() == Some(want),
        "{}: {}, expected {}",
        path.display(),
        shown(&there),
        shown(&Some(want.to_vec()))
    );
}

/// Bytes a tmpfs holds for files of these sizes (whole pages).
fn pages(sizes: impl IntoIterator<Item = u64>) -> u64 {
    sizes.into_iter().map(|s| s.div_ceil(4096) * 4096).sum()
}

#[test]
fn a_full_destination_fails_what_does_not_fit_and_keeps_previous_copies() {
    let tmp = test_dir();
    let Some(fs) = Tmpfs::mount(&tmp.path().join("mnt"), "40m") else {
        return;
    };
    let (src, dst) = (tmp.path().join("src"), fs.0.join("dst"));

    // Streamed files (>= 256 KiB): 10 MiB free, a changed file that needs 12 MiB (its previous
    // copy of 6 MiB stays meanwhile), five of 3 MiB of which some fit, and small files.
    write(&fs.0.join("filler"), &vec![1u8; 24 << 20]);
    let old_big = bytes(6 << 20, 1);
    place_old_copy(&dst.join("changed.bin"), &old_big);
    write(&src.join("changed.bin"), &bytes(12 << 20, 2));
    for i in 0..5 {
        write(
            &src.join(format!("large/l{i}.bin")),
            &bytes(3 << 20, 10 + i),
        );
    }
    for i in 0..200 {
        write(
            &src.join(format!("small/s{i:03}.dat")),
            &bytes(8 << 10, 100 + i),
        );
    }
    let args = ["--max-attempts", "2", "--retry-backoff", "200ms"];
    let (ok, report) = copy(&src, &dst, &args, &[]);
    eprintln!("streamed: {}", summary(&report));
    assert!(!ok, "a copy with failed files fails");
    let failed = check_outcome(&src, &dst, &report, &[("changed.bin", &old_big)]);
    assert!(
        failed.contains_key("changed.bin"),
        "12 MiB never fit: {failed:?}"
    );
    assert!(
        report["task"]["files_copied"].as_u64().unwrap() >= 1,
        "{report}"
    );
    for (path, reason) in &failed {
        let want = format!("destination is full: {}", dst.join(path).display());
        assert_eq!(reason, &want, "{path}");
    }
    // The temporary files are gone: the space used is that of the files in place.
    let sizes = walk(&fs.0).into_values().flatten();
    let held = pages(sizes);
    assert!(
        fs.used() <= held + (256 << 10),
        "{} bytes used, {held} in files",
        fs.used()
    );

    // Small files (the grouped path between file systems), with 128 KiB left: a changed file
    // of 200 KiB cannot fit, about 16 new ones of 8 KiB do.
    std::fs::remove_dir_all(&dst).unwrap();
    std::fs::remove_file(fs.0.join("filler")).unwrap();
    let (src, dst) = (tmp.path().join("src2"), fs.0.join("dst2"));
    let old_small = bytes(48 << 10, 3);
    place_old_copy(&dst.join("changed.dat"), &old_small);
    write(&src.join("changed.dat"), &bytes(200 << 10, 4));
    for i in 0..40 {
        write(&src.join(format!("s{i:02}.dat")), &bytes(8 << 10, 200 + i));
    }
    let fill = fs.free() - (128 << 10);
    write(&fs.0.join("filler"), &vec![2u8; fill as usize]);
    let (ok, report) = copy(&src, &dst, &["--max-attempts", "1"], &[]);
    eprintln!("small: {}", summary(&report));
    assert!(!ok);
    let failed = check_outcome(&src, &dst, &report, &[("changed.dat", &old_small)]);
    assert!(failed.contains_key("changed.dat"), "{failed:?}");
    let t = &report["task"];
    assert!(t["files_copied"].as_u64().unwrap() >= 1, "{report}");
    assert!(t["files_failed"].as_u64().unwrap() >= 20, "{report}");
    for (path, reason) in &failed {
        let want = format!("destination is full: {}", dst.join(path).display());
        assert_eq!(reason, &want, "{path}");
    }
    let held = pages(walk(&fs.0).into_values().flatten());
    assert!(fs.used() <= held + (256 << 10), "{} > {held}", fs.used());
}

#[test]
fn a_recopy_failing_midway_keeps_the_previous_copy_and_succeeds_on_retry() {
    let tmp = test_dir();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    // A streamed file of 6 MiB (two chunks) and a small one, both changed since their copy.
    let (old_big, old_small) = (bytes(5 << 20, 1), bytes(3000, 2));
    place_old_copy(&dst.join("big.bin"), &old_big);
    place_old_copy(&dst.join("dir/small.txt"), &old_small);
    write(&src.join("big.bin"), &bytes(6 << 20, 3));
    write(&src.join("dir/small.txt"), &bytes(4000, 4));
    // And one the destination has already: skipped.
    write(&src.join("dir/unchanged.txt"), b"unchanged");
    write(&dst.join("dir/unchanged.txt"), b"unchanged");
    let mtime = std::fs::metadata(src.join("dir/unchanged.txt"))
        .unwrap()
        .modified()
        .unwrap();
    std::fs::File::options()
        .write(true)
        .open(dst.join("dir/unchanged.txt"))
        .unwrap()
        .set_modified(mtime)
        .unwrap();

    // Each write fails after its first bytes, and no attempt is left.
    let fault = [("BTP_FAULT_WRITE_MIDWAY", "2")];
    let (ok, report) = copy(&src, &dst, &["--max-attempts", "1"], &fault);
    assert!(!ok);
    let old: [(&str, &[u8]); 2] = [("big.bin", &old_big), ("dir/small.txt", &old_small)];
    let failed = check_outcome(&src, &dst, &report, &old);
    assert_eq!(
        failed.keys().collect::<Vec<_>>(),
        ["big.bin", "dir/small.txt"]
    );
    for reason in failed.values() {
        assert!(reason.contains("injected fault in the middle"), "{reason}");
    }
    assert_holds(&dst.join("big.bin"), &old_big);
    assert_holds(&dst.join("dir/small.txt"), &old_small);

    // The same faults with attempts left: the retry copies both.
    let args = ["--max-attempts", "3", "--retry-backoff", "100ms"];
    let (ok, report) = copy(&src, &dst, &args, &fault);
    assert!(ok, "{report}");
    assert_eq!(report["task"]["files_retried"], 2, "{report}");
    assert_same_tree(&src, &dst);
    assert_eq!(temporaries(&dst), Vec::<PathBuf>::new());
}

#[test]
fn cancelling_a_recopy_keeps_the_previous_copy_and_leaves_no_temporary_file() {
    let tmp = test_dir();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    let old = bytes(8 << 20, 1);
    place_old_copy(&dst.join("big.bin"), &old);
    write(&src.join("big.bin"), &bytes(16 << 20, 2));
    let mut c = Cluster::start(tmp.path(), &[]);
    // 16 MiB at 2 MiB/s: eight seconds.
    c.add_client(&["--workers", "2", "--max-speed", "2MiB/s"]);
    let client = c.clients[0].pid();
    let id = c.start_task(&src, &dst, &[]);
    // The new copy is being written: the client holds a file in the destination directory.
    let held = wait_for("the re-copy to start", Duration::from_secs(60), || {
        let open: Vec<_> = open_under(client, &dst)
            .into_iter()
            .map(|(l, _)| l)
            .collect();
        (!open.is_empty()).then_some(open)
    });
    eprintln!("while copying, the client holds {held:?}");
    let t = btp_json(&c.url, &["task", "get", &id]);
    assert_eq!(t["state"], "running", "{t}");
    let out = btp(&c.url, &["task", "cancel", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("the copy to stop", Duration::from_secs(30), || {
        open_under(client, &dst).is_empty().then_some(())
    });
    let t = btp_json(&c.url, &["task", "get", &id]);
    assert_eq!(t["state"], "cancelled", "{t}");
    assert_holds(&dst.join("big.bin"), &old);
    assert_eq!(
        walk(&dst).into_keys().collect::<Vec<_>>(),
        [PathBuf::from("big.bin")],
        "nothing beside the previous copy"
    );
}

#[test]
fn a_dry_run_creates_no_destination() {
    let tmp = test_dir();
    let src = tmp.path().join("src");
    write(&src.join("a.txt"), b"a");
    write(&src.join("empty/.keep"), b"");
    std::fs::create_dir_all(src.join("empty dir")).unwrap();
    // A file taken in parts (an Upload job) too.
    write(&src.join("sub/big.bin"), &bytes(2 << 20, 1));
    for (dst, extra) in [
        (tmp.path().join("dst"), vec![]),
        (tmp.path().join("missing/parent/dst"), vec![]),
        (
            tmp.path().join("dst-sync"),
            vec!["--mode", "sync", "--multipart-threshold", "1MiB"],
        ),
        (
            tmp.path().join("dst-checksum"),
            vec!["--compare", "checksum"],
        ),
    ] {
        let mut args = vec!["--dry-run"];
        args.extend(extra);
        let (ok, report) = copy(&src, &dst, &args, &[]);
        assert!(ok, "{report}");
        assert_eq!(report["task"]["files_copied"], 3, "would copy: {report}");
        assert!(!dst.exists(), "a dry run created {}", dst.display());
    }
    assert!(!tmp.path().join("missing").exists());
}
