//! Content hashes for `--verify checksum` and `--compare checksum`: MD5, because it is what S3
//! gives for free (the ETag of an object uploaded in one piece, and of every part).

use md5::{Digest, Md5};

/// MD5 computed while bytes stream past.
#[derive(Clone, Default)]
pub struct Md5Stream(Md5);

impl Md5Stream {
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// The hex digest.
    pub fn finish(self) -> String {
        hex(&self.0.finalize())
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// True for an ETag that is the MD5 of the content (32 hex digits, no `-N` parts suffix).
pub fn is_plain_md5(etag: &str) -> bool {
    etag.len() == 32 && etag.bytes().all(|b| b.is_ascii_hexdigit())
}

/// How the reason of a file whose copy does not hash as its source begins.
pub const MISMATCH: &str = "checksum mismatch";

/// True for the reason of a copy whose checksum was not its source's.
pub fn is_mismatch(reason: &str) -> bool {
    reason.starts_with(MISMATCH)
}

/// The ETag S3 gives an object completed from parts with these (hex) MD5s: the MD5 of the
/// parts' binary MD5s, then `-` and the number of parts.
pub fn multipart_etag(part_md5s: &[String]) -> Option<String> {
    let mut h = Md5::new();
    for p in part_md5s {
        h.update(unhex(p)?);
    }
    Some(format!("{}-{}", hex(&h.finalize()), part_md5s.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_match_known_values() {
        let mut s = Md5Stream::default();
        s.update(b"hello ");
        s.update(b"world");
        assert_eq!(s.finish(), "5eb63bbbe01eeed093cb22bb8f5acdc3");
        assert!(is_plain_md5("5eb63bbbe01eeed093cb22bb8f5acdc3"));
        assert!(!is_plain_md5("5eb63bbbe01eeed093cb22bb8f5acdc3-2"));
        // Two parts "a" and "b": md5(md5("a") ++ md5("b")) - 2.
        let a = "0cc175b9c0f1b6a831c399e269772661".to_string();
        let b = "92eb5ffee6ae2fec3ad71c777531578f".to_string();
        let e = multipart_etag(&[a, b]).unwrap();
        assert!(e.ends_with("-2") && e.len() == 34);
        assert_eq!(multipart_etag(&["zz".into()]), None);
    }
}
