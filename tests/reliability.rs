//! Jobs that cannot finish the normal way still end: a job too large to publish fails alone, a
//! job that crashes its worker every time fails once JetStream gives up redelivering it, a file
//! that changed after the listing is copied as it is now, and a multipart upload that vanished
//! before completion is never reported copied.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use support::*;

/// A directory `depth` levels of 250-character names below `base`: long roots make every job
/// of a task (which carries both roots) much larger than the listing pages (which do not).
fn long_dir(base: &Path, depth: usize) -> PathBuf {
    let mut p = base.to_path_buf();
    for i in 0..depth {
        p = p.join(format!("{i:02}{}", "r".repeat(248)));
    }
    p
}

/// nats-server takes messages of at most 16 KiB. Task B's one Copy job (50 files of 200-byte
/// names, about 13 KB, plus both 2.8 KB roots) is over it, its listing page is not: the job
/// fails alone with the reason, and task A, started after B's job was planned, completes.
#[test]
fn a_job_too_large_to_publish_fails_alone_and_other_tasks_complete() {
    let tmp = test_dir();
    let max_payload = 16 << 10;
    let nats = btp_nats::launcher::Options {
        max_payload: Some(max_payload),
    };
    let mut c = Cluster::start_with_nats(tmp.path(), &[], nats);
    c.add_client(&["--workers", "2"]);

    let (bad_src, bad_dst) = (
        long_dir(&tmp.path().join("bad-src"), 11),
        long_dir(&tmp.path().join("bad-dst"), 11),
    );
    std::fs::create_dir_all(&bad_src).unwrap();
    let names: Vec<String> = (0..50)
        .map(|i| format!("f{i:03}-{}", "n".repeat(195)))
        .collect();
    for n in &names {
        std::fs::write(bad_src.join(n), b"some bytes").unwrap();
    }
    let paths = names.iter().map(|n| n.len() + 60).sum::<usize>();
    let roots = bad_src.as_os_str().len() + bad_dst.as_os_str().len();
    assert!(
        paths + 300 < max_payload && paths + roots > max_payload + 1000,
        "page {paths} B, job {} B: the sizes do not frame max_payload {max_payload}",
        paths + roots
    );
    let bad = c.start_task(&bad_src, &bad_dst, &[]);
    // B's Copy job is planned (its listing is done) before A exists.
    wait_for("B's listing", Duration::from_secs(60), || {
        let t = btp_json(&c.url, &["task", "get", &bad]);
        (t["listing_done"] == true).then_some(())
    });

    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    let tree = gen_tree(&src, 100, 0);
    let good = c.start_task(&src, &dst, &[]);
    wait_task(&c.url, &good, Duration::from_secs(60));
    assert_complete(&c.report(&good), &tree, &src, &dst);

    let t = wait_task(&c.url, &bad, Duration::from_secs(60));
    assert_eq!(t["state"], "failed", "{t}");
    assert_eq!(t["files_found"], 50, "{t}");
    assert_eq!(t["files_failed"], 50, "{t}");
    assert_eq!(t["files_copied"], 0, "{t}");
    assert_eq!(t["jobs_done"], t["jobs_total"], "{t}");
    // A few failures per call: a report naming all 50 long paths is over max_payload too.
    let failed = btp_json(
        &c.url,
        &["task", "report", &bad, "--failed", "--limit", "5"],
    );
    let failed = failed.as_array().unwrap();
    assert_eq!(failed.len(), 5, "{failed:?}");
    for f in failed {
        let reason = f["reason"].as_str().unwrap();
        assert!(
            reason.starts_with("job could not be published: max payload size exceeded"),
            "{reason}"
        );
    }
    assert!(!bad_dst.exists() || std::fs::read_dir(&bad_dst).unwrap().count() == 0);
}
