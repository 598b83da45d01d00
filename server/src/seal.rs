//! Endpoint secrets at rest: with `--secret-key-file`, task endpoints and job payloads (which
//! carry the endpoints' keys and passwords) are stored sealed with AES-256-GCM under the
//! server's key, as `sealed:v1:<hex of nonce and ciphertext>`, and opened only to publish a job
//! to its tenant's subject or to run the task. One key per server process, installed at start.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{bail, Context as _};
use btp_common::api::ApiError;
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

const PREFIX: &str = "sealed:v1:";

pub struct Sealer {
    key: LessSafeKey,
    rng: SystemRandom,
}

static SEALER: OnceLock<Sealer> = OnceLock::new();

/// Makes `sealer` seal everything stored from now on; the first call wins.
pub fn install(sealer: Sealer) {
    let _ = SEALER.set(sealer);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() & 1 == 1 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

impl Sealer {
    pub fn new(key: &[u8; 32]) -> Self {
        let key = UnboundKey::new(&AES_256_GCM, key).expect("a 32-byte key is valid");
        Sealer {
            key: LessSafeKey::new(key),
            rng: SystemRandom::new(),
        }
    }

    /// The key in `path` (64 hex digits); a new random one is written there (mode 0600) when
    /// the file is missing.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let key = unhex(text.trim())
                    .and_then(|k| <[u8; 32]>::try_from(k).ok())
                    .with_context(|| {
                        format!("secret key file {}: expected 64 hex digits", path.display())
                    })?;
                Ok(Sealer::new(&key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                SystemRandom::new()
                    .fill(&mut key)
                    .map_err(|_| anyhow::anyhow!("no random numbers for a new key"))?;
                btp_common::create_private(path, &format!("{}\n", hex(&key)))
                    .with_context(|| format!("create secret key file {}", path.display()))?;
                Ok(Sealer::new(&key))
            }
            Err(e) => bail!("read secret key file {}: {e}", path.display()),
        }
    }

    pub fn seal(&self, plain: &str) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .expect("the system random generator works");
        let mut data = plain.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut data)
            .expect("sealing cannot fail for in-memory data");
        format!("{PREFIX}{}{}", hex(&nonce), hex(&data))
    }

    pub fn open(&self, sealed: &str) -> Option<String> {
        let bytes = unhex(sealed.strip_prefix(PREFIX)?)?;
        if bytes.len() < NONCE_LEN + aead::AES_256_GCM.tag_len() {
            return None;
        }
        let (nonce, data) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut data = data.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::empty(), &mut data)
            .ok()?;
        String::from_utf8(plain.to_vec()).ok()
    }
}

/// `text` sealed when the server has a key, as is otherwise.
pub fn seal(text: String) -> String {
    match SEALER.get() {
        Some(s) => s.seal(&text),
        None => text,
    }
}

/// Stored text opened: sealed text needs the key it was sealed with.
pub fn open(text: String) -> Result<String, ApiError> {
    if !text.starts_with(PREFIX) {
        return Ok(text);
    }
    let Some(sealer) = SEALER.get() else {
        return Err(ApiError::internal(
            "stored secrets are sealed and the server has no --secret-key-file",
        ));
    };
    sealer.open(&text).ok_or_else(|| {
        ApiError::internal("stored secrets cannot be opened with this server's --secret-key-file")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_text_opens_with_its_key_only() {
        let a = Sealer::new(&[7u8; 32]);
        let b = Sealer::new(&[8u8; 32]);
        let sealed = a.seal("{\"secret_access_key\":\"hunter2\"}");
        assert!(sealed.starts_with(PREFIX));
        assert!(!sealed.contains("hunter2"));
        assert_ne!(
            sealed,
            a.seal("{\"secret_access_key\":\"hunter2\"}"),
            "fresh nonces"
        );
        assert_eq!(
            a.open(&sealed).as_deref(),
            Some("{\"secret_access_key\":\"hunter2\"}")
        );
        assert_eq!(b.open(&sealed), None, "another key");
        let mut tampered = sealed.clone();
        tampered.replace_range(sealed.len() - 2.., "00");
        assert_eq!(a.open(&tampered), None, "a changed byte");
    }

    #[test]
    fn key_files_are_created_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let first = Sealer::from_file(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = Sealer::from_file(&path).unwrap();
        assert_eq!(again.open(&first.seal("x")).as_deref(), Some("x"));
        std::fs::write(&path, "not hex").unwrap();
        let e = Sealer::from_file(&path).err().unwrap().to_string();
        assert!(e.contains("expected 64 hex digits"), "{e}");
    }
}
