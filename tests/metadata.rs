//! Metadata kept besides the bytes, read back with clients that are not ours (`std::fs`
//! metadata for file systems, boto3 for S3): file-system copies keep modes and modification
//! times (small files, streamed files and files in parts), with `--preserve owner` owners and
//! groups; a client that cannot give an owner, and destinations that cannot hold an S3 object's
//! content type, cache control or user metadata (or a file's mode and owner), say so in the
//! per-file report's `not_kept` column, for exactly those files.

mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::backends::S3Server;
use support::*;

/// Splits large files in parts (the Upload, Part and Complete jobs) at this size.
const PARTS: [&str; 4] = ["--multipart-threshold", "8MiB", "--part-size", "5MiB"];

/// A file of the test tree: path, size, mode, and its modification time (ms since the epoch).
struct Spec {
    path: &'static str,
    size: usize,
    mode: u32,
    mtime_ms: u64,
}

/// Small files (copied in one blocking call), a streamed one (above 256 KiB) and one in parts.
const TREE: [Spec; 6] = [
    Spec {
        path: "private.txt",
        size: 1200,
        mode: 0o600,
        mtime_ms: 1_500_000_000_000,
    },
    Spec {
        path: "group/readable.csv",
        size: 10,
        mode: 0o640,
        mtime_ms: 1_600_000_000_123,
    },
    Spec {
        path: "bin/tool.sh",
        size: 300,
        mode: 0o755,
        mtime_ms: 1_650_000_000_000,
    },
    Spec {
        path: "bin/setuid",
        size: 64,
        mode: 0o4755,
        mtime_ms: 1_650_000_001_000,
    },
    Spec {
        path: "streamed.dat",
        size: 700 << 10,
        mode: 0o640,
        mtime_ms: 1_400_000_000_500,
    },
    Spec {
        path: "large/parts.bin",
        size: 13 << 20,
        mode: 0o751,
        mtime_ms: 1_450_000_000_000,
    },
];

fn make_tree(root: &Path, owner: Option<(u32, u32)>) {
    for s in &TREE {
        let p = root.join(s.path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let data: Vec<u8> = (0..s.size).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, data).unwrap();
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&p, Some(uid), Some(gid)).unwrap();
        }
        // After the chown, which clears set-user-ID.
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(s.mode)).unwrap();
        let t = std::time::UNIX_EPOCH + Duration::from_millis(s.mtime_ms);
        std::fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }
}

/// Mode, owner, group and modification time (ms) of every file under `root`, as `stat` sees
/// them.
fn stat_tree(root: &Path) -> BTreeMap<String, (u32, u32, u32, i64)> {
    tree_files(root)
        .into_keys()
        .map(|rel| {
            let m = std::fs::metadata(root.join(&rel)).unwrap();
            let ms = m.mtime() * 1000 + m.mtime_nsec() / 1_000_000;
            (rel, (m.mode() & 0o7777, m.uid(), m.gid(), ms))
        })
        .collect()
}

fn run_task(c: &Cluster, src: &str, dst: &str, extra: &[&str]) -> (serde_json::Value, String) {
    let mut args = PARTS.to_vec();
    args.extend_from_slice(extra);
    let id = c.start_task_at(src, dst, &args);
    let done = wait_task(&c.url, &id, Duration::from_secs(300));
    assert_eq!(done["state"], "completed", "{done}");
    (done, id)
}

fn not_kept(c: &Cluster, id: &str) -> BTreeMap<String, String> {
    let entries = report_entries(&c.url, id);
    for e in entries.values() {
        assert_eq!(e.outcome, "copied", "{entries:?}");
    }
    entries.into_iter().map(|(p, e)| (p, e.not_kept)).collect()
}

fn is_root() -> bool {
    // SAFETY: a plain system call without arguments.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn file_system_copies_keep_modes_and_mtimes_and_with_preserve_owner_owners() {
    let tmp = test_dir();
    let src = tmp.path().join("src");
    let root = is_root();
    let owner = root.then_some((1234, 5678));
    make_tree(&src, owner);
    let mut c = Cluster::start(tmp.path(), &[]);
    c.add_client(&["--workers", "4"]);
    c.add_client(&["--workers", "4"]);
    let want = stat_tree(&src);
    assert_eq!(want.len(), TREE.len());

    // Modes and times, whatever the client's umask; the owner is the client's.
    let plain = tmp.path().join("plain");
    // A file already there with other permissions is replaced by one with the source's.
    std::fs::create_dir_all(&plain).unwrap();
    std::fs::write(plain.join("private.txt"), b"old").unwrap();
    std::fs::set_permissions(
        plain.join("private.txt"),
        std::fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    let (_, id) = run_task(&c, src.to_str().unwrap(), plain.to_str().unwrap(), &[]);
    assert_same_tree(&src, &plain);
    let got = stat_tree(&plain);
    // SAFETY: plain system calls without arguments.
    let me = unsafe { (libc::geteuid(), libc::getegid()) };
    for (rel, (mode, _, _, ms)) in &want {
        let (g_mode, g_uid, g_gid, g_ms) = got[rel];
        assert_eq!(g_mode, *mode, "{rel}: mode {g_mode:o}, source {mode:o}");
        assert_eq!(g_ms, *ms, "{rel}: modification time");
        assert_eq!(
            (g_uid, g_gid),
            me,
            "{rel}: owned by the client without --preserve owner"
        );
    }
    let lost = not_kept(&c, &id);
    assert_eq!(lost.len(), TREE.len());
    assert!(
        lost.values().all(|w| w.is_empty()),
        "nothing lost: {lost:?}"
    );

    // With --preserve owner, as root: owners and groups too.
    if !root {
        eprintln!("not root: skipping the --preserve owner copy (chown needs root)");
        return;
    }
    let owned = tmp.path().join("owned");
    let (_, id) = run_task(
        &c,
        src.to_str().unwrap(),
        owned.to_str().unwrap(),
        &["--preserve", "owner"],
    );
    assert_same_tree(&src, &owned);
    assert_eq!(
        stat_tree(&owned),
        want,
        "mode, owner, group and time of every file"
    );
    for (rel, (mode, uid, gid, _)) in stat_tree(&owned) {
        assert_eq!((uid, gid), (1234, 5678), "{rel}");
        if rel == "bin/setuid" {
            assert_eq!(mode, 0o4755, "set-user-ID survives the chown");
        }
    }
    let lost = not_kept(&c, &id);
    assert!(
        lost.values().all(|w| w.is_empty()),
        "nothing lost: {lost:?}"
    );
}

/// A client that is not root cannot give files another owner: with `--preserve owner` every
/// copied file says so in the report, and keeps its mode all the same.
#[test]
fn an_owner_a_client_cannot_give_is_in_the_report() {
    if !is_root() {
        eprintln!("not root: cannot start a client as another user; skipping");
        return;
    }
    let tmp = test_dir();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let src = tmp.path().join("src");
    make_tree(&src, Some((1234, 5678)));
    // Readable by the client's user.
    for s in &TREE {
        let p = src.join(s.path);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(s.mode | 0o444)).unwrap();
    }
    let dst = tmp.path().join("dst");
    std::fs::create_dir_all(&dst).unwrap();
    std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o777)).unwrap();
    let c = Cluster::start(tmp.path(), &[]);
    // The client as user and group nobody (65534).
    let log = std::fs::File::create(tmp.path().join("client-nobody.log")).unwrap();
    let child = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(btp_bin())
        .args(["client", "run", "--id", "nobody", "--workers", "4"])
        .env("BTP_NATS_URL", &c.url)
        .env("BTP_LOG", "info,async_nats=warn")
        .env("HOME", "/tmp")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("setpriv runs");
    let client = Proc {
        child,
        name: "nobody".into(),
    };
    let url = c.url.clone();
    wait_for("client nobody online", Duration::from_secs(30), || {
        let l = btp_json(&url, &["client", "list"]);
        l["clients"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["id"] == "nobody")
            .then_some(())
    });
    let (_, id) = run_task(
        &c,
        src.to_str().unwrap(),
        dst.to_str().unwrap(),
        &["--preserve", "owner"],
    );
    drop(client);
    assert_same_tree(&src, &dst);
    let want = stat_tree(&src);
    for (rel, (mode, uid, gid, ms)) in stat_tree(&dst) {
        assert_eq!(
            (mode, ms),
            (want[&rel].0, want[&rel].3),
            "{rel}: mode and time kept"
        );
        assert_eq!((uid, gid), (65534, 65534), "{rel}: the client's own");
    }
    let lost = not_kept(&c, &id);
    assert_eq!(lost.len(), TREE.len());
    for (rel, what) in &lost {
        assert_eq!(what, "owner (chown: Operation not permitted)", "{rel}");
    }
}

/// Objects with metadata put by boto3; every other object gets only the default content type.
const PUT_SCRIPT: &str = "bucket = sys.argv[1]\n\
    def body(n): return bytes(i % 251 for i in range(n))\n\
    s3.put_object(Bucket=bucket, Key='in/plain.bin', Body=body(100))\n\
    s3.put_object(Bucket=bucket, Key='in/named.csv', Body=body(100), ContentType='text/csv')\n\
    s3.put_object(Bucket=bucket, Key='in/typed.bin', Body=body(100), ContentType='application/x-btp-test')\n\
    s3.put_object(Bucket=bucket, Key='in/cached.txt', Body=body(100), CacheControl='max-age=60')\n\
    s3.put_object(Bucket=bucket, Key='in/user.txt', Body=body(100), Metadata={'color': 'blue'})\n\
    s3.put_object(Bucket=bucket, Key='in/deep/all.bin', Body=body(300 << 10), ContentType='image/x-test',\n\
    \x20   CacheControl='no-cache', ContentDisposition='inline', Metadata={'a': '1', 'b': '2'})\n\
    s3.put_object(Bucket=bucket, Key='in/large.bin', Body=body(13 << 20), ContentType='application/x-big',\n\
    \x20   Metadata={'origin': 'test'})\n";

/// The objects of `bucket` under `prefix/`, with their bytes' length and metadata, as boto3
/// reads them.
const HEAD_SCRIPT: &str = "bucket, prefix = sys.argv[1], sys.argv[2]\n\
    out = {}\n\
    for page in s3.get_paginator('list_objects_v2').paginate(Bucket=bucket, Prefix=prefix + '/'):\n\
    \x20   for o in page.get('Contents', []):\n\
    \x20       h = s3.head_object(Bucket=bucket, Key=o['Key'])\n\
    \x20       out[o['Key'][len(prefix) + 1:]] = {'size': o['Size'], 'type': h.get('ContentType'), 'meta': h.get('Metadata')}\n\
    print(json.dumps(out))\n";

#[test]
fn s3_metadata_a_file_system_cannot_hold_and_modes_an_object_store_cannot_are_reported() {
    let tmp = test_dir();
    let Some(s3) = S3Server::moto(tmp.path()) else {
        return;
    };
    support::backends::Backend::create_container(&s3, "meta");
    s3.boto3(PUT_SCRIPT, &["meta"]);
    let mut c = Cluster::start(tmp.path(), &[]);
    c.add_client(&["--workers", "4"]);
    c.add_client(&["--workers", "4"]);
    let opts = |side: &str| s3_opts(s3.port, side);

    // S3 -> fs: the bytes, and in the report what the files could not keep.
    let dst = tmp.path().join("from-s3");
    let mut args: Vec<String> = opts("src");
    args.extend(["--verify", "checksum"].map(String::from));
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let (done, id) = run_task(&c, "s3://meta/in", dst.to_str().unwrap(), &args);
    assert_eq!(done["files_copied"], 7, "{done}");
    let expect = |n: usize| -> Vec<u8> { (0..n).map(|i| (i % 251) as u8).collect() };
    for (rel, size) in [
        ("plain.bin", 100),
        ("named.csv", 100),
        ("typed.bin", 100),
        ("cached.txt", 100),
        ("user.txt", 100),
        ("deep/all.bin", 300 << 10),
        ("large.bin", 13 << 20),
    ] {
        assert!(
            std::fs::read(dst.join(rel)).unwrap() == expect(size),
            "{rel}: bytes"
        );
    }
    let lost = not_kept(&c, &id);
    let want: BTreeMap<String, String> = [
        ("plain.bin", ""),
        // The name gives the type back.
        ("named.csv", ""),
        ("typed.bin", "content-type"),
        ("cached.txt", "cache-control"),
        ("user.txt", "x-amz-meta-color"),
        (
            "deep/all.bin",
            "content-type, cache-control, content-disposition, x-amz-meta-a, x-amz-meta-b",
        ),
        ("large.bin", "content-type, x-amz-meta-origin"),
    ]
    .into_iter()
    .map(|(p, w)| (p.to_string(), w.to_string()))
    .collect();
    assert_eq!(
        lost, want,
        "the not_kept column names exactly what each file lost"
    );
    // The report lists them too, by path.
    let report = c.report(&id);
    let listed: BTreeMap<String, String> = report["not_kept"]
        .as_array()
        .unwrap_or_else(|| panic!("{report}"))
        .iter()
        .map(|n| {
            (
                n["path"].as_str().unwrap().into(),
                n["what"].as_str().unwrap().into(),
            )
        })
        .collect();
    let non_empty: BTreeMap<String, String> =
        want.into_iter().filter(|(_, w)| !w.is_empty()).collect();
    assert_eq!(listed, non_empty, "{report}");
    // And the per-file CSV has the column.
    let csv = btp(&c.url, &["task", "files", &id, "--output", "csv"]);
    let csv = String::from_utf8(csv.stdout).unwrap();
    assert!(
        csv.starts_with("path,size,outcome,reason,not_kept\n"),
        "{csv}"
    );
    assert!(
        csv.contains("typed.bin,100,copied,,content-type\n"),
        "{csv}"
    );

    // fs -> S3: a file's mode has no place on an object store; named only when --preserve
    // owner asks for file attributes. The content type is guessed from the name (boto3 sees it).
    let src = tmp.path().join("src");
    make_tree(&src, None);
    let run_up = |prefix: &str, extra: &[&str]| -> BTreeMap<String, String> {
        let mut args = opts("dst");
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let (_, id) = run_task(
            &c,
            src.to_str().unwrap(),
            &format!("s3://meta/{prefix}"),
            &args,
        );
        not_kept(&c, &id)
    };
    let plain = run_up("plain", &[]);
    assert_eq!(plain.len(), TREE.len());
    assert!(plain.values().all(|w| w.is_empty()), "{plain:?}");
    let asked = run_up("owner", &["--preserve", "owner"]);
    assert_eq!(asked.len(), TREE.len());
    for (rel, what) in &asked {
        assert_eq!(what, "mode, owner", "{rel}");
    }
    let heads: serde_json::Value =
        serde_json::from_str(&s3.boto3(HEAD_SCRIPT, &["meta", "owner"])).unwrap();
    assert_eq!(heads["group/readable.csv"]["type"], "text/csv", "{heads}");
    assert_eq!(heads["large/parts.bin"]["size"], 13 << 20, "{heads}");
    let sizes: BTreeMap<String, u64> = heads
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v["size"].as_u64().unwrap()))
        .collect();
    assert_eq!(sizes, tree_files(&src), "every file uploaded");
}

/// SFTP destinations get the source's mode, and with `--preserve owner` its owner and group
/// (setstat on the temporary file before its rename), small files and files in parts alike.
#[test]
fn sftp_copies_keep_modes_and_with_preserve_owner_owners() {
    let tmp = test_dir();
    let Some(sshd) = start_sshd(tmp.path()) else {
        return;
    };
    let root = is_root();
    let src = tmp.path().join("src");
    make_tree(&src, root.then_some((1234, 5678)));
    let mut c = Cluster::start(tmp.path(), &[]);
    c.add_client(&["--workers", "4"]);
    c.add_client(&["--workers", "4"]);
    let want = stat_tree(&src);
    let served = tmp.path().join("served");
    std::fs::create_dir_all(&served).unwrap();
    let mut runs = vec![("plain", vec![])];
    if root {
        runs.push(("owned", vec!["--preserve", "owner"]));
    } else {
        eprintln!("not root: skipping the --preserve owner copy (chown needs root)");
    }
    for (name, extra) in runs {
        let on_server = served.join(name);
        let mut args: Vec<String> = sshd.opts("dst");
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let (_, id) = run_task(&c, src.to_str().unwrap(), &sshd.url(&on_server), &args);
        assert_same_tree(&src, &on_server);
        for (rel, (mode, uid, gid, _)) in stat_tree(&on_server) {
            assert_eq!(mode, want[&rel].0, "{name}: {rel}: mode {mode:o}");
            if name == "owned" {
                assert_eq!((uid, gid), (1234, 5678), "{name}: {rel}");
            }
        }
        let lost = not_kept(&c, &id);
        assert_eq!(lost.len(), TREE.len());
        assert!(lost.values().all(|w| w.is_empty()), "{name}: {lost:?}");
    }
}
