//! Server-side copies between two buckets (or prefixes) of one S3 service: CopyObject for whole
//! objects, UploadPartCopy for the parts of large ones, so that no byte of the object goes
//! through a client. Also the metadata an S3 object keeps on its way to another S3 object
//! (content type, cache control, content encoding, content disposition, user metadata), and the
//! CreateMultipartUpload that sets it. Answers are parsed with a real XML parser.

use crate::s3mp::{encode, unquote, S3Error, S3Multipart};
use crate::Endpoint;

/// The largest object one CopyObject may copy; larger ones go in UploadPartCopy parts.
pub const COPY_OBJECT_MAX: u64 = 5 << 30;

/// True when both endpoints are on the same S3 service with the same credentials (endpoint URL,
/// region, keys, addressing): an object of one can be copied into the other by the service.
pub fn same_service(a: &Endpoint, b: &Endpoint) -> bool {
    match (a, b) {
        (
            Endpoint::S3 {
                endpoint: e1,
                region: r1,
                access_key_id: k1,
                secret_access_key: s1,
                session_token: t1,
                virtual_host: v1,
                ..
            },
            Endpoint::S3 {
                endpoint: e2,
                region: r2,
                access_key_id: k2,
                secret_access_key: s2,
                session_token: t2,
                virtual_host: v2,
                ..
            },
        ) => {
            let base =
                |e: &Option<String>| e.as_deref().map(|s| s.trim_end_matches('/').to_string());
            let region = |r: &Option<String>| r.as_deref().unwrap_or("us-east-1").to_string();
            base(e1) == base(e2)
                && region(r1) == region(r2)
                && k1 == k2
                && s1 == s2
                && t1 == t2
                && v1 == v2
        }
        _ => false,
    }
}

/// What an object carries besides its bytes and is kept on its copy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjectMeta {
    pub content_type: Option<String>,
    pub cache_control: Option<String>,
    pub content_encoding: Option<String>,
    pub content_disposition: Option<String>,
    /// `x-amz-meta-*` without the prefix, sorted by key.
    pub user: Vec<(String, String)>,
}

impl ObjectMeta {
    /// The metadata of a stat of the source.
    pub fn from_stat(m: &opendal::Metadata) -> Self {
        let mut user: Vec<(String, String)> = m
            .user_metadata()
            .map(|u| {
                u.into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            })
            .unwrap_or_default();
        user.sort();
        Self {
            content_type: m.content_type().map(str::to_string),
            cache_control: m.cache_control().map(str::to_string),
            content_encoding: m.content_encoding().map(str::to_string),
            content_disposition: m.content_disposition().map(str::to_string),
            user,
        }
    }

    /// Only a content type (a file's, guessed from its name).
    pub fn with_content_type(ct: Option<&str>) -> Self {
        Self {
            content_type: ct.map(str::to_string),
            ..Self::default()
        }
    }

    /// The request headers that set it.
    pub fn headers(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (name, v) in [
            ("content-type", &self.content_type),
            ("cache-control", &self.cache_control),
            ("content-encoding", &self.content_encoding),
            ("content-disposition", &self.content_disposition),
        ] {
            if let Some(v) = v {
                out.push((name.to_string(), v.clone()));
            }
        }
        for (k, v) in &self.user {
            out.push((format!("x-amz-meta-{k}"), v.clone()));
        }
        out
    }

    /// What a file system cannot hold of it, for the per-file report ("" when nothing). A file
    /// system's content type is its name: the object's is lost unless it is the one `guessed`
    /// from the name, or the default type a store gives objects without one.
    pub fn not_kept_on_fs(&self, guessed: Option<&str>) -> String {
        let mut lost = Vec::new();
        if let Some(ct) = &self.content_type {
            let base = ct.split(';').next().unwrap_or("").trim();
            let default = ["binary/octet-stream", "application/octet-stream"]
                .iter()
                .any(|d| base.eq_ignore_ascii_case(d));
            let same = guessed.is_some_and(|g| base.eq_ignore_ascii_case(g));
            if !base.is_empty() && !default && !same {
                lost.push("content-type".to_string());
            }
        }
        if self.cache_control.is_some() {
            lost.push("cache-control".to_string());
        }
        if self.content_encoding.is_some() {
            lost.push("content-encoding".to_string());
        }
        if self.content_disposition.is_some() {
            lost.push("content-disposition".to_string());
        }
        for (k, _) in &self.user {
            lost.push(format!("x-amz-meta-{k}"));
        }
        lost.join(", ")
    }
}

/// Starts a multipart upload of `path` that gives the object `meta`; returns its upload id.
pub async fn create_upload(
    mp: &S3Multipart,
    path: &str,
    meta: &ObjectMeta,
) -> Result<String, S3Error> {
    let headers = meta.headers();
    let headers: Vec<(&str, String)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    let url = mp.url(path, "uploads=");
    let (_, body) = mp
        .send(http::Method::POST, &url, &headers, reqwest::Body::from(""))
        .await?;
    element(&body, "UploadId")?.ok_or_else(|| S3Error::new(Some(500), "no UploadId in the answer"))
}

/// Copies objects of one endpoint into another on the same service.
pub struct S3Copy {
    /// Client of the destination.
    pub dst: S3Multipart,
    src_bucket: String,
    src_prefix: String,
}

impl S3Copy {
    /// A copier from `src` to `dst`; None unless both are on the same S3 service.
    pub fn new(src: &Endpoint, dst: &Endpoint) -> Option<Self> {
        if !same_service(src, dst) {
            return None;
        }
        let Endpoint::S3 { bucket, prefix, .. } = src else {
            return None;
        };
        Some(Self {
            dst: S3Multipart::new(dst)?,
            src_bucket: bucket.clone(),
            src_prefix: prefix.clone(),
        })
    }

    /// The `x-amz-copy-source` of the source object `path`: bucket and key, percent-encoded.
    fn copy_source(&self, path: &str) -> String {
        let path = path.trim_start_matches('/');
        let key = if self.src_prefix.is_empty() {
            path.to_string()
        } else {
            format!("{}/{path}", self.src_prefix)
        };
        format!(
            "/{}/{}",
            encode(&self.src_bucket, true),
            encode(&key, false)
        )
    }

    /// Copies the object `path` (at most [`COPY_OBJECT_MAX`] bytes) with its metadata (the
    /// COPY directive), only while it has the ETag `if_match` when given (412 otherwise);
    /// returns the new object's ETag.
    pub async fn copy_object(&self, path: &str, if_match: Option<&str>) -> Result<String, S3Error> {
        let url = self.dst.url(path, "");
        let url = url.trim_end_matches('?');
        let mut headers = vec![
            ("x-amz-copy-source", self.copy_source(path)),
            ("x-amz-metadata-directive", "COPY".to_string()),
        ];
        if let Some(e) = if_match {
            headers.push(("x-amz-copy-source-if-match", format!("\"{e}\"")));
        }
        let (_, body) = self
            .dst
            .send(http::Method::PUT, url, &headers, reqwest::Body::from(""))
            .await?;
        element(&body, "ETag")?
            .map(|e| unquote(&e))
            .ok_or_else(|| S3Error::new(Some(500), "no ETag in the CopyObject answer"))
    }

    /// Copies bytes `offset..offset + len` of the source object `path` into part `number` of
    /// the upload; returns the part's ETag.
    pub async fn upload_part_copy(
        &self,
        path: &str,
        upload_id: &str,
        number: u32,
        offset: u64,
        len: u64,
    ) -> Result<String, S3Error> {
        let url = self.dst.url(
            path,
            &format!("partNumber={number}&uploadId={}", encode(upload_id, true)),
        );
        let last = offset + len.max(1) - 1;
        let headers = [
            ("x-amz-copy-source", self.copy_source(path)),
            ("x-amz-copy-source-range", format!("bytes={offset}-{last}")),
        ];
        let (_, body) = self
            .dst
            .send(http::Method::PUT, &url, &headers, reqwest::Body::from(""))
            .await?;
        element(&body, "ETag")?
            .map(|e| unquote(&e))
            .ok_or_else(|| S3Error::new(Some(500), "no ETag in the UploadPartCopy answer"))
    }
}

fn last(path: &[String]) -> Option<&str> {
    path.last().map(String::as_str)
}

/// The text of the first element `name` of an S3 answer, entities resolved (Go servers write
/// `&#34;` for quotes, others `&quot;`). An `<Error>` document (which S3 may send with a 200)
/// is an error: transient for `SlowDown`/`InternalError`, permanent otherwise.
pub fn element(body: &[u8], name: &str) -> Result<Option<String>, S3Error> {
    use quick_xml::events::Event;
    let text = String::from_utf8_lossy(body);
    let mut reader = quick_xml::Reader::from_str(&text);
    let mut path: Vec<String> = Vec::new();
    let mut found: Option<String> = None;
    let (mut code, mut message) = (String::new(), String::new());
    let bad = |e: quick_xml::Error| S3Error::new(Some(500), format!("malformed S3 answer: {e}"));
    loop {
        let ev = reader.read_event().map_err(bad)?;
        let piece = match ev {
            Event::Start(e) => {
                path.push(e.local_name().as_ref().to_string());
                continue;
            }
            Event::End(_) => {
                let in_error = path.first().map(String::as_str) == Some("Error");
                if !in_error && last(&path) == Some(name) && found.is_some() {
                    return Ok(found);
                }
                path.pop();
                continue;
            }
            Event::Text(t) => t.xml10_content().into_owned(),
            Event::CData(t) => t.xml10_content().into_owned(),
            Event::GeneralRef(r) => match r.resolve_char_ref() {
                Ok(Some(c)) => c.to_string(),
                _ => quick_xml::escape::resolve_predefined_entity(&r)
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("&{};", &*r)),
            },
            Event::Eof => break,
            _ => continue,
        };
        let in_error = path.first().map(String::as_str) == Some("Error");
        match last(&path) {
            Some("Code") if in_error => code.push_str(&piece),
            Some("Message") if in_error => message.push_str(&piece),
            Some(t) if t == name && !in_error => {
                found.get_or_insert_with(String::new).push_str(&piece)
            }
            _ => {}
        }
    }
    if !code.is_empty() || !message.is_empty() {
        let status = match code.as_str() {
            "SlowDown" | "InternalError" | "ServiceUnavailable" | "RequestTimeout" => 503,
            "NoSuchKey" | "NoSuchBucket" | "NoSuchUpload" => 404,
            _ => 403,
        };
        return Err(S3Error::new(
            Some(status),
            format!("{code} {message}").trim().to_string(),
        ));
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_parsed_with_their_entities() {
        let go = br#"<?xml version="1.0" encoding="UTF-8"?>
<CopyObjectResult><LastModified>2026-12-02T00:00:00Z</LastModified><ETag>&#34;9e107d9d372bb6826bd81d3542a419d6&#34;</ETag></CopyObjectResult>"#;
        let etag = element(go, "ETag").unwrap().unwrap();
        assert_eq!(unquote(&etag), "9e107d9d372bb6826bd81d3542a419d6");
        let aws = b"<CopyPartResult><ETag>&quot;abc&quot;</ETag></CopyPartResult>";
        assert_eq!(element(aws, "ETag").unwrap().as_deref(), Some("\"abc\""));
        let up = b"<InitiateMultipartUploadResult><Bucket>b</Bucket><Key>k</Key><UploadId>x~y</UploadId></InitiateMultipartUploadResult>";
        assert_eq!(element(up, "UploadId").unwrap().as_deref(), Some("x~y"));
        assert_eq!(element(up, "Missing").unwrap(), None);
    }

    #[test]
    fn an_error_with_a_200_is_an_error() {
        let slow = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
        let e = element(slow, "ETag").unwrap_err();
        assert!(e.is_transient(), "{e}");
        assert!(e.message.contains("SlowDown"), "{e}");
        let denied = b"<Error><Code>AccessDenied</Code><Message>no &amp; never</Message></Error>";
        let e = element(denied, "ETag").unwrap_err();
        assert!(!e.is_transient(), "{e}");
        assert!(e.message.contains("no & never"), "{e}");
    }

    #[test]
    fn same_service_needs_the_same_endpoint_and_keys() {
        let ep = |url: &str, key: &str| {
            Endpoint::parse_with(
                url,
                &[
                    ("endpoint".to_string(), "http://127.0.0.1:9000/".to_string()),
                    ("access_key_id".to_string(), key.to_string()),
                    ("secret_access_key".to_string(), "s".to_string()),
                ]
                .into_iter()
                .collect(),
            )
            .unwrap()
        };
        assert!(same_service(&ep("s3://a/x", "k"), &ep("s3://b/y", "k")));
        assert!(!same_service(
            &ep("s3://a/x", "k"),
            &ep("s3://b/y", "other")
        ));
        let local = Endpoint::Fs {
            root: "/tmp".into(),
        };
        assert!(!same_service(&local, &ep("s3://b/y", "k")));
    }

    #[test]
    fn metadata_becomes_headers() {
        let m = ObjectMeta {
            content_type: Some("text/plain".into()),
            cache_control: Some("max-age=60".into()),
            user: vec![("owner".into(), "ops".into())],
            ..ObjectMeta::default()
        };
        let h = m.headers();
        assert!(h.contains(&("content-type".into(), "text/plain".into())));
        assert!(h.contains(&("x-amz-meta-owner".into(), "ops".into())));
        assert_eq!(
            m.not_kept_on_fs(Some("text/plain")),
            "cache-control, x-amz-meta-owner"
        );
        assert_eq!(
            m.not_kept_on_fs(None),
            "content-type, cache-control, x-amz-meta-owner"
        );
    }
}
