//! Manifests (`--files-from`): a list of the files a task copies, read instead of a listing of
//! the source. Two forms, as AWS DataSync and Google Storage Transfer Service accept:
//!
//! * one path per line, relative to the source root (a trailing `\r` is dropped, `./` in front
//!   is dropped, blank lines are ignored);
//! * CSV (RFC 4180) with a header row whose first column is `path`; an optional `size` column
//!   (bytes) is checked against the source; other columns are ignored.
//!
//! The [`Parser`] is fed the manifest chunk by chunk and hands out one [`Item`] at a time, so a
//! manifest of any length is read in bounded memory (a line is at most [`MAX_LINE`] bytes).

use serde::{Deserialize, Serialize};

use crate::Endpoint;

/// Longest line (CSV: record) of a manifest; a longer one is a failed entry of its own.
pub const MAX_LINE: usize = 64 << 10;

/// Longest path shown for an entry that is not a valid path.
const SHOWN_MAX: usize = 1024;

/// Where a task's manifest is: a file of an endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The manifest as the task was given it (for display: URLs carry no credentials).
    pub url: String,
    /// The endpoint of the directory (bucket, prefix) that holds it.
    pub endpoint: Endpoint,
    /// Its name in that directory.
    pub name: String,
}

/// Splits a manifest URL (or path) into the URL of its directory and its file name:
/// `s3://bucket/lists/m.csv` into `s3://bucket/lists` and `m.csv`, `/data/m.txt` into `/data`
/// and `m.txt`, `NAME:/m.csv` (a named endpoint) into `NAME:/` and `m.csv`.
pub fn split_url(url: &str) -> Result<(String, String), String> {
    let url = url.trim();
    if url.is_empty() {
        return Err("the manifest is empty (give a file: --files-from PATH or URL)".into());
    }
    let body = url.find("://").map(|i| i + 3).unwrap_or(0);
    let (head, rest) = url.split_at(body);
    let Some(i) = rest.rfind('/') else {
        return Err(format!(
            "'{url}' names no file (give the manifest's path, e.g. s3://bucket/manifest.csv)"
        ));
    };
    let name = &rest[i + 1..];
    if name.is_empty() || name == "." || name == ".." {
        return Err(format!("'{url}' names a directory, not a manifest file"));
    }
    let mut parent = format!("{head}{}", &rest[..i]);
    if parent.is_empty() || parent.ends_with("://") || parent.ends_with(':') {
        parent.push('/');
    }
    Ok((parent, name.to_string()))
}

/// One entry of a manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    /// A path to copy (checked: relative, strictly below the root), with the size the manifest
    /// gives, if any. `line` is where it starts (1-based).
    Entry {
        line: u64,
        path: String,
        size: Option<u64>,
    },
    /// An entry that names no file below the source: `shown` is its text as far as it can be
    /// shown, `reason` says what is wrong with it.
    Bad {
        line: u64,
        shown: String,
        reason: String,
    },
}

/// What [`Parser::next_item`] has.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    Item(Item),
    /// Feed more of the manifest ([`Parser::push`]) or say it ended ([`Parser::finish`]).
    NeedInput,
    Done,
}

enum Mode {
    /// Before the first line that is not blank: it decides between lines and CSV.
    Start,
    Lines,
    Csv(Box<Csv>),
}

struct Csv {
    rdr: csv_core::Reader,
    size_col: Option<usize>,
    out: Vec<u8>,
    ends: Vec<usize>,
    nout: usize,
    nend: usize,
    /// Line where the record being read started, and the lines consumed so far.
    start: u64,
    lines: u64,
    /// Bytes of the record being read were consumed (false at a record boundary).
    in_record: bool,
    /// The record being read is longer than `MAX_LINE`: its fields are dropped.
    overlong: bool,
}

/// Reads a manifest pushed in chunks; see the module documentation.
pub struct Parser {
    buf: Vec<u8>,
    pos: usize,
    eof: bool,
    /// Lines read so far (line mode).
    line: u64,
    /// The rest of an overlong line is being skipped.
    skipping: bool,
    mode: Mode,
}

impl Default for Parser {
    fn default() -> Self {
        Self::new()
    }
}

impl Parser {
    pub fn new() -> Self {
        Self {
            buf: Vec::new(),
            pos: 0,
            eof: false,
            line: 0,
            skipping: false,
            mode: Mode::Start,
        }
    }

    /// Adds the next bytes of the manifest.
    pub fn push(&mut self, data: &[u8]) {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// The manifest has no more bytes.
    pub fn finish(&mut self) {
        self.eof = true;
    }

    /// True when the manifest is CSV (known once its first line that is not blank is read).
    pub fn is_csv(&self) -> bool {
        matches!(self.mode, Mode::Csv(_))
    }

    pub fn next_item(&mut self) -> Next {
        loop {
            if let Mode::Csv(_) = self.mode {
                return self.next_record();
            }
            let line = match self.next_line() {
                Ok(Some(l)) => l,
                Ok(None) if self.eof => return Next::Done,
                Ok(None) => return Next::NeedInput,
                Err(bad) => return Next::Item(bad),
            };
            let (no, text) = line;
            let mut text: &[u8] = &text;
            if let Some(t) = text.strip_suffix(b"\r") {
                text = t;
            }
            if text.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            if let Mode::Start = self.mode {
                if no == 1 {
                    text = text.strip_prefix(b"\xef\xbb\xbf").unwrap_or(text);
                }
                if let Some(size_col) = header(text) {
                    self.mode = Mode::Csv(Box::new(Csv {
                        rdr: csv_core::Reader::new(),
                        size_col,
                        out: vec![0; 1024],
                        ends: vec![0; 16],
                        nout: 0,
                        nend: 0,
                        start: no + 1,
                        lines: no,
                        in_record: false,
                        overlong: false,
                    }));
                    continue;
                }
                self.mode = Mode::Lines;
            }
            if let Some(item) = entry(no, text, None) {
                return Next::Item(item);
            }
        }
    }

    /// The next whole line and its number; Err for an overlong one (its rest is skipped).
    fn next_line(&mut self) -> Result<Option<(u64, Vec<u8>)>, Item> {
        loop {
            let rest = &self.buf[self.pos..];
            if let Some(i) = rest.iter().position(|&b| b == b'\n') {
                let text = rest[..i].to_vec();
                self.pos += i + 1;
                if std::mem::take(&mut self.skipping) {
                    continue;
                }
                self.line += 1;
                if text.len() > MAX_LINE {
                    return Err(too_long(self.line, &text));
                }
                return Ok(Some((self.line, text)));
            }
            if self.skipping {
                self.pos = self.buf.len();
                return Ok(None);
            }
            if rest.len() > MAX_LINE {
                self.line += 1;
                let bad = too_long(self.line, rest);
                self.skipping = true;
                self.pos = self.buf.len();
                return Err(bad);
            }
            if self.eof && !rest.is_empty() {
                let text = rest.to_vec();
                self.pos = self.buf.len();
                self.line += 1;
                if text.len() > MAX_LINE {
                    return Err(too_long(self.line, &text));
                }
                return Ok(Some((self.line, text)));
            }
            return Ok(None);
        }
    }

    fn next_record(&mut self) -> Next {
        let Mode::Csv(csv) = &mut self.mode else {
            unreachable!("only called in CSV mode")
        };
        loop {
            if !csv.in_record {
                // Blank lines between records are skipped here, so that the line a record
                // starts on is known.
                while let Some(&b) = self.buf.get(self.pos) {
                    if b != b'\n' && b != b'\r' {
                        break;
                    }
                    csv.lines += u64::from(b == b'\n');
                    self.pos += 1;
                }
                csv.start = csv.lines + 1;
            }
            let input = &self.buf[self.pos..];
            if input.is_empty() && !self.eof {
                return Next::NeedInput;
            }
            let (res, nin, nout, nend) =
                csv.rdr
                    .read_record(input, &mut csv.out[csv.nout..], &mut csv.ends[csv.nend..]);
            let was_empty = input.is_empty();
            csv.lines += input[..nin].iter().filter(|&&b| b == b'\n').count() as u64;
            csv.in_record = nin > 0 || csv.in_record;
            self.pos += nin;
            csv.nout += nout;
            csv.nend += nend;
            use csv_core::ReadRecordResult as R;
            match res {
                R::InputEmpty if was_empty => return Next::Done,
                R::InputEmpty => continue,
                R::OutputFull => {
                    if csv.out.len() >= MAX_LINE || csv.overlong {
                        csv.overlong = true;
                        csv.nout = 0;
                    } else {
                        let n = (csv.out.len() * 2).min(MAX_LINE);
                        csv.out.resize(n, 0);
                    }
                }
                R::OutputEndsFull => {
                    if csv.ends.len() >= 4096 || csv.overlong {
                        csv.overlong = true;
                        csv.nend = 0;
                    } else {
                        let n = csv.ends.len() * 2;
                        csv.ends.resize(n, 0);
                    }
                }
                R::Record => {
                    csv.in_record = false;
                    let (nout, nend) =
                        (std::mem::take(&mut csv.nout), std::mem::take(&mut csv.nend));
                    let line = csv.start;
                    if std::mem::take(&mut csv.overlong) {
                        return Next::Item(too_long(line, &csv.out));
                    }
                    let out = &csv.out[..nout];
                    let ends = &csv.ends[..nend];
                    let field = |i: usize| -> Option<&[u8]> {
                        let end = *ends.get(i)?;
                        let start = if i == 0 { 0 } else { ends[i - 1] };
                        Some(&out[start..end])
                    };
                    let path = field(0).unwrap_or_default();
                    if path.iter().all(u8::is_ascii_whitespace)
                        && (1..nend).all(|i| field(i).unwrap_or_default().is_empty())
                    {
                        continue; // a blank line
                    }
                    let size = match csv.size_col.and_then(field) {
                        None => None,
                        Some(s) => {
                            let s = String::from_utf8_lossy(s);
                            let s = s.trim();
                            if s.is_empty() {
                                None
                            } else {
                                match s.parse::<u64>() {
                                    Ok(n) => Some(n),
                                    Err(_) => {
                                        return Next::Item(Item::Bad {
                                            line,
                                            shown: shown(path),
                                            reason: format!(
                                                "manifest line {line}: size '{}' is not a number of bytes",
                                                s.chars().take(40).collect::<String>()
                                            ),
                                        })
                                    }
                                }
                            }
                        }
                    };
                    if let Some(item) = entry(line, path, size) {
                        return Next::Item(item);
                    }
                }
                R::End => return Next::Done,
            }
        }
    }
}

/// A first line that is a CSV header (`path` first): the index of the `size` column, if any.
fn header(text: &[u8]) -> Option<Option<usize>> {
    let text = String::from_utf8_lossy(text);
    let cols: Vec<String> = text
        .split(',')
        .map(|c| c.trim().trim_matches('"').trim().to_ascii_lowercase())
        .collect();
    if cols.first().map(String::as_str) != Some("path") {
        return None;
    }
    Some(cols.iter().position(|c| c == "size"))
}

/// The entry of one line (or CSV path field); None for a blank one.
fn entry(line: u64, raw: &[u8], size: Option<u64>) -> Option<Item> {
    let bad = |reason: String| Item::Bad {
        line,
        shown: shown(raw),
        reason: format!("manifest line {line}: {reason}"),
    };
    let Ok(text) = std::str::from_utf8(raw) else {
        return Some(bad(
            "not valid UTF-8: it cannot name a file of the source".into()
        ));
    };
    if text.trim().is_empty() {
        return None;
    }
    let mut path = text;
    while let Some(p) = path.strip_prefix("./") {
        path = p;
    }
    if path.starts_with('/') {
        return Some(bad(
            "absolute path: manifest entries are relative to the source root".into(),
        ));
    }
    if path.contains('\0') {
        return Some(bad("contains a NUL character".into()));
    }
    if path.split('/').any(|s| s == "..") {
        return Some(bad(
            "path segment '..': it would name something outside the source".into(),
        ));
    }
    if let Err(e) = crate::paths::check_relative(path) {
        return Some(bad(e));
    }
    Some(Item::Entry {
        line,
        // A directory's trailing `/`: what it names is looked at all the same.
        path: path.strip_suffix('/').unwrap_or(path).to_string(),
        size,
    })
}

/// The reason of an entry the source does not have.
pub fn not_found(line: u64) -> String {
    format!("not found at the source (listed in the manifest, line {line})")
}

fn too_long(line: u64, start: &[u8]) -> Item {
    Item::Bad {
        line,
        shown: shown(&start[..start.len().min(SHOWN_MAX)]),
        reason: format!(
            "manifest line {line}: longer than {} KiB: no path is that long",
            MAX_LINE >> 10
        ),
    }
}

/// An entry's text for the report: UTF-8 as it is, other bytes and NUL as `\xNN`, cut.
fn shown(raw: &[u8]) -> String {
    let raw = &raw[..raw.len().min(SHOWN_MAX)];
    let mut s = crate::paths::escape_name(raw).replace('\0', "\\x00");
    if s.is_empty() {
        s.push_str("(empty)");
    }
    s
}

/// The paths of the last entries of a manifest, so that a path listed twice is counted once, in
/// bounded memory: two generations of at most
/// `per_generation` paths (and about `bytes` bytes) each; a duplicate further back than that is
/// not recognized.
pub struct Recent {
    current: std::collections::HashSet<String>,
    previous: std::collections::HashSet<String>,
    bytes: usize,
    per_generation: usize,
    max_bytes: usize,
}

/// Paths remembered per generation, and their bytes.
pub const RECENT_PATHS: usize = 100_000;
pub const RECENT_BYTES: usize = 8 << 20;

impl Default for Recent {
    fn default() -> Self {
        Self::new(RECENT_PATHS, RECENT_BYTES)
    }
}

impl Recent {
    pub fn new(per_generation: usize, max_bytes: usize) -> Self {
        Self {
            current: Default::default(),
            previous: Default::default(),
            bytes: 0,
            per_generation,
            max_bytes,
        }
    }

    /// True when `path` was seen among the recent paths; remembers it otherwise.
    pub fn seen(&mut self, path: &str) -> bool {
        if self.current.contains(path) || self.previous.contains(path) {
            return true;
        }
        if self.current.len() >= self.per_generation || self.bytes >= self.max_bytes {
            self.previous = std::mem::take(&mut self.current);
            self.bytes = 0;
        }
        self.bytes += path.len();
        self.current.insert(path.to_string());
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Everything the parser gives for `text` fed in pieces of `chunk` bytes.
    fn parse(text: &[u8], chunk: usize) -> Vec<Item> {
        let mut p = Parser::new();
        let mut out = Vec::new();
        let mut pieces = text.chunks(chunk.max(1));
        loop {
            match p.next_item() {
                Next::Item(i) => out.push(i),
                Next::NeedInput => match pieces.next() {
                    Some(c) => p.push(c),
                    None => p.finish(),
                },
                Next::Done => return out,
            }
        }
    }

    fn entry(line: u64, path: &str, size: Option<u64>) -> Item {
        Item::Entry {
            line,
            path: path.into(),
            size,
        }
    }

    fn reasons(items: &[Item]) -> Vec<(u64, String)> {
        items
            .iter()
            .filter_map(|i| match i {
                Item::Bad { line, reason, .. } => Some((*line, reason.clone())),
                Item::Entry { .. } => None,
            })
            .collect()
    }

    #[test]
    fn lines_whatever_the_chunks() {
        let text = b"a.txt\r\n\n./dir/b c.txt\n  \nlast";
        for chunk in [1, 2, 3, 7, 1000] {
            assert_eq!(
                parse(text, chunk),
                vec![
                    entry(1, "a.txt", None),
                    entry(3, "dir/b c.txt", None),
                    entry(5, "last", None)
                ],
                "chunk {chunk}"
            );
        }
        assert!(parse(b"", 4).is_empty());
        assert!(parse(b"\n\n\r\n", 4).is_empty());
    }

    #[test]
    fn entries_outside_the_source_are_bad_with_their_reason() {
        let text = b"/etc/passwd\n../up\na/../../b\nok\nnul\0x\n\xff\xfe\na//b\n";
        let items = parse(text, 5);
        let r = reasons(&items);
        assert_eq!(r.len(), 6, "{items:?}");
        assert!(r[0].1.contains("line 1: absolute path"), "{r:?}");
        assert!(r[1].1.contains("'..'"), "{r:?}");
        assert!(r[2].1.contains("'..'"), "{r:?}");
        assert!(r[3].1.contains("NUL"), "{r:?}");
        assert!(r[4].1.contains("UTF-8"), "{r:?}");
        assert!(r[5].1.contains("empty path segment"), "{r:?}");
        assert!(items.contains(&entry(4, "ok", None)));
        let Item::Bad { shown, .. } = &items[4] else {
            panic!("{items:?}")
        };
        assert_eq!(shown, "nul\\x00x");
    }

    #[test]
    fn csv_with_a_header_gives_paths_and_sizes() {
        let text = "\u{feff}path,size,etag\n\
                    a.txt,3,x\n\
                    \"with, comma.txt\",10,\n\
                    \"multi\nline\",,\n\
                    \n\
                    b.txt,12x,\n\
                    c.txt\n\
                    \"quote \"\"q\"\".txt\",0\n";
        for chunk in [1, 3, 64, 4096] {
            let items = parse(text.as_bytes(), chunk);
            assert_eq!(
                items
                    .iter()
                    .filter(|i| matches!(i, Item::Entry { .. }))
                    .count(),
                5,
                "{items:?}"
            );
            assert_eq!(items[0], entry(2, "a.txt", Some(3)));
            assert_eq!(items[1], entry(3, "with, comma.txt", Some(10)));
            assert_eq!(items[2], entry(4, "multi\nline", None));
            assert!(
                matches!(&items[3], Item::Bad { line: 7, reason, .. } if reason.contains("'12x' is not a number")),
                "{items:?}"
            );
            assert_eq!(items[4], entry(8, "c.txt", None));
            assert_eq!(items[5], entry(9, "quote \"q\".txt", Some(0)));
        }
    }

    #[test]
    fn a_first_line_not_a_header_means_one_path_per_line() {
        let items = parse(b"data.csv\npaths/x,1\n", 4);
        assert_eq!(
            items,
            vec![entry(1, "data.csv", None), entry(2, "paths/x,1", None)]
        );
        let items = parse(b"PATH\nx\n", 4);
        assert_eq!(items, vec![entry(2, "x", None)]);
    }

    #[test]
    fn an_overlong_line_is_one_bad_entry_and_reading_goes_on() {
        let mut text = b"a\n".to_vec();
        text.extend(std::iter::repeat_n(b'x', MAX_LINE + 10));
        text.extend(b"\nb\n");
        let items = parse(&text, 4096);
        assert_eq!(items.len(), 3, "{:?}", reasons(&items));
        assert_eq!(items[0], entry(1, "a", None));
        assert!(
            matches!(&items[1], Item::Bad { line: 2, reason, .. } if reason.contains("longer than"))
        );
        assert_eq!(items[2], entry(3, "b", None));
        let mut csv = b"path\n\"".to_vec();
        csv.extend(std::iter::repeat_n(b'y', MAX_LINE * 2));
        csv.extend(b"\"\nc\n");
        let items = parse(&csv, 1000);
        assert_eq!(items.len(), 2, "{:?}", reasons(&items));
        assert!(matches!(&items[0], Item::Bad { line: 2, .. }));
        assert_eq!(items[1], entry(3, "c", None));
    }

    #[test]
    fn urls_split_into_directory_and_name() {
        let ok = |u: &str, d: &str, n: &str| {
            assert_eq!(split_url(u).unwrap(), (d.to_string(), n.to_string()), "{u}")
        };
        ok("s3://bucket/lists/m.csv", "s3://bucket/lists", "m.csv");
        ok("s3://bucket/m.csv", "s3://bucket", "m.csv");
        ok("/data/m.txt", "/data", "m.txt");
        ok("/m.txt", "/", "m.txt");
        ok("fs:///m.txt", "fs:///", "m.txt");
        ok("store:/m.csv", "store:/", "m.csv");
        ok("webdav://h:8080/d/m", "webdav://h:8080/d", "m");
        for bad in ["s3://bucket", "s3://bucket/", "/data/", "", "/data/.."] {
            assert!(split_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn recent_paths_are_recognized_in_bounded_memory() {
        let mut r = Recent::new(2, 1 << 20);
        assert!(!r.seen("a"));
        assert!(r.seen("a"));
        assert!(!r.seen("b"));
        assert!(!r.seen("c")); // a new generation: a and b are the previous one
        assert!(r.seen("a"));
        assert!(!r.seen("d"));
        assert!(!r.seen("e")); // c, d previous; a, b forgotten
        assert!(!r.seen("a"));
    }
}
