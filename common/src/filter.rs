//! Which files of the source a task copies: `--include` / `--exclude` globs and size bounds.
//!
//! Globs match the path relative to the source root (`/`-separated). `*` matches within one
//! path segment, `**` across segments, `?` one character, `[abc]` / `[a-z]` / `[!x]` one of a
//! set. A pattern without `/` matches the file name in any directory (`*.log`); a pattern with
//! `/` matches the whole relative path (`logs/**/*.gz`).

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
        for (flag, pats) in [("include", &self.include), ("exclude", &self.exclude)] {
            for p in pats {
                check_glob(p).map_err(|e| format!("{flag} pattern '{p}': {e}"))?;
            }
        }
        if let (Some(min), Some(max)) = (self.min_size, self.max_size) {
            if min > max {
                return Err(format!("min_size ({min}) is larger than max_size ({max})"));
            }
        }
        Ok(())
    }

    /// True when a file at `path` (relative to the source root) of `size` bytes is copied.
    pub fn accepts(&self, path: &str, size: u64) -> bool {
        if self.min_size.is_some_and(|m| size < m) || self.max_size.is_some_and(|m| size > m) {
            return false;
        }
        let path = path.trim_start_matches('/');
        if !self.include.is_empty() && !self.include.iter().any(|p| matches(p, path)) {
            return false;
        }
        !self.exclude.iter().any(|p| matches(p, path))
    }
}

fn check_glob(p: &str) -> Result<(), &'static str> {
    if p.is_empty() {
        return Err("empty pattern");
    }
    let mut chars = p.chars();
    while let Some(c) = chars.next() {
        if c == '[' {
            let mut closed = false;
            for (n, c) in chars.by_ref().enumerate() {
                if c == ']' && n > 0 {
                    closed = true;
                    break;
                }
            }
            if !closed {
                return Err("unclosed '['");
            }
        }
    }
    Ok(())
}

/// Matches a glob against a relative path (see the module docs).
pub fn matches(pattern: &str, path: &str) -> bool {
    let pattern = pattern.trim_start_matches('/');
    if pattern.contains('/') {
        glob(pattern.as_bytes(), path.as_bytes())
    } else {
        let name = path.rsplit('/').next().unwrap_or(path);
        glob(pattern.as_bytes(), name.as_bytes())
    }
}

fn glob(p: &[u8], s: &[u8]) -> bool {
    match p.first() {
        None => s.is_empty(),
        Some(b'*') if p.get(1) == Some(&b'*') => {
            // `**/` also matches no directory at all.
            let rest = &p[2..];
            if let Some(after) = rest.strip_prefix(b"/") {
                if glob(after, s) {
                    return true;
                }
            }
            (0..=s.len()).any(|i| glob(rest, &s[i..]))
        }
        Some(b'*') => {
            let rest = &p[1..];
            for i in 0..=s.len() {
                if glob(rest, &s[i..]) {
                    return true;
                }
                if s.get(i) == Some(&b'/') {
                    break;
                }
            }
            false
        }
        Some(b'?') => s.first().is_some_and(|&c| c != b'/') && glob(&p[1..], &s[1..]),
        Some(b'[') => {
            let Some(&c) = s.first() else { return false };
            let Some(end) = p.iter().skip(2).position(|&b| b == b']').map(|i| i + 2) else {
                return false;
            };
            let set = &p[1..end];
            let (negate, set) = match set.first() {
                Some(b'!') | Some(b'^') => (true, &set[1..]),
                _ => (false, set),
            };
            let mut hit = false;
            let mut i = 0;
            while i < set.len() {
                if i + 2 < set.len() && set[i + 1] == b'-' {
                    hit |= (set[i]..=set[i + 2]).contains(&c);
                    i += 3;
                } else {
                    hit |= set[i] == c;
                    i += 1;
                }
            }
            hit != negate && c != b'/' && glob(&p[end + 1..], &s[1..])
        }
        Some(&b) => s.first() == Some(&b) && glob(&p[1..], &s[1..]),
    }
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
}
