//! Relative paths of entries: the one check that a name found by a listing can become a path
//! under the destination root, and how names that are not UTF-8 are shown in reports.
//!
//! Every writer (OpenDAL, the fs fast path, S3 multipart, WebDAV) goes through
//! [`check_relative`] before it writes, so nothing can land outside the destination root.

/// Checks that `rel` (a `/`-separated path relative to an endpoint root, a directory ending in
/// `/`) names something strictly below the root. The error is the reason shown in the report.
pub fn check_relative(rel: &str) -> Result<(), String> {
    if rel.is_empty() {
        return Err("empty name".into());
    }
    if rel.starts_with('/') {
        return Err("absolute path: it would land outside the destination".into());
    }
    if rel.contains('\0') {
        return Err("name contains a NUL character".into());
    }
    let body = rel.strip_suffix('/').unwrap_or(rel);
    for segment in body.split('/') {
        match segment {
            "" => return Err("empty path segment ('//'): no file name can hold it".into()),
            "." | ".." => {
                return Err(format!(
                    "path segment '{segment}': it would land outside its directory"
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

/// A file name as text: UTF-8 as it is, any other byte as `\xNN`. For reports only: such a name
/// cannot be carried to another store as a path.
pub fn escape_name(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() + 8);
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// The directory part of a relative path, with its trailing `/` (`""` for the root):
/// `a/b/c` and `a/b/c/` are both in `a/b/`.
pub fn parent_dir(rel: &str) -> &str {
    let body = rel.strip_suffix('/').unwrap_or(rel);
    match body.rfind('/') {
        Some(i) => &rel[..=i],
        None => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_strictly_below_the_root_pass() {
        for ok in [
            "a", "a/b", "dir/", "a/b/", ".hidden", "a/..b", "-x", "#%?;&'+=",
        ] {
            assert!(check_relative(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "a//b",
            "//",
            "a/../b",
            "..",
            "../x",
            "./a",
            "a/.",
            "a\0b",
        ] {
            assert!(check_relative(bad).is_err(), "{bad:?}");
        }
        assert!(check_relative("a//b")
            .unwrap_err()
            .contains("empty path segment"));
        assert!(check_relative("a/../b").unwrap_err().contains("'..'"));
    }

    #[test]
    fn names_that_are_not_utf8_are_escaped() {
        assert_eq!(escape_name(b"plain"), "plain");
        assert_eq!(escape_name(b"caf\xe9.txt"), "caf\\xe9.txt");
        assert_eq!(escape_name("é\u{1}".as_bytes()), "é\u{1}");
    }

    #[test]
    fn parents_keep_their_slash() {
        assert_eq!(parent_dir("a/b/c"), "a/b/");
        assert_eq!(parent_dir("a/b/c/"), "a/b/");
        assert_eq!(parent_dir("c"), "");
        assert_eq!(parent_dir("c/"), "");
    }
}
