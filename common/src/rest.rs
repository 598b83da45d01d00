//! What the REST clients of the object stores (S3, Azure Blob, GCS) share: percent-encoding of
//! names and the text of a request error with its causes.

/// Percent-encodes everything but unreserved characters (and `/` unless `strict`).
pub(crate) fn encode(s: &str, strict: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b'/' if !strict => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// An error and every cause under it, `: `-separated (what reqwest's "error sending request"
/// hides: connection refused, a TLS failure).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s = format!("{s}: {c}");
        src = c.source();
    }
    s
}
