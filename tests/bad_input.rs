//! Every bad input gets one clear error line, a non-zero exit, and stores nothing.

mod support;

use support::*;

#[test]
fn bad_input_names_the_problem_exits_non_zero_and_stores_no_task() {
    let tmp = test_dir();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("a.txt"), b"a").unwrap();
    let mut c = Cluster::start(tmp.path(), &[]);
    let url = c.url.clone();

    let s = src.to_str().unwrap();
    let dst = tmp.path().join("dst");
    let d = dst.to_str().unwrap();
    let missing = tmp.path().join("missing");
    let (inner, file) = (src.join("sub/inner"), src.join("a.txt"));
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["task", "create", "--src", "gopher://host/x", "--dst", d],
            "unsupported endpoint scheme 'gopher'",
        ),
        (
            vec!["task", "create", "--src", s, "--dst", "ftp://host/x"],
            "unsupported endpoint scheme 'ftp'",
        ),
        (
            vec![
                "task",
                "create",
                "--src",
                missing.to_str().unwrap(),
                "--dst",
                d,
            ],
            "does not exist",
        ),
        (
            vec![
                "task",
                "create",
                "--src",
                s,
                "--dst",
                inner.to_str().unwrap(),
            ],
            "is inside the source",
        ),
        (
            vec!["task", "create", "--src", s, "--dst", s],
            "is inside the source",
        ),
        (
            vec![
                "task",
                "create",
                "--src",
                s,
                "--dst",
                d,
                "--part-size",
                "1MiB",
            ],
            "part_size must be at least 5MiB",
        ),
        (
            vec![
                "task",
                "create",
                "--src",
                s,
                "--dst",
                d,
                "--exclude",
                "[abc",
            ],
            "exclude pattern '[abc': unclosed '['",
        ),
        (
            vec![
                "task",
                "create",
                "--src",
                s,
                "--dst",
                d,
                "--min-size",
                "2KiB",
                "--max-size",
                "1KiB",
            ],
            "min_size (2048) is larger than max_size (1024)",
        ),
        (
            vec![
                "task",
                "create",
                "--src",
                s,
                "--dst",
                d,
                "--min-size",
                "lots",
            ],
            "--min-size",
        ),
        (
            vec![
                "task",
                "create",
                "--src",
                s,
                "--dst",
                file.to_str().unwrap(),
            ],
            "is inside the source",
        ),
        (
            vec![
                "task",
                "create",
                "--src",
                s,
                "--dst",
                d,
                "--batch-bytes",
                "lots",
            ],
            "--batch-bytes: invalid size",
        ),
        (
            vec![
                "task",
                "create",
                "--src",
                s,
                "--dst",
                d,
                "--batch-files",
                "0",
            ],
            "batch_files must be at least 1",
        ),
        (vec!["task", "get", "nope"], "unknown task id 'nope'"),
        (vec!["task", "start", "nope"], "unknown task id 'nope'"),
        (vec!["task", "report", "nope"], "unknown task id 'nope'"),
    ];
    for (args, expected) in cases {
        let out = btp(&url, &args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let line = error_line(&out);
        assert!(
            line.contains(expected),
            "{args:?}: expected '{expected}' in '{line}'"
        );
    }
    let tasks = btp_json(&url, &["task", "list"]);
    assert_eq!(
        tasks["tasks"].as_array().unwrap().len(),
        0,
        "no task stored: {tasks}"
    );
    assert!(
        !missing.exists() && !dst.exists(),
        "nothing created for refused tasks"
    );

    // Starting a task twice is refused with the reason.
    let t = btp_json(&url, &["task", "create", "--src", s, "--dst", d]);
    let id = t["id"].as_str().unwrap();
    assert_eq!(t["state"], "created");
    btp_json(&url, &["task", "start", id]);
    let out = btp(&url, &["task", "start", id]);
    assert!(!out.status.success());
    assert!(error_line(&out).contains("cannot be started"));

    // An unreachable NATS URL is named.
    let out = btp("nats://127.0.0.1:1", &["task", "list"]);
    assert!(!out.status.success());
    let line = error_line(&out);
    assert!(
        line.contains("cannot connect to NATS at nats://127.0.0.1:1"),
        "{line}"
    );

    // No server behind a reachable NATS is said plainly too.
    let mut other = NatsServer::start(&tmp.path().join("nats2"), None).unwrap();
    let out = btp(&other.url(), &["task", "list"]);
    assert!(!out.status.success());
    assert!(error_line(&out).contains("no BeyondTP server answers"));
    other.stop();
    c.nats.stop();
}

#[test]
fn credentials_in_urls_and_missing_option_sources_are_refused_without_showing_a_secret() {
    let tmp = test_dir();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.txt"), b"a").unwrap();
    let c = Cluster::start(tmp.path(), &[]);
    let url = c.url.clone();
    let s = src.to_str().unwrap();
    let secret = "hunter2-Zq8-never-shown";
    let dav = format!("webdav://alice:{secret}@127.0.0.1:1/data");
    let s3 = format!("s3://AKIA:{secret}@bucket/x");
    let missing = tmp.path().join("no-such-secret");
    let at_missing = format!("password=@{}", missing.display());
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["task", "create", "--src", s, "--dst", &dav],
            "credentials in an endpoint URL (webdav://...@127.0.0.1:1) are refused: give them as options, e.g. --dst-opt username=NAME --dst-opt password=@/path/to/file",
        ),
        (
            vec!["task", "create", "--src", s, "--dst", &s3],
            "--dst-opt secret_access_key=@/path/to/file",
        ),
        (
            vec!["endpoint", "create", "dav", &dav],
            "credentials in an endpoint URL",
        ),
        (
            vec![
                "task",
                "create",
                "--src",
                s,
                "--dst",
                "webdav://127.0.0.1:1/data",
                "--dst-opt",
                "username=alice",
                "--dst-opt",
                &at_missing,
            ],
            "--dst-opt password=@",
        ),
        (
            vec![
                "task",
                "create",
                "--src",
                "s3://bucket/x",
                "--dst",
                "/tmp/x",
                "--src-opt",
                "secret_access_key=env:BTP_TEST_NO_SUCH_VARIABLE",
            ],
            "--src-opt secret_access_key=env:BTP_TEST_NO_SUCH_VARIABLE: the environment variable BTP_TEST_NO_SUCH_VARIABLE is not set",
        ),
    ];
    for (args, expected) in cases {
        let out = btp(&url, &args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let line = error_line(&out);
        assert!(
            line.contains(expected),
            "{args:?}: expected '{expected}' in '{line}'"
        );
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!all.contains(secret), "{all}");
        assert_eq!(all.trim().lines().count(), 1, "one line: {all}");
    }
    let tasks = btp_json(&url, &["task", "list"]);
    assert_eq!(tasks["tasks"].as_array().unwrap().len(), 0, "{tasks}");
    let endpoints = btp_json(&url, &["endpoint", "list"]);
    assert_eq!(
        endpoints["endpoints"].as_array().unwrap().len(),
        0,
        "{endpoints}"
    );
    let log = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.unwrap().path()).ok())
        .collect::<String>();
    assert!(!log.contains(secret), "a log holds the secret");
}
