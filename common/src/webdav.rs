//! Streaming writes to WebDAV. OpenDAL's WebDAV writer sends a file in one PUT of a buffer it
//! holds whole; large files and the parts of large files are streamed here instead (a PUT with
//! a known length and a streaming body), so memory stays bounded. Reads, listings, stats and
//! deletes go through OpenDAL.

use crate::Endpoint;

pub struct WebdavClient {
    http: reqwest::Client,
    base: String,
    root: String,
    auth: Option<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct WebdavError {
    pub status: Option<u16>,
    pub message: String,
}

impl WebdavError {
    pub fn is_transient(&self) -> bool {
        match self.status {
            None => true,
            Some(s) => s == 429 || s >= 500,
        }
    }
}

impl std::fmt::Display for WebdavError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            Some(s) => write!(f, "WebDAV answered {s}: {}", self.message),
            None => write!(f, "WebDAV request failed: {}", self.message),
        }
    }
}

impl std::error::Error for WebdavError {}

impl WebdavClient {
    /// A client for a WebDAV endpoint; `None` for other endpoints.
    pub fn new(ep: &Endpoint) -> Option<Self> {
        let Endpoint::Webdav {
            endpoint,
            root,
            username,
            password,
        } = ep
        else {
            return None;
        };
        Some(Self {
            http: reqwest::Client::new(),
            base: endpoint.trim_end_matches('/').to_string(),
            root: root.trim_end_matches('/').to_string(),
            auth: username.clone().map(|u| {
                (
                    u,
                    password.as_ref().map(|p| p.0.clone()).unwrap_or_default(),
                )
            }),
        })
    }

    /// The absolute server path of `path` (relative to the endpoint's root).
    fn full(&self, path: &str) -> String {
        format!("{}/{}", self.root, path.trim_start_matches('/'))
    }

    fn url(&self, full: &str) -> String {
        let mut out = self.base.clone();
        for b in full.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                    out.push(b as char)
                }
                _ => out.push_str(&format!("%{b:02X}")),
            }
        }
        out
    }

    async fn send(
        &self,
        method: reqwest::Method,
        full: &str,
        len: Option<u64>,
        body: reqwest::Body,
    ) -> Result<u16, WebdavError> {
        let mut req = self.http.request(method, self.url(full)).body(body);
        if let Some(n) = len {
            req = req.header("content-length", n);
        }
        if let Some((u, p)) = &self.auth {
            req = req.basic_auth(u, Some(p));
        }
        let resp = req.send().await.map_err(|e| WebdavError {
            status: None,
            message: e.to_string(),
        })?;
        Ok(resp.status().as_u16())
    }

    /// Creates `dir` (relative to the root) and its parents, the root's included; existing
    /// ones are fine.
    pub async fn mkdirs(&self, dir: &str) -> Result<(), WebdavError> {
        let mut so_far = String::from("/");
        for seg in self.full(dir).split('/').filter(|s| !s.is_empty()) {
            so_far.push_str(seg);
            so_far.push('/');
            let status = self
                .send(
                    reqwest::Method::from_bytes(b"MKCOL").expect("valid method"),
                    &so_far,
                    None,
                    reqwest::Body::from(""),
                )
                .await?;
            // 201 created; 405 already exists.
            if !(status == 201 || status == 405 || (200..300).contains(&status)) {
                return Err(WebdavError {
                    status: Some(status),
                    message: format!("cannot create directory {so_far}"),
                });
            }
        }
        Ok(())
    }

    /// Writes `path` from a stream of `len` bytes, creating its directory first.
    pub async fn put(&self, path: &str, len: u64, body: reqwest::Body) -> Result<(), WebdavError> {
        if let Some((dir, _)) = path.rsplit_once('/') {
            self.mkdirs(dir).await?;
        }
        let status = self
            .send(reqwest::Method::PUT, &self.full(path), Some(len), body)
            .await?;
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(WebdavError {
                status: Some(status),
                message: format!("PUT {path} refused"),
            })
        }
    }
}
