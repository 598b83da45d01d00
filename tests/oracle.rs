//! A seeded, randomised oracle of the accounting rule: every entry the source listing meets ends
//! in the per-file report exactly once with the outcome the rules give (a reason when failed),
//! `files_found = copied + skipped + failed + excluded`, and the destination holds exactly what
//! the rules give. Nothing is written outside the destination, nothing outside a sync's scope
//! is deleted, no partial file stands under a final name.
//!
//! Each seed generates a source tree (up to five levels, unicode and shell-hostile names, names
//! that are not UTF-8, empty files and directories, small files and a few of about 1 MiB,
//! symbolic links to files, to directories, dangling and looping, fifos, files the client is
//! told it cannot read), a destination state (up to date, stale, destination-only files and
//! directories, a temporary name, sometimes links out of the destination) and the options of
//! two runs (copy or sync, `--links`, filters, `--delete-excluded`, `--dry-run`, multipart,
//! small listing pages, sometimes a client killed mid-task). The oracle computes the expected
//! report and destination from the generated tree and the rules, never from the program's
//! output; `btp_common::filter::Filter` decides what the filters accept.
//!
//! Where the rules are silent the oracle takes: a link at the destination where the source has
//! a file is no destination file (the file replaces it; nothing is written through it); a file
//! at the destination where the source has a directory makes every entry below it fail (any
//! reason); the size sync filters see for a destination link is 0 (left unchecked when size
//! bounds would tell it from the size of a file it leads to).
//!
//! Seeds: `BTP_ORACLE_SEEDS=1,2,3` (every test runs them); by default a fixed set. Each failing
//! seed is reported with every discrepancy found, after all seeds ran.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use btp_common::filter::Filter;
use serde_json::Value;
use support::*;

/// Default seeds of the file-system runs, of the runs that kill a client, and of the S3 runs:
/// seeds that pass today and together cover every feature of the generator.
// The defaults include seeds that found bugs since fixed: sync listing the destination through
// links (fs 2, kill 101), files written through a destination link (fs 3, kill 104), an empty
// directory created through one (fs 288), a dry run's empty per-file report (fs 1, fs->S3 208,
// S3->fs 303), a failed listing counted wrong (fs 18, 87), a file where the source has a
// directory (fs 150).
const FS_SEEDS: &[u64] = &[
    1, 2, 3, 5, 9, 10, 12, 18, 19, 57, 60, 67, 71, 81, 83, 87, 92, 100, 150, 288,
];
const KILL_SEEDS: &[u64] = &[101, 104, 106, 110, 113];
const FS_S3_SEEDS: &[u64] = &[201, 203, 206, 208, 210];
const S3_FS_SEEDS: &[u64] = &[302, 303, 306, 313, 316];
// Seeds left out of the defaults because they hit a known bug of the program (not of the
// oracle); `BTP_ORACLE_SEEDS=N cargo nextest run --test oracle TEST` reproduces each:
// - a dry run predicts `copied` for a link whose real copy fails (oracle_fs_to_fs 256);
// - a client killed just after CreateMultipartUpload leaves that upload open (depends on the
//   timing of the kill: oracle_fs_to_s3 204 and oracle_s3_to_fs 301 failed once each).

/// Paths containing this text cannot be read by the test clients (`BTP_FAULT_UNREADABLE`): as
/// root, permissions cannot make a file unreadable.
const UNREADABLE: &str = "unreadable-";
const CLIENT_ENV: &[(&str, &str)] = &[("BTP_FAULT_UNREADABLE", UNREADABLE)];
const CLIENT_ARGS: &[&str] = &["--ack-wait", "3s"];
const PRECIOUS: &[u8] = b"outside the destination: never to be touched";
const TASK_TIMEOUT: Duration = Duration::from_secs(90);

fn seeds(default: &[u64]) -> Vec<u64> {
    match std::env::var("BTP_ORACLE_SEEDS") {
        Ok(s) if !s.trim().is_empty() => s
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse()
                    .expect("BTP_ORACLE_SEEDS: comma-separated numbers")
            })
            .collect(),
        _ => default.to_vec(),
    }
}

// ---------------------------------------------------------------------------------------------
// A small PRNG (xorshift64*), so that a seed gives the same case everywhere.

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        // splitmix64 of the seed: neighbouring seeds give unrelated states.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

/// Unique numbers for names within a case.
struct Names(u64);

impl Names {
    fn next(&mut self) -> u64 {
        self.0 += 1;
        self.0
    }
}

// ---------------------------------------------------------------------------------------------
// Paths and small file-system helpers.

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn mtime_ms(meta: &std::fs::Metadata) -> i64 {
    match meta.modified().unwrap().duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}

fn set_mtime(path: &Path, ms: i64) {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    std::fs::File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(t))
        .unwrap_or_else(|e| panic!("set mtime of {}: {e}", path.display()));
}

fn write_file(path: &Path, data: &[u8], mtime: i64) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    set_mtime(path, mtime);
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
}

fn symlink(target: &str, at: &Path) {
    std::fs::create_dir_all(at.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(target, at).unwrap();
}

/// Directories (`a/b/`) end in `/`; their depth is the number of segments.
fn depth(dir: &str) -> usize {
    dir.matches('/').count()
}

/// The directory part of a path with its trailing `/`, `""` for the root.
fn parent_dir(path: &str) -> &str {
    let body = path.trim_end_matches('/');
    match body.rfind('/') {
        Some(i) => &path[..=i],
        None => "",
    }
}

/// An upload's (or a link's) temporary name `.<name>.btp-...`: never deleted by a sync.
fn is_temp(path: &str) -> bool {
    let name = path
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(path);
    name.starts_with('.') && name.contains(".btp-")
}

/// A name as the report shows it: UTF-8 as it is, every other byte as `\xNN`.
fn shown(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Trees as the oracle sees them: relative path (no trailing `/`) -> node.

#[derive(Clone, Debug, PartialEq)]
enum Node {
    Dir,
    /// Bytes and modification time (ms; for objects their LastModified).
    File(Vec<u8>, i64),
    Link(String),
    Other,
}

impl Node {
    fn kind(&self) -> String {
        match self {
            Node::Dir => "directory".into(),
            Node::File(d, _) => format!("file of {} bytes", d.len()),
            Node::Link(t) => format!("link to {t:?}"),
            Node::Other => "special file".into(),
        }
    }
}

type Tree = BTreeMap<String, Node>;

/// A file-system tree, links not followed; empty when the root does not exist.
fn read_tree(root: &Path) -> Tree {
    let mut out = Tree::new();
    if std::fs::symlink_metadata(root).is_err() {
        return out;
    }
    let mut stack = vec![String::new()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(root.join(&dir)).unwrap() {
            let e = e.unwrap();
            let rel = format!("{dir}{}", e.file_name().to_string_lossy());
            let meta = std::fs::symlink_metadata(e.path()).unwrap();
            let ft = meta.file_type();
            let node = if ft.is_symlink() {
                Node::Link(
                    std::fs::read_link(e.path())
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                )
            } else if ft.is_dir() {
                stack.push(format!("{rel}/"));
                Node::Dir
            } else if ft.is_file() {
                Node::File(std::fs::read(e.path()).unwrap(), mtime_ms(&meta))
            } else {
                Node::Other
            };
            out.insert(rel, node);
        }
    }
    out
}

/// What a source walk sees, without following links: UTF-8 directories (`a/b/`, `""` the
/// root), regular files and links.
#[derive(Default)]
struct Scan {
    dirs: Vec<String>,
    files: Vec<String>,
    links: Vec<String>,
}

fn scan(root: &Path) -> Scan {
    let mut s = Scan::default();
    let mut stack = vec![String::new()];
    while let Some(dir) = stack.pop() {
        s.dirs.push(dir.clone());
        let mut entries: Vec<_> = std::fs::read_dir(root.join(&dir))
            .unwrap()
            .map(|e| e.unwrap())
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let Some(name) = e.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let rel = format!("{dir}{name}");
            let ft = e.file_type().unwrap();
            if ft.is_symlink() {
                s.links.push(rel);
            } else if ft.is_dir() {
                stack.push(format!("{rel}/"));
            } else if ft.is_file() {
                s.files.push(rel);
            }
        }
    }
    s.dirs.sort();
    s
}

// ---------------------------------------------------------------------------------------------
// Generation.

const DIR_NAMES: &[&str] = &[
    "docs",
    "ünï dir",
    "文件夹",
    "hash#dir",
    "pct%41dir",
    "q?dir",
    "-dash dir",
    "semi;dir & co",
    "it's",
    "a+b=c",
    "🦀 crab",
    "Ωμέγα",
];
const FILE_BASES: &[&str] = &[
    "file",
    "ünïcödé",
    "文件",
    "hash#",
    "percent%20",
    "question?",
    "semi;colon & amp",
    "quote'",
    "plus+eq=",
    "-leading",
    "with space",
    "🦀",
    "Ωμέγα",
    ".hidden",
];
const EXTS: &[&str] = &[".txt", ".bin", ".jpg", ".log", ".csv", ""];

fn file_name(rng: &mut Rng, n: &mut Names) -> String {
    let base = *rng.pick(FILE_BASES);
    let ext = *rng.pick(EXTS);
    format!("{base}-{}{ext}", n.next())
}

fn small_size(rng: &mut Rng) -> usize {
    match rng.below(100) {
        0..=11 => 0,
        12..=59 => rng.range(1, 2000) as usize,
        _ => rng.range(1, 65536) as usize,
    }
}

fn past_mtime(rng: &mut Rng) -> i64 {
    now_ms() - rng.range(1_000, 10_000_000) as i64 * 1000 - rng.below(1000) as i64
}

/// What a generated source holds besides directories and files.
#[derive(Clone, Copy, Debug)]
struct Spec {
    links: bool,
    fifos: bool,
    non_utf8: bool,
    unreadable: bool,
    big: usize,
    /// The destination holds links out of it (into the sentinel and the outside directory).
    hostile: bool,
}

impl Spec {
    fn random(rng: &mut Rng) -> Spec {
        Spec {
            links: rng.chance(85),
            fifos: rng.chance(50),
            non_utf8: rng.chance(50),
            unreadable: rng.chance(40),
            big: rng.below(3) as usize,
            hostile: rng.chance(25),
        }
    }

    /// What an S3 source can hold: UTF-8 keys, no links, no special files.
    fn plain(rng: &mut Rng) -> Spec {
        Spec {
            links: false,
            fifos: false,
            non_utf8: false,
            unreadable: false,
            big: rng.below(3) as usize,
            hostile: false,
        }
    }
}

fn gen_source(rng: &mut Rng, n: &mut Names, root: &Path, spec: &Spec) {
    std::fs::create_dir_all(root).unwrap();
    let mut dirs = vec![String::new()];
    for _ in 0..rng.range(3, 12) {
        let parents: Vec<String> = dirs.iter().filter(|d| depth(d) < 4).cloned().collect();
        let parent = rng.pick(&parents).clone();
        let d = format!("{parent}{}-{}/", rng.pick(DIR_NAMES), n.next());
        std::fs::create_dir_all(root.join(&d)).unwrap();
        dirs.push(d);
    }
    // Empty directories are part of the tree too.
    for _ in 0..rng.below(3) {
        let parent = rng.pick(&dirs).clone();
        std::fs::create_dir_all(root.join(format!("{parent}empty-{}", n.next()))).unwrap();
    }
    let mut files = Vec::new();
    for _ in 0..rng.range(10, 60) {
        let rel = format!("{}{}", rng.pick(&dirs), file_name(rng, n));
        let size = small_size(rng);
        let (data, mtime) = (rng.bytes(size), past_mtime(rng));
        write_file(&root.join(&rel), &data, mtime);
        files.push(rel);
    }
    for _ in 0..spec.big {
        let rel = format!("{}big-{}.bin", rng.pick(&dirs), n.next());
        let size = 1_000_000 + rng.below(100_000) as usize;
        let (data, mtime) = (rng.bytes(size), past_mtime(rng));
        write_file(&root.join(&rel), &data, mtime);
        files.push(rel);
    }
    if spec.unreadable {
        for _ in 0..rng.range(1, 2) {
            let rel = format!("{}{UNREADABLE}{}.txt", rng.pick(&dirs), n.next());
            let size = rng.range(1, 500) as usize;
            let (data, mtime) = (rng.bytes(size), past_mtime(rng));
            write_file(&root.join(&rel), &data, mtime);
        }
    }
    if spec.non_utf8 {
        let dir = root.join(rng.pick(&dirs));
        let name = [
            b"caf\xe9-".as_slice(),
            n.next().to_string().as_bytes(),
            b".txt",
        ]
        .concat();
        std::fs::write(dir.join(std::ffi::OsStr::from_bytes(&name)), b"latin-1").unwrap();
        if rng.chance(50) {
            let dir = root.join(rng.pick(&dirs));
            let name = [b"d\xff-".as_slice(), n.next().to_string().as_bytes()].concat();
            let bad = dir.join(std::ffi::OsStr::from_bytes(&name));
            std::fs::create_dir_all(bad.join("sub")).unwrap();
            std::fs::write(bad.join("inside.txt"), b"not listed").unwrap();
        }
    }
    if spec.fifos {
        for _ in 0..rng.range(1, 2) {
            mkfifo(&root.join(format!("{}pipe-{}", rng.pick(&dirs), n.next())));
        }
    }
    if spec.links {
        let mut dir_links = 0;
        for _ in 0..rng.range(2, 6) {
            let d = rng.pick(&dirs).clone();
            let up = "../".repeat(depth(&d));
            let k = n.next();
            let (name, target) = match rng.below(100) {
                0..=29 if !files.is_empty() => {
                    let ext = *rng.pick(EXTS);
                    (format!("ln-{k}{ext}"), format!("{up}{}", rng.pick(&files)))
                }
                30..=49 if dir_links < 2 => {
                    dir_links += 1;
                    let t = rng.pick(&dirs).trim_end_matches('/').to_string();
                    let target = match (t.is_empty(), up.is_empty()) {
                        (true, true) => ".".to_string(),
                        (true, false) => up.trim_end_matches('/').to_string(),
                        (false, _) => format!("{up}{t}"),
                    };
                    (format!("lndir-{k}"), target)
                }
                50..=64 => (format!("missing-{k}"), format!("nowhere-{k}")),
                // Dangling, and pointing out of the tree: into the sentinel.
                65..=74 => (
                    format!("ghost-{k}.txt"),
                    format!("{up}../sentinel/ghost-{k}"),
                ),
                75..=89 => {
                    let t = if d.is_empty() { "." } else { ".." };
                    (format!("loop-{k}"), t.to_string())
                }
                90..=94 => (format!("self-{k}"), format!("self-{k}")),
                _ if dir_links < 2 => {
                    dir_links += 1;
                    let t = root.join(rng.pick(&dirs));
                    let t = t.to_str().unwrap().trim_end_matches('/').to_string();
                    (format!("abs-{k}"), t)
                }
                _ => (format!("missing-{k}"), format!("nowhere-{k}")),
            };
            symlink(&target, &root.join(format!("{d}{name}")));
        }
    }
}

/// Fills a file-system destination with states relative to the source: up to date, stale in
/// size, content or time, destination-only files and directories, a temporary name, and (when
/// `hostile`) links out of the destination where the source has a file or a directory.
fn gen_fs_dst(rng: &mut Rng, n: &mut Names, src: &Path, dst: &Path, hostile: bool) {
    if rng.chance(20) {
        return; // a fresh destination
    }
    std::fs::create_dir_all(dst).unwrap();
    let s = scan(src);
    let mut blocked: Vec<String> = Vec::new();
    let mut used: BTreeSet<String> = BTreeSet::new();
    if hostile {
        let dirs: Vec<String> = s.dirs.iter().filter(|d| !d.is_empty()).cloned().collect();
        if !dirs.is_empty() && rng.chance(60) {
            let d = rng.pick(&dirs).clone();
            let up = "../".repeat(depth(parent_dir(&d)) + 1);
            let to = *rng.pick(&["sentinel", "outside"]);
            symlink(&format!("{up}{to}"), &dst.join(d.trim_end_matches('/')));
            blocked.push(d);
        }
        let files: Vec<String> = s
            .files
            .iter()
            .filter(|f| !blocked.iter().any(|b| f.starts_with(b.as_str())))
            .cloned()
            .collect();
        if !files.is_empty() {
            let f = rng.pick(&files).clone();
            let up = "../".repeat(depth(parent_dir(&f)) + 1);
            symlink(&format!("{up}sentinel/ghost-{}", n.next()), &dst.join(&f));
            used.insert(f);
        }
    }
    let free = |p: &str, used: &BTreeSet<String>| {
        !used.contains(p) && !blocked.iter().any(|b| p.starts_with(b.as_str()))
    };
    for f in &s.files {
        if !free(f, &used) {
            continue;
        }
        let meta = std::fs::metadata(src.join(f)).unwrap();
        let (data, mtime) = (std::fs::read(src.join(f)).unwrap(), mtime_ms(&meta));
        let at = dst.join(f);
        match rng.below(100) {
            0..=44 => {}
            45..=64 => write_file(&at, &data, mtime),
            65..=69 => write_file(&at, &rng.bytes(data.len()), mtime + 100_000),
            70..=79 => {
                let mut other = data.clone();
                other.push(b'+');
                write_file(&at, &other, mtime);
            }
            80..=89 => write_file(&at, &data, mtime - 5_000_000),
            _ => write_file(&at, &rng.bytes(data.len()), mtime - 5_000_000),
        }
    }
    for l in &s.links {
        if !free(l, &used) {
            continue;
        }
        let target = std::fs::read_link(src.join(l)).unwrap();
        match rng.below(100) {
            0..=29 => symlink(target.to_str().unwrap(), &dst.join(l)),
            30..=39 => symlink(&format!("elsewhere-{}", n.next()), &dst.join(l)),
            40..=49 => write_file(&dst.join(l), b"was a file", past_mtime(rng)),
            _ => {}
        }
    }
    let dirs: Vec<String> = s.dirs.iter().filter(|d| free(d, &used)).cloned().collect();
    for _ in 0..rng.range(1, 6) {
        let rel = format!("{}only-{}{}", rng.pick(&dirs), n.next(), rng.pick(EXTS));
        let size = small_size(rng);
        write_file(&dst.join(rel), &rng.bytes(size), past_mtime(rng));
    }
    if rng.chance(70) {
        let g = format!("{}gone-{}/", rng.pick(&dirs), n.next());
        for _ in 0..rng.range(1, 3) {
            let rel = format!("{g}g-{}{}", n.next(), rng.pick(EXTS));
            write_file(&dst.join(rel), &rng.bytes(300), past_mtime(rng));
        }
        if rng.chance(50) {
            let rel = format!("{g}sub-{}/g-{}.txt", n.next(), n.next());
            write_file(&dst.join(rel), b"deep", past_mtime(rng));
        }
        if rng.chance(30) {
            std::fs::create_dir_all(dst.join(format!("{g}hollow-{}", n.next()))).unwrap();
        }
    }
    if rng.chance(30) {
        let rel = format!("{}.kept-{}.txt.btp-00ff00ff", rng.pick(&dirs), n.next());
        write_file(
            &dst.join(rel),
            b"temporary of someone else",
            past_mtime(rng),
        );
    }
}

/// Changes a file-system source between two runs: files modified, deleted, added, a link
/// turned into a file, sometimes a directory removed.
fn mutate_fs_source(rng: &mut Rng, n: &mut Names, src: &Path) {
    let s = scan(src);
    if !s.files.is_empty() {
        for _ in 0..rng.range(1, 3) {
            let f = rng.pick(&s.files).clone();
            let p = src.join(&f);
            let Ok(meta) = std::fs::metadata(&p) else {
                continue;
            };
            let size = small_size(rng);
            write_file(&p, &rng.bytes(size), mtime_ms(&meta) + 3_600_000);
        }
        for _ in 0..rng.below(3) {
            let _ = std::fs::remove_file(src.join(rng.pick(&s.files)));
        }
    }
    for _ in 0..rng.range(1, 3) {
        let rel = format!("{}{}", rng.pick(&s.dirs), file_name(rng, n));
        let size = small_size(rng);
        write_file(&src.join(rel), &rng.bytes(size), past_mtime(rng));
    }
    if !s.links.is_empty() && rng.chance(60) {
        let l = src.join(rng.pick(&s.links));
        std::fs::remove_file(&l).unwrap();
        write_file(&l, b"a link turned into a file", past_mtime(rng));
    }
    let dirs: Vec<&String> = s.dirs.iter().filter(|d| !d.is_empty()).collect();
    if !dirs.is_empty() && rng.chance(20) {
        let _ = std::fs::remove_dir_all(src.join(rng.pick(&dirs)));
    }
}

/// True when no directory on the way to `rel` under `root` is a link (writing there stays in).
fn plain_path(root: &Path, rel: &str) -> bool {
    let mut p = root.to_path_buf();
    for seg in parent_dir(rel).split('/').filter(|s| !s.is_empty()) {
        p.push(seg);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => return false,
            Ok(_) => {}
            Err(_) => return true,
        }
    }
    true
}

/// Changes a file-system destination between two runs.
fn perturb_fs_dst(rng: &mut Rng, n: &mut Names, dst: &Path) {
    let t = read_tree(dst);
    let files: Vec<&String> = t
        .iter()
        .filter(|(p, node)| matches!(node, Node::File(..)) && plain_path(dst, p))
        .map(|(p, _)| p)
        .collect();
    let dirs: Vec<&String> = t
        .iter()
        .filter(|(p, node)| **node == Node::Dir && plain_path(dst, &format!("{p}/x")))
        .map(|(p, _)| p)
        .collect();
    if !files.is_empty() && rng.chance(50) {
        std::fs::remove_file(dst.join(rng.pick(&files))).unwrap();
    }
    if !files.is_empty() && rng.chance(50) {
        let f = dst.join(rng.pick(&files));
        if f.exists() {
            write_file(&f, &rng.bytes(77), past_mtime(rng));
        }
    }
    if !dirs.is_empty() && rng.chance(60) {
        let rel = format!("{}/only-{}.txt", rng.pick(&dirs), n.next());
        write_file(&dst.join(rel), b"new at the destination", past_mtime(rng));
    }
}

// ---------------------------------------------------------------------------------------------
// Options of a run.

#[derive(Clone, Debug)]
struct Opts {
    sync: bool,
    links: &'static str,
    filter: Filter,
    delete_excluded: bool,
    dry_run: bool,
    kill: bool,
    multipart: bool,
    small_pages: bool,
}

impl Opts {
    fn random(rng: &mut Rng, kill_percent: u64) -> Opts {
        let sync = rng.chance(50);
        let links = *rng.pick(&["copy", "copy", "follow", "skip"]);
        let filter = random_filter(rng);
        let delete_excluded = sync && !filter.is_empty() && rng.chance(40);
        let dry_run = rng.chance(15);
        let kill = !dry_run && rng.chance(kill_percent);
        Opts {
            sync,
            links,
            filter,
            delete_excluded,
            dry_run,
            kill,
            multipart: rng.chance(30),
            small_pages: rng.chance(30),
        }
    }

    fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "--mode".into(),
            if self.sync { "sync" } else { "copy" }.into(),
            "--links".into(),
            self.links.into(),
        ];
        // `--flag=value`: a pattern may start with `-`.
        for p in &self.filter.include {
            a.push(format!("--include={p}"));
        }
        for p in &self.filter.exclude {
            a.push(format!("--exclude={p}"));
        }
        // Retries are not part of the rules; a transient error ends as a failure soon.
        a.extend(["--max-attempts".into(), "3".into()]);
        if let Some(m) = self.filter.min_size {
            a.extend(["--min-size".into(), m.to_string()]);
        }
        if let Some(m) = self.filter.max_size {
            a.extend(["--max-size".into(), m.to_string()]);
        }
        if self.delete_excluded {
            a.push("--delete-excluded".into());
        }
        if self.dry_run {
            a.push("--dry-run".into());
        }
        if self.multipart {
            a.extend(["--multipart-threshold".into(), "512KiB".into()]);
        }
        if self.small_pages {
            a.extend(["--list-page-entries".into(), "5".into()]);
            a.extend(["--batch-files".into(), "4".into()]);
        }
        if self.kill {
            // Slow enough for the kill to land mid-task.
            a.extend(["--speed-limit".into(), "2MiB/s".into()]);
        }
        a
    }

    fn scoped(&self) -> bool {
        !self.delete_excluded && !self.filter.is_empty()
    }
}

fn random_filter(rng: &mut Rng) -> Filter {
    if rng.chance(45) {
        return Filter::default();
    }
    const INCLUDE: &[&str] = &[
        "*.txt",
        "*.jpg",
        "**/*.log",
        "*#*",
        "docs-*/**",
        "ünï dir-*/**",
        "?i*",
        "ln-*",
    ];
    const EXCLUDE: &[&str] = &[
        "*.bin",
        "*.log",
        "*%*",
        "-*",
        "文件*",
        "**/hash#dir-*/**",
        "only-*",
        "g-*",
    ];
    let mut f = Filter::default();
    for _ in 0..rng.below(3) {
        let p = rng.pick(INCLUDE).to_string();
        if !f.include.contains(&p) {
            f.include.push(p);
        }
    }
    for _ in 0..rng.below(3) {
        let p = rng.pick(EXCLUDE).to_string();
        if !f.exclude.contains(&p) {
            f.exclude.push(p);
        }
    }
    if rng.chance(20) {
        f.min_size = Some(*rng.pick(&[1, 1000, 20000]));
    }
    if rng.chance(20) {
        f.max_size = Some(*rng.pick(&[30000, 500000]));
    }
    if f.is_empty() {
        f.include.push("*.txt".into());
    }
    f.validate().unwrap();
    f
}

// ---------------------------------------------------------------------------------------------
// The oracle: what the source listing meets, and what becomes of it.

/// One entry the source listing meets.
#[derive(Debug)]
enum Found {
    /// A file (or, following links, what a link points to).
    File {
        path: String,
        size: u64,
        mtime_ms: i64,
        data: Vec<u8>,
    },
    /// A link kept as a link (`--links copy` to a file system).
    Link { path: String, target: String },
    /// Settled by the listing itself: failed or skipped, with (part of) its reason.
    Noted {
        path: String,
        outcome: &'static str,
        reason: &'static str,
    },
}

/// One directory the source listing lists.
#[derive(Debug)]
struct Listing {
    dir: String,
    /// Every entry of the directory, by path (what a sync compares the destination with).
    names: BTreeSet<String>,
    entries: usize,
}

#[derive(Default, Debug)]
struct SourceView {
    found: Vec<Found>,
    listings: Vec<Listing>,
}

/// Walks a file-system source as the rules say: links per `links`, loops by the directories
/// on the way (links followed).
fn walk_fs(root: &Path, links: &str, dst_fs: bool) -> SourceView {
    let mut view = SourceView::default();
    walk_fs_dir(root, "", &[], links, dst_fs, &mut view);
    view
}

fn walk_fs_dir(
    root: &Path,
    dir: &str,
    ancestors: &[(u64, u64)],
    links: &str,
    dst_fs: bool,
    view: &mut SourceView,
) {
    let abs = root.join(dir);
    let mut ancestors = ancestors.to_vec();
    let here = std::fs::metadata(&abs).unwrap();
    ancestors.push((here.dev(), here.ino()));
    let mut entries: Vec<_> = std::fs::read_dir(&abs)
        .unwrap()
        .map(|e| e.unwrap())
        .collect();
    entries.sort_by_key(|e| e.file_name());
    let mut listing = Listing {
        dir: dir.to_string(),
        names: BTreeSet::new(),
        entries: entries.len(),
    };
    let noted = |path: String, outcome, reason| Found::Noted {
        path,
        outcome,
        reason,
    };
    for e in entries {
        let os_name = e.file_name();
        let Some(name) = os_name.to_str() else {
            let path = format!("{dir}{}", shown(os_name.as_bytes()));
            listing.names.insert(path.clone());
            view.found
                .push(noted(path, "failed", "name is not valid UTF-8"));
            continue;
        };
        let path = format!("{dir}{name}");
        listing.names.insert(path.clone());
        let entry = e.path();
        let lmeta = std::fs::symlink_metadata(&entry).unwrap();
        let is_link = lmeta.file_type().is_symlink();
        let meta = if is_link {
            match (links, dst_fs) {
                ("skip", _) => {
                    view.found
                        .push(noted(path, "skipped", "symbolic link (--links skip)"));
                    continue;
                }
                ("copy", false) => {
                    view.found
                        .push(noted(path, "skipped", "the destination cannot hold links"));
                    continue;
                }
                ("copy", true) => {
                    let target = std::fs::read_link(&entry).unwrap();
                    view.found.push(Found::Link {
                        path,
                        target: target.to_str().unwrap().to_string(),
                    });
                    continue;
                }
                _ => match std::fs::metadata(&entry) {
                    Ok(m) => m,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        view.found
                            .push(noted(path, "failed", "dangling symbolic link"));
                        continue;
                    }
                    // A link to itself: it cannot be inspected (any reason will do).
                    Err(_) => {
                        view.found.push(noted(path, "failed", ""));
                        continue;
                    }
                },
            }
        } else {
            lmeta
        };
        if meta.is_dir() {
            // Only a link can lead back to a directory on its own path; a directory met again
            // under a followed link is listed again.
            if is_link && ancestors.contains(&(meta.dev(), meta.ino())) {
                view.found.push(noted(path, "failed", "symbolic link loop"));
            } else {
                walk_fs_dir(root, &format!("{path}/"), &ancestors, links, dst_fs, view);
            }
        } else if meta.is_file() {
            view.found.push(Found::File {
                size: meta.len(),
                mtime_ms: mtime_ms(&meta),
                data: std::fs::read(&entry).unwrap(),
                path,
            });
        } else {
            view.found.push(noted(path, "failed", "special file"));
        }
    }
    view.listings.push(listing);
}

/// Walks an object-store source given as its objects (relative key -> bytes, LastModified).
fn walk_objects(objects: &Tree) -> SourceView {
    let mut view = SourceView::default();
    walk_objects_dir(objects, "", &mut view);
    view
}

fn walk_objects_dir(objects: &Tree, dir: &str, view: &mut SourceView) {
    let kids = children(objects, dir);
    let listing = Listing {
        dir: dir.to_string(),
        names: kids.iter().map(|(p, _)| p.clone()).collect(),
        entries: kids.len(),
    };
    for (path, is_dir) in kids {
        if is_dir {
            walk_objects_dir(objects, &format!("{path}/"), view);
        } else if let Some(Node::File(data, ms)) = objects.get(&path) {
            view.found.push(Found::File {
                size: data.len() as u64,
                mtime_ms: *ms,
                data: data.clone(),
                path,
            });
        }
    }
    view.listings.push(listing);
}

/// The entries directly in `dir` of a tree (directories implied by deeper paths too), by path,
/// with whether each is a directory.
fn children(tree: &Tree, dir: &str) -> Vec<(String, bool)> {
    let mut out: BTreeMap<String, bool> = BTreeMap::new();
    for (p, node) in tree.range(dir.to_string()..) {
        if !p.starts_with(dir) {
            break;
        }
        let rest = &p[dir.len()..];
        if rest.is_empty() {
            continue;
        }
        match rest.find('/') {
            Some(i) => {
                out.insert(format!("{dir}{}", &rest[..i]), true);
            }
            None => {
                out.entry(p.clone()).or_insert(*node == Node::Dir);
            }
        }
    }
    out.into_iter().collect()
}

/// The expected report entry of one path.
#[derive(Clone, Debug)]
struct Want {
    outcome: &'static str,
    /// Text the reason must contain (failed: any non-empty reason when empty).
    reason: &'static str,
    size: Option<u64>,
    /// A copied file's source modification time (file-system destinations keep it).
    mtime_ms: Option<i64>,
}

struct Expected {
    report: BTreeMap<String, Want>,
    tree: Tree,
    failed: bool,
    /// Paths whose expected state is uncertain (not compared).
    unsure: BTreeSet<String>,
}

/// The destination as the oracle needs it: its entries before the run, and for a file system
/// its root (links there are resolved as a `stat` would).
struct DstBefore<'a> {
    tree: &'a Tree,
    fs_root: Option<&'a Path>,
}

impl DstBefore<'_> {
    /// What stands in the way of writing `path`: a link on the way (no write may go through
    /// it; the reason names it), or a file where a directory should be (any reason).
    fn in_the_way(&self, path: &str) -> Option<&'static str> {
        let body = path.trim_end_matches('/');
        let mut prefix = String::new();
        for seg in parent_dir(body).split('/').filter(|s| !s.is_empty()) {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(seg);
            match self.tree.get(&prefix) {
                Some(Node::Link(_)) => return Some("symbolic link at"),
                Some(Node::File(..)) | Some(Node::Other) => return Some(""),
                None => return None,
                Some(Node::Dir) => {}
            }
        }
        None
    }

    fn link_on_the_way(&self, path: &str) -> bool {
        self.in_the_way(path).is_some()
    }

    /// The destination file at `path`: size and mtime. A link there is no destination file:
    /// the source's file replaces it (nothing is written through it).
    fn file(&self, path: &str) -> Option<(u64, i64)> {
        match self.tree.get(path)? {
            Node::File(d, ms) => Some((d.len() as u64, *ms)),
            _ => None,
        }
    }

    /// The size of what a destination link leads to, when it is a file.
    fn link_target_size(&self, path: &str) -> Option<u64> {
        let m = std::fs::metadata(self.fs_root?.join(path)).ok()?;
        m.is_file().then_some(m.len())
    }
}

fn secs(ms: i64) -> i64 {
    ms.div_euclid(1000)
}

/// The rules, applied to what the source listing meets and the destination before the run.
fn expect(view: &SourceView, before: &DstBefore<'_>, opts: &Opts) -> Expected {
    let dst_fs = before.fs_root.is_some();
    let mut report = BTreeMap::new();
    let mut tree = before.tree.clone();
    let mut unsure = BTreeSet::new();
    let want = |outcome, reason| Want {
        outcome,
        reason,
        size: None,
        mtime_ms: None,
    };
    for f in &view.found {
        let (path, w) = match f {
            Found::Noted {
                path,
                outcome,
                reason,
            } => (path, want(outcome, reason)),
            Found::File {
                path,
                size,
                mtime_ms,
                data,
            } => {
                let sized = |w: Want| Want {
                    size: Some(*size),
                    ..w
                };
                let w = if !opts.filter.accepts(path, *size) {
                    want("excluded", "")
                } else if let Some(why) = before.in_the_way(path).filter(|_| dst_fs) {
                    want("failed", why)
                } else if before.tree.get(path) == Some(&Node::Dir) {
                    want("failed", "")
                } else if before
                    .file(path)
                    .is_some_and(|(s, ms)| s == *size && secs(ms) >= secs(*mtime_ms))
                {
                    want("skipped", "")
                } else if path.contains(UNREADABLE) && !opts.dry_run {
                    want("failed", "injected read fault")
                } else {
                    if !opts.dry_run {
                        if dst_fs {
                            add_parents(&mut tree, path);
                        }
                        tree.insert(path.clone(), Node::File(data.clone(), *mtime_ms));
                    }
                    Want {
                        mtime_ms: Some(*mtime_ms),
                        ..want("copied", "")
                    }
                };
                (path, sized(w))
            }
            Found::Link { path, target } => {
                let w = if !opts.filter.accepts(path, 0) {
                    want("excluded", "")
                } else if let Some(why) = before.in_the_way(path) {
                    want("failed", why)
                } else {
                    match before.tree.get(path) {
                        Some(Node::Link(t)) if t == target => want("skipped", ""),
                        Some(Node::Dir) => want("failed", "directory where the source has a link"),
                        _ => {
                            if !opts.dry_run {
                                if dst_fs {
                                    add_parents(&mut tree, path);
                                }
                                tree.insert(path.clone(), Node::Link(target.clone()));
                            }
                            want("copied", "")
                        }
                    }
                };
                (path, Want { size: Some(0), ..w })
            }
        };
        if let Some(old) = report.insert(path.clone(), w) {
            panic!("oracle: {path} met twice ({old:?})");
        }
    }
    // Empty directories of the source are created at a file-system destination.
    if dst_fs && !opts.dry_run {
        for l in &view.listings {
            if l.entries == 0 && !l.dir.is_empty() && !before.link_on_the_way(&l.dir) {
                let d = l.dir.trim_end_matches('/');
                if before.tree.get(d).is_none_or(|n| *n == Node::Dir) {
                    add_parents(&mut tree, d);
                    tree.insert(d.to_string(), Node::Dir);
                }
            }
        }
    }
    let failed_dirs: BTreeSet<&str> = report
        .iter()
        .filter(|(_, w)| w.outcome == "failed")
        .map(|(p, _)| parent_dir(p))
        .collect();
    // Without size bounds the size of a destination entry does not matter to the filters.
    let size_free = (opts.filter.min_size.is_none() && opts.filter.max_size.is_none()).then_some(0);
    if opts.sync && !opts.dry_run {
        for l in &view.listings {
            if failed_dirs.contains(l.dir.as_str()) {
                continue; // nothing at all is deleted in a directory with a failed entry
            }
            let d = l.dir.trim_end_matches('/');
            let there = match before.tree.get(d) {
                _ if l.dir.is_empty() => true,
                Some(Node::Dir) => true,
                Some(_) => false,
                // Object stores: a directory is the prefix of its keys.
                None => !children(before.tree, &l.dir).is_empty(),
            };
            if !there || before.link_on_the_way(&l.dir) {
                continue; // no such directory at the destination (or only through a link)
            }
            for (c, is_dir) in children(before.tree, &l.dir) {
                if l.names.contains(&c) || is_temp(&c) {
                    continue;
                }
                if is_dir {
                    let inside: Vec<String> = before
                        .tree
                        .range(format!("{c}/")..)
                        .take_while(|(p, _)| p.starts_with(&format!("{c}/")))
                        .map(|(p, _)| p.clone())
                        .collect();
                    if opts.scoped() {
                        for p in inside {
                            let node = &before.tree[&p];
                            if *node == Node::Dir || is_temp(&p) {
                                continue;
                            }
                            match dst_size(before, &p).or(size_free) {
                                Some(size) if opts.filter.accepts(&p, size) => {
                                    tree.remove(&p);
                                }
                                Some(_) => {}
                                None => {
                                    unsure.insert(p);
                                }
                            }
                        }
                    } else {
                        tree.remove(&c);
                        for p in inside {
                            tree.remove(&p);
                        }
                    }
                } else {
                    match dst_size(before, &c).or(size_free) {
                        Some(size) if !opts.delete_excluded && !opts.filter.accepts(&c, size) => {}
                        Some(_) => {
                            tree.remove(&c);
                        }
                        None => {
                            unsure.insert(c);
                        }
                    }
                }
            }
        }
    }
    let failed = report.values().any(|w| w.outcome == "failed");
    Expected {
        report,
        tree,
        failed,
        unsure,
    }
}

/// The size a sync's filter sees for a destination entry: a file's; a link's is 0 (as a
/// source link's), uncertain (None) when it leads to a file that is not empty.
fn dst_size(before: &DstBefore<'_>, path: &str) -> Option<u64> {
    match before.tree.get(path) {
        Some(Node::File(d, _)) => Some(d.len() as u64),
        Some(Node::Link(_)) => match before.link_target_size(path) {
            Some(0) | None => Some(0),
            Some(_) => None,
        },
        _ => Some(0),
    }
}

fn add_parents(tree: &mut Tree, path: &str) {
    let mut prefix = String::new();
    for seg in parent_dir(path.trim_end_matches('/'))
        .split('/')
        .filter(|s| !s.is_empty())
    {
        if !prefix.is_empty() {
            prefix.push('/');
        }
        prefix.push_str(seg);
        tree.entry(prefix.clone()).or_insert(Node::Dir);
    }
}

// ---------------------------------------------------------------------------------------------
// Running tasks.

fn start_cluster(dir: &Path) -> Cluster {
    let mut c = Cluster::start(dir, &["--ack-wait", "3s"]);
    c.add_client_env(CLIENT_ARGS, CLIENT_ENV);
    c
}

/// Creates and starts a task, kills the live client mid-task when asked (and starts another),
/// waits for its end; the finished task and its per-file report.
fn run_task(
    c: &mut Cluster,
    src: &str,
    dst: &str,
    args: &[String],
    kill: bool,
) -> Result<(Value, BTreeMap<String, ReportEntry>), String> {
    let mut all: Vec<&str> = vec!["task", "create", "--src", src, "--dst", dst, "--start"];
    all.extend(args.iter().map(|s| s.as_str()));
    let panics_before = job_panics(&c.dir).len();
    let t = btp_json(&c.url, &all);
    let id = t["id"].as_str().unwrap().to_string();
    if kill {
        let started = Instant::now();
        loop {
            let t = btp_json(&c.url, &["task", "get", &id]);
            if t["state"] != "running"
                || t["files_copied"].as_u64().unwrap_or(0) > 0
                || started.elapsed() > Duration::from_millis(1500)
            {
                eprintln!(
                    "  killing the client ({} files copied, {})",
                    t["files_copied"], t["state"]
                );
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let victim = c.clients.last_mut().unwrap();
        unsafe { libc::kill(victim.pid() as i32, libc::SIGKILL) };
        let _ = victim.child.wait();
        c.add_client_env(CLIENT_ARGS, CLIENT_ENV);
    }
    let deadline = Instant::now() + TASK_TIMEOUT;
    loop {
        let panics = job_panics(&c.dir);
        if panics.len() > panics_before {
            let _ = btp(&c.url, &["task", "cancel", &id]);
            return Err(format!(
                "task {id}: a job panicked in a client (it is redelivered, the task cannot end): {}",
                panics[panics_before]
            ));
        }
        let out = btp(&c.url, &["task", "get", &id, "--output", "json"]);
        if out.status.success() {
            let t: Value = serde_json::from_slice(&out.stdout).unwrap();
            if matches!(t["state"].as_str(), Some("completed") | Some("failed")) {
                return Ok((t, report_entries(&c.url, &id)));
            }
            if Instant::now() > deadline {
                let _ = btp(&c.url, &["task", "cancel", &id]);
                return Err(format!(
                    "task {id} did not finish within {TASK_TIMEOUT:?} (cancelled): {t}"
                ));
            }
        }
        std::thread::sleep(Duration::from_millis(150));
    }
}

/// The "a job panicked" lines of every client log of the cluster.
fn job_panics(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("client-") && name.ends_with(".log") {
            let log = std::fs::read_to_string(&p).unwrap_or_default();
            out.extend(
                log.lines()
                    .filter(|l| l.contains("a job panicked"))
                    .map(|l| {
                        l.split("panicked with message")
                            .last()
                            .unwrap_or(l)
                            .to_string()
                    }),
            );
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Checks.

/// Problems of one run, reported together.
struct Problems(Vec<String>);

impl Problems {
    fn add(&mut self, p: String) {
        self.0.push(p);
    }
}

fn check_task(
    task: &Value,
    report: &BTreeMap<String, ReportEntry>,
    exp: &Expected,
    opts: &Opts,
    p: &mut Problems,
) {
    let want_state = if exp.failed { "failed" } else { "completed" };
    if task["state"] != want_state {
        p.add(format!(
            "task state {} (expected {want_state})",
            task["state"]
        ));
    }
    let n = |k: &str| task[k].as_u64().unwrap_or(u64::MAX);
    let (found, copied, skipped, failed, excluded) = (
        n("files_found"),
        n("files_copied"),
        n("files_skipped"),
        n("files_failed"),
        n("files_excluded"),
    );
    if found != copied + skipped + failed + excluded {
        p.add(format!(
            "files_found {found} != copied {copied} + skipped {skipped} + failed {failed} + excluded {excluded}"
        ));
    }
    if found != report.len() as u64 {
        p.add(format!(
            "files_found {found} but the report has {} entries",
            report.len()
        ));
    }
    let count = |o: &str| report.values().filter(|e| e.outcome == o).count() as u64;
    for (o, v) in [
        ("copied", copied),
        ("skipped", skipped),
        ("failed", failed),
        ("excluded", excluded),
    ] {
        if count(o) != v {
            p.add(format!("files_{o} {v} but the report has {} {o}", count(o)));
        }
    }
    for (path, w) in &exp.report {
        let Some(e) = report.get(path) else {
            p.add(format!(
                "{path}: not in the report (expected {})",
                w.outcome
            ));
            continue;
        };
        let killed_copy = opts.kill && w.outcome == "copied" && e.outcome == "skipped";
        if e.outcome != w.outcome && !killed_copy {
            p.add(format!(
                "{path}: {} ({:?}), expected {}{}",
                e.outcome,
                e.reason,
                w.outcome,
                if w.reason.is_empty() {
                    String::new()
                } else {
                    format!(" ({:?})", w.reason)
                }
            ));
            continue;
        }
        if e.outcome == "failed" && e.reason.is_empty() {
            p.add(format!("{path}: failed without a reason"));
        }
        if !w.reason.is_empty() && !e.reason.contains(w.reason) {
            p.add(format!(
                "{path}: reason {:?} does not say {:?}",
                e.reason, w.reason
            ));
        }
        if let Some(size) = w.size {
            if e.size != size {
                p.add(format!(
                    "{path}: size {} in the report, {size} at the source",
                    e.size
                ));
            }
        }
    }
    for (path, e) in report {
        if !exp.report.contains_key(path) {
            p.add(format!(
                "{path}: in the report ({}, {:?}) but no source entry",
                e.outcome, e.reason
            ));
        }
    }
}

/// The destination holds exactly the expected entries, byte for byte; after a killed client
/// temporary names may stay behind, otherwise none may.
fn check_tree(actual: &Tree, exp: &Expected, opts: &Opts, p: &mut Problems) {
    let paths: BTreeSet<&String> = actual.keys().chain(exp.tree.keys()).collect();
    for path in paths {
        if exp.unsure.contains(path) {
            continue;
        }
        match (exp.tree.get(path), actual.get(path)) {
            (None, Some(_)) if is_temp(path) && opts.kill => {}
            (None, Some(n)) if is_temp(path) => p.add(format!(
                "{path}: temporary file left at the destination ({})",
                n.kind()
            )),
            (None, Some(n)) => p.add(format!(
                "{path}: at the destination ({}), not expected",
                n.kind()
            )),
            (Some(n), None) => p.add(format!(
                "{path}: missing at the destination (expected {})",
                n.kind()
            )),
            (Some(a), Some(b)) => {
                let same = match (a, b) {
                    (Node::File(x, _), Node::File(y, _)) => x == y,
                    _ => a == b,
                };
                if !same {
                    p.add(format!(
                        "{path}: the destination has {}, expected {}{}",
                        b.kind(),
                        a.kind(),
                        if matches!((a, b), (Node::File(..), Node::File(..))) {
                            " (other bytes: a partial or wrong file under the final name)"
                        } else {
                            ""
                        }
                    ));
                }
            }
            (None, None) => {}
        }
    }
}

/// Copies to a file system get the source's modification time (whole seconds).
fn check_mtimes(
    actual: &Tree,
    exp: &Expected,
    report: &BTreeMap<String, ReportEntry>,
    p: &mut Problems,
) {
    for (path, w) in &exp.report {
        let (Some(ms), Some("copied")) = (w.mtime_ms, report.get(path).map(|e| e.outcome.as_str()))
        else {
            continue;
        };
        if let Some(Node::File(_, got)) = actual.get(path) {
            if secs(*got) != secs(ms) {
                p.add(format!(
                    "{path}: copied with mtime {} s, the source has {} s",
                    secs(*got),
                    secs(ms)
                ));
            }
        }
    }
}

/// The case directory: src, dst, the stage of an S3 source, an empty sentinel and an outside
/// directory with one file, both untouched.
struct Case {
    dir: PathBuf,
    sentinel_mtime: SystemTime,
}

impl Case {
    fn new(base: &Path, seed: u64) -> Case {
        let dir = base.join(format!("case-{seed}"));
        std::fs::create_dir_all(dir.join("sentinel")).unwrap();
        std::fs::create_dir_all(dir.join("outside")).unwrap();
        std::fs::write(dir.join("outside/precious.txt"), PRECIOUS).unwrap();
        let sentinel_mtime = std::fs::metadata(dir.join("sentinel"))
            .unwrap()
            .modified()
            .unwrap();
        Case {
            dir,
            sentinel_mtime,
        }
    }

    fn src(&self) -> PathBuf {
        self.dir.join("src")
    }

    fn dst(&self) -> PathBuf {
        self.dir.join("dst")
    }

    fn check_outside(&self, base: &Path, p: &mut Problems) {
        for e in std::fs::read_dir(&self.dir).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            if !["src", "dst", "stage", "sentinel", "outside"].contains(&name.as_str()) {
                p.add(format!("{name} created beside the destination"));
            }
        }
        let sentinel = self.dir.join("sentinel");
        let inside: Vec<String> = std::fs::read_dir(&sentinel)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        if !inside.is_empty() {
            p.add(format!(
                "written outside the destination: sentinel/{inside:?}"
            ));
        }
        if std::fs::metadata(&sentinel).unwrap().modified().unwrap() != self.sentinel_mtime {
            p.add("the sentinel directory was modified".into());
        }
        let outside = read_tree(&self.dir.join("outside"));
        let same = outside.len() == 1
            && matches!(outside.get("precious.txt"), Some(Node::File(d, _)) if d == PRECIOUS);
        if !same {
            p.add(format!(
                "the outside directory changed: {:?} (expected precious.txt only)",
                outside
                    .iter()
                    .map(|(k, n)| (k, n.kind()))
                    .collect::<Vec<_>>()
            ));
        }
        for e in std::fs::read_dir(base).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            let harness = name == "nats" || name == "server" || name.ends_with(".log");
            if !harness && !name.starts_with("case-") {
                p.add(format!("{name} created in the test directory"));
            }
        }
    }
}

/// Runs `f` for every seed, catching each failure, and fails once at the end with all of them.
fn for_each_seed(what: &str, seeds: &[u64], mut f: impl FnMut(u64)) {
    let mut failures = Vec::new();
    for &seed in seeds {
        let started = Instant::now();
        eprintln!("{what}: seed {seed}");
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(seed)));
        eprintln!(
            "{what}: seed {seed} {} in {:.1} s",
            if r.is_ok() { "passed" } else { "FAILED" },
            started.elapsed().as_secs_f64()
        );
        if let Err(e) = r {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failures.push(format!("seed {seed}: {msg}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{what}: {} of {} seeds failed (BTP_ORACLE_SEEDS=...):\n{}",
        failures.len(),
        seeds.len(),
        failures.join("\n\n")
    );
}

fn fail_if(p: Problems, seed: u64, run: usize, what: &str, opts: &Opts, task: &Value) {
    if p.0.is_empty() {
        return;
    }
    let first: Vec<&String> = p.0.iter().take(40).collect();
    panic!(
        "seed {seed} run {run} ({what}), {} problems, options {:?}\n  task: {}\n  {}",
        p.0.len(),
        opts.args(),
        task,
        first
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n  ")
    );
}

fn summary(seed: u64, run: usize, what: &str, opts: &Opts, task: &Value, took: Duration) {
    eprintln!(
        "  seed {seed} run {run} {what} {:?}: {} found {} copied {} skipped {} failed {} excluded {} deleted {} ({:.1} s)",
        opts.args(),
        task["state"],
        task["files_found"],
        task["files_copied"],
        task["files_skipped"],
        task["files_failed"],
        task["files_excluded"],
        task["files_deleted"],
        took.as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------------
// fs -> fs

/// One fs -> fs run of a case: the oracle, the task, every check.
fn fs_run(c: &mut Cluster, base: &Path, case: &Case, seed: u64, run: usize, opts: &Opts) {
    let (src, dst) = (case.src(), case.dst());
    let d0 = read_tree(&dst);
    let view = walk_fs(&src, opts.links, true);
    let before = DstBefore {
        tree: &d0,
        fs_root: Some(&dst),
    };
    let exp = expect(&view, &before, opts);
    let started = Instant::now();
    let done = run_task(
        c,
        src.to_str().unwrap(),
        dst.to_str().unwrap(),
        &opts.args(),
        opts.kill,
    );
    let (task, report) = match done {
        Ok(r) => r,
        Err(e) => panic!(
            "seed {seed} run {run} (fs -> fs), options {:?}: {e}",
            opts.args()
        ),
    };
    summary(seed, run, "fs -> fs", opts, &task, started.elapsed());
    let mut p = Problems(Vec::new());
    check_task(&task, &report, &exp, opts, &mut p);
    let actual = read_tree(&dst);
    check_tree(&actual, &exp, opts, &mut p);
    if !opts.dry_run {
        // A dry run's `copied` entries are what would be copied: nothing was written.
        check_mtimes(&actual, &exp, &report, &mut p);
    }
    case.check_outside(base, &mut p);
    fail_if(p, seed, run, "fs -> fs", opts, &task);
}

fn fs_case(c: &mut Cluster, base: &Path, seed: u64, kill: bool) {
    let mut rng = Rng::new(seed);
    let mut names = Names(0);
    let case = Case::new(base, seed);
    let mut spec = Spec::random(&mut rng);
    if kill {
        spec.big = 3;
    }
    eprintln!("  {spec:?}");
    gen_source(&mut rng, &mut names, &case.src(), &spec);
    gen_fs_dst(&mut rng, &mut names, &case.src(), &case.dst(), spec.hostile);
    for run in 0..2 {
        if run > 0 {
            mutate_fs_source(&mut rng, &mut names, &case.src());
            perturb_fs_dst(&mut rng, &mut names, &case.dst());
        }
        let mut opts = Opts::random(&mut rng, 0);
        if kill {
            opts.kill = true;
            opts.dry_run = false;
        }
        fs_run(c, base, &case, seed, run, &opts);
    }
}

#[test]
fn oracle_fs_to_fs() {
    let tmp = test_dir();
    let mut c = start_cluster(tmp.path());
    for_each_seed("fs -> fs", &seeds(FS_SEEDS), |seed| {
        fs_case(&mut c, tmp.path(), seed, false)
    });
}

#[test]
fn oracle_fs_to_fs_with_a_client_killed_mid_task() {
    let tmp = test_dir();
    let mut c = start_cluster(tmp.path());
    for_each_seed("fs -> fs, client killed", &seeds(KILL_SEEDS), |seed| {
        fs_case(&mut c, tmp.path(), seed, true)
    });
}

// ---------------------------------------------------------------------------------------------
// S3 (moto)

fn start_moto(dir: &Path) -> Option<(Service, u16)> {
    let args = ["-H", "127.0.0.1", "-p", "{port}"];
    start_service("moto_server", &args, dir, "pip install 'moto[server]'")
}

/// A plain unsigned request to moto: status and body (chunked bodies decoded).
fn http(port: u16, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()).unwrap();
    s.write_all(body).unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).unwrap();
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP answer");
    let head = String::from_utf8_lossy(&answer[..split]).to_ascii_lowercase();
    let mut rest = answer[split + 4..].to_vec();
    let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    if head.contains("transfer-encoding: chunked") {
        let mut out = Vec::new();
        loop {
            let eol = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let len_text = String::from_utf8_lossy(&rest[..eol]).to_string();
            let len =
                usize::from_str_radix(len_text.split(';').next().unwrap().trim(), 16).unwrap();
            if len == 0 {
                break;
            }
            out.extend_from_slice(&rest[eol + 2..eol + 2 + len]);
            rest = rest[eol + 2 + len + 2..].to_vec();
        }
        rest = out;
    }
    (status, rest)
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Elements of an XML document, parsed with quick-xml: for every element named in `leaves`,
/// its text (entity and character references resolved), grouped by each `record` element.
type Fields = BTreeMap<String, String>;

fn xml_records(xml: &[u8], record: &str, leaves: &[&str]) -> (Vec<Fields>, Fields) {
    use quick_xml::events::Event;
    let text = std::str::from_utf8(xml).expect("XML in UTF-8");
    let mut reader = quick_xml::Reader::from_str(text);
    let mut records = Vec::new();
    let mut top = BTreeMap::new();
    let mut current: Option<BTreeMap<String, String>> = None;
    let mut buf = String::new();
    loop {
        match reader.read_event().expect("well-formed XML") {
            Event::Start(e) => {
                let name = e.local_name().into_inner().to_string();
                if name == record {
                    current = Some(BTreeMap::new());
                }
                buf.clear();
            }
            Event::Text(t) => buf.push_str(&t.xml10_content()),
            Event::CData(t) => buf.push_str(&t.into_inner()),
            Event::GeneralRef(r) => match r.resolve_char_ref().expect("a character reference") {
                Some(ch) => buf.push(ch),
                None => buf.push_str(
                    quick_xml::escape::resolve_predefined_entity(&r).expect("a predefined entity"),
                ),
            },
            Event::End(e) => {
                let name = e.local_name().into_inner().to_string();
                if name == record {
                    records.extend(current.take());
                } else if leaves.contains(&name.as_str()) {
                    match current.as_mut() {
                        Some(r) => r.insert(name, std::mem::take(&mut buf)),
                        None => top.insert(name, std::mem::take(&mut buf)),
                    };
                }
                buf.clear();
            }
            Event::Eof => break,
            _ => {}
        }
    }
    (records, top)
}

/// Every object of a bucket (ListObjectsV2, all pages): key -> (size, LastModified in ms).
fn list_objects(port: u16, bucket: &str) -> BTreeMap<String, (u64, i64)> {
    let mut out = BTreeMap::new();
    let mut token: Option<String> = None;
    loop {
        let mut path = format!("/{bucket}?list-type=2&max-keys=1000");
        if let Some(t) = &token {
            path.push_str(&format!("&continuation-token={}", urlencode(t)));
        }
        let (status, body) = http(port, "GET", &path, b"");
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let (records, top) = xml_records(
            &body,
            "Contents",
            &[
                "Key",
                "Size",
                "LastModified",
                "NextContinuationToken",
                "IsTruncated",
            ],
        );
        for r in records {
            let when = humantime::parse_rfc3339(&r["LastModified"])
                .unwrap_or_else(|e| panic!("LastModified {:?}: {e}", r["LastModified"]));
            let ms = when.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
            out.insert(r["Key"].clone(), (r["Size"].parse().unwrap(), ms));
        }
        token = top.get("NextContinuationToken").cloned();
        if token.is_none() || top.get("IsTruncated").map(String::as_str) != Some("true") {
            return out;
        }
    }
}

/// Keys of the multipart uploads still open in a bucket (ListMultipartUploads).
fn open_uploads(port: u16, bucket: &str) -> Vec<String> {
    let (status, body) = http(port, "GET", &format!("/{bucket}?uploads"), b"");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    xml_records(&body, "Upload", &["Key", "UploadId"])
        .0
        .into_iter()
        .map(|r| format!("{} ({})", r["Key"], r["UploadId"]))
        .collect()
}

fn s3_opts(port: u16, side: &str) -> Vec<String> {
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

/// An OpenDAL operator on `s3://bucket/prefix` of moto, for plain PUTs and GETs.
fn s3_op(port: u16, url: &str) -> impl Fn(&str) -> BucketIo {
    let opts: BTreeMap<String, String> = [
        ("endpoint", format!("http://127.0.0.1:{port}")),
        ("region", "us-east-1".into()),
        ("access_key_id", "test".into()),
        ("secret_access_key", "test".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let ep = btp_common::Endpoint::parse_with(url, &opts).unwrap();
    move |path: &str| BucketIo {
        ep: ep.clone(),
        path: path.to_string(),
    }
}

struct BucketIo {
    ep: btp_common::Endpoint,
    path: String,
}

impl BucketIo {
    fn put(&self, data: &[u8]) {
        let op = self.ep.operator().unwrap();
        block_on(op.write(&self.path, data.to_vec()))
            .unwrap_or_else(|e| panic!("PUT {}: {e}", self.path));
    }

    fn get(&self) -> Vec<u8> {
        let op = self.ep.operator().unwrap();
        block_on(op.read(&self.path))
            .unwrap_or_else(|e| panic!("GET {}: {e}", self.path))
            .to_vec()
    }

    fn delete(&self) {
        let op = self.ep.operator().unwrap();
        block_on(op.delete(&self.path)).unwrap();
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// A bucket of one case: the tree under `data/` (relative keys -> bytes and LastModified), and
/// a key outside it that no run may touch.
struct Bucket {
    port: u16,
    name: String,
}

const PREFIX: &str = "data/";

impl Bucket {
    fn create(port: u16, name: &str) -> Bucket {
        let (status, body) = http(port, "PUT", &format!("/{name}"), b"");
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let b = Bucket {
            port,
            name: name.to_string(),
        };
        b.io("outside/precious.txt").put(PRECIOUS);
        b
    }

    fn url(&self) -> String {
        format!("s3://{}/{}", self.name, PREFIX.trim_end_matches('/'))
    }

    fn io(&self, key: &str) -> BucketIo {
        s3_op(self.port, &format!("s3://{}", self.name))(key)
    }

    /// The objects under the prefix, read whole.
    fn tree(&self) -> Tree {
        list_objects(self.port, &self.name)
            .into_iter()
            .filter_map(|(k, (_, ms))| {
                let rel = k.strip_prefix(PREFIX)?.to_string();
                Some((rel, Node::File(self.io(&k).get(), ms)))
            })
            .collect()
    }

    fn check_outside(&self, p: &mut Problems) {
        let others: Vec<String> = list_objects(self.port, &self.name)
            .into_keys()
            .filter(|k| !k.starts_with(PREFIX))
            .collect();
        if others != ["outside/precious.txt"] {
            p.add(format!("keys outside the destination prefix: {others:?}"));
        } else if self.io("outside/precious.txt").get() != PRECIOUS {
            p.add("outside/precious.txt was changed".into());
        }
        let open = open_uploads(self.port, &self.name);
        if !open.is_empty() {
            p.add(format!("multipart uploads left open: {open:?}"));
        }
    }
}

/// Object-store states relative to a file-system source: up to date, stale in size, newer
/// with other bytes (skipped), stale in time (the source's mtime moved past the upload),
/// destination-only keys and a destination-only prefix, a temporary name.
fn gen_s3_dst(rng: &mut Rng, n: &mut Names, src: &Path, b: &Bucket) {
    let s = scan(src);
    for f in &s.files {
        let data = std::fs::read(src.join(f)).unwrap();
        let key = format!("{PREFIX}{f}");
        match rng.below(100) {
            0..=44 => {}
            45..=64 => b.io(&key).put(&data),
            65..=69 => b.io(&key).put(&rng.bytes(data.len())),
            70..=79 => b.io(&key).put(&[data.as_slice(), b"+"].concat()),
            _ => {
                b.io(&key).put(&data);
                set_mtime(&src.join(f), now_ms() + 86_400_000 + rng.below(1000) as i64);
            }
        }
    }
    for _ in 0..rng.range(1, 5) {
        let key = format!(
            "{PREFIX}{}only-{}{}",
            rng.pick(&s.dirs),
            n.next(),
            rng.pick(EXTS)
        );
        let size = small_size(rng);
        b.io(&key).put(&rng.bytes(size));
    }
    if rng.chance(70) {
        let g = format!("{PREFIX}{}gone-{}/", rng.pick(&s.dirs), n.next());
        for _ in 0..rng.range(1, 3) {
            b.io(&format!("{g}g-{}{}", n.next(), rng.pick(EXTS)))
                .put(&rng.bytes(300));
        }
        if rng.chance(50) {
            b.io(&format!("{g}sub-{}/g-{}.txt", n.next(), n.next()))
                .put(b"deep");
        }
    }
    if rng.chance(30) {
        let key = format!(
            "{PREFIX}{}.kept-{}.txt.btp-00ff00ff",
            rng.pick(&s.dirs),
            n.next()
        );
        b.io(&key).put(b"temporary of someone else");
    }
}

fn perturb_s3(rng: &mut Rng, n: &mut Names, b: &Bucket) {
    let keys: Vec<String> = list_objects(b.port, &b.name)
        .into_keys()
        .filter(|k| k.starts_with(PREFIX))
        .collect();
    if keys.is_empty() {
        return;
    }
    if rng.chance(50) {
        let k: &String = rng.pick(&keys);
        b.io(k).delete();
    }
    if rng.chance(50) {
        let k = rng.pick(&keys).clone();
        b.io(&k).put(&rng.bytes(91));
    }
    if rng.chance(60) {
        let k: &String = rng.pick(&keys);
        let dir = parent_dir(k).to_string();
        b.io(&format!("{dir}only-{}.txt", n.next())).put(b"new");
    }
}

/// One run towards the bucket: the oracle, the task, every check.
fn to_s3_run(
    c: &mut Cluster,
    base: &Path,
    case: &Case,
    b: &Bucket,
    seed: u64,
    run: usize,
    opts: &Opts,
) {
    let src = case.src();
    let d0 = b.tree();
    let view = walk_fs(&src, opts.links, false);
    let before = DstBefore {
        tree: &d0,
        fs_root: None,
    };
    let exp = expect(&view, &before, opts);
    let mut args = opts.args();
    args.extend(s3_opts(b.port, "dst"));
    let started = Instant::now();
    let (task, report) = run_task(c, src.to_str().unwrap(), &b.url(), &args, opts.kill)
        .unwrap_or_else(|e| {
            panic!(
                "seed {seed} run {run} (fs -> S3), options {:?}: {e}",
                opts.args()
            )
        });
    summary(seed, run, "fs -> S3", opts, &task, started.elapsed());
    let mut p = Problems(Vec::new());
    check_task(&task, &report, &exp, opts, &mut p);
    let actual = b.tree();
    check_tree(&actual, &exp, opts, &mut p);
    b.check_outside(&mut p);
    case.check_outside(base, &mut p);
    fail_if(p, seed, run, "fs -> S3", opts, &task);
}

#[test]
fn oracle_fs_to_s3() {
    let tmp = test_dir();
    let Some((_moto, port)) = start_moto(tmp.path()) else {
        return;
    };
    let mut c = start_cluster(tmp.path());
    for_each_seed("fs -> S3", &seeds(FS_S3_SEEDS), |seed| {
        let mut rng = Rng::new(seed);
        let mut names = Names(0);
        let case = Case::new(tmp.path(), seed);
        let b = Bucket::create(port, &format!("oracle-to-{seed}"));
        let spec = Spec::random(&mut rng);
        eprintln!("  {spec:?}");
        gen_source(&mut rng, &mut names, &case.src(), &spec);
        gen_s3_dst(&mut rng, &mut names, &case.src(), &b);
        for run in 0..2 {
            if run > 0 {
                mutate_fs_source(&mut rng, &mut names, &case.src());
                perturb_s3(&mut rng, &mut names, &b);
            }
            let opts = Opts::random(&mut rng, 25);
            to_s3_run(&mut c, tmp.path(), &case, &b, seed, run, &opts);
        }
    });
}

/// Object-store source -> file system: a destination state relative to the objects.
fn gen_fs_dst_from(rng: &mut Rng, n: &mut Names, objects: &Tree, dst: &Path) {
    if rng.chance(20) {
        return;
    }
    std::fs::create_dir_all(dst).unwrap();
    let mut dirs: BTreeSet<String> = [String::new()].into();
    for (k, node) in objects {
        let Node::File(data, ms) = node else { continue };
        let mut d = parent_dir(k).to_string();
        while !d.is_empty() {
            dirs.insert(d.clone());
            d = parent_dir(&d).to_string();
        }
        let at = dst.join(k);
        match rng.below(100) {
            0..=44 => {}
            45..=59 => write_file(&at, data, *ms),
            60..=64 => write_file(&at, data, *ms + 3_600_000),
            65..=69 => write_file(&at, &rng.bytes(data.len()), *ms + 100_000),
            70..=79 => write_file(&at, &[data.as_slice(), b"+"].concat(), *ms),
            _ => write_file(&at, data, *ms - 5_000_000),
        }
    }
    let dirs: Vec<String> = dirs.into_iter().collect();
    for _ in 0..rng.range(1, 5) {
        let rel = format!("{}only-{}{}", rng.pick(&dirs), n.next(), rng.pick(EXTS));
        let size = small_size(rng);
        write_file(&dst.join(rel), &rng.bytes(size), past_mtime(rng));
    }
    if rng.chance(70) {
        let g = format!("{}gone-{}/", rng.pick(&dirs), n.next());
        for _ in 0..rng.range(1, 3) {
            let rel = format!("{g}g-{}{}", n.next(), rng.pick(EXTS));
            write_file(&dst.join(rel), &rng.bytes(300), past_mtime(rng));
        }
        if rng.chance(40) {
            std::fs::create_dir_all(dst.join(format!("{g}hollow-{}", n.next()))).unwrap();
        }
    }
    if rng.chance(30) {
        let rel = format!("{}.kept-{}.txt.btp-00ff00ff", rng.pick(&dirs), n.next());
        write_file(
            &dst.join(rel),
            b"temporary of someone else",
            past_mtime(rng),
        );
    }
}

fn from_s3_run(
    c: &mut Cluster,
    base: &Path,
    case: &Case,
    b: &Bucket,
    seed: u64,
    run: usize,
    opts: &Opts,
) {
    let dst = case.dst();
    let objects = b.tree();
    let d0 = read_tree(&dst);
    let view = walk_objects(&objects);
    let before = DstBefore {
        tree: &d0,
        fs_root: Some(&dst),
    };
    let exp = expect(&view, &before, opts);
    let mut args = opts.args();
    args.extend(s3_opts(b.port, "src"));
    let started = Instant::now();
    let (task, report) = run_task(c, &b.url(), dst.to_str().unwrap(), &args, opts.kill)
        .unwrap_or_else(|e| {
            panic!(
                "seed {seed} run {run} (S3 -> fs), options {:?}: {e}",
                opts.args()
            )
        });
    summary(seed, run, "S3 -> fs", opts, &task, started.elapsed());
    let mut p = Problems(Vec::new());
    check_task(&task, &report, &exp, opts, &mut p);
    let actual = read_tree(&dst);
    check_tree(&actual, &exp, opts, &mut p);
    if !opts.dry_run {
        // A dry run's `copied` entries are what would be copied: nothing was written.
        check_mtimes(&actual, &exp, &report, &mut p);
    }
    b.check_outside(&mut p);
    case.check_outside(base, &mut p);
    fail_if(p, seed, run, "S3 -> fs", opts, &task);
}

#[test]
fn oracle_s3_to_fs() {
    let tmp = test_dir();
    let Some((_moto, port)) = start_moto(tmp.path()) else {
        return;
    };
    let mut c = start_cluster(tmp.path());
    for_each_seed("S3 -> fs", &seeds(S3_FS_SEEDS), |seed| {
        let mut rng = Rng::new(seed);
        let mut names = Names(0);
        let case = Case::new(tmp.path(), seed);
        let b = Bucket::create(port, &format!("oracle-from-{seed}"));
        // The source is filled by a first run fs -> S3 (itself checked), plus a key the
        // clients cannot read.
        let stage = case.dir.join("stage");
        let spec = Spec::plain(&mut rng);
        gen_source(&mut rng, &mut names, &stage, &spec);
        let fill = Opts {
            sync: false,
            links: "copy",
            filter: Filter::default(),
            delete_excluded: false,
            dry_run: false,
            kill: false,
            multipart: false,
            small_pages: false,
        };
        let view = walk_fs(&stage, "copy", false);
        let empty = Tree::new();
        let exp = expect(
            &view,
            &DstBefore {
                tree: &empty,
                fs_root: None,
            },
            &fill,
        );
        let mut args = fill.args();
        args.extend(s3_opts(port, "dst"));
        let (task, report) =
            run_task(&mut c, stage.to_str().unwrap(), &b.url(), &args, false).unwrap();
        let mut p = Problems(Vec::new());
        check_task(&task, &report, &exp, &fill, &mut p);
        check_tree(&b.tree(), &exp, &fill, &mut p);
        b.check_outside(&mut p);
        fail_if(p, seed, 0, "filling the S3 source", &fill, &task);
        b.io(&format!("{PREFIX}{UNREADABLE}{}.txt", names.next()))
            .put(b"the clients cannot read this");

        gen_fs_dst_from(&mut rng, &mut names, &b.tree(), &case.dst());
        for run in 1..3 {
            if run > 1 {
                perturb_s3(&mut rng, &mut names, &b);
                perturb_fs_dst(&mut rng, &mut names, &case.dst());
            }
            let opts = Opts::random(&mut rng, 25);
            from_s3_run(&mut c, tmp.path(), &case, &b, seed, run, &opts);
        }
    });
}
