//! `btp check` and check tasks, end to end with real processes: a verdict per path after a
//! copy fs -> S3 and S3 -> fs with a 1 GiB file (one file changed at the destination with the
//! same size and time, one deleted, one added), with and without content comparison; a check
//! writes nothing at either side; the retry of a check copies exactly what differs or is
//! missing, and a second check is clean; a check spread over two clients.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use support::backends::{Backend, S3Server};
use support::*;

/// `btp` without a cluster (the one-shot commands start their own).
fn btp_local(args: &[&str]) -> Output {
    btp("nats://127.0.0.1:1", args)
}

/// The differences `btp check --output json` printed: its report on the first line, then one
/// verdict per line. path -> (verdict, what).
fn differences(out: &Output) -> BTreeMap<String, (String, String)> {
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let report: serde_json::Value = serde_json::from_str(lines.next().expect("a report line"))
        .unwrap_or_else(|e| panic!("report: {e}: {text}"));
    assert_eq!(report["task"]["options"]["mode"], "check");
    lines
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["path"].as_str().unwrap().to_string(),
                (
                    v["verdict"].as_str().unwrap().to_string(),
                    v["what"].as_str().unwrap_or("").to_string(),
                ),
            )
        })
        .collect()
}

fn verdicts(list: &[(&str, &str, &str)]) -> BTreeMap<String, (String, String)> {
    list.iter()
        .map(|(p, v, w)| (p.to_string(), (v.to_string(), w.to_string())))
        .collect()
}

/// The one-shot check of `src` against `dst` with `extra` arguments.
fn check(src: &str, dst: &str, extra: &[String]) -> Output {
    let mut args = vec!["check", src, dst];
    args.extend(extra.iter().map(String::as_str));
    btp_local(&args)
}

/// A small tree and a 1 GiB file made fast: sparse, with a pattern at its start and end.
fn make_src(root: &Path) {
    for (rel, text) in [
        ("a.txt", "alpha alpha"),
        ("keep/b.txt", "bravo bravo"),
        ("keep/c.txt", "charlie"),
        ("keep/deep/d.txt", "delta delta delta"),
        ("gone.txt", "to be deleted"),
        ("changed.txt", "original content"),
    ] {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    use std::io::{Seek, Write};
    let mut f = std::fs::File::create(root.join("big.bin")).unwrap();
    f.write_all(&[0xa5; 1 << 20]).unwrap();
    f.set_len(1 << 30).unwrap();
    f.seek(std::io::SeekFrom::End(-(1 << 20))).unwrap();
    f.write_all(&[0x5a; 1 << 20]).unwrap();
}

fn exit_code(out: &Output) -> i32 {
    out.status.code().expect("an exit code")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Acceptance: after copies fs -> S3 and S3 -> fs of a tree with a 1 GiB file, a file changed
/// at the destination with the same size and modification time, one deleted and one added:
/// `--checksum` names those three with the right verdicts (exit 1); without it the two the
/// metadata shows, and the output says contents were not compared.
#[test]
fn check_names_exactly_what_changed_fs_to_s3_and_s3_to_fs() {
    let dir = test_dir();
    let Some(s3) = S3Server::seaweedfs(dir.path()).or_else(|| S3Server::moto(dir.path())) else {
        eprintln!("no S3 server installed: skipped");
        return;
    };
    let src = dir.path().join("src");
    make_src(&src);
    s3.create_container("bkt");
    let url = s3.url("bkt", "copy");
    let dst_opts = s3.opts("dst");
    let src_opts = s3.opts("src");

    // fs -> S3
    let mut args = vec![
        "copy".to_string(),
        src.to_string_lossy().into(),
        url.clone(),
    ];
    args.extend(dst_opts.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = btp_local(&args);
    assert!(
        out.status.success(),
        "copy to {}: {}",
        s3.name(),
        stderr(&out)
    );
    let clean = check(
        src.to_str().unwrap(),
        &url,
        &[dst_opts.clone(), vec!["--output".into(), "json".into()]].concat(),
    );
    assert_eq!(
        exit_code(&clean),
        0,
        "a fresh copy is the same: {}",
        stderr(&clean)
    );
    assert!(differences(&clean).is_empty());

    // Changed with the same size (an object store gives it a new time, not older than the
    // source's), deleted, added.
    s3.boto3(
        "s3.put_object(Bucket='bkt', Key='copy/changed.txt', Body=b'ORIGINAL CONTENT')\n\
         s3.delete_object(Bucket='bkt', Key='copy/gone.txt')\n\
         s3.put_object(Bucket='bkt', Key='copy/keep/new.txt', Body=b'added later')\n",
        &[],
    );
    let json = || vec!["--output".to_string(), "json".to_string()];
    let out = check(
        src.to_str().unwrap(),
        &url,
        &[dst_opts.clone(), vec!["--checksum".into()], json()].concat(),
    );
    assert_eq!(exit_code(&out), 1, "{}", stderr(&out));
    assert_eq!(
        differences(&out),
        verdicts(&[
            ("changed.txt", "differs", "content"),
            ("gone.txt", "missing", ""),
            ("keep/new.txt", "extra", ""),
        ])
    );
    let out = check(src.to_str().unwrap(), &url, &dst_opts);
    assert_eq!(exit_code(&out), 1, "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Contents were not compared"), "{text}");
    let rows: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("missing") || l.starts_with("extra") || l.starts_with("differs"))
        .collect();
    assert_eq!(rows.len(), 2, "{text}");
    assert!(
        rows.iter()
            .any(|r| r.starts_with("missing") && r.ends_with(" gone.txt")),
        "{text}"
    );
    assert!(
        rows.iter()
            .any(|r| r.starts_with("extra") && r.ends_with(" keep/new.txt")),
        "{text}"
    );

    // S3 -> fs (the copy at S3 as it is now), then the same three changes on the file system.
    let back = dir.path().join("back");
    let mut args = vec![
        "copy".to_string(),
        url.clone(),
        back.to_string_lossy().into(),
    ];
    args.extend(src_opts.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = btp_local(&args);
    assert!(
        out.status.success(),
        "copy from {}: {}",
        s3.name(),
        stderr(&out)
    );
    let changed = back.join("keep/c.txt");
    let mtime = std::fs::metadata(&changed).unwrap().modified().unwrap();
    std::fs::write(&changed, "CHARLIE").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&changed)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    std::fs::remove_file(back.join("a.txt")).unwrap();
    std::fs::write(back.join("keep/deep/added.txt"), "new").unwrap();
    let out = check(
        &url,
        back.to_str().unwrap(),
        &[src_opts.clone(), vec!["--checksum".into()], json()].concat(),
    );
    assert_eq!(exit_code(&out), 1, "{}", stderr(&out));
    assert_eq!(
        differences(&out),
        verdicts(&[
            ("a.txt", "missing", ""),
            ("keep/c.txt", "differs", "content"),
            ("keep/deep/added.txt", "extra", ""),
        ])
    );
    let report: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap()).unwrap();
    let c = &report["task"]["check"];
    assert_eq!(c["contents_compared"], true);
    // Every other path is the same: the 1 GiB file among them, hashed at least at the file system
    // (its S3 copy went up in parts: no MD5 ETag).
    assert_eq!(c["same"], 5, "{c}");
    assert!(c["bytes_hashed"].as_u64().unwrap() >= 1 << 30, "{c}");
    let out = check(&url, back.to_str().unwrap(), &src_opts);
    assert_eq!(exit_code(&out), 1, "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Contents were not compared"), "{text}");
    assert!(!text.lines().any(|l| l.starts_with("differs")), "{text}");
    // --one-way: extra paths do not count, the missing one does.
    let out = check(
        &url,
        back.to_str().unwrap(),
        &[src_opts.clone(), vec!["--one-way".into()]].concat(),
    );
    assert_eq!(exit_code(&out), 1, "{}", stderr(&out));
    assert!(!String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.starts_with("extra")));
}

/// Metadata of every entry of a tree: what a write of any kind would change.
fn metadata(root: &Path) -> BTreeMap<PathBuf, (u64, i128, u32, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let m = std::fs::symlink_metadata(&d).unwrap();
        out.insert(
            d.clone(),
            (
                m.len(),
                m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
                m.mode(),
                m.ino(),
            ),
        );
        if m.is_dir() {
            for e in std::fs::read_dir(&d).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
    }
    out
}

/// The small tree of the cluster tests, copied; then at the destination one file changed with
/// the same size and time, one deleted, one added.
fn copied_and_changed(c: &Cluster, src: &Path, dst: &Path) {
    gen_tree(src, 60, 300 << 10);
    let id = c.start_task(src, dst, &[]);
    let t = wait_task(&c.url, &id, Duration::from_secs(120));
    assert_eq!(t["state"], "completed", "{t}");
    let changed = dst.join("group-00/sub-024/file-00043.dat");
    let before = std::fs::metadata(&changed).unwrap();
    let mut bytes = std::fs::read(&changed).unwrap();
    assert!(!bytes.is_empty());
    bytes[0] ^= 0xff;
    std::fs::write(&changed, &bytes).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&changed)
        .unwrap()
        .set_modified(before.modified().unwrap())
        .unwrap();
    std::fs::remove_file(dst.join("group-03/sub-003/file-00022.dat")).unwrap();
    std::fs::write(dst.join("group-01/added.txt"), "not in the source").unwrap();
}

/// A check task's verdicts that are not `same`: path -> (verdict, what).
fn task_differences(url: &str, id: &str) -> BTreeMap<String, (String, String)> {
    let out = btp(
        url,
        &["task", "report", id, "--differences", "--output", "json"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["path"].as_str().unwrap().to_string(),
                (
                    v["verdict"].as_str().unwrap().to_string(),
                    v["what"].as_str().unwrap_or("").to_string(),
                ),
            )
        })
        .collect()
}

/// A check task over two clients writes nothing at either side (every entry's size, time, mode
/// and inode the same before and after; a missing destination is not created), both clients
/// do work, its retry copies exactly the differing and missing files, and then a check is clean.
#[test]
fn check_writes_nothing_spreads_over_clients_and_its_retry_copies_the_differences() {
    let dir = test_dir();
    let mut c = Cluster::start(dir.path(), &[]);
    c.add_client(&["--workers", "2"]);
    c.add_client(&["--workers", "2"]);
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    copied_and_changed(&c, &src, &dst);
    let before = (metadata(&src), metadata(&dst));

    // One file per Hash job, so both clients get some.
    let id = c.start_task(
        &src,
        &dst,
        &[
            "--mode",
            "check",
            "--compare",
            "checksum",
            "--batch-files",
            "1",
        ],
    );
    let t = wait_task(&c.url, &id, Duration::from_secs(120));
    assert_eq!(t["state"], "completed", "{t}");
    assert_eq!(
        (metadata(&src), metadata(&dst)),
        before,
        "the check changed a side"
    );
    let want = verdicts(&[
        ("group-01/added.txt", "extra", ""),
        ("group-00/sub-024/file-00043.dat", "differs", "content"),
        ("group-03/sub-003/file-00022.dat", "missing", ""),
    ]);
    assert_eq!(task_differences(&c.url, &id), want);
    let stats = stats(&src);
    let chk = &t["check"];
    assert_eq!(chk["same"].as_u64().unwrap(), stats.files - 2, "{chk}");
    assert_eq!(
        (
            chk["differs"].as_u64(),
            chk["missing"].as_u64(),
            chk["extra"].as_u64(),
            chk["errors"].as_u64()
        ),
        (Some(1), Some(1), Some(1), Some(0))
    );
    let report = c.report(&id);
    let shares = report["clients"].as_array().unwrap();
    assert_eq!(shares.len(), 2, "both clients ran jobs: {shares:?}");
    assert!(
        shares.iter().all(|s| s["jobs"].as_u64().unwrap() > 0),
        "{shares:?}"
    );
    // Every path once in `task files`: the same ones and the three.
    let out = btp(&c.url, &["task", "files", &id, "--output", "csv"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows = String::from_utf8_lossy(&out.stdout).lines().count() - 1;
    assert_eq!(rows as u64, stats.files + 1);
    let shown = btp(&c.url, &["task", "get", &id]);
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains("1 differ, 1 missing, 1 extra, 0 errors"),
        "{shown}"
    );

    // A destination that does not exist: everything missing, nothing created.
    let nowhere = dir.path().join("nowhere");
    let id2 = c.start_task(&src, &nowhere, &["--mode", "check"]);
    let t2 = wait_task(&c.url, &id2, Duration::from_secs(60));
    assert_eq!(
        t2["check"]["missing"].as_u64().unwrap(),
        stats.files,
        "{t2}"
    );
    assert!(!nowhere.exists(), "the check created its destination");

    // The retry: a copy task of exactly the differing and missing files.
    let copy = btp_json(&c.url, &["task", "retry", &id]);
    let copy_id = copy["id"].as_str().unwrap().to_string();
    assert_ne!(copy_id, id);
    let t = wait_task(&c.url, &copy_id, Duration::from_secs(60));
    assert_eq!(t["state"], "completed", "{t}");
    let copied: Vec<String> = task_files(&c.url, &copy_id).into_keys().collect();
    assert_eq!(
        copied,
        [
            "group-00/sub-024/file-00043.dat",
            "group-03/sub-003/file-00022.dat"
        ]
    );
    assert_eq!(
        std::fs::read(dst.join("group-00/sub-024/file-00043.dat")).unwrap(),
        std::fs::read(src.join("group-00/sub-024/file-00043.dat")).unwrap()
    );
    // A second check (of the copy task, with its filters) is clean but for the added file.
    let again = btp_json(&c.url, &["task", "verify", &copy_id, "--checksum"]);
    let again_id = again["id"].as_str().unwrap().to_string();
    let t = wait_task(&c.url, &again_id, Duration::from_secs(60));
    assert_eq!(t["state"], "completed", "{t}");
    assert_eq!(
        task_differences(&c.url, &again_id),
        verdicts(&[("group-01/added.txt", "extra", "")])
    );
    assert_eq!(t["check"]["same"].as_u64().unwrap(), stats.files, "{t}");
    let out = check(
        src.to_str().unwrap(),
        dst.to_str().unwrap(),
        &["--checksum".into(), "--one-way".into()],
    );
    assert_eq!(
        exit_code(&out),
        0,
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
}

/// Bad input: one error line and exit 2; a retry of a clean check is refused.
#[test]
fn check_refuses_bad_input_with_exit_2() {
    let dir = test_dir();
    let out = btp_local(&[
        "check",
        dir.path().join("none").to_str().unwrap(),
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(exit_code(&out), 2, "{}", stderr(&out));
    let line = error_line(&out);
    assert!(line.contains("does not exist"), "{line}");
    let out = btp_local(&["check", "nope://x", dir.path().to_str().unwrap()]);
    assert_eq!(exit_code(&out), 2, "{}", stderr(&out));
}

/// A file that cannot be read gets an `error` verdict with the reason, and the check fails.
#[test]
fn an_unreadable_file_is_an_error_verdict() {
    let dir = test_dir();
    let mut c = Cluster::start(dir.path(), &[]);
    c.add_client_env(&[], &[("BTP_FAULT_UNREADABLE", "secret")]);
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    for root in [&src, &dst] {
        std::fs::create_dir_all(root).unwrap();
        std::fs::write(root.join("plain.txt"), "same").unwrap();
        std::fs::write(root.join("secret.txt"), "same too").unwrap();
    }
    let id = c.start_task(&src, &dst, &["--mode", "check", "--compare", "checksum"]);
    let t = wait_task(&c.url, &id, Duration::from_secs(60));
    assert_eq!(t["state"], "failed", "{t}");
    assert_eq!(
        (t["check"]["same"].as_u64(), t["check"]["errors"].as_u64()),
        (Some(1), Some(1)),
        "{t}"
    );
    let d = task_differences(&c.url, &id);
    assert_eq!(d.len(), 1, "{d:?}");
    let (verdict, what) = &d["secret.txt"];
    assert_eq!(verdict, "error");
    assert!(what.contains("injected read fault"), "{what}");
}
