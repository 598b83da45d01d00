//! One end-to-end body for every storage backend, as OpenDAL's behaviour tests are: a test starts
//! a real server (moto, SeaweedFS, Azurite, ...), describes it with an [`Backend`], and calls
//! [`backend_suite`]. What the suite sees of the store it reads with a client that is not ours.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::*;

/// A storage service under test, started by the test itself; stopped when dropped.
pub trait Backend {
    /// Short name for messages ("moto", "seaweedfs", "azurite", ...).
    fn name(&self) -> &str;
    /// The endpoint URL of `prefix` (no slashes at either end, may be empty) in container `c`
    /// (bucket, container or directory), e.g. "s3://c/prefix".
    fn url(&self, c: &str, prefix: &str) -> String;
    /// What the endpoint needs, as CLI arguments: `["--src-opt", "k=v", ...]` (side "src" or "dst").
    fn opts(&self, side: &str) -> Vec<String>;
    /// Creates container `c` with a client that is not ours.
    fn create_container(&self, c: &str);
    /// Every object (file) in container `c`: key relative to the container -> size, read with a
    /// client that is not ours.
    fn objects(&self, c: &str) -> BTreeMap<String, u64>;
    /// What staged uploads left in container `c` (open multipart uploads, uncommitted blocks,
    /// staging objects or directories): their count, read with a client that is not ours. 0 when
    /// clean.
    fn staged(&self, c: &str) -> usize;
    /// Whether large files go to this store in parts spread over workers (false for stores that
    /// take a file only whole).
    fn parts(&self) -> bool {
        true
    }
    /// Whether copies within this store are made by the store itself (S3's CopyObject).
    fn server_side_copy(&self) -> bool {
        false
    }
}

/// The size of the suite's large file: `BTP_SUITE_BIG_MIB` MiB (24 by default), in parts of 5 MiB.
fn big_size() -> u64 {
    std::env::var("BTP_SUITE_BIG_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24)
        << 20
}

const BIG: &str = "big file.bin";

/// `files` with every key under `prefix/`.
fn under(prefix: &str, files: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    files
        .iter()
        .map(|(k, v)| (format!("{prefix}/{k}"), *v))
        .collect()
}

/// The objects of container `c` under `prefix/`.
fn objects_under(b: &dyn Backend, c: &str, prefix: &str) -> BTreeMap<String, u64> {
    b.objects(c)
        .into_iter()
        .filter(|(k, _)| k.starts_with(&format!("{prefix}/")))
        .collect()
}

/// fs -> X, X -> X, X -> fs with `--verify checksum` (a large file in parts spread over two
/// clients), byte-identical; a re-run copies 0 bytes; sync deletes what the source lost and
/// nothing beside its prefix; cancel leaves nothing staged.
pub fn backend_suite(b: &dyn Backend, dir: &Path) {
    let name = b.name().to_string();
    for c in ["btp-a", "btp-b", "btp-c"] {
        b.create_container(c);
    }
    let src = dir.join("src");
    let tree = gen_tree(&src, 150, big_size());
    // Object stores hold no empty directories: the tree has none, so every backend holds it whole.
    std::fs::remove_dir(src.join("empty-dir")).unwrap();
    let tree = TreeStats {
        dirs: tree.dirs - 1,
        ..tree
    };

    let mut c = Cluster::start(dir, &[]);
    c.add_client(&["--workers", "4"]);
    c.add_client(&["--workers", "4"]);
    let run = |src: &str, dst: &str, extra: &[&str]| -> serde_json::Value {
        let mut args: Vec<String> = ["task", "create", "--src", src, "--dst", dst, "--start"]
            .map(String::from)
            .to_vec();
        if src.contains("://") {
            args.extend(b.opts("src"));
        }
        if dst.contains("://") {
            args.extend(b.opts("dst"));
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let id = btp_json(&c.url, &args)["id"].as_str().unwrap().to_string();
        let started = std::time::Instant::now();
        wait_task(&c.url, &id, Duration::from_secs(600));
        eprintln!(
            "{name}: {src} -> {dst}: {:.1} s",
            started.elapsed().as_secs_f64()
        );
        let report = c.report(&id);
        // The accounting rule holds for every run, whatever the backend.
        let entries = report_entries(&c.url, &id);
        let t = &report["task"];
        assert_eq!(
            t["files_found"].as_u64().unwrap(),
            entries.len() as u64,
            "{name}: every entry found is in the per-file report once: {report}"
        );
        report
    };
    let copied_all = |what: &str, r: &serde_json::Value| {
        let t = &r["task"];
        assert_eq!(t["state"], "completed", "{name}: {what}: {r}");
        assert_eq!(t["files_copied"], tree.files, "{name}: {what}: {r}");
        assert_eq!(t["bytes_copied"], tree.bytes, "{name}: {what}: {r}");
        assert_eq!(t["files_failed"], 0, "{name}: {what}: {r}");
    };
    let checked = [
        "--verify",
        "checksum",
        "--multipart-threshold",
        "8MiB",
        "--part-size",
        "5MiB",
    ];
    let files = tree_files(&src);
    let src_url = src.to_str().unwrap().to_string();

    // fs -> X: every file there with its size, the large one in parts over both clients.
    let up = run(&src_url, &b.url("btp-a", "data"), &checked);
    copied_all("fs -> store", &up);
    assert_eq!(
        objects_under(b, "btp-a", "data"),
        under("data", &files),
        "{name}: the store holds the tree"
    );
    assert_eq!(b.staged("btp-a"), 0, "{name}: an upload left staged parts");

    // A re-run copies nothing.
    let again = run(&src_url, &b.url("btp-a", "data"), &[]);
    assert_eq!(again["task"]["state"], "completed", "{name}: {again}");
    assert_eq!(again["task"]["bytes_copied"], 0, "{name}: {again}");
    assert_eq!(
        again["task"]["files_skipped"], tree.files,
        "{name}: {again}"
    );

    // X -> X, to another container.
    let across = run(&b.url("btp-a", "data"), &b.url("btp-b", "copy"), &checked);
    copied_all("store -> store", &across);
    assert_eq!(
        objects_under(b, "btp-b", "copy"),
        under("copy", &files),
        "{name}: the second container holds the tree"
    );
    assert_eq!(b.staged("btp-b"), 0, "{name}: a copy left staged parts");
    if b.server_side_copy() {
        // Within one store the copy is made by the store: no byte goes through a client (the
        // run above, checksum-verified, may read back what the store's ETags cannot prove).
        let inside = run(
            &b.url("btp-a", "data"),
            &b.url("btp-b", "server-side"),
            &checked[2..],
        );
        copied_all("store -> store, server-side", &inside);
        assert_eq!(
            inside["task"]["bytes_through_clients"], 0,
            "{name}: {inside}"
        );
        assert_eq!(
            objects_under(b, "btp-b", "server-side"),
            under("server-side", &files),
            "{name}: the server-side copy holds the tree"
        );
        assert_eq!(
            b.staged("btp-b"),
            0,
            "{name}: a server-side copy left staged parts"
        );
    }

    // X -> fs: byte for byte the tree we started with.
    let back = dir.join("back");
    let down = run(&b.url("btp-b", "copy"), back.to_str().unwrap(), &checked);
    copied_all("store -> fs", &down);
    assert_same_tree(&src, &back);
    // The parts of the large file ran on both clients, counted over the three runs (the few
    // parts of one run may all land on one client).
    if b.parts() {
        let clients = clients_that_copied_parts(dir, BIG);
        assert_eq!(
            clients.len(),
            2,
            "{name}: parts of {BIG} ran on {clients:?}"
        );
    }

    // Sync: what the source lost goes, what it gained comes; a sibling prefix that begins with
    // the same characters ("data-old" beside "data") is outside the sync and stays.
    let sibling = dir.join("sibling");
    std::fs::create_dir_all(&sibling).unwrap();
    std::fs::write(sibling.join("keep.txt"), b"outside the sync").unwrap();
    let kept = run(sibling.to_str().unwrap(), &b.url("btp-a", "data-old"), &[]);
    assert_eq!(kept["task"]["state"], "completed", "{name}: {kept}");
    let gone = "hash#1.txt";
    std::fs::remove_file(src.join(gone)).unwrap();
    std::fs::write(src.join("new file.txt"), b"added after the first copy").unwrap();
    let synced = run(&src_url, &b.url("btp-a", "data"), &["--mode", "sync"]);
    let t = &synced["task"];
    assert_eq!(t["state"], "completed", "{name}: {synced}");
    assert_eq!(t["files_deleted"], 1, "{name}: {synced}");
    assert_eq!(t["files_copied"], 1, "{name}: {synced}");
    assert_eq!(
        objects_under(b, "btp-a", "data"),
        under("data", &tree_files(&src)),
        "{name}: after sync the store holds the source as it is now"
    );
    assert_eq!(
        objects_under(b, "btp-a", "data-old"),
        BTreeMap::from([("data-old/keep.txt".to_string(), 16)]),
        "{name}: sync deleted outside its prefix"
    );

    // Cancel mid-copy: nothing staged is left, and no object stands under the final name.
    let slow = dir.join("slow");
    std::fs::create_dir_all(&slow).unwrap();
    let f = std::fs::File::create(slow.join("huge.bin")).unwrap();
    f.set_len(96 << 20).unwrap();
    drop(f);
    let mut args: Vec<String> = [
        "task",
        "create",
        "--src",
        slow.to_str().unwrap(),
        "--dst",
        &b.url("btp-c", "in"),
        "--start",
        "--multipart-threshold",
        "8MiB",
        "--part-size",
        "5MiB",
        "--speed-limit",
        "8MiB/s",
    ]
    .map(String::from)
    .to_vec();
    args.extend(b.opts("dst"));
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let id = btp_json(&c.url, &args)["id"].as_str().unwrap().to_string();
    if b.parts() {
        wait_for("bytes copied", Duration::from_secs(120), || {
            let t = btp_json(&c.url, &["task", "get", &id]);
            (t["bytes_copied"].as_u64().unwrap() >= 10 << 20 || t["state"] != "running")
                .then_some(())
        });
        // The check below can fail: mid-copy, the upload is staged on the store.
        assert!(b.staged("btp-c") > 0, "{name}: nothing staged mid-copy");
    } else {
        // A file that goes whole counts its bytes at its end: cancel while it is on its way.
        std::thread::sleep(Duration::from_secs(3));
    }
    let t = btp_json(&c.url, &["task", "cancel", &id]);
    assert_eq!(t["state"], "cancelled", "{name}: {t}");
    wait_for(
        &format!("{name}: nothing staged after the cancel"),
        Duration::from_secs(60),
        || (b.staged("btp-c") == 0).then_some(()),
    );
    // And it stays so: no job of the cancelled task stages anything again.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(b.staged("btp-c"), 0, "{name}: staged after the cancel");
    assert!(
        !b.objects("btp-c").contains_key("in/huge.bin"),
        "{name}: a cancelled file stands under its final name"
    );
    for container in ["btp-a", "btp-b"] {
        assert_eq!(
            b.staged(container),
            0,
            "{name}: {container} holds staged parts"
        );
    }
}

/// Tasks between different backends, one after the other: fs -> the first store, then each
/// store to the next, then the last back to fs, every hop with `--verify checksum` and the large
/// file in parts over two clients; each store holds the tree after its hop and nothing staged,
/// and the tree that comes back is byte for byte the one that left.
pub fn backend_chain(stores: &[&dyn Backend], dir: &Path) {
    for b in stores {
        b.create_container("hop");
    }
    let src = dir.join("src");
    let tree = gen_tree(&src, 60, big_size());
    std::fs::remove_dir(src.join("empty-dir")).unwrap();
    let files = tree_files(&src);
    let mut c = Cluster::start(dir, &[]);
    c.add_client(&["--workers", "4"]);
    c.add_client(&["--workers", "4"]);
    let checked = [
        "--verify",
        "checksum",
        "--multipart-threshold",
        "8MiB",
        "--part-size",
        "5MiB",
    ];
    let hop = |from: Option<&dyn Backend>, to: Option<&dyn Backend>, dst_path: &Path| {
        let src_url = from.map_or(src.to_str().unwrap().to_string(), |b| b.url("hop", "tree"));
        let dst_url = to.map_or(dst_path.to_str().unwrap().to_string(), |b| {
            b.url("hop", "tree")
        });
        let mut args: Vec<String> = ["task", "create", "--src", &src_url, "--dst", &dst_url]
            .map(String::from)
            .to_vec();
        args.push("--start".into());
        args.extend(from.map(|b| b.opts("src")).unwrap_or_default());
        args.extend(to.map(|b| b.opts("dst")).unwrap_or_default());
        args.extend(checked.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let id = btp_json(&c.url, &args)["id"].as_str().unwrap().to_string();
        wait_task(&c.url, &id, Duration::from_secs(600));
        let r = c.report(&id);
        let t = &r["task"];
        let what = format!("{src_url} -> {dst_url}");
        assert_eq!(t["state"], "completed", "{what}: {r}");
        assert_eq!(t["files_copied"], tree.files, "{what}: {r}");
        assert_eq!(t["bytes_copied"], tree.bytes, "{what}: {r}");
        assert_eq!(
            report_entries(&c.url, &id).len() as u64,
            tree.files,
            "{what}: every file once in the per-file report"
        );
        if let Some(b) = to {
            assert_eq!(
                objects_under(b, "hop", "tree"),
                under("tree", &files),
                "{what}: {} holds the tree",
                b.name()
            );
            assert_eq!(b.staged("hop"), 0, "{what}: staged parts left");
        }
        eprintln!("{what}: done");
    };
    let back = dir.join("back");
    let mut from: Option<&dyn Backend> = None;
    for b in stores {
        hop(from, Some(*b), &back);
        from = Some(*b);
    }
    hop(from, None, &back);
    assert_same_tree(&src, &back);
}

// ---- S3 servers (moto, SeaweedFS), seen through boto3 ----

/// An S3-compatible server started by the test, seen through boto3 (AWS's own SDK).
pub struct S3Server {
    pub name: String,
    pub port: u16,
    pub _service: Service,
}

impl S3Server {
    /// moto's S3 server, or None (skip) when it is not installed outside CI.
    pub fn moto(dir: &Path) -> Option<S3Server> {
        let (service, port) = start_moto(dir)?;
        Some(S3Server {
            name: "moto".into(),
            port,
            _service: service,
        })
    }

    /// SeaweedFS's S3 gateway, or None (skip) when it is not installed outside CI.
    pub fn seaweedfs(dir: &Path) -> Option<S3Server> {
        let (service, port) = start_seaweedfs(dir)?;
        Some(S3Server {
            name: "seaweedfs".into(),
            port,
            _service: service,
        })
    }

    /// Runs a boto3 script with `s3` bound to a client of this server; its standard output.
    pub fn boto3(&self, script: &str, args: &[&str]) -> String {
        let prelude = format!(
            "import sys, json, boto3\n\
             from botocore.config import Config\n\
             s3 = boto3.client('s3', endpoint_url='http://127.0.0.1:{}', region_name='us-east-1',\n\
                 aws_access_key_id='test', aws_secret_access_key='test',\n\
                 config=Config(s3={{'addressing_style': 'path'}}, retries={{'max_attempts': 10}}))\n",
            self.port
        );
        let out = Command::new("python3")
            .arg("-c")
            .arg(format!("{prelude}{script}"))
            .args(args)
            .env_remove("AWS_CA_BUNDLE")
            .output()
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "boto3 against {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Backend for S3Server {
    fn name(&self) -> &str {
        &self.name
    }

    fn url(&self, c: &str, prefix: &str) -> String {
        format!("s3://{c}/{prefix}")
    }

    fn opts(&self, side: &str) -> Vec<String> {
        s3_opts(self.port, side)
    }

    fn server_side_copy(&self) -> bool {
        true
    }

    fn create_container(&self, c: &str) {
        // A new server may refuse for a while (SeaweedFS, until its volumes are up).
        let script = "import time\n\
            for i in range(60):\n\
            \x20   try:\n\
            \x20       s3.create_bucket(Bucket=sys.argv[1]); break\n\
            \x20   except s3.exceptions.BucketAlreadyOwnedByYou: break\n\
            \x20   except Exception as e:\n\
            \x20       if i == 59: raise\n\
            \x20       time.sleep(0.5)\n";
        self.boto3(script, &[c]);
    }

    fn objects(&self, c: &str) -> BTreeMap<String, u64> {
        let script = "out = {}\n\
            for page in s3.get_paginator('list_objects_v2').paginate(Bucket=sys.argv[1]):\n\
            \x20   for o in page.get('Contents', []): out[o['Key']] = o['Size']\n\
            print(json.dumps(out))\n";
        serde_json::from_str(&self.boto3(script, &[c])).unwrap()
    }

    fn staged(&self, c: &str) -> usize {
        let script = "n = 0\n\
            for page in s3.get_paginator('list_multipart_uploads').paginate(Bucket=sys.argv[1]):\n\
            \x20   n += len(page.get('Uploads', []))\n\
            print(n)\n";
        self.boto3(script, &[c]).trim().parse().unwrap()
    }
}

// ---- Azure Blob (Azurite), seen through Microsoft's Python SDK ----

pub struct Azurite {
    pub port: u16,
    pub _service: Service,
}

impl Azurite {
    /// Azurite on a free port, or None (skip) when it is not installed outside CI.
    pub fn start(dir: &Path) -> Option<Azurite> {
        let (service, port) = start_azurite(dir)?;
        Some(Azurite {
            port,
            _service: service,
        })
    }
}

impl Backend for Azurite {
    fn name(&self) -> &str {
        "azurite"
    }

    fn url(&self, c: &str, prefix: &str) -> String {
        format!("azblob://{c}/{prefix}")
    }

    fn opts(&self, side: &str) -> Vec<String> {
        azurite_opts(self.port, side)
    }

    fn create_container(&self, c: &str) {
        azure_sdk(self.port, &["create", c]);
    }

    fn objects(&self, c: &str) -> BTreeMap<String, u64> {
        azure_objects(self.port, c)
    }

    /// Uncommitted blocks, over all blobs of the container.
    fn staged(&self, c: &str) -> usize {
        azure_staged(self.port, c).values().sum::<u64>() as usize
    }
}

// ---- Google Cloud Storage (fake-gcs-server), seen through plain HTTP to the JSON API ----

pub struct FakeGcs {
    pub port: u16,
    /// A bearer token the endpoint sends (the emulator ignores it).
    token: String,
    pub _service: Service,
}

impl FakeGcs {
    /// fake-gcs-server on a free port, or None (skip) when it is not installed outside CI.
    pub fn start(dir: &Path, token: &str) -> Option<FakeGcs> {
        let (service, port) = start_fake_gcs(dir)?;
        Some(FakeGcs {
            port,
            token: token.to_string(),
            _service: service,
        })
    }
}

/// Staged parts (and markers) of uploads in a bucket.
pub fn gcs_staged(port: u16, bucket: &str) -> Vec<String> {
    gcs_objects(port, bucket)
        .into_keys()
        .filter(|k| {
            k.split('/')
                .any(|seg| seg.starts_with('.') && seg.contains(".btp-"))
        })
        .collect()
}

impl Backend for FakeGcs {
    fn name(&self) -> &str {
        "fake-gcs-server"
    }

    fn url(&self, c: &str, prefix: &str) -> String {
        format!("gs://{c}/{prefix}")
    }

    fn opts(&self, side: &str) -> Vec<String> {
        [
            format!("endpoint=http://127.0.0.1:{}", self.port),
            format!("token={}", self.token),
        ]
        .into_iter()
        .flat_map(|o| [format!("--{side}-opt"), o])
        .collect()
    }

    fn create_container(&self, c: &str) {
        gcs_create_bucket(self.port, c);
    }

    fn objects(&self, c: &str) -> BTreeMap<String, u64> {
        gcs_objects(self.port, c)
    }

    fn staged(&self, c: &str) -> usize {
        gcs_staged(self.port, c).len()
    }
}

// ---- SFTP (OpenSSH's sshd), seen on the local disk it serves ----

/// Containers are directories under `root`, which the server serves; what it stores is read
/// from the local disk with std::fs.
pub struct SftpServer {
    pub sshd: Sshd,
    pub root: std::path::PathBuf,
}

impl SftpServer {
    /// sshd on a free port serving `dir/served`, or None (skip) when it is not installed
    /// outside CI.
    pub fn start(dir: &Path) -> Option<SftpServer> {
        let sshd = start_sshd(dir)?;
        let root = dir.join("served");
        std::fs::create_dir_all(&root).unwrap();
        Some(SftpServer { sshd, root })
    }
}

impl Backend for SftpServer {
    fn name(&self) -> &str {
        "sshd"
    }

    fn url(&self, c: &str, prefix: &str) -> String {
        let mut p = self.root.join(c);
        if !prefix.is_empty() {
            p = p.join(prefix);
        }
        self.sshd.url(&p)
    }

    fn opts(&self, side: &str) -> Vec<String> {
        self.sshd.opts(side)
    }

    fn create_container(&self, c: &str) {
        std::fs::create_dir_all(self.root.join(c)).unwrap();
    }

    fn objects(&self, c: &str) -> BTreeMap<String, u64> {
        walk(&self.root.join(c))
            .into_iter()
            .filter_map(|(p, size)| Some((p.to_string_lossy().into_owned(), size?)))
            .collect()
    }

    fn staged(&self, c: &str) -> usize {
        // Temporary files and staging directories, each counted once (not what a staging
        // directory holds).
        walk(&self.root.join(c))
            .keys()
            .filter(|p| {
                let segs: Vec<String> = p.iter().map(|s| s.to_string_lossy().into()).collect();
                let staged = |n: &String| n.starts_with('.') && n.contains(".btp-");
                let (last, above) = segs.split_last().unwrap();
                staged(last) && !above.iter().any(staged)
            })
            .count()
    }
}
