//! Storage endpoints: where a task reads from and writes to.
//!
//! An endpoint is parsed from a URL given by a user (`fs:///data/in` or a plain absolute path) and
//! travels inside every job, so a worker needs nothing but the job to run it. New schemes (S3,
//! Azure Blob, ...) are new variants here plus one arm in [`Endpoint::operator`].

use std::fmt;
use std::path::{Component, Path, PathBuf};

use opendal::Operator;
use serde::{Deserialize, Serialize};

/// Schemes this build understands.
pub const SUPPORTED_SCHEMES: &str = "fs";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "scheme", rename_all = "snake_case", deny_unknown_fields)]
pub enum Endpoint {
    /// A directory of a local (or mounted) file system; `root` is absolute and normalized.
    Fs { root: String },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EndpointError {
    #[error("unsupported endpoint scheme '{scheme}' in '{url}' (supported: {SUPPORTED_SCHEMES})")]
    UnknownScheme { scheme: String, url: String },
    #[error("endpoint '{0}' is not an absolute path (use fs:///absolute/path or /absolute/path)")]
    NotAbsolute(String),
    #[error("endpoint is empty")]
    Empty,
}

impl Endpoint {
    /// Parses `fs:///abs/path`, `file:///abs/path` or `/abs/path`.
    pub fn parse(url: &str) -> Result<Self, EndpointError> {
        let url = url.trim();
        if url.is_empty() {
            return Err(EndpointError::Empty);
        }
        let path = if let Some((scheme, rest)) = url.split_once("://") {
            match scheme.to_ascii_lowercase().as_str() {
                "fs" | "file" => rest,
                _ => {
                    return Err(EndpointError::UnknownScheme {
                        scheme: scheme.to_string(),
                        url: url.to_string(),
                    })
                }
            }
        } else if let Some((scheme, _)) = url.split_once(':').filter(|(s, _)| looks_like_scheme(s))
        {
            return Err(EndpointError::UnknownScheme {
                scheme: scheme.to_string(),
                url: url.to_string(),
            });
        } else {
            url
        };
        if !path.starts_with('/') {
            return Err(EndpointError::NotAbsolute(url.to_string()));
        }
        Ok(Endpoint::Fs {
            root: normalize(Path::new(path)),
        })
    }

    /// The OpenDAL operator for writing to this endpoint (a missing fs root is created).
    pub fn operator(&self) -> opendal::Result<Operator> {
        match self {
            Endpoint::Fs { root } => Operator::new(opendal::services::Fs::default().root(root)),
        }
    }

    /// The OpenDAL operator for reading from this endpoint. Unlike [`Endpoint::operator`] it
    /// never creates anything: a missing fs root is a `NotFound` error.
    #[allow(irrefutable_let_patterns)] // more schemes come
    pub fn source_operator(&self) -> opendal::Result<Operator> {
        if let Endpoint::Fs { root } = self {
            if let Err(e) = std::fs::metadata(root) {
                let kind = match e.kind() {
                    std::io::ErrorKind::NotFound => opendal::ErrorKind::NotFound,
                    std::io::ErrorKind::PermissionDenied => opendal::ErrorKind::PermissionDenied,
                    _ => opendal::ErrorKind::Unexpected,
                };
                return Err(opendal::Error::new(
                    kind,
                    format!("source root {root}: {e}"),
                ));
            }
        }
        self.operator()
    }

    /// Checks that this endpoint can be read as a task's source: it exists and is a directory.
    pub fn check_source(&self) -> Result<(), String> {
        match self {
            Endpoint::Fs { root } => match std::fs::metadata(root) {
                Ok(m) if m.is_dir() => Ok(()),
                Ok(_) => Err(format!("source {self} is not a directory")),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Err(format!("source {self} does not exist"))
                }
                Err(e) => Err(format!("source {self} cannot be read: {e}")),
            },
        }
    }

    /// Checks that this endpoint can be a task's destination: a directory or nothing yet.
    pub fn check_destination(&self) -> Result<(), String> {
        match self {
            Endpoint::Fs { root } => match std::fs::metadata(root) {
                Ok(m) if m.is_dir() => Ok(()),
                Ok(_) => Err(format!("destination {self} exists and is not a directory")),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    // The first missing ancestor must be creatable: its parent must be a directory.
                    let mut p = Path::new(root);
                    while let Some(parent) = p.parent() {
                        if let Ok(m) = std::fs::metadata(parent) {
                            return if m.is_dir() {
                                Ok(())
                            } else {
                                Err(format!(
                                    "destination {self}: {} is not a directory",
                                    parent.display()
                                ))
                            };
                        }
                        p = parent;
                    }
                    Ok(())
                }
                Err(e) => Err(format!("destination {self} cannot be used: {e}")),
            },
        }
    }

    /// The local path of a file-system endpoint.
    pub fn local_root(&self) -> Option<&str> {
        match self {
            Endpoint::Fs { root } => Some(root),
        }
    }

    /// True when `self` is `other` or lies inside it (a copy into it would read its own output).
    pub fn is_within(&self, other: &Endpoint) -> bool {
        match (self.local_root(), other.local_root()) {
            (Some(a), Some(b)) => Path::new(a).starts_with(Path::new(b)),
            _ => false,
        }
    }
}

fn looks_like_scheme(s: &str) -> bool {
    s.len() > 1
        && s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-' || c == '.')
}

/// Lexically normalizes an absolute path: drops `.`, resolves `..`, removes trailing slashes.
fn normalize(path: &Path) -> String {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out.to_string_lossy().into_owned()
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Fs { root } => write!(f, "fs://{root}"),
        }
    }
}

impl std::str::FromStr for Endpoint {
    type Err = EndpointError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Endpoint::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fs(root: &str) -> Endpoint {
        Endpoint::Fs { root: root.into() }
    }

    #[test]
    fn plain_paths_and_fs_urls_parse_to_the_same_endpoint() {
        assert_eq!(Endpoint::parse("/data/in").unwrap(), fs("/data/in"));
        assert_eq!(Endpoint::parse("fs:///data/in/").unwrap(), fs("/data/in"));
        assert_eq!(
            Endpoint::parse("file:///data/./x/../in").unwrap(),
            fs("/data/in")
        );
        assert_eq!(
            Endpoint::parse("fs:///data/in").unwrap().to_string(),
            "fs:///data/in"
        );
    }

    #[test]
    fn unknown_schemes_and_relative_paths_are_refused_with_a_clear_reason() {
        let e = Endpoint::parse("gopher://x/y").unwrap_err();
        assert_eq!(
            e.to_string(),
            "unsupported endpoint scheme 'gopher' in 'gopher://x/y' (supported: fs)"
        );
        assert!(matches!(
            Endpoint::parse("ftp:/x"),
            Err(EndpointError::UnknownScheme { .. })
        ));
        assert!(matches!(
            Endpoint::parse("data/in"),
            Err(EndpointError::NotAbsolute(_))
        ));
        assert!(matches!(
            Endpoint::parse("fs://relative"),
            Err(EndpointError::NotAbsolute(_))
        ));
        assert_eq!(Endpoint::parse("  "), Err(EndpointError::Empty));
    }

    #[test]
    fn a_destination_inside_the_source_is_detected_by_path_components() {
        assert!(fs("/a/b/c").is_within(&fs("/a/b")));
        assert!(fs("/a/b").is_within(&fs("/a/b")));
        assert!(!fs("/a/bc").is_within(&fs("/a/b")));
        assert!(!fs("/a").is_within(&fs("/a/b")));
    }

    #[test]
    fn endpoints_round_trip_through_json_and_refuse_unknown_fields() {
        let e = fs("/x");
        let j = serde_json::to_string(&e).unwrap();
        assert_eq!(j, r#"{"scheme":"fs","root":"/x"}"#);
        assert_eq!(serde_json::from_str::<Endpoint>(&j).unwrap(), e);
        assert!(serde_json::from_str::<Endpoint>(r#"{"scheme":"fs","root":"/x","k":1}"#).is_err());
    }
}
