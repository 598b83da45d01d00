//! SFTP end to end against a real OpenSSH server (Debian's `sshd`, started here on a free port
//! of 127.0.0.1 with a throwaway host key and a user key made for the test): fs -> SFTP, SFTP ->
//! fs and SFTP -> SFTP of a tree with a large file whose parts run on both clients, checksum
//! verified; a re-run copies nothing; sync deletes, and never through a link on the server; a
//! cancelled copy leaves no temporary file; a wrong key or an unknown host is one clear error.
//! What the server stores is read from the directory it serves, with std::fs.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use support::*;

/// Every name under `root` that a write in progress would leave (`.<name>.btp-<id>`).
fn leftovers(root: &Path) -> Vec<String> {
    walk(root)
        .keys()
        .map(|p| p.to_string_lossy().into_owned())
        .filter(|p| p.contains(".btp-"))
        .collect()
}

/// Creates a task with `extra` arguments and waits for it; its report.
fn run(c: &Cluster, src: &str, dst: &str, extra: &[String]) -> serde_json::Value {
    let mut args = vec!["task", "create", "--src", src, "--dst", dst, "--start"];
    args.extend(extra.iter().map(String::as_str));
    let t = btp_json(&c.url, &args);
    let id = t["id"].as_str().unwrap().to_string();
    let started = std::time::Instant::now();
    wait_task(&c.url, &id, Duration::from_secs(600));
    eprintln!("{src} -> {dst}: {:.1} s", started.elapsed().as_secs_f64());
    c.report(&id)
}

fn args(parts: &[&[String]]) -> Vec<String> {
    parts.iter().flat_map(|p| p.iter().cloned()).collect()
}

fn strs(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

#[test]
fn files_move_between_a_file_system_and_sftp_byte_for_byte() {
    let tmp = test_dir();
    let Some(sshd) = start_sshd(tmp.path()) else {
        return;
    };
    let served = tmp.path().join("served");
    std::fs::create_dir_all(&served).unwrap();
    let big_mib: u64 = std::env::var("BTP_SFTP_BIG_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(160);
    let src = tmp.path().join("src");
    let tree = gen_tree(&src, 200, big_mib << 20);
    // SFTP, like object stores here, gets no empty directories.
    std::fs::remove_dir(src.join("empty-dir")).unwrap();

    let mut c = Cluster::start(tmp.path(), &[]);
    c.add_client(&["--workers", "4"]);
    c.add_client(&["--workers", "4"]);
    let on_server = served.join("mirror/data");
    let url = sshd.url(&on_server);
    let s = src.to_str().unwrap();
    let checksum = strs(&["--verify", "checksum", "--part-size", "32MiB"]);

    // fs -> SFTP: what the server stores is the tree, byte for byte.
    let up = run(&c, s, &url, &args(&[&checksum, &sshd.opts("dst")]));
    assert_eq!(up["task"]["state"], "completed", "{up}");
    assert_eq!(up["task"]["files_copied"], tree.files);
    assert_eq!(up["task"]["bytes_copied"], tree.bytes);
    assert_eq!(up["task"]["dst"], url.as_str());
    assert_same_tree(&src, &on_server);
    assert_eq!(leftovers(&served), Vec::<String>::new());
    let clients = clients_that_copied_parts(tmp.path(), "big file.bin");
    assert_eq!(
        clients.len(),
        2,
        "parts of the large file ran on {clients:?}"
    );

    // SFTP -> fs
    let back = tmp.path().join("back");
    let down = run(
        &c,
        &url,
        back.to_str().unwrap(),
        &args(&[&checksum, &sshd.opts("src")]),
    );
    assert_eq!(down["task"]["state"], "completed", "{down}");
    assert_eq!(down["task"]["files_copied"], tree.files);
    assert_same_tree(&src, &back);

    // SFTP -> SFTP, into another directory of the same server.
    let copy = served.join("copy");
    let across = run(
        &c,
        &url,
        &sshd.url(&copy),
        &args(&[&checksum, &sshd.opts("src"), &sshd.opts("dst")]),
    );
    assert_eq!(across["task"]["state"], "completed", "{across}");
    assert_eq!(across["task"]["files_copied"], tree.files);
    assert_same_tree(&src, &copy);
    assert_eq!(leftovers(&served), Vec::<String>::new());

    // Unchanged: nothing is sent again.
    let again = run(&c, s, &url, &sshd.opts("dst"));
    assert_eq!(again["task"]["state"], "completed", "{again}");
    assert_eq!(again["task"]["bytes_copied"], 0, "{again}");
    assert_eq!(again["task"]["files_skipped"], tree.files);

    // Sync deletes what the source no longer has, and a link it does not have (the link, not
    // what it points to); it lists and deletes nothing through a directory that became a link.
    std::fs::remove_file(src.join("hash#1.txt")).unwrap();
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("keep.txt"), b"not the destination's").unwrap();
    std::os::unix::fs::symlink(&outside, on_server.join("extra-link")).unwrap();
    let group = on_server.join("group-03");
    std::fs::rename(&group, served.join("group-03.real")).unwrap();
    std::os::unix::fs::symlink(&outside, &group).unwrap();
    let synced = run(
        &c,
        s,
        &url,
        &args(&[&strs(&["--mode", "sync"]), &sshd.opts("dst")]),
    );
    assert_eq!(synced["task"]["state"], "failed", "{synced}");
    assert_eq!(synced["task"]["files_deleted"], 2, "{synced}");
    assert!(!on_server.join("hash#1.txt").exists());
    assert!(std::fs::symlink_metadata(on_server.join("extra-link")).is_err());
    assert_eq!(
        std::fs::read(outside.join("keep.txt")).unwrap(),
        b"not the destination's"
    );
    assert_eq!(
        walk(&outside).len(),
        1,
        "nothing was written through the link: {:?}",
        walk(&outside)
    );
    let failures = synced["failures"].as_array().unwrap();
    assert!(!failures.is_empty(), "{synced}");
    for f in failures {
        let (path, reason) = (f["path"].as_str().unwrap(), f["reason"].as_str().unwrap());
        assert!(path.starts_with("group-03/"), "{f}");
        assert!(reason.contains("symbolic link at group-03"), "{f}");
    }
    // Once the link is gone, the same sync completes.
    std::fs::remove_file(&group).unwrap();
    std::fs::rename(served.join("group-03.real"), &group).unwrap();
    let synced = run(
        &c,
        s,
        &url,
        &args(&[&strs(&["--mode", "sync"]), &sshd.opts("dst")]),
    );
    assert_eq!(synced["task"]["state"], "completed", "{synced}");
    assert_eq!(synced["task"]["files_deleted"], 0, "{synced}");
    assert_same_tree(&src, &on_server);
    assert_eq!(leftovers(&served), Vec::<String>::new());
}

#[test]
fn cancelling_a_copy_to_sftp_leaves_no_temporary_file() {
    let tmp = test_dir();
    let Some(sshd) = start_sshd(tmp.path()) else {
        return;
    };
    let served = tmp.path().join("served");
    std::fs::create_dir_all(&served).unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    // One file in parts, one streamed whole.
    for (name, len) in [("huge.bin", 192u64 << 20), ("whole.bin", 48 << 20)] {
        let f = std::fs::File::create(src.join(name)).unwrap();
        f.set_len(len).unwrap();
    }
    let mut c = Cluster::start(tmp.path(), &[]);
    c.add_client(&["--workers", "4"]);
    let url = sshd.url(&served.join("in"));
    let mut a = strs(&[
        "task",
        "create",
        "--src",
        src.to_str().unwrap(),
        "--dst",
        &url,
        "--start",
        "--part-size",
        "16MiB",
        "--multipart-threshold",
        "64MiB",
        "--speed-limit",
        "16MiB/s",
    ]);
    a.extend(sshd.opts("dst"));
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let id = btp_json(&c.url, &a)["id"].as_str().unwrap().to_string();
    // Mid-copy: temporary files and staged parts are on the server.
    wait_for("bytes copied", Duration::from_secs(60), || {
        let t = btp_json(&c.url, &["task", "get", &id]);
        (t["bytes_copied"].as_u64().unwrap() >= 24 << 20).then_some(())
    });
    assert!(!leftovers(&served).is_empty(), "nothing staged yet");
    let t = btp_json(&c.url, &["task", "cancel", &id]);
    assert_eq!(t["state"], "cancelled");
    wait_for("temporary files removed", Duration::from_secs(60), || {
        leftovers(&served).is_empty().then_some(())
    });
    // Nothing under a final name, and it stays so.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(leftovers(&served), Vec::<String>::new());
    assert!(!served.join("in/huge.bin").exists());
    assert!(!served.join("in/whole.bin").exists());
}

#[test]
fn a_wrong_key_or_an_unknown_host_is_one_clear_error_without_secrets() {
    let tmp = test_dir();
    let Some(sshd) = start_sshd(tmp.path()) else {
        return;
    };
    let served = tmp.path().join("served");
    std::fs::create_dir_all(&served).unwrap();
    let src = tmp.path().join("src");
    gen_tree(&src, 5, 0);
    let c = Cluster::start(tmp.path(), &[]);
    let url = sshd.url(&served.join("in"));
    let wrong = tmp.path().join("wrong_key");
    ssh_keygen(&wrong);
    let private = std::fs::read_to_string(&wrong).unwrap();
    let secret_line = private.lines().nth(1).unwrap().to_string();
    let create = |opts: &[String]| {
        let mut a = strs(&[
            "task",
            "create",
            "--src",
            src.to_str().unwrap(),
            "--dst",
            &url,
        ]);
        a.extend(opts.iter().cloned());
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        btp(&c.url, &a)
    };

    // The right key, but a host key the client does not know: refused by default (strict).
    // (First: accepting it once puts it in the known hosts of the user running the client.)
    let out = create(&strs(&[
        "--dst-opt",
        &format!("key={}", sshd.key.display()),
    ]));
    assert!(!out.status.success());
    let line = error_line(&out);
    assert!(line.contains("Host key verification failed"), "{line}");

    // A key the server does not accept.
    let out = create(&strs(&[
        "--dst-opt",
        &format!("key={}", wrong.display()),
        "--dst-opt",
        "known_hosts_strategy=accept",
    ]));
    assert!(!out.status.success());
    let line = error_line(&out);
    assert!(
        line.contains("cannot be reached") && line.contains("Permission denied"),
        "{line}"
    );
    assert!(line.contains(&url), "{line}");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!all.contains(&secret_line), "the key shows: {all}");
    assert_eq!(all.trim().lines().count(), 1, "one line: {all}");

    // A password in the URL is refused without repeating it; so is an unknown option.
    let with_pw = url.replacen('@', ":hunter2@", 1);
    let out = btp(
        &c.url,
        &[
            "task",
            "create",
            "--src",
            src.to_str().unwrap(),
            "--dst",
            &with_pw,
        ],
    );
    let line = error_line(&out);
    assert!(line.contains("credentials in an endpoint URL"), "{line}");
    assert!(!line.contains("hunter2"), "{line}");
    let out = create(&strs(&["--dst-opt", "password=x"]));
    assert!(
        error_line(&out).contains("unknown option 'password' for sftp endpoints"),
        "{}",
        error_line(&out)
    );

    // A missing source directory is refused, and not created.
    let missing = served.join("nothing-here");
    let out = btp(
        &c.url,
        &[
            "task",
            "create",
            "--src",
            &sshd.url(&missing),
            "--dst",
            tmp.path().join("out").to_str().unwrap(),
            "--src-opt",
            &format!("key={}", sshd.key.display()),
            "--src-opt",
            "known_hosts_strategy=accept",
        ],
    );
    let line = error_line(&out);
    assert!(line.contains("does not exist"), "{line}");
    assert!(!missing.exists());
}

#[test]
fn sshd_passes_the_backend_suite() {
    let tmp = test_dir();
    let Some(sftp) = support::backends::SftpServer::start(tmp.path()) else {
        return;
    };
    support::backends::backend_suite(&sftp, tmp.path());
}

/// Every entry of an SFTP source ends in the per-file report once, whatever it is: links to a
/// file and to a directory, a dangling link, a link loop and a FIFO, under each `--links`
/// policy; the source is listed by each entry's own type (OpenDAL's lister follows links and
/// drops dangling ones). A directory holding a name that is not UTF-8 cannot be read by the
/// SFTP client library (it decodes names as text and its session breaks): that directory fails
/// once, with the reason, and the rest of the tree is copied.
#[test]
fn an_sftp_source_accounts_for_every_entry_under_each_link_policy() {
    use std::os::unix::ffi::OsStrExt;
    let tmp = test_dir();
    let Some(sshd) = start_sshd(tmp.path()) else {
        return;
    };
    let src = tmp.path().join("served/src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("a.txt"), b"alpha").unwrap();
    std::fs::write(src.join("sub/b.txt"), b"bravo").unwrap();
    std::os::unix::fs::symlink("a.txt", src.join("to-file")).unwrap();
    std::os::unix::fs::symlink("sub", src.join("to-dir")).unwrap();
    std::os::unix::fs::symlink("nowhere", src.join("dangling")).unwrap();
    std::os::unix::fs::symlink("..", src.join("sub/loop")).unwrap();
    let odd = std::ffi::OsStr::from_bytes(b"caf\xe9.txt");
    std::fs::create_dir(src.join("odd")).unwrap();
    std::fs::write(src.join("odd").join(odd), b"latin-1").unwrap();
    let fifo = std::ffi::CString::new(src.join("pipe").as_os_str().as_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);

    let mut c = Cluster::start(tmp.path(), &[]);
    c.add_client(&["--workers", "2"]);
    let failed = |reason: &str| ("failed".to_string(), reason.to_string());
    let policies = [
        (
            "copy",
            vec![
                ("a.txt", ("copied".into(), String::new())),
                ("sub/b.txt", ("copied".into(), String::new())),
                ("to-file", ("copied".into(), String::new())),
                ("to-dir", ("copied".into(), String::new())),
                ("dangling", ("copied".into(), String::new())),
                ("sub/loop", ("copied".into(), String::new())),
            ],
        ),
        (
            "follow",
            vec![
                ("a.txt", ("copied".into(), String::new())),
                ("sub/b.txt", ("copied".into(), String::new())),
                ("to-file", ("copied".into(), String::new())),
                ("to-dir/b.txt", ("copied".into(), String::new())),
                ("to-dir/loop", failed("symbolic link loop")),
                ("dangling", failed("dangling symbolic link")),
                ("sub/loop", failed("symbolic link loop")),
            ],
        ),
        (
            "skip",
            vec![
                ("a.txt", ("copied".into(), String::new())),
                ("sub/b.txt", ("copied".into(), String::new())),
                ("to-file", ("skipped".into(), "--links skip".into())),
                ("to-dir", ("skipped".into(), "--links skip".into())),
                ("dangling", ("skipped".into(), "--links skip".into())),
                ("sub/loop", ("skipped".into(), "--links skip".into())),
            ],
        ),
    ];
    for (links, expected) in policies {
        let dst = tmp.path().join(format!("dst-{links}"));
        let report = run(
            &c,
            &sshd.url(&src),
            dst.to_str().unwrap(),
            &args(&[&strs(&["--links", links]), &sshd.opts("src")]),
        );
        let t = &report["task"];
        let counted = [
            "files_copied",
            "files_skipped",
            "files_failed",
            "files_excluded",
        ]
        .iter()
        .map(|k| t[*k].as_u64().unwrap())
        .sum::<u64>();
        assert_eq!(t["files_found"].as_u64().unwrap(), counted, "{links}: {t}");
        assert!(t["files_found"].as_u64().unwrap() > 0, "{links}: {report}");
        let entries = report_entries(&c.url, t["id"].as_str().unwrap());
        let mut want: BTreeMap<String, (String, String)> = expected
            .into_iter()
            .map(|(p, o)| (p.to_string(), o))
            .collect();
        want.insert("pipe".into(), failed("neither a file nor a directory"));
        // Each expected reason is a part of the reason given.
        let got: BTreeMap<String, (String, String)> = entries
            .iter()
            .map(|(p, e)| {
                let part = want.get(p).map(|(_, r)| r.as_str()).unwrap_or_default();
                let reason = match e.reason.contains(part) {
                    true => part.to_string(),
                    false => e.reason.clone(),
                };
                (p.clone(), (e.outcome.clone(), reason))
            })
            .collect();
        assert_eq!(got, want, "--links {links}");
        let failed_entries = want.values().filter(|(o, _)| o == "failed").count();
        assert_eq!(
            t["files_found"].as_u64().unwrap(),
            entries.len() as u64,
            "{links}"
        );
        assert_eq!(std::fs::read(dst.join("a.txt")).unwrap(), b"alpha");
        let broken: Vec<&serde_json::Value> = report["failures"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["path"].as_str().unwrap().starts_with("odd"))
            .collect();
        assert_eq!(broken.len(), 1, "{links}: {report}");
        assert_eq!(
            report["failures"].as_array().unwrap().len(),
            1 + failed_entries,
            "{report}"
        );
        let reason = broken[0]["reason"].as_str().unwrap();
        assert!(reason.contains("not valid UTF-8"), "{reason}");
        assert_eq!(broken[0]["attempts"], 1, "{report}");
        match links {
            "copy" => {
                assert_eq!(
                    std::fs::read_link(dst.join("to-dir")).unwrap(),
                    Path::new("sub")
                );
                assert_eq!(
                    std::fs::read_link(dst.join("dangling")).unwrap(),
                    Path::new("nowhere")
                );
            }
            "follow" => {
                assert_eq!(std::fs::read(dst.join("to-file")).unwrap(), b"alpha");
                assert_eq!(std::fs::read(dst.join("to-dir/b.txt")).unwrap(), b"bravo");
            }
            _ => assert!(std::fs::symlink_metadata(dst.join("to-file")).is_err()),
        }
    }
}
