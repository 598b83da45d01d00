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
