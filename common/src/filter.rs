//! Which files of the source a task copies: `--include` / `--exclude` globs and size bounds.
//!
//! Globs match the path relative to the source root (`/`-separated). `*` matches within one
//! path segment, `**` across segments, `?` one character, `[abc]` / `[a-z]` / `[!x]` one of a
//! set. A pattern without `/` matches the file name in any directory (`*.log`); a pattern with
//! `/` matches the whole relative path (`logs/**/*.gz`).

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Filter {
    /// When not empty, only files matching at least one of these are copied.
    pub include: Vec<String>,
    /// Files matching any of these are not copied.
    pub exclude: Vec<String>,
    /// Bytes, or text such as `"1KiB"` in requests.
    #[serde(deserialize_with = "crate::units::de_size")]
    pub min_size: Option<u64>,
    #[serde(deserialize_with = "crate::units::de_size")]
    pub max_size: Option<u64>,
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        self == &Filter::default()
    }

    /// Checks the patterns and bounds; the error names the bad one.
    pub fn validate(&self) -> Result<(), String> {
        self.compile().map(|_| ())
    }

    /// The filter ready to test many files: every pattern compiled once, into one automaton
    /// per list (linear in the length of the name, whatever the pattern).
    pub fn compile(&self) -> Result<CompiledFilter, String> {
        let include = Globs::new("include", &self.include)?;
        let exclude = Globs::new("exclude", &self.exclude)?;
        if let (Some(min), Some(max)) = (self.min_size, self.max_size) {
            if min > max {
                return Err(format!("min_size ({min}) is larger than max_size ({max})"));
            }
        }
        Ok(CompiledFilter {
            include: (!self.include.is_empty()).then_some(include),
            exclude,
            min_size: self.min_size,
            max_size: self.max_size,
        })
    }

    /// True when a file at `path` (relative to the source root) of `size` bytes is copied.
    /// Compiles the patterns on each call: for many files, [`Filter::compile`] once.
    pub fn accepts(&self, path: &str, size: u64) -> bool {
        self.compile().is_ok_and(|f| f.accepts(path, size))
    }
}

/// A [`Filter`] with its patterns compiled.
#[derive(Clone, Debug)]
pub struct CompiledFilter {
    include: Option<Globs>,
    exclude: Globs,
    min_size: Option<u64>,
    max_size: Option<u64>,
}

impl CompiledFilter {
    /// True when a file at `path` (relative to the source root) of `size` bytes is copied.
    pub fn accepts(&self, path: &str, size: u64) -> bool {
        if self.min_size.is_some_and(|m| size < m) || self.max_size.is_some_and(|m| size > m) {
            return false;
        }
        let path = path.trim_start_matches('/');
        if self.include.as_ref().is_some_and(|i| !i.matches(path)) {
            return false;
        }
        !self.exclude.matches(path)
    }
}

/// One list of patterns: those without `/` test the file name, the others the whole path.
#[derive(Clone, Debug)]
struct Globs {
    names: GlobSet,
    paths: GlobSet,
}

impl Globs {
    fn new(flag: &str, patterns: &[String]) -> Result<Self, String> {
        let (mut names, mut paths) = (GlobSetBuilder::new(), GlobSetBuilder::new());
        for p in patterns {
            let glob = compile_glob(p).map_err(|e| format!("{flag} pattern '{p}': {e}"))?;
            if p.trim_start_matches('/').contains('/') {
                paths.add(glob);
            } else {
                names.add(glob);
            }
        }
        let build = |b: GlobSetBuilder| {
            b.build()
                .map_err(|e| format!("{flag} patterns: {}", e.kind()))
        };
        Ok(Self {
            names: build(names)?,
            paths: build(paths)?,
        })
    }

    fn matches(&self, path: &str) -> bool {
        let name = path.rsplit('/').next().unwrap_or(path);
        self.names.is_match(name) || self.paths.is_match(path)
    }
}

/// Checks `p` and compiles it with this module's rules (see the module docs).
fn compile_glob(p: &str) -> Result<Glob, String> {
    if p.is_empty() {
        return Err("empty pattern".into());
    }
    GlobBuilder::new(&translate(p)?)
        .literal_separator(true)
        .backslash_escape(false)
        .build()
        .map_err(|e| e.kind().to_string())
}

/// The pattern in globset's syntax: `{` and `}` are plain characters here (globset reads them
/// as alternatives), and a negated set never matches `/`, as `?` does not.
fn translate(p: &str) -> Result<String, String> {
    let p = p.trim_start_matches('/');
    let mut out = String::with_capacity(p.len() + 8);
    let mut chars = p.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' => out.push_str("[{]"),
            '}' => out.push_str("[}]"),
            '[' => {
                // The first character of a set is never its end (`[]a]`, `[!]a]`).
                let mut set = String::new();
                let mut closed = false;
                for (n, c) in chars.by_ref().enumerate() {
                    if c == ']' && n > 0 {
                        closed = true;
                        break;
                    }
                    set.push(c);
                }
                if !closed {
                    return Err("unclosed '['".into());
                }
                out.push('[');
                match set.strip_prefix(['!', '^']) {
                    Some("") => out.push_str("!/"),
                    Some(rest) if rest.ends_with('-') => {
                        out.push_str("!/");
                        out.push_str(rest);
                    }
                    Some(rest) => {
                        out.push('!');
                        out.push_str(rest);
                        out.push('/');
                    }
                    None => out.push_str(&set),
                }
                out.push(']');
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Matches a glob against a relative path (see the module docs). Compiles the pattern on each
/// call; an invalid pattern matches nothing.
pub fn matches(pattern: &str, path: &str) -> bool {
    Globs::new("", &[pattern.to_string()]).is_ok_and(|g| g.matches(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_names_and_paths() {
        assert!(matches("*.log", "a/b/x.log"));
        assert!(!matches("*.log", "a/b/x.log.gz"));
        assert!(matches("a/*.txt", "a/x.txt"));
        assert!(!matches("a/*.txt", "a/b/x.txt"));
        assert!(matches("a/**/*.txt", "a/x.txt"));
        assert!(matches("a/**/*.txt", "a/b/c/x.txt"));
        assert!(matches("**", "anything/at/all"));
        assert!(matches("file?.bin", "dir/file7.bin"));
        assert!(matches("[a-c]*", "b.txt"));
        assert!(!matches("[!a-c]*", "b.txt"));
        assert!(matches("tmp/**", "tmp/x/y"));
        assert!(!matches("tmp/**", "other/tmp/x"));
    }

    #[test]
    fn filters_combine_include_exclude_and_sizes() {
        let f = Filter {
            include: vec!["*.txt".into(), "data/**".into()],
            exclude: vec!["*secret*".into()],
            min_size: Some(1),
            max_size: Some(100),
        };
        assert!(f.accepts("a.txt", 5));
        assert!(f.accepts("data/x.bin", 5));
        assert!(!f.accepts("b.bin", 5));
        assert!(!f.accepts("my-secret.txt", 5));
        assert!(!f.accepts("a.txt", 0));
        assert!(!f.accepts("a.txt", 101));
        assert!(Filter::default().accepts("anything", 0));
        assert!(f.validate().is_ok());
        let bad = Filter {
            exclude: vec!["[abc".into()],
            ..Default::default()
        };
        assert_eq!(
            bad.validate().unwrap_err(),
            "exclude pattern '[abc': unclosed '['"
        );
    }

    #[test]
    fn an_adversarial_pattern_runs_in_linear_time() {
        let pattern = "*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b";
        assert_eq!(pattern.len(), 30);
        let f = Filter {
            include: vec![pattern.into(), format!("deep/{pattern}")],
            ..Default::default()
        };
        let f = f.compile().unwrap();
        let name = "a".repeat(10_000);
        let began = std::time::Instant::now();
        assert!(!f.accepts(&name, 1));
        assert!(!f.accepts(&format!("deep/{name}"), 1));
        assert!(f.accepts(&format!("deep/{name}b"), 1));
        assert!(f.accepts(&format!("x/y/{name}b"), 1));
        let took = began.elapsed();
        assert!(took < std::time::Duration::from_secs(1), "took {took:?}");
    }

    #[test]
    fn braces_and_backslashes_are_plain_and_sets_never_match_a_separator() {
        assert!(matches("{a,b}.txt", "{a,b}.txt"));
        assert!(!matches("{a,b}.txt", "a.txt"));
        assert!(matches(r"a\b", r"d/a\b"));
        assert!(!matches("x[!a]y/z", "x/y/z"));
        assert!(matches("x[!a]y/z", "xby/z"));
        assert!(!matches("x?y/z", "x/y/z"));
        assert!(matches("/logs/*.gz", "logs/a.gz"));
        assert!(matches("a/**/b", "a/b"));
    }
}
