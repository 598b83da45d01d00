//! S3 multipart uploads driven part by part, so that the parts of one file can be uploaded by
//! different workers on different clients: create the upload, upload parts (each streamed), then
//! complete or abort it. OpenDAL's writer keeps an upload inside one process, which is why these
//! few calls are made here directly (signed with the same SigV4 signer OpenDAL uses).

use std::fmt;

use bytes::Bytes;
use reqsign_aws_v4::{Credential, EnvCredentialProvider, RequestSigner, StaticCredentialProvider};
use reqsign_core::{Context, OsEnv, Signer};

use crate::Endpoint;

/// An S3 error: the HTTP status (None when the request did not get an answer) and S3's message.
#[derive(Debug, Clone)]
pub struct S3Error {
    pub status: Option<u16>,
    pub message: String,
}

impl S3Error {
    pub(crate) fn new(status: Option<u16>, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    /// Worth trying again: no answer, throttling or a server error.
    pub fn is_transient(&self) -> bool {
        match self.status {
            None => true,
            Some(s) => s == 429 || s >= 500,
        }
    }

    /// The upload no longer exists (aborted or completed).
    pub fn is_no_such_upload(&self) -> bool {
        self.status == Some(404) && self.message.contains("NoSuchUpload")
    }
}

impl fmt::Display for S3Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some(s) => write!(f, "S3 answered {s}: {}", self.message),
            None => write!(f, "S3 request failed: {}", self.message),
        }
    }
}

impl std::error::Error for S3Error {}

/// One part of a completed upload.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PartTag {
    /// 1-based, as S3 numbers parts.
    pub number: u32,
    pub etag: String,
}

pub struct S3Multipart {
    pub(crate) http: reqwest::Client,
    signer: Signer<Credential>,
    /// `scheme://host[:port]` of the bucket, and the path before the key (`/bucket` in path style).
    pub(crate) origin: String,
    pub(crate) bucket_path: String,
    /// Key prefix of the endpoint, without slashes at either end.
    pub(crate) prefix: String,
}

impl S3Multipart {
    /// A client for an S3 endpoint; `None` for other endpoints.
    pub fn new(ep: &Endpoint) -> Option<Self> {
        let Endpoint::S3 {
            bucket,
            prefix,
            endpoint,
            region,
            access_key_id,
            secret_access_key,
            session_token,
            virtual_host,
        } = ep
        else {
            return None;
        };
        let region = region.as_deref().unwrap_or("us-east-1");
        let base = endpoint
            .clone()
            .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
        let base = base.trim_end_matches('/');
        let (origin, bucket_path) = if *virtual_host {
            let (scheme, host) = base.split_once("://").unwrap_or(("https", base));
            (format!("{scheme}://{bucket}.{host}"), String::new())
        } else {
            (base.to_string(), format!("/{}", encode(bucket, true)))
        };
        let ctx = Context::new().with_env(OsEnv);
        let signer = RequestSigner::new("s3", region);
        let signer = match (access_key_id, secret_access_key) {
            (Some(k), Some(s)) => {
                let mut p = StaticCredentialProvider::new(k, &s.0);
                if let Some(t) = session_token {
                    p = p.with_session_token(&t.0);
                }
                Signer::new(ctx, p, signer)
            }
            _ => Signer::new(ctx, EnvCredentialProvider::new(), signer),
        };
        Some(Self {
            http: reqwest::Client::new(),
            signer,
            origin,
            bucket_path,
            prefix: prefix.clone(),
        })
    }

    pub(crate) fn url(&self, path: &str, query: &str) -> String {
        let key = if self.prefix.is_empty() {
            path.trim_start_matches('/').to_string()
        } else {
            format!("{}/{}", self.prefix, path.trim_start_matches('/'))
        };
        format!(
            "{}{}/{}?{query}",
            self.origin,
            self.bucket_path,
            encode(&key, false)
        )
    }

    pub(crate) async fn send(
        &self,
        method: http::Method,
        url: &str,
        headers: &[(&str, String)],
        body: reqwest::Body,
    ) -> Result<(http::HeaderMap, Bytes), S3Error> {
        let mut req = http::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let req = req
            .header("x-amz-content-sha256", "UNSIGNED-PAYLOAD")
            .body(())
            .map_err(|e| S3Error::new(None, format!("bad request: {e}")))?;
        let (mut parts, ()) = req.into_parts();
        self.signer
            .sign(&mut parts, None)
            .await
            .map_err(|e| S3Error::new(Some(403), format!("signing failed: {e}")))?;
        let req = http::Request::from_parts(parts, body);
        let req = reqwest::Request::try_from(req)
            .map_err(|e| S3Error::new(None, format!("bad request: {e}")))?;
        let resp = self
            .http
            .execute(req)
            .await
            .map_err(|e| S3Error::new(None, error_chain(&e)))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp
            .bytes()
            .await
            .map_err(|e| S3Error::new(None, error_chain(&e)))?;
        let text = String::from_utf8_lossy(&body);
        // CompleteMultipartUpload may answer 200 with an error in the body.
        if !status.is_success() || text.contains("<Error>") {
            let code = tag(&text, "Code").unwrap_or_default();
            let msg = tag(&text, "Message").unwrap_or_default();
            let status = if status.is_success() {
                500
            } else {
                status.as_u16()
            };
            return Err(S3Error::new(Some(status), format!("{code} {msg}").trim()));
        }
        Ok((headers, body))
    }

    /// Starts a multipart upload of `path`; returns its upload id.
    pub async fn create(&self, path: &str, content_type: Option<&str>) -> Result<String, S3Error> {
        let headers: Vec<(&str, String)> = content_type
            .map(|c| ("content-type", c.to_string()))
            .into_iter()
            .collect();
        let url = self.url(path, "uploads=");
        let (_, body) = self
            .send(http::Method::POST, &url, &headers, reqwest::Body::from(""))
            .await?;
        tag(&String::from_utf8_lossy(&body), "UploadId")
            .ok_or_else(|| S3Error::new(Some(500), "no UploadId in the answer"))
    }

    /// Uploads one part (1-based `number`) of `len` bytes from `body`; returns its ETag.
    pub async fn upload_part(
        &self,
        path: &str,
        upload_id: &str,
        number: u32,
        len: u64,
        body: reqwest::Body,
    ) -> Result<String, S3Error> {
        let url = self.url(
            path,
            &format!("partNumber={number}&uploadId={}", encode(upload_id, true)),
        );
        let headers = [("content-length", len.to_string())];
        let (h, _) = self.send(http::Method::PUT, &url, &headers, body).await?;
        etag(&h).ok_or_else(|| S3Error::new(Some(500), "no ETag for the uploaded part"))
    }

    /// Completes the upload from its parts (in order); returns the object's ETag.
    pub async fn complete(
        &self,
        path: &str,
        upload_id: &str,
        parts: &[PartTag],
    ) -> Result<String, S3Error> {
        let mut xml = String::from("<CompleteMultipartUpload>");
        for p in parts {
            xml.push_str(&format!(
                "<Part><PartNumber>{}</PartNumber><ETag>\"{}\"</ETag></Part>",
                p.number, p.etag
            ));
        }
        xml.push_str("</CompleteMultipartUpload>");
        let url = self.url(path, &format!("uploadId={}", encode(upload_id, true)));
        let headers = [("content-type", "application/xml".to_string())];
        let (_, body) = self
            .send(http::Method::POST, &url, &headers, reqwest::Body::from(xml))
            .await?;
        let text = String::from_utf8_lossy(&body);
        Ok(tag(&text, "ETag")
            .map(|e| unquote(&e.replace("&quot;", "\"")))
            .unwrap_or_default())
    }

    /// True while the upload exists (ListParts answers), false once it is aborted or completed.
    pub async fn upload_exists(&self, path: &str, upload_id: &str) -> Result<bool, S3Error> {
        let url = self.url(
            path,
            &format!("max-parts=1&uploadId={}", encode(upload_id, true)),
        );
        match self
            .send(http::Method::GET, &url, &[], reqwest::Body::from(""))
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.is_no_such_upload() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Aborts the upload, freeing its parts. An upload that no longer exists is fine.
    pub async fn abort(&self, path: &str, upload_id: &str) -> Result<(), S3Error> {
        let url = self.url(path, &format!("uploadId={}", encode(upload_id, true)));
        match self
            .send(http::Method::DELETE, &url, &[], reqwest::Body::from(""))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_no_such_upload() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Incomplete multipart uploads under the endpoint's prefix: (key, upload id).
    pub async fn list_uploads(&self) -> Result<Vec<(String, String)>, S3Error> {
        let query = if self.prefix.is_empty() {
            "uploads=".to_string()
        } else {
            format!(
                "prefix={}&uploads=",
                encode(&format!("{}/", self.prefix), true)
            )
        };
        let url = format!("{}{}/?{query}", self.origin, self.bucket_path);
        let (_, body) = self
            .send(http::Method::GET, &url, &[], reqwest::Body::from(""))
            .await?;
        let text = String::from_utf8_lossy(&body);
        let mut out = Vec::new();
        for upload in text.split("<Upload>").skip(1) {
            if let (Some(k), Some(id)) = (tag(upload, "Key"), tag(upload, "UploadId")) {
                out.push((k, id));
            }
        }
        Ok(out)
    }
}

/// The ETag header without its quotes.
pub(crate) fn etag(h: &http::HeaderMap) -> Option<String> {
    h.get("etag").and_then(|v| v.to_str().ok()).map(unquote)
}

/// An ETag without its quotes.
pub fn unquote(e: &str) -> String {
    e.trim().trim_matches('"').to_string()
}

/// Text of the first `<name>...</name>` element.
fn tag(xml: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{name}>"))? + start;
    Some(xml[start..end].to_string())
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s = format!("{s}: {c}");
        src = c.source();
    }
    s
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_encoded_once_and_tags_are_read() {
        assert_eq!(encode("a b/c+d.txt", false), "a%20b/c%2Bd.txt");
        assert_eq!(encode("x/y=", true), "x%2Fy%3D");
        let xml = "<R><UploadId>abc</UploadId><ETag>&quot;e1&quot;</ETag></R>";
        assert_eq!(tag(xml, "UploadId").as_deref(), Some("abc"));
        assert_eq!(tag(xml, "Missing"), None);
        assert_eq!(unquote("\"e1\""), "e1");
    }
}
