//! S3 multipart uploads driven part by part, so that the parts of one file can be uploaded by
//! different workers on different clients: create the upload, upload parts (each streamed), then
//! complete or abort it. OpenDAL's writer keeps an upload inside one process, which is why these
//! few calls are made here directly (signed with the same SigV4 signer OpenDAL uses).

use std::fmt;

use bytes::Bytes;
use reqsign_aws_v4::{Credential, EnvCredentialProvider, RequestSigner, StaticCredentialProvider};
use reqsign_core::{Context, OsEnv, Signer};

pub(crate) use crate::rest::{encode, error_chain};
use crate::Endpoint;

/// An S3 error: the HTTP status (None when the request did not get an answer), the `Code` of
/// S3's error document when it sent one, and its message.
#[derive(Debug, Clone)]
pub struct S3Error {
    pub status: Option<u16>,
    pub code: Option<String>,
    pub message: String,
}

/// Error codes worth another attempt: throttling, and the server's own trouble.
const TRANSIENT_CODES: &[&str] = &[
    "SlowDown",
    "InternalError",
    "ServiceUnavailable",
    "RequestTimeout",
    "Throttling",
    "ThrottlingException",
    "RequestThrottled",
    "OperationAborted",
];

/// Error codes no retry can fix: credentials, permissions, missing buckets or uploads, requests
/// the server refuses as they are.
const PERMANENT_CODES: &[&str] = &[
    "AccessDenied",
    "AccountProblem",
    "AllAccessDisabled",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "NoSuchBucket",
    "NoSuchKey",
    "NoSuchUpload",
    "InvalidBucketName",
    "InvalidPart",
    "InvalidPartOrder",
    "EntityTooSmall",
    "EntityTooLarge",
    "InvalidArgument",
    "InvalidRequest",
    "MalformedXML",
    "NotImplemented",
];

impl S3Error {
    pub(crate) fn new(status: Option<u16>, message: impl Into<String>) -> Self {
        Self {
            status,
            code: None,
            message: message.into(),
        }
    }

    /// The error of an answer with HTTP status `status` and body `body`: S3's error document
    /// (`<Error><Code>..</Code><Message>..</Message></Error>`) when the body is one.
    pub fn from_answer(status: u16, body: &[u8]) -> Self {
        match crate::s3xml::parse(body)
            .ok()
            .and_then(|root| crate::s3xml::error(&root))
        {
            Some((code, msg)) => Self {
                status: Some(status),
                message: format!("{code} {msg}").trim().to_string(),
                code: (!code.is_empty()).then_some(code),
            },
            None => {
                let reason = http::StatusCode::from_u16(status)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .unwrap_or("no error document");
                Self::new(Some(status), reason)
            }
        }
    }

    /// Worth trying again: no answer, throttling or a server error. S3's error code decides
    /// where there is one (an `InternalError` inside a 200 answer is transient, a
    /// `NotImplemented` 501 is not); the HTTP status otherwise.
    pub fn is_transient(&self) -> bool {
        match self.code.as_deref() {
            Some(c) if TRANSIENT_CODES.contains(&c) => true,
            Some(c) if PERMANENT_CODES.contains(&c) => false,
            _ => match self.status {
                None => true,
                Some(s) => s == 408 || s == 429 || s >= 500,
            },
        }
    }

    /// The upload no longer exists (aborted or completed).
    pub fn is_no_such_upload(&self) -> bool {
        self.code.as_deref() == Some("NoSuchUpload")
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
        if !status.is_success() {
            return Err(S3Error::from_answer(status.as_u16(), &body));
        }
        // CompleteMultipartUpload may answer 200 with an error document in the body.
        if crate::s3xml::parse(&body).is_ok_and(|root| root.name == "Error") {
            return Err(S3Error::from_answer(500, &body));
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
        answer(&body, crate::s3xml::upload_id)
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
        let xml = crate::s3xml::complete_request(parts.iter().map(|p| (p.number, p.etag.as_str())));
        let url = self.url(path, &format!("uploadId={}", encode(upload_id, true)));
        let headers = [("content-type", "application/xml".to_string())];
        let (_, body) = self
            .send(http::Method::POST, &url, &headers, reqwest::Body::from(xml))
            .await?;
        answer(&body, crate::s3xml::completed_etag).map(|e| unquote(&e))
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
        self.list_uploads_by(1000).await
    }

    /// [`Self::list_uploads`] asking for pages of at most `page` uploads, following the
    /// listing's markers (`NextKeyMarker`, `NextUploadIdMarker`) until it is no longer truncated.
    pub async fn list_uploads_by(&self, page: u32) -> Result<Vec<(String, String)>, S3Error> {
        let mut out = Vec::new();
        let mut marker: Option<(Option<String>, String)> = None;
        loop {
            // In the order SigV4 sorts them. Without a key marker (SeaweedFS pages by upload id
            // alone) the upload id marker goes alone.
            let mut query = Vec::new();
            if let Some((Some(key), _)) = &marker {
                query.push(format!("key-marker={}", encode(key, true)));
            }
            query.push(format!("max-uploads={page}"));
            if !self.prefix.is_empty() {
                query.push(format!(
                    "prefix={}",
                    encode(&format!("{}/", self.prefix), true)
                ));
            }
            if let Some((_, id)) = marker.as_ref().filter(|(_, id)| !id.is_empty()) {
                query.push(format!("upload-id-marker={}", encode(id, true)));
            }
            query.push("uploads=".into());
            let url = format!("{}{}/?{}", self.origin, self.bucket_path, query.join("&"));
            let (_, body) = self
                .send(http::Method::GET, &url, &[], reqwest::Body::from(""))
                .await?;
            let listed = answer(&body, crate::s3xml::uploads_page)?;
            out.extend(listed.uploads);
            match listed.next {
                Some(next) if marker.as_ref() != Some(&next) => marker = Some(next),
                Some(_) => {
                    return Err(S3Error::new(
                        Some(500),
                        "the listing of uploads does not advance",
                    ))
                }
                None => return Ok(out),
            }
        }
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

/// What `read` finds in the XML document of a successful answer; an answer that is no such
/// document is a server error.
fn answer<T>(
    body: &[u8],
    read: impl FnOnce(&crate::s3xml::Element) -> Result<T, String>,
) -> Result<T, S3Error> {
    crate::s3xml::parse(body)
        .and_then(|root| read(&root))
        .map_err(|e| S3Error::new(Some(500), format!("unexpected answer: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_encoded_once() {
        assert_eq!(encode("a b/c+d.txt", false), "a%20b/c%2Bd.txt");
        assert_eq!(encode("x/y=", true), "x%2Fy%3D");
        assert_eq!(unquote("\"e1\""), "e1");
    }

    #[test]
    fn error_documents_decide_transient_or_permanent() {
        let doc = |code: &str| {
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>m &amp; n</Message><RequestId>r</RequestId></Error>"
            )
        };
        for (status, code, transient) in [
            (503, "SlowDown", true),
            (500, "InternalError", true),
            (503, "ServiceUnavailable", true),
            (400, "RequestTimeout", true),
            (403, "AccessDenied", false),
            (404, "NoSuchBucket", false),
            (403, "InvalidAccessKeyId", false),
            (403, "SignatureDoesNotMatch", false),
            (501, "NotImplemented", false),
            (404, "NoSuchUpload", false),
        ] {
            let e = S3Error::from_answer(status, doc(code).as_bytes());
            assert_eq!(e.code.as_deref(), Some(code));
            assert_eq!(e.is_transient(), transient, "{code}");
            assert_eq!(e.to_string(), format!("S3 answered {status}: {code} m & n"));
            assert_eq!(e.is_no_such_upload(), code == "NoSuchUpload");
        }
        // No error document: the status decides.
        let e = S3Error::from_answer(503, b"");
        assert!(e.is_transient() && e.code.is_none(), "{e}");
        assert_eq!(e.to_string(), "S3 answered 503: Service Unavailable");
        assert!(!S3Error::from_answer(403, b"<html>no</html>").is_transient());
        assert!(S3Error::new(None, "connection reset").is_transient());
    }
}
