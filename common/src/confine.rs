//! Confinement of clients to file-system roots (`btp client run --fs-root DIR`): which fs paths
//! a client may touch, the same rule on the client (before it touches anything) and on the
//! server (which refuses a task no online client of its tenant may run).

use std::path::{Component, Path};

/// The reason of a job refused by a confined client.
pub const OUTSIDE: &str = "path outside this client's --fs-root";

/// True when the absolute, normalized `path` is one of `roots` or inside one (by whole path
/// components: `/data2` is not inside `/data`). `None` roots allow every path.
pub fn allowed(roots: Option<&[String]>, path: &str) -> bool {
    let Some(roots) = roots else {
        return true;
    };
    let p = Path::new(path);
    if !p.is_absolute() || p.components().any(|c| matches!(c, Component::ParentDir)) {
        return false;
    }
    roots.iter().any(|r| p.starts_with(Path::new(r)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_inside_a_root_by_whole_components() {
        let roots = vec!["/srv/data".to_string(), "/mnt/x".to_string()];
        let r = Some(roots.as_slice());
        assert!(allowed(r, "/srv/data"));
        assert!(allowed(r, "/srv/data/a/b"));
        assert!(allowed(r, "/mnt/x/y"));
        assert!(!allowed(r, "/srv/data2"));
        assert!(!allowed(r, "/srv"));
        assert!(!allowed(r, "/etc/passwd"));
        assert!(!allowed(r, "/srv/data/../../etc"));
        assert!(!allowed(r, "relative"));
        assert!(!allowed(Some(&[]), "/srv/data"), "no roots: nothing");
        assert!(allowed(None, "/etc"), "not confined: everything");
    }
}
