//! Every source entry accounted for, with real processes: names the destination cannot hold,
//! entries that cannot be inspected, special files and symbolic links (copied as links,
//! followed with loop detection, skipped) end in the per-file report exactly once with their
//! reason; a sync deletes only in the filters' scope and never in a directory it could not see
//! whole; a List job that runs twice (client killed mid-listing, pause and resume) loses no file.

mod support;

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use support::*;

/// Runs a task to its end on a cluster of one server and one client; returns the finished
/// task and its whole per-file report.
fn run(
    c: &Cluster,
    src: &Path,
    dst: &Path,
    extra: &[&str],
) -> (serde_json::Value, BTreeMap<String, ReportEntry>) {
    let id = c.start_task(src, dst, extra);
    let task = wait_task(&c.url, &id, Duration::from_secs(120));
    (task, report_entries(&c.url, &id))
}

/// The accounting rule, on the finished task's counters and its per-file report.
fn assert_accounted(task: &serde_json::Value, report: &BTreeMap<String, ReportEntry>) {
    let n = |k: &str| task[k].as_u64().unwrap();
    assert_eq!(
        n("files_found"),
        n("files_copied") + n("files_skipped") + n("files_failed") + n("files_excluded"),
        "found = copied + skipped + failed + excluded: {task}"
    );
    assert_eq!(n("files_found") as usize, report.len(), "{report:#?}");
    let count = |o: &str| report.values().filter(|e| e.outcome == o).count() as u64;
    assert_eq!(count("copied"), n("files_copied"), "{report:#?}");
    assert_eq!(count("skipped"), n("files_skipped"), "{report:#?}");
    assert_eq!(count("failed"), n("files_failed"), "{report:#?}");
    assert_eq!(count("excluded"), n("files_excluded"), "{report:#?}");
    for (path, e) in report {
        if e.outcome == "failed" {
            assert!(!e.reason.is_empty(), "{path} failed without a reason");
        }
    }
}

fn outcome<'a>(report: &'a BTreeMap<String, ReportEntry>, path: &str) -> &'a ReportEntry {
    report
        .get(path)
        .unwrap_or_else(|| panic!("{path} is not in the report: {report:#?}"))
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
}

#[test]
fn entries_that_cannot_be_carried_or_inspected_are_failures_with_their_reason() {
    let tmp = test_dir();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("good.txt"), b"good").unwrap();
    let bad_file = std::ffi::OsStr::from_bytes(b"caf\xe9.txt");
    std::fs::write(src.join(bad_file), b"latin-1 name").unwrap();
    let bad_dir = std::ffi::OsStr::from_bytes(b"d\xff");
    std::fs::create_dir_all(src.join(bad_dir)).unwrap();
    std::fs::write(src.join(bad_dir).join("inside"), b"x").unwrap();
    std::os::unix::fs::symlink("nowhere", src.join("gone")).unwrap();
    mkfifo(&src.join("pipe"));

    let c = Cluster::start(tmp.path(), &[]);
    let mut c = c;
    c.add_client(&[]);
    let (task, report) = run(&c, &src, &dst, &["--links", "follow"]);
    assert_eq!(task["state"], "failed", "{task}");
    assert_accounted(&task, &report);
    assert_eq!(outcome(&report, "good.txt").outcome, "copied");
    for (path, why) in [
        ("caf\\xe9.txt", "not valid UTF-8"),
        ("d\\xff", "not valid UTF-8"),
        ("gone", "dangling symbolic link"),
        ("pipe", "special file"),
    ] {
        let e = outcome(&report, path);
        assert_eq!(e.outcome, "failed", "{path}");
        assert!(e.reason.contains(why), "{path}: {}", e.reason);
    }
    assert_eq!(report.len(), 5, "{report:#?}");
    assert_eq!(tree_files(&dst).keys().collect::<Vec<_>>(), ["good.txt"]);

    // The same tree copied with the default `--links copy`: the dangling link is a link.
    let dst2 = tmp.path().join("dst2");
    let (task, report) = run(&c, &src, &dst2, &[]);
    assert_accounted(&task, &report);
    assert_eq!(outcome(&report, "gone").outcome, "copied");
    assert_eq!(
        std::fs::read_link(dst2.join("gone")).unwrap(),
        Path::new("nowhere")
    );
}

/// `a/b/loop -> ..`, a link to a file and a link to a directory.
fn linked_tree(src: &Path) {
    std::fs::create_dir_all(src.join("a/b")).unwrap();
    std::fs::write(src.join("a/f.txt"), b"file in a").unwrap();
    std::fs::write(src.join("a/b/g.txt"), b"file in b").unwrap();
    std::os::unix::fs::symlink("..", src.join("a/b/loop")).unwrap();
    std::os::unix::fs::symlink("a/f.txt", src.join("to_file")).unwrap();
    std::os::unix::fs::symlink("a", src.join("to_dir")).unwrap();
}

#[test]
fn symbolic_links_are_kept_followed_without_looping_or_skipped_as_asked() {
    let tmp = test_dir();
    let src = tmp.path().join("src");
    linked_tree(&src);
    let mut c = Cluster::start(tmp.path(), &[]);
    c.add_client(&[]);

    // Default: links stay links, nothing is followed, the task completes.
    let dst = tmp.path().join("copy");
    let (task, report) = run(&c, &src, &dst, &[]);
    assert_eq!(task["state"], "completed", "{task}");
    assert_accounted(&task, &report);
    assert_eq!(report.len(), 5, "{report:#?}");
    for (link, target) in [("a/b/loop", ".."), ("to_file", "a/f.txt"), ("to_dir", "a")] {
        assert_eq!(outcome(&report, link).outcome, "copied");
        assert_eq!(
            std::fs::read_link(dst.join(link)).unwrap(),
            Path::new(target)
        );
    }
    // A second run finds the links in place.
    let (task, report) = run(&c, &src, &dst, &[]);
    assert_accounted(&task, &report);
    assert_eq!(task["files_skipped"], 5, "{task}");

    // Follow: targets are copied, each loop is a failure, and the walk ends.
    let dst = tmp.path().join("follow");
    let (task, report) = run(&c, &src, &dst, &["--links", "follow"]);
    assert_eq!(task["state"], "failed", "{task}");
    assert_accounted(&task, &report);
    for looped in ["a/b/loop", "to_dir/b/loop"] {
        let e = outcome(&report, looped);
        assert_eq!(e.outcome, "failed");
        assert!(e.reason.contains("symbolic link loop"), "{}", e.reason);
    }
    let files = tree_files(&dst);
    let names: Vec<&str> = files.keys().map(|s| s.as_str()).collect();
    assert_eq!(
        names,
        [
            "a/b/g.txt",
            "a/f.txt",
            "to_dir/b/g.txt",
            "to_dir/f.txt",
            "to_file"
        ]
    );
    assert_eq!(std::fs::read(dst.join("to_file")).unwrap(), b"file in a");

    // Skip: every link is reported skipped with the reason.
    let dst = tmp.path().join("skip");
    let (task, report) = run(&c, &src, &dst, &["--links", "skip"]);
    assert_eq!(task["state"], "completed", "{task}");
    assert_accounted(&task, &report);
    for link in ["a/b/loop", "to_file", "to_dir"] {
        let e = outcome(&report, link);
        assert_eq!(e.outcome, "skipped");
        assert!(e.reason.contains("--links skip"), "{}", e.reason);
    }
    assert_eq!(tree_files(&dst).len(), 2);
}

#[test]
fn sync_deletes_only_in_the_filters_scope_unless_asked() {
    let tmp = test_dir();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    std::fs::create_dir_all(src.join("pics")).unwrap();
    std::fs::write(src.join("pics/new.jpg"), b"new").unwrap();
    std::fs::write(src.join("pics/notes.txt"), b"notes").unwrap();
    let seed = |dst: &Path| {
        std::fs::create_dir_all(dst.join("pics")).unwrap();
        std::fs::create_dir_all(dst.join("gone")).unwrap();
        std::fs::write(dst.join("pics/old.jpg"), b"old").unwrap();
        std::fs::write(dst.join("pics/keep.txt"), b"keep").unwrap();
        std::fs::write(dst.join("gone/a.jpg"), b"a").unwrap();
        std::fs::write(dst.join("gone/b.txt"), b"b").unwrap();
    };
    seed(&dst);
    let mut c = Cluster::start(tmp.path(), &[]);
    c.add_client(&[]);
    let sync = ["--mode", "sync", "--include", "*.jpg"];

    // A dry run changes nothing and reports what it would delete.
    let mut dry = sync.to_vec();
    dry.push("--dry-run");
    let before = tree_files(&dst);
    let (task, _) = run(&c, &src, &dst, &dry);
    assert_eq!(task["files_deleted"], 2, "{task}");
    assert_eq!(tree_files(&dst), before, "a dry run changes nothing");

    let (task, report) = run(&c, &src, &dst, &sync);
    assert_eq!(task["state"], "completed", "{task}");
    assert_accounted(&task, &report);
    assert_eq!(outcome(&report, "pics/notes.txt").outcome, "excluded");
    let left: Vec<String> = tree_files(&dst).into_keys().collect();
    assert_eq!(left, ["gone/b.txt", "pics/keep.txt", "pics/new.jpg"]);
    assert_eq!(task["files_deleted"], 2, "{task}");

    // --delete-excluded: the files the filters leave out go too.
    let dst = tmp.path().join("dst2");
    seed(&dst);
    let mut all = sync.to_vec();
    all.push("--delete-excluded");
    let (task, _) = run(&c, &src, &dst, &all);
    assert_eq!(task["state"], "completed", "{task}");
    let left: Vec<String> = tree_files(&dst).into_keys().collect();
    assert_eq!(left, ["pics/new.jpg"]);
}

#[test]
fn sync_deletes_nothing_in_a_directory_it_could_not_see_whole() {
    let tmp = test_dir();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::create_dir_all(src.join("clean")).unwrap();
    std::fs::write(src.join("d/kept.txt"), b"kept").unwrap();
    // The source's `d/photos` is a link whose target is gone: it cannot be inspected.
    std::os::unix::fs::symlink("/nonexistent/photos", src.join("d/photos")).unwrap();
    std::fs::create_dir_all(dst.join("d/photos/2024")).unwrap();
    std::fs::write(dst.join("d/photos/2024/img.jpg"), b"precious").unwrap();
    std::fs::write(dst.join("d/extra.txt"), b"extra").unwrap();
    std::fs::create_dir_all(dst.join("clean")).unwrap();
    std::fs::write(dst.join("clean/extra.txt"), b"extra").unwrap();
    let mut c = Cluster::start(tmp.path(), &[]);
    c.add_client(&[]);
    let (task, report) = run(&c, &src, &dst, &["--mode", "sync", "--links", "follow"]);
    assert_eq!(task["state"], "failed", "{task}");
    assert_accounted(&task, &report);
    assert!(outcome(&report, "d/photos").reason.contains("dangling"));
    assert_eq!(
        std::fs::read(dst.join("d/photos/2024/img.jpg")).unwrap(),
        b"precious",
        "what sync could not see is not deleted"
    );
    assert!(dst.join("d/extra.txt").exists(), "nor anything beside it");
    assert!(
        !dst.join("clean/extra.txt").exists(),
        "a directory seen whole is synced"
    );
}

#[test]
fn object_keys_that_are_no_relative_path_and_links_to_an_object_store_are_reported() {
    let tmp = test_dir();
    let Some((_moto, port)) = start_moto(tmp.path()) else {
        return;
    };
    assert!(s3_http(port, "PUT", "/src", b"").starts_with("HTTP/1.1 200"));
    assert!(s3_http(port, "PUT", "/dst", b"").starts_with("HTTP/1.1 200"));
    for key in ["ok.txt", "a//b.txt", "%2E%2E/up.txt"] {
        let answer = s3_http(port, "PUT", &format!("/src/{key}"), b"data");
        assert!(answer.starts_with("HTTP/1.1 200"), "{key}: {answer}");
    }
    let mut c = Cluster::start(tmp.path(), &[]);
    c.add_client(&[]);
    let dst = tmp.path().join("dst");
    let opts = s3_opts(port, "src");
    let opts: Vec<&str> = opts.iter().map(|s| s.as_str()).collect();
    let id = c.start_task_at("s3://src", dst.to_str().unwrap(), &opts);
    let task = wait_task(&c.url, &id, Duration::from_secs(120));
    let report = report_entries(&c.url, &id);
    assert_accounted(&task, &report);
    assert_eq!(outcome(&report, "ok.txt").outcome, "copied");
    let failed: Vec<&ReportEntry> = report.values().filter(|e| e.outcome == "failed").collect();
    assert_eq!(failed.len(), 2, "{report:#?}");
    for e in failed {
        assert!(
            e.reason.contains("cannot be a destination path"),
            "{}",
            e.reason
        );
    }
    assert_eq!(tree_files(&dst).keys().collect::<Vec<_>>(), ["ok.txt"]);
    // Nothing outside the destination.
    assert!(!tmp.path().join("up.txt").exists());

    // A link to an object store is skipped with its reason; the task completes.
    let src = tmp.path().join("linked");
    linked_tree(&src);
    let opts = s3_opts(port, "dst");
    let opts: Vec<&str> = opts.iter().map(|s| s.as_str()).collect();
    let id = c.start_task_at(src.to_str().unwrap(), "s3://dst/linked", &opts);
    let task = wait_task(&c.url, &id, Duration::from_secs(120));
    let report = report_entries(&c.url, &id);
    assert_eq!(task["state"], "completed", "{task}");
    assert_accounted(&task, &report);
    let e = outcome(&report, "to_dir");
    assert_eq!(e.outcome, "skipped");
    assert!(e.reason.contains("cannot hold links"), "{}", e.reason);
    assert_eq!(
        s3_keys(port, "dst").into_iter().collect::<Vec<_>>(),
        ["linked/a/b/g.txt", "linked/a/f.txt"]
    );
}

/// A large directory listed slowly in pages of 20 entries towards an S3 destination that
/// already holds every other file; `interrupt` runs once part of the listing is applied.
fn listing_survives(interrupt: impl FnOnce(&mut Cluster, &str)) {
    let tmp = test_dir();
    let Some((_moto, port)) = start_moto(tmp.path()) else {
        return;
    };
    assert!(s3_http(port, "PUT", "/bucket", b"").starts_with("HTTP/1.1 200"));
    let src = tmp.path().join("src");
    let half = tmp.path().join("half");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(&half).unwrap();
    const FILES: usize = 1200;
    for i in 0..FILES {
        let name = format!("f{i:05}.txt");
        std::fs::write(src.join(&name), format!("content {i}")).unwrap();
        if i % 2 == 0 {
            std::fs::hard_link(src.join(&name), half.join(&name)).unwrap();
        }
    }
    let mut c = Cluster::start(tmp.path(), &["--ack-wait", "3s"]);
    c.add_client(&["--ack-wait", "3s"]);
    let opts = s3_opts(port, "dst");
    let create = |c: &Cluster, from: &Path, extra: &[&str]| -> String {
        let mut args: Vec<&str> = opts.iter().map(|s| s.as_str()).collect();
        args.extend(extra);
        c.start_task_at(from.to_str().unwrap(), "s3://bucket", &args)
    };
    // Every other file is already at the destination, up to date.
    let first = create(&c, &half, &[]);
    let done = wait_task(&c.url, &first, Duration::from_secs(120));
    assert_eq!(done["state"], "completed", "{done}");
    c.clients.clear();
    c.add_client_env(
        &["--ack-wait", "3s", "--workers", "2"],
        &[("BTP_FAULT_LIST_PAGE_DELAY_MS", "100")],
    );
    let id = create(&c, &src, &["--list-page-entries", "20"]);
    wait_for("part of the listing", Duration::from_secs(60), || {
        let t = btp_json(&c.url, &["task", "get", &id]);
        (t["files_found"].as_u64().unwrap() >= 200).then_some(())
    });
    interrupt(&mut c, &id);
    let task = wait_task(&c.url, &id, Duration::from_secs(180));
    assert_eq!(task["state"], "completed", "{task}");
    let report = report_entries(&c.url, &id);
    assert_accounted(&task, &report);
    assert_eq!(task["files_found"], FILES as u64, "{task}");
    assert_eq!(task["files_skipped"], (FILES / 2) as u64, "{task}");
    let stored = s3_keys(port, "bucket");
    assert_eq!(stored.len(), FILES, "every file is at the destination");
}

#[test]
fn a_list_job_run_twice_after_its_client_was_killed_loses_no_file() {
    listing_survives(|c, _| {
        let p = c.clients.remove(0);
        unsafe { libc::kill(p.pid() as i32, libc::SIGKILL) };
        drop(p);
        c.add_client(&["--ack-wait", "3s"]);
    });
}

#[test]
fn a_list_job_run_twice_after_pause_and_resume_loses_no_file() {
    listing_survives(|c, id| {
        let out = btp(&c.url, &["task", "pause", id]);
        assert!(out.status.success(), "{}", error_line(&out));
        std::thread::sleep(Duration::from_millis(300));
        let out = btp(&c.url, &["task", "resume", id]);
        assert!(out.status.success(), "{}", error_line(&out));
    });
}

#[test]
fn nothing_is_written_through_a_link_at_the_destination() {
    let tmp = test_dir();
    let (src, dst, outside) = (
        tmp.path().join("src"),
        tmp.path().join("dst"),
        tmp.path().join("outside"),
    );
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("d/f.txt"), b"new").unwrap();
    std::fs::write(src.join("top.txt"), b"top").unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::create_dir_all(&dst).unwrap();
    // An earlier run (or anyone) left `d` at the destination as a link out of it.
    std::os::unix::fs::symlink(&outside, dst.join("d")).unwrap();
    let mut c = Cluster::start(tmp.path(), &[]);
    c.add_client(&[]);
    let (task, report) = run(&c, &src, &dst, &[]);
    assert_eq!(task["state"], "failed", "{task}");
    assert_accounted(&task, &report);
    let e = outcome(&report, "d/f.txt");
    assert_eq!(e.outcome, "failed");
    assert!(e.reason.contains("symbolic link at d"), "{}", e.reason);
    assert_eq!(outcome(&report, "top.txt").outcome, "copied");
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "nothing written outside the destination"
    );
}

#[test]
fn btp_copy_exits_non_zero_and_names_every_entry_it_could_not_copy() {
    let tmp = test_dir();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("fine.txt"), b"fine").unwrap();
    std::fs::write(src.join(std::ffi::OsStr::from_bytes(b"bad\xff.txt")), b"x").unwrap();
    mkfifo(&src.join("pipe"));
    let copy = |extra: &[&str]| {
        std::process::Command::new(btp_bin())
            .args(["copy", src.to_str().unwrap(), dst.to_str().unwrap()])
            .args(extra)
            .env_remove("BTP_LOG")
            .output()
            .unwrap()
    };
    let out = copy(&[]);
    assert!(!out.status.success(), "entries not copied fail the copy");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("bad\\xff.txt"), "{text}");
    assert!(
        text.contains("pipe") && text.contains("special file"),
        "{text}"
    );
    assert_eq!(std::fs::read(dst.join("fine.txt")).unwrap(), b"fine");
    // Entries skipped on purpose do not fail it.
    std::fs::remove_file(src.join(std::ffi::OsStr::from_bytes(b"bad\xff.txt"))).unwrap();
    std::fs::remove_file(src.join("pipe")).unwrap();
    std::os::unix::fs::symlink("fine.txt", src.join("link")).unwrap();
    let out = copy(&["--links", "skip"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
