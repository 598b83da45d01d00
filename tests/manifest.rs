//! Manifests (`--files-from`): exactly the files a manifest names are copied, without a listing
//! of the source; entries the source does not have, and entries that name nothing below it,
//! are failures with their reason; every entry is in the per-file report once.

mod support;

use std::path::Path;
use std::time::Duration;

use support::*;

fn write(path: &Path, body: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, body).unwrap();
}

/// found = copied + skipped + failed + excluded, and the report has every entry once.
fn assert_accounted(
    url: &str,
    t: &serde_json::Value,
) -> std::collections::BTreeMap<String, ReportEntry> {
    let n = |k: &str| t[k].as_u64().unwrap();
    assert_eq!(
        n("files_found"),
        n("files_copied") + n("files_skipped") + n("files_failed") + n("files_excluded"),
        "{t}"
    );
    let report = report_entries(url, t["id"].as_str().unwrap());
    assert_eq!(report.len() as u64, n("files_found"), "{report:?}");
    report
}

#[test]
fn a_manifest_copies_exactly_its_files_and_fails_the_others_with_their_reason() {
    let tmp = test_dir();
    let src = tmp.path().join("src");
    let dst = tmp.path().join("dst");
    for (p, body) in [
        ("a.txt", &b"a"[..]),
        ("dir/b.txt", b"bb"),
        ("dir/sub/c c.txt", b"ccc"),
        ("not-listed.txt", b"x"),
        ("dir/not-listed-either.txt", b"y"),
        ("other.txt", b"o"),
        ("x.skip", b"s"),
    ] {
        write(&src.join(p), body);
    }
    // A directory outside the source, reachable through a link inside it.
    write(&tmp.path().join("outside/secret.txt"), b"secret");
    std::os::unix::fs::symlink(tmp.path().join("outside"), src.join("linkdir")).unwrap();
    let manifest = tmp.path().join("manifest.txt");
    let mut text = b"a.txt\r\n./dir/b.txt\nmissing.txt\n/etc/passwd\n../outside/secret.txt\n\
                     dir/sub/c c.txt\ndir\na.txt\n\n   \ndir/../other.txt\nlinkdir/secret.txt\n\
                     x.skip\nnul"
        .to_vec();
    text.extend(b"\0x\nlast/missing.txt");
    std::fs::write(&manifest, &text).unwrap();

    let mut c = Cluster::start(tmp.path(), &[]);
    c.add_client(&[]);
    let m = manifest.to_str().unwrap();
    let id = c.start_task(&src, &dst, &["--files-from", m, "--exclude", "*.skip"]);
    let t = wait_task(&c.url, &id, Duration::from_secs(120));
    assert_eq!(t["state"], "failed", "{t}");
    assert_eq!(t["files_from"], m, "{t}");
    assert_eq!(t["files_copied"], 3, "{t}");
    assert_eq!(t["files_excluded"], 1, "{t}");
    // 15 lines, two of them blank and one a.txt again (counted once).
    assert_eq!(t["files_found"], 12, "{t}");
    assert_eq!(t["files_failed"], 8, "{t}");
    let report = assert_accounted(&c.url, &t);

    // Exactly the listed files that exist, nothing else.
    assert_eq!(
        tree_files(&dst),
        [("a.txt", 1), ("dir/b.txt", 2), ("dir/sub/c c.txt", 3)]
            .into_iter()
            .map(|(p, s)| (p.to_string(), s))
            .collect()
    );
    for p in ["a.txt", "dir/b.txt", "dir/sub/c c.txt"] {
        assert_eq!(report[p].outcome, "copied", "{p}: {:?}", report[p]);
    }
    assert_eq!(report["x.skip"].outcome, "excluded");
    let failed = |p: &str, why: &str| {
        let e = report
            .get(p)
            .unwrap_or_else(|| panic!("{p} not in the report: {report:?}"));
        assert_eq!(e.outcome, "failed", "{p}: {e:?}");
        assert!(e.reason.contains(why), "{p}: {e:?}");
    };
    failed(
        "missing.txt",
        "not found at the source (listed in the manifest, line 3)",
    );
    failed("last/missing.txt", "not found at the source");
    failed("/etc/passwd", "absolute path");
    failed("../outside/secret.txt", "'..'");
    failed("dir/../other.txt", "'..'");
    failed("dir", "a directory");
    failed("linkdir/secret.txt", "linkdir/ is a symbolic link");
    failed("nul\\x00x", "NUL");
    assert!(!dst.join("other.txt").exists() && !dst.join("linkdir").exists());

    // A second run copies nothing again: the files are up to date.
    let id = c.start_task(&src, &dst, &["--files-from", m, "--exclude", "*.skip"]);
    let t = wait_task(&c.url, &id, Duration::from_secs(120));
    assert_eq!(t["files_copied"], 0, "{t}");
    assert_eq!(t["files_skipped"], 3, "{t}");
    assert_eq!(t["files_failed"], 8, "{t}");
    assert_accounted(&c.url, &t);

    // `btp copy` takes it too, and its exit code says that files failed.
    let dst2 = tmp.path().join("dst2");
    let out = btp(
        &c.url,
        &[
            "copy",
            src.to_str().unwrap(),
            dst2.to_str().unwrap(),
            "--files-from",
            m,
            "--exclude",
            "*.skip",
        ],
    );
    assert!(!out.status.success());
    assert_eq!(tree_files(&dst2), tree_files(&dst));
}

#[test]
fn a_csv_manifest_on_s3_names_objects_of_an_s3_source_with_their_sizes() {
    let tmp = test_dir();
    let Some((_moto, port)) = start_moto(tmp.path()) else {
        return;
    };
    for bucket in ["data", "lists"] {
        let a = s3_http(port, "PUT", &format!("/{bucket}"), b"");
        assert!(a.starts_with("HTTP/1.1 200"), "{a}");
    }
    let objects: &[(&str, &[u8])] = &[
        ("in/a, comma.txt", b"hello"),
        ("in/b.txt", b"0123456789"),
        ("in/c.txt", b""),
        ("in/d.txt", b"dd"),
        ("in/unlisted.txt", b"u"),
    ];
    for (key, body) in objects {
        let a = s3_http(port, "PUT", &format!("/data/{}", urlencode_path(key)), body);
        assert!(a.starts_with("HTTP/1.1 200"), "{key}: {a}");
    }
    let csv = "path,size,etag\n\
               \"a, comma.txt\",5,x\n\
               b.txt,999,\n\
               c.txt,,\n\
               d.txt,2\n\
               gone.txt,1\n\
               \n";
    let a = s3_http(port, "PUT", "/lists/m/manifest.csv", csv.as_bytes());
    assert!(a.starts_with("HTTP/1.1 200"), "{a}");

    let mut c = Cluster::start(tmp.path(), &[]);
    c.add_client(&[]);
    let dst = tmp.path().join("dst");
    let mut args: Vec<String> = vec!["--files-from".into(), "s3://lists/m/manifest.csv".into()];
    args.extend(s3_opts(port, "src"));
    args.extend(s3_opts(port, "files-from"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let id = c.start_task_at("s3://data/in", dst.to_str().unwrap(), &args);
    let t = wait_task(&c.url, &id, Duration::from_secs(120));
    assert_eq!(t["files_from"], "s3://lists/m/manifest.csv", "{t}");
    assert_eq!(t["files_found"], 5, "{t}");
    assert_eq!(t["files_copied"], 3, "{t}");
    assert_eq!(t["files_failed"], 2, "{t}");
    let report = assert_accounted(&c.url, &t);
    assert!(
        report["b.txt"]
            .reason
            .contains("the source has 10 bytes, the manifest says 999"),
        "{report:?}"
    );
    assert!(
        report["gone.txt"]
            .reason
            .contains("not found at the source"),
        "{report:?}"
    );
    assert_eq!(
        tree_files(&dst),
        [("a, comma.txt", 5), ("c.txt", 0), ("d.txt", 2)]
            .into_iter()
            .map(|(p, s)| (p.to_string(), s))
            .collect()
    );
    assert_eq!(std::fs::read(dst.join("a, comma.txt")).unwrap(), b"hello");

    // Run again: the copies are up to date.
    let id = c.start_task_at("s3://data/in", dst.to_str().unwrap(), &args);
    let t = wait_task(&c.url, &id, Duration::from_secs(120));
    assert_eq!(t["files_copied"], 0, "{t}");
    assert_eq!(t["files_skipped"], 3, "{t}");
    assert_accounted(&c.url, &t);
}

fn urlencode_path(key: &str) -> String {
    key.split('/').map(urlencode).collect::<Vec<_>>().join("/")
}

#[test]
fn bad_manifests_are_refused_with_one_line_and_store_no_task() {
    let tmp = test_dir();
    let src = tmp.path().join("src");
    write(&src.join("a.txt"), b"a");
    let manifest = tmp.path().join("m.txt");
    std::fs::write(&manifest, "a.txt\n").unwrap();
    let c = Cluster::start(tmp.path(), &[]);
    let (s, d) = (
        src.to_str().unwrap(),
        tmp.path().join("dst").to_string_lossy().into_owned(),
    );
    let m = manifest.to_str().unwrap();
    let missing = tmp.path().join("nope.txt");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--files-from", m, "--mode", "sync"],
            "files_from cannot be used with mode sync",
        ),
        (
            vec!["--files-from", missing.to_str().unwrap()],
            "does not exist",
        ),
        (vec!["--files-from", s], "not a file"),
        (vec!["--files-from", "s3://bucket"], "names no file"),
        (
            vec!["--files-from", "gopher://host/m.txt"],
            "unsupported endpoint scheme 'gopher'",
        ),
        (
            vec!["--files-from-opt", "region=x"],
            "files_from_options given without files_from",
        ),
        (
            vec!["--files-from", m, "--files-from-opt", "region=x"],
            "manifest: unknown option 'region'",
        ),
    ];
    for (extra, want) in cases {
        let mut args = vec!["task", "create", "--src", s, "--dst", &d];
        args.extend(extra.iter().copied());
        let out = btp(&c.url, &args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let line = error_line(&out);
        assert!(line.contains(want), "{args:?}: {line}");
    }
    let tasks = btp_json(&c.url, &["task", "list"]);
    assert_eq!(tasks["tasks"].as_array().unwrap().len(), 0, "{tasks}");
}

#[test]
fn a_manifest_read_again_after_its_client_was_killed_loses_and_doubles_no_file() {
    let tmp = test_dir();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    std::fs::create_dir_all(&src).unwrap();
    const FILES: usize = 1200;
    let mut manifest = String::new();
    for i in 0..FILES {
        let name = format!("d{}/f{i:05}.txt", i % 7);
        write(&src.join(&name), format!("content {i}").as_bytes());
        manifest.push_str(&name);
        manifest.push('\n');
        if i % 12 == 0 {
            manifest.push_str(&format!("gone/{i}.txt\n"));
        }
    }
    let m = tmp.path().join("m.txt");
    std::fs::write(&m, manifest).unwrap();
    let mut c = Cluster::start(tmp.path(), &["--ack-wait", "3s"]);
    c.add_client_env(
        &["--ack-wait", "3s", "--workers", "2"],
        &[("BTP_FAULT_LIST_PAGE_DELAY_MS", "100")],
    );
    let id = c.start_task(
        &src,
        &dst,
        &[
            "--files-from",
            m.to_str().unwrap(),
            "--list-page-entries",
            "20",
        ],
    );
    wait_for("part of the manifest", Duration::from_secs(60), || {
        let t = btp_json(&c.url, &["task", "get", &id]);
        (t["files_found"].as_u64().unwrap() >= 200).then_some(())
    });
    let t = btp_json(&c.url, &["task", "get", &id]);
    assert!(
        !t["listing_done"].as_bool().unwrap(),
        "read whole already: {t}"
    );
    let p = c.clients.remove(0);
    unsafe { libc::kill(p.pid() as i32, libc::SIGKILL) };
    drop(p);
    c.add_client(&["--ack-wait", "3s"]);
    let t = wait_task(&c.url, &id, Duration::from_secs(180));
    let gone = FILES.div_ceil(12) as u64;
    assert_eq!(t["files_found"], FILES as u64 + gone, "{t}");
    assert_eq!(t["files_copied"], FILES as u64, "{t}");
    assert_eq!(t["files_failed"], gone, "{t}");
    assert_accounted(&c.url, &t);
    assert_same_tree(&src, &dst);
}
