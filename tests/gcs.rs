//! Google Cloud Storage, end to end against fake-gcs-server (a GCS emulator, started here on a
//! free port): fs -> GCS -> fs with a large file composed from parts uploaded by two clients,
//! `--verify checksum`, byte-identical; a re-run copies nothing; sync deletes; cancelling leaves
//! no staged part; a missing bucket is a clear permanent error; the token never shows; and the
//! shared backend suite (tests/support/backends.rs). Objects
//! are listed back through the JSON API with plain HTTP, parsed with serde_json.
//!
//! Where fake-gcs-server differs from GCS (none of it changes what these tests prove):
//! - it computes an MD5 for composite objects too (GCS gives composite objects only a CRC32C,
//!   which is what the Complete job checks);
//! - composing from a missing source answers 500, GCS answers 404;
//! - it ignores credentials (the token is sent, and checked here never to show);
//! - it has no XML multipart API, which OpenDAL's writer uses for a file of more than one chunk
//!   (the client streams such files in one JSON media upload instead).

mod support;

use std::time::Duration;

use support::backends::{backend_suite, gcs_staged, FakeGcs};
use support::*;

const TOKEN: &str = "ya29.gcs-t0ken-never-printed";

/// Options for the emulator with a bearer token (sent, and ignored by the emulator).
fn opts(port: u16, side: &str) -> Vec<String> {
    [
        format!("endpoint=http://127.0.0.1:{port}"),
        format!("token={TOKEN}"),
    ]
    .into_iter()
    .flat_map(|o| [format!("--{side}-opt"), o])
    .collect()
}

#[test]
fn gcs_passes_the_backend_suite() {
    let tmp = test_dir();
    let Some(gcs) = FakeGcs::start(tmp.path(), TOKEN) else {
        return;
    };
    backend_suite(&gcs, tmp.path());
}

#[test]
fn files_move_between_a_file_system_and_gcs_byte_for_byte() {
    let tmp = test_dir();
    let Some((_gcs, port)) = start_fake_gcs(tmp.path()) else {
        return;
    };
    gcs_create_bucket(port, "bucket-a");
    let src = tmp.path().join("src");
    let tree = gen_tree(&src, 200, 80 << 20);
    // Object stores hold no empty directories.
    std::fs::remove_dir(src.join("empty-dir")).unwrap();
    // One file above a chunk but below the multipart threshold: one streamed upload.
    std::fs::write(src.join("middle.bin"), vec![7u8; 9 << 20]).unwrap();
    let tree = TreeStats {
        files: tree.files + 1,
        bytes: tree.bytes + (9 << 20),
        ..tree
    };

    let key = tmp.path().join("secret.key");
    let mut c = Cluster::start(tmp.path(), &["--secret-key-file", key.to_str().unwrap()]);
    c.add_client(&["--workers", "3"]);
    c.add_client(&["--workers", "3"]);
    let run = |src: &str, dst: &str, extra: Vec<String>| -> serde_json::Value {
        let mut args: Vec<String> = ["task", "create", "--src", src, "--dst", dst, "--start"]
            .map(String::from)
            .to_vec();
        args.extend(extra);
        let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let t = btp_json(&c.url, &args);
        let id = t["id"].as_str().unwrap().to_string();
        wait_task(&c.url, &id, Duration::from_secs(600));
        c.report(&id)
    };
    let with = |mut a: Vec<String>, extra: &[&str]| {
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    // 80 MiB in 8 MiB parts: ten parts, composed in one call.
    let parts = ["--verify", "checksum", "--part-size", "8MiB"];
    let big = "big file.bin";

    // fs -> GCS
    let up = run(
        src.to_str().unwrap(),
        "gs://bucket-a/data",
        with(opts(port, "dst"), &parts),
    );
    assert_eq!(up["task"]["state"], "completed", "{up}");
    assert_eq!(up["task"]["files_copied"], tree.files, "{up}");
    assert_eq!(up["task"]["bytes_copied"], tree.bytes);
    assert_eq!(up["task"]["dst"], "gs://bucket-a/data");
    let parted = clients_that_copied_parts(tmp.path(), big);
    assert_eq!(parted.len(), 2, "parts of {big} ran on {parted:?}");
    // Listed back with a client that is not ours: every file, its size, nothing staged.
    let want: std::collections::BTreeMap<String, u64> = tree_files(&src)
        .into_iter()
        .map(|(k, v)| (format!("data/{k}"), v))
        .collect();
    assert_eq!(gcs_objects(port, "bucket-a"), want);
    assert!(gcs_staged(port, "bucket-a").is_empty());

    // GCS -> fs, compared byte for byte with the original tree.
    let back = tmp.path().join("back");
    let down = run(
        "gs://bucket-a/data",
        back.to_str().unwrap(),
        with(opts(port, "src"), &parts),
    );
    assert_eq!(down["task"]["state"], "completed", "{down}");
    assert_same_tree(&src, &back);

    // Unchanged: nothing is uploaded again.
    let again = run(
        src.to_str().unwrap(),
        "gs://bucket-a/data",
        opts(port, "dst"),
    );
    assert_eq!(again["task"]["state"], "completed", "{again}");
    assert_eq!(again["task"]["bytes_copied"], 0, "{again}");
    assert_eq!(again["task"]["files_skipped"], tree.files);

    // Sync: a file deleted from the source goes from the bucket too.
    let gone = "hash#1.txt";
    std::fs::remove_file(src.join(gone)).unwrap();
    let synced = run(
        src.to_str().unwrap(),
        "gs://bucket-a/data",
        with(opts(port, "dst"), &["--mode", "sync"]),
    );
    assert_eq!(synced["task"]["state"], "completed", "{synced}");
    assert_eq!(synced["task"]["files_deleted"], 1, "{synced}");
    assert_eq!(synced["task"]["bytes_copied"], 0);
    let objects = gcs_objects(port, "bucket-a");
    assert!(
        !objects.contains_key(&format!("data/{gone}")),
        "{objects:?}"
    );
    assert_eq!(objects.len() as u64, tree.files - 1);

    // A missing bucket is refused at create time with one clear line, and nothing is stored.
    let before = btp_json(&c.url, &["task", "list"])["tasks"]
        .as_array()
        .unwrap()
        .len();
    let mut args = vec![
        "task",
        "create",
        "--src",
        src.to_str().unwrap(),
        "--dst",
        "gs://no-such-bucket/x",
    ];
    let extra = opts(port, "dst");
    args.extend(extra.iter().map(|s| s.as_str()));
    let out = btp(&c.url, &args);
    assert!(!out.status.success());
    let line = error_line(&out);
    assert!(
        line.contains("gs://no-such-bucket/x does not exist"),
        "{line}"
    );
    assert_eq!(
        btp_json(&c.url, &["task", "list"])["tasks"]
            .as_array()
            .unwrap()
            .len(),
        before
    );

    // The token never shows: not in reports, task lists, logs or the store.
    for report in [&up, &down, &again, &synced] {
        assert!(
            !report.to_string().contains(TOKEN),
            "a report shows the token"
        );
    }
    let listed =
        String::from_utf8(btp(&c.url, &["task", "list", "--output", "json"]).stdout).unwrap();
    assert!(!listed.contains(TOKEN));
    for dir in [tmp.path().to_path_buf(), tmp.path().join("server")] {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            if p.is_file() {
                let bytes = std::fs::read(&p).unwrap();
                assert!(
                    !bytes.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()),
                    "{} shows the token",
                    p.display()
                );
            }
        }
    }
}

#[test]
fn cancelling_a_composed_copy_leaves_no_staged_part() {
    let tmp = test_dir();
    let Some((_gcs, port)) = start_fake_gcs(tmp.path()) else {
        return;
    };
    gcs_create_bucket(port, "bucket-c");
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let f = std::fs::File::create(src.join("huge.bin")).unwrap();
    f.set_len(256 << 20).unwrap();
    drop(f);

    let mut c = Cluster::start(tmp.path(), &[]);
    c.add_client(&["--workers", "4"]);
    let mut args: Vec<String> = [
        "task",
        "create",
        "--src",
        src.to_str().unwrap(),
        "--dst",
        "gs://bucket-c/in",
        "--start",
        "--part-size",
        "8MiB",
        "--speed-limit",
        "16MiB/s",
    ]
    .map(String::from)
    .to_vec();
    args.extend(gcs_opts(port, "dst"));
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let id = btp_json(&c.url, &args)["id"].as_str().unwrap().to_string();
    // Mid-copy: some parts are staged.
    wait_for("parts staged", Duration::from_secs(60), || {
        (gcs_staged(port, "bucket-c").len() >= 3).then_some(())
    });
    let t = btp_json(&c.url, &["task", "cancel", &id]);
    assert_eq!(t["state"], "cancelled");
    wait_for("the staged parts deleted", Duration::from_secs(30), || {
        gcs_staged(port, "bucket-c").is_empty().then_some(())
    });
    // And it stays so: no part of the cancelled task is staged again, no file appears.
    std::thread::sleep(Duration::from_secs(3));
    assert!(gcs_objects(port, "bucket-c").is_empty());
}

#[test]
fn a_copy_into_a_composite_of_more_than_32_parts_is_composed_in_rounds() {
    let tmp = test_dir();
    let Some((_gcs, port)) = start_fake_gcs(tmp.path()) else {
        return;
    };
    gcs_create_bucket(port, "bucket-r");
    let src = tmp.path().join("src");
    // 40 parts of 5 MiB (the smallest part): two rounds of compose.
    let tree = gen_tree(&src, 10, 200 << 20);
    std::fs::remove_dir(src.join("empty-dir")).unwrap();
    let mut c = Cluster::start(tmp.path(), &[]);
    c.add_client(&["--workers", "4"]);
    let mut args: Vec<String> = [
        "task",
        "create",
        "--src",
        src.to_str().unwrap(),
        "--dst",
        "gs://bucket-r",
        "--start",
        "--part-size",
        "5MiB",
        "--verify",
        "checksum",
    ]
    .map(String::from)
    .to_vec();
    args.extend(gcs_opts(port, "dst"));
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let id = btp_json(&c.url, &args)["id"].as_str().unwrap().to_string();
    let t = wait_task(&c.url, &id, Duration::from_secs(600));
    assert_eq!(t["state"], "completed", "{t}");
    assert_eq!(t["files_copied"], tree.files, "{t}");
    assert_eq!(gcs_objects(port, "bucket-r"), tree_files(&src));
    // Read back through the JSON API and compared byte for byte.
    let back = tmp.path().join("back");
    let mut args: Vec<String> = [
        "copy",
        "gs://bucket-r",
        back.to_str().unwrap(),
        "--output",
        "json",
    ]
    .map(String::from)
    .to_vec();
    args.extend(gcs_opts(port, "src"));
    let out = std::process::Command::new(btp_bin())
        .args(&args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Object stores keep no empty directories: the files, byte for byte.
    let files = tree_files(&src);
    assert_eq!(tree_files(&back), files);
    for f in files.keys() {
        assert!(
            std::fs::read(src.join(f)).unwrap() == std::fs::read(back.join(f)).unwrap(),
            "{f} differs"
        );
    }
}

/// A service-account key as `credential`, for real: fake-gcs-server ignores credentials, so the
/// test puts tests/support/gcs_auth.py in front of it, an OAuth token endpoint (the key's
/// `token_uri`) that checks the JWT's RS256 signature and claims, and a proxy that forwards only
/// requests bearing a token it issued. fs -> GCS (a file in parts, composed) -> fs through it,
/// byte for byte, with no request refused; a key the endpoint does not know and a malformed key
/// are refused when the task is created, with the reason.
fn args_of<'a>(parts: &[&[&'a str]]) -> Vec<&'a str> {
    parts.iter().flat_map(|p| p.iter().copied()).collect()
}

#[test]
fn a_service_account_key_gets_tokens_from_its_token_uri_and_signs_every_request() {
    let tmp = test_dir();
    let Some((_gcs, upstream)) = start_fake_gcs(tmp.path()) else {
        return;
    };
    gcs_create_bucket(upstream, "sa-bucket");
    let auth = tmp.path().join("auth");
    std::fs::create_dir_all(&auth).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/gcs_auth.py");
    let upstream_port = upstream.to_string();
    let (_proxy, port) = start_service(
        "python3",
        &[script, "{port}", &upstream_port, auth.to_str().unwrap()],
        tmp.path(),
        "python3 with the cryptography package",
    )
    .expect("python3 runs the token endpoint");
    let log = || std::fs::read_to_string(auth.join("auth.log")).unwrap_or_default();
    // The proxy refuses what carries no token it issued (so what passes below was signed).
    let (status, _) = gcs_http(port, "GET", "/storage/v1/b/sa-bucket/o", "");
    assert_eq!(status, 401);
    assert!(log().contains("refused-request GET"), "{}", log());

    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("small.txt"), b"signed").unwrap();
    std::fs::write(src.join("sub/parts.bin"), vec![3u8; 12 << 20]).unwrap();
    let mut c = Cluster::start(tmp.path(), &[]);
    c.add_client(&["--workers", "2"]);
    let key_opt = |side: &str, file: &str| {
        vec![
            format!("--{side}-opt"),
            format!("endpoint=http://127.0.0.1:{port}"),
            format!("--{side}-opt"),
            format!("credential=@{}", auth.join(file).display()),
        ]
    };
    let run = |src: &str, dst: &str, extra: Vec<String>| {
        let mut args: Vec<String> = ["task", "create", "--src", src, "--dst", dst, "--start"]
            .map(String::from)
            .to_vec();
        args.extend(extra);
        args.extend(["--multipart-threshold", "8MiB", "--part-size", "5MiB"].map(String::from));
        let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let id = btp_json(&c.url, &args)["id"].as_str().unwrap().to_string();
        wait_task(&c.url, &id, Duration::from_secs(300));
        c.report(&id)
    };
    let before = log().lines().count();
    let up = run(
        src.to_str().unwrap(),
        "gs://sa-bucket/data",
        key_opt("dst", "key.json"),
    );
    assert_eq!(up["task"]["state"], "completed", "{up}");
    assert_eq!(up["task"]["files_copied"], 2, "{up}");
    let back = tmp.path().join("back");
    let down = run(
        "gs://sa-bucket/data",
        back.to_str().unwrap(),
        key_opt("src", "key.json"),
    );
    assert_eq!(down["task"]["state"], "completed", "{down}");
    assert_same_tree(&src, &back);
    let after: Vec<String> = log().lines().skip(before).map(String::from).collect();
    assert!(after.iter().any(|l| l == "issued"), "{after:?}");
    assert!(after.iter().any(|l| l == "forwarded"), "{after:?}");
    let refused: Vec<&String> = after.iter().filter(|l| l.starts_with("refused")).collect();
    assert!(refused.is_empty(), "requests refused: {refused:?}");

    // A key the token endpoint does not know: the task is refused with the endpoint's answer,
    // and the key's private part shows nowhere.
    let wrong = btp(
        &c.url,
        &args_of(&[
            &[
                "task",
                "create",
                "--src",
                src.to_str().unwrap(),
                "--dst",
                "gs://sa-bucket/wrong",
            ],
            &key_opt("dst", "wrong-key.json")
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        ]),
    );
    assert!(!wrong.status.success());
    let line = error_line(&wrong);
    assert!(log().contains("refused-token signature"), "{}", log());
    assert!(line.contains("token endpoint answered 401"), "{line}");
    assert!(!line.contains("PRIVATE KEY"), "{line}");

    // A malformed key is one clear error line when the task is created.
    let bad = tmp.path().join("bad-key.json");
    std::fs::write(&bad, r#"{"type":"service_account","client_email":"x@y"}"#).unwrap();
    let out = btp(
        &c.url,
        &[
            "task",
            "create",
            "--src",
            src.to_str().unwrap(),
            "--dst",
            "gs://sa-bucket/bad",
            "--dst-opt",
            &format!("credential=@{}", bad.display()),
        ],
    );
    assert!(!out.status.success());
    let line = error_line(&out);
    assert!(
        line.contains("option 'credential'") && line.contains("private_key"),
        "{line}"
    );
}
