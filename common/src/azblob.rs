//! Azure Blob block uploads driven block by block, so that the blocks of one large file can be
//! staged by different workers on different clients: each Part job stages one block (Put Block)
//! on the destination blob, the Complete job commits them in order (Put Block List). Staged
//! blocks are invisible until they are committed: nothing appears under the final name before
//! the Complete job. OpenDAL's writer keeps a block upload inside one process, which is why
//! these few calls are made here directly, signed with the SharedKey signer OpenDAL's Azure Blob
//! service uses (`reqsign-azure-storage`), or with the SAS token appended.
//!
//! Uncommitted blocks cannot be deleted one by one: an abort deletes the blob when it has no
//! committed version (which takes its uncommitted blocks with it); blocks staged on a blob that
//! already has a committed version are dropped by Azure on the blob's next commit, or garbage
//! collected after seven days.

use std::fmt;

use base64::Engine as _;
use bytes::Bytes;
use reqsign_azure_storage::{Credential, RequestSigner, StaticCredentialProvider};
use reqsign_core::{Context, OsEnv, Signer};

use crate::endpoint::{refuse_userinfo, EndpointError, Secret};
use crate::rest::{encode, error_chain};
use crate::Endpoint;

/// The REST API version of every request.
const API_VERSION: &str = "2021-08-06";

/// An Azure Storage error: the HTTP status (None when the request got no answer), Azure's error
/// code (`x-ms-error-code` or the `<Code>` of the body) and its message.
#[derive(Debug, Clone)]
pub struct AzureError {
    pub status: Option<u16>,
    pub code: String,
    pub message: String,
}

impl AzureError {
    fn new(status: Option<u16>, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.to_string(),
            message: message.into(),
        }
    }

    /// Worth trying again: no answer, throttling, a server error, or bytes damaged on the way
    /// (Azure's MD5 of a block differs from the one sent).
    pub fn is_transient(&self) -> bool {
        if matches!(
            self.code.as_str(),
            "ServerBusy" | "OperationTimedOut" | "InternalError" | "Md5Mismatch"
        ) {
            return true;
        }
        match self.status {
            None => true,
            Some(s) => s == 408 || s == 429 || s >= 500,
        }
    }

    /// The blob (or its container) does not exist.
    pub fn is_not_found(&self) -> bool {
        self.status == Some(404)
    }

    /// A block list names blocks the blob does not have (never staged, garbage collected, or
    /// dropped by another commit).
    pub fn is_invalid_block_list(&self) -> bool {
        self.code == "InvalidBlockList"
    }
}

impl fmt::Display for AzureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match (self.code.is_empty(), self.message.is_empty()) {
            (true, _) => self.message.clone(),
            (false, true) => self.code.clone(),
            (false, false) => format!("{} {}", self.code, self.message),
        };
        match self.status {
            Some(s) => write!(f, "Azure answered {s}: {what}"),
            None => write!(f, "Azure request failed: {what}"),
        }
    }
}

impl std::error::Error for AzureError {}

/// The block id of part `number` (1-based) of upload `upload_id`: base64 of a string of fixed
/// length (Azure requires all block ids of a blob to have the same length), unique per upload
/// and part, so a block list names only this upload's blocks.
pub fn block_id(upload_id: &str, number: u32) -> String {
    let raw = format!("{:0<32.32}-{number:06}", upload_id);
    base64::engine::general_purpose::STANDARD.encode(raw)
}

/// A hex MD5 as Azure writes it in `Content-MD5` (base64).
pub fn md5_base64(hex: &str) -> Option<String> {
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    let bytes = bytes.filter(|b| b.len() == 16)?;
    Some(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// An MD5 given by Azure in `Content-MD5` (base64), as hex.
pub fn md5_hex(b64: &str) -> Option<String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()
        .filter(|b| b.len() == 16)?;
    Some(crate::checksum::hex(&bytes))
}

/// The service URL of an account: `https://<account>.blob.core.windows.net`.
pub fn default_endpoint(account_name: &str) -> String {
    format!("https://{account_name}.blob.core.windows.net")
}

/// Options an `azblob://` endpoint takes (`--src-opt` / `--dst-opt KEY=VALUE`).
pub const AZBLOB_OPTIONS: &str = "account_name, account_key, endpoint, sas_token";

const AZBLOB_CREDENTIALS_HINT: &str =
    "--dst-opt account_name=NAME --dst-opt account_key=@/path/to/file (or --src-opt for a source)";

/// Parses `azblob://container/prefix` (`rest` is what follows the scheme) with its options.
pub(crate) fn parse(
    url: &str,
    rest: &str,
    options: &std::collections::BTreeMap<String, String>,
) -> Result<Endpoint, EndpointError> {
    let (container, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    refuse_userinfo("azblob", container, AZBLOB_CREDENTIALS_HINT)?;
    if let Some(e) = options.get("endpoint") {
        if let Some((scheme, rest)) = e.split_once("://") {
            let authority = rest.split('/').next().unwrap_or(rest);
            refuse_userinfo(scheme, authority, AZBLOB_CREDENTIALS_HINT)?;
        }
    }
    if container.is_empty() {
        return Err(EndpointError::NoContainer {
            url: url.to_string(),
        });
    }
    let (mut endpoint, mut account_name, mut account_key, mut sas_token) = (None, None, None, None);
    for (k, v) in options {
        match k.as_str() {
            "endpoint" => endpoint = Some(v.trim_end_matches('/').to_string()),
            "account_name" => account_name = Some(v.clone()),
            "account_key" => account_key = Some(Secret(v.trim().to_string())),
            "sas_token" => sas_token = Some(Secret(v.trim().trim_start_matches('?').to_string())),
            _ => {
                return Err(EndpointError::UnknownOption {
                    key: k.clone(),
                    scheme: "azblob",
                    known: AZBLOB_OPTIONS,
                })
            }
        }
    }
    if endpoint.is_none() && account_name.is_none() {
        return Err(EndpointError::NoAccount {
            url: url.to_string(),
        });
    }
    Ok(Endpoint::Azblob {
        container: container.to_string(),
        prefix: prefix.trim_matches('/').to_string(),
        endpoint,
        account_name,
        account_key,
        sas_token,
    })
}

/// The OpenDAL operator of an Azure Blob endpoint.
pub(crate) fn operator(ep: &Endpoint) -> opendal::Result<opendal::Operator> {
    let Endpoint::Azblob {
        container,
        prefix,
        endpoint,
        account_name,
        account_key,
        sas_token,
    } = ep
    else {
        return Err(opendal::Error::new(
            opendal::ErrorKind::ConfigInvalid,
            "not an Azure Blob endpoint",
        ));
    };
    // The HTTP transport object stores use (reqwest, rustls), installed once.
    static HTTP: std::sync::Once = std::sync::Once::new();
    HTTP.call_once(opendal::install_default);
    let base = endpoint
        .clone()
        .or_else(|| account_name.as_deref().map(default_endpoint))
        .unwrap_or_default();
    let mut b = opendal::services::Azblob::default()
        .container(container)
        .root(&format!("/{prefix}"))
        .endpoint(&base);
    if let Some(n) = account_name {
        b = b.account_name(n);
    }
    if let Some(k) = account_key {
        b = b.account_key(&k.0);
    }
    if let Some(t) = sas_token {
        b = b.sas_token(&t.0);
    }
    opendal::Operator::new(b)
}

/// True when Azure Blob endpoint `a` is `b` or lies inside it (same service, container, and a
/// prefix within `b`'s).
pub(crate) fn is_within(a: &Endpoint, b: &Endpoint) -> bool {
    let service = |e: &Endpoint| match e {
        Endpoint::Azblob {
            container,
            prefix,
            endpoint,
            account_name,
            ..
        } => Some((
            endpoint
                .clone()
                .or_else(|| account_name.as_deref().map(default_endpoint)),
            container.clone(),
            prefix.clone(),
        )),
        _ => None,
    };
    match (service(a), service(b)) {
        (Some((e1, c1, p1)), Some((e2, c2, p2))) => {
            e1 == e2
                && c1 == c2
                && std::path::Path::new(&format!("/{p1}"))
                    .starts_with(std::path::Path::new(&format!("/{p2}")))
        }
        _ => false,
    }
}

pub struct AzureBlocks {
    http: reqwest::Client,
    signer: Option<Signer<Credential>>,
    /// `scheme://host[:port][/account]` of the service, without a trailing `/`.
    base: String,
    container: String,
    /// Blob name prefix of the endpoint, without slashes at either end.
    prefix: String,
}

impl AzureBlocks {
    /// A client for an Azure Blob endpoint; `None` for other endpoints. SharedKey signing when
    /// the endpoint has an account key, the SAS token appended when it has one, anonymous
    /// otherwise.
    pub fn new(ep: &Endpoint) -> Option<Self> {
        let Endpoint::Azblob {
            container,
            prefix,
            endpoint,
            account_name,
            account_key,
            sas_token,
        } = ep
        else {
            return None;
        };
        let base = endpoint
            .clone()
            .or_else(|| account_name.as_deref().map(default_endpoint))
            .unwrap_or_default();
        let ctx = Context::new().with_env(OsEnv);
        let provider = match (account_name, account_key, sas_token) {
            (Some(name), Some(key), _) => {
                Some(StaticCredentialProvider::new_shared_key(name, &key.0))
            }
            (_, _, Some(sas)) => Some(StaticCredentialProvider::new_sas_token(
                sas.0.trim_start_matches('?'),
            )),
            _ => None,
        };
        let signer = provider.map(|p| Signer::new(ctx, p, RequestSigner::new()));
        Some(Self {
            http: reqwest::Client::new(),
            signer,
            base: base.trim_end_matches('/').to_string(),
            container: container.clone(),
            prefix: prefix.clone(),
        })
    }

    /// The URL of blob `path` (relative to the endpoint's prefix) with `query`.
    fn url(&self, path: &str, query: &str) -> String {
        let name = if self.prefix.is_empty() {
            path.trim_start_matches('/').to_string()
        } else {
            format!("{}/{}", self.prefix, path.trim_start_matches('/'))
        };
        let mut url = format!(
            "{}/{}/{}",
            self.base,
            encode(&self.container, true),
            encode(&name, false)
        );
        if !query.is_empty() {
            url.push('?');
            url.push_str(query);
        }
        url
    }

    async fn send(
        &self,
        method: http::Method,
        url: &str,
        headers: &[(&str, String)],
        body: reqwest::Body,
    ) -> Result<(http::HeaderMap, Bytes), AzureError> {
        let mut req = http::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let req = req
            .header("x-ms-version", API_VERSION)
            .body(())
            .map_err(|e| AzureError::new(None, "", format!("bad request: {e}")))?;
        let (mut parts, ()) = req.into_parts();
        if let Some(signer) = &self.signer {
            signer.sign(&mut parts, None).await.map_err(|e| {
                AzureError::new(Some(403), "SigningFailed", format!("signing failed: {e}"))
            })?;
        }
        let req = http::Request::from_parts(parts, body);
        let req = reqwest::Request::try_from(req)
            .map_err(|e| AzureError::new(None, "", format!("bad request: {e}")))?;
        let resp = self
            .http
            .execute(req)
            .await
            .map_err(|e| AzureError::new(None, "", error_chain(&e)))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp
            .bytes()
            .await
            .map_err(|e| AzureError::new(None, "", error_chain(&e)))?;
        if !status.is_success() {
            let (code, message) = error_body(&body);
            let code = headers
                .get("x-ms-error-code")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
                .unwrap_or(code);
            let message = message.lines().next().unwrap_or("").to_string();
            return Err(AzureError::new(Some(status.as_u16()), &code, message));
        }
        Ok((headers, body))
    }

    /// Stages block `number` of upload `upload_id` on blob `path`, `len` bytes from `body`.
    /// Returns the MD5 (hex) Azure computed of the block it received, when it says.
    pub async fn put_block(
        &self,
        path: &str,
        upload_id: &str,
        number: u32,
        len: u64,
        body: reqwest::Body,
    ) -> Result<Option<String>, AzureError> {
        let id = block_id(upload_id, number);
        let url = self.url(path, &format!("comp=block&blockid={}", encode(&id, true)));
        let headers = [("content-length", len.to_string())];
        let (h, _) = self.send(http::Method::PUT, &url, &headers, body).await?;
        Ok(h.get("content-md5")
            .and_then(|v| v.to_str().ok())
            .and_then(md5_hex))
    }

    /// Commits the blocks `numbers` (in this order) of upload `upload_id` as blob `path`, with
    /// its content type and, when known, the MD5 (hex) of the whole content. Blocks are named
    /// as `Latest`: a commit made again after an earlier one of the same blocks (whose result
    /// was lost) finds them committed and gives the same blob.
    pub async fn put_block_list(
        &self,
        path: &str,
        upload_id: &str,
        numbers: &[u32],
        content_type: Option<&str>,
        md5: Option<&str>,
    ) -> Result<(), AzureError> {
        let mut xml = String::from(r#"<?xml version="1.0" encoding="utf-8"?><BlockList>"#);
        for n in numbers {
            xml.push_str("<Latest>");
            xml.push_str(&block_id(upload_id, *n));
            xml.push_str("</Latest>");
        }
        xml.push_str("</BlockList>");
        let mut headers = vec![
            ("content-type", "application/xml".to_string()),
            ("content-length", xml.len().to_string()),
        ];
        if let Some(ct) = content_type {
            headers.push(("x-ms-blob-content-type", ct.to_string()));
        }
        if let Some(m) = md5.and_then(md5_base64) {
            headers.push(("x-ms-blob-content-md5", m));
        }
        let url = self.url(path, "comp=blocklist");
        self.send(http::Method::PUT, &url, &headers, reqwest::Body::from(xml))
            .await?;
        Ok(())
    }

    /// True when blob `path` has a committed version.
    pub async fn exists(&self, path: &str) -> Result<bool, AzureError> {
        match self
            .send(
                http::Method::HEAD,
                &self.url(path, ""),
                &[],
                reqwest::Body::from(""),
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Drops what an upload staged on blob `path` without touching a committed version: when
    /// the blob has none, deleting it removes its uncommitted blocks; otherwise they stay until
    /// the blob's next commit or Azure's garbage collection (seven days). Gone already is fine.
    pub async fn discard(&self, path: &str) -> Result<(), AzureError> {
        if self.exists(path).await? {
            return Ok(());
        }
        match self
            .send(
                http::Method::DELETE,
                &self.url(path, ""),
                &[],
                reqwest::Body::from(""),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The blocks of blob `path` in `section` (`CommittedBlocks`, in the blob's order, or
    /// `UncommittedBlocks`): id and size. None when the blob does not exist.
    pub async fn blocks(
        &self,
        path: &str,
        section: &str,
    ) -> Result<Option<Vec<(String, u64)>>, AzureError> {
        let url = self.url(path, "comp=blocklist&blocklisttype=all");
        match self
            .send(http::Method::GET, &url, &[], reqwest::Body::from(""))
            .await
        {
            Ok((_, body)) => Ok(Some(block_list(&body, section))),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// The texts of the elements named `leaf` in an XML document (references resolved), each with
/// the name of the element it sits in; nothing for what is not XML.
fn leaves(body: &[u8], leaf: &[&str]) -> Vec<(String, String, String)> {
    use quick_xml::events::Event;
    let text = String::from_utf8_lossy(body);
    let mut reader = quick_xml::Reader::from_str(&text);
    let mut stack: Vec<String> = Vec::new();
    let mut buf = String::new();
    let mut out = Vec::new();
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) => {
                stack.push(e.local_name().into_inner().to_string());
                buf.clear();
            }
            Ok(Event::Text(t)) => buf.push_str(&t.xml10_content()),
            Ok(Event::CData(t)) => buf.push_str(&t.into_inner()),
            Ok(Event::GeneralRef(r)) => match r.resolve_char_ref() {
                Ok(Some(ch)) => buf.push(ch),
                _ => buf.push_str(quick_xml::escape::resolve_predefined_entity(&r).unwrap_or("")),
            },
            Ok(Event::End(_)) => {
                let name = stack.pop().unwrap_or_default();
                if leaf.contains(&name.as_str()) {
                    // The section: the nearest enclosing element that is not a leaf's record.
                    let section = stack
                        .iter()
                        .rev()
                        .find(|s| s.as_str() != "Block")
                        .cloned()
                        .unwrap_or_default();
                    out.push((section, name, std::mem::take(&mut buf)));
                }
                buf.clear();
            }
            Ok(Event::Eof) | Err(_) => break,
            _ => {}
        }
    }
    out
}

/// `<Code>` and `<Message>` of an Azure error body (empty when there are none).
fn error_body(body: &[u8]) -> (String, String) {
    let (mut code, mut message) = (String::new(), String::new());
    for (_, name, text) in leaves(body, &["Code", "Message"]) {
        match name.as_str() {
            "Code" => code = text,
            _ => message = text,
        }
    }
    (code.trim().to_string(), message.trim().to_string())
}

/// The blocks (id and size) inside `<section>` of a Get Block List answer, in its order.
fn block_list(body: &[u8], section: &str) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = Vec::new();
    for (_, name, text) in leaves(body, &["Name", "Size"])
        .into_iter()
        .filter(|(s, _, _)| s == section)
    {
        match name.as_str() {
            "Name" => out.push((text, 0)),
            _ => {
                if let Some(last) = out.last_mut() {
                    last.1 = text.trim().parse().unwrap_or(0);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn azblob_urls_take_options_and_never_show_secrets() {
        let o = opts(&[
            ("account_name", "devstoreaccount1"),
            ("account_key", "S0VZLVNFQ1JFVA=="),
            ("endpoint", "http://127.0.0.1:10000/devstoreaccount1/"),
        ]);
        let e = Endpoint::parse_with("azblob://data/some/prefix/", &o).unwrap();
        assert_eq!(e.to_string(), "azblob://data/some/prefix");
        assert!(!format!("{e:?}").contains("S0VZLVNFQ1JFVA"));
        assert!(serde_json::to_string(&e)
            .unwrap()
            .contains("S0VZLVNFQ1JFVA=="));
        let Endpoint::Azblob { endpoint, .. } = &e else {
            panic!("not azblob: {e:?}");
        };
        assert_eq!(
            endpoint.as_deref(),
            Some("http://127.0.0.1:10000/devstoreaccount1")
        );
        let sas = opts(&[
            ("account_name", "acct"),
            ("sas_token", "?sv=1&sig=SECRETSIG"),
        ]);
        let e = Endpoint::parse_with("azblob://c", &sas).unwrap();
        assert_eq!(e.to_string(), "azblob://c");
        assert!(!format!("{e:?}").contains("SECRETSIG"));
        assert!(matches!(
            Endpoint::parse_with("azblob:///x", &sas),
            Err(EndpointError::NoContainer { .. })
        ));
        let err = Endpoint::parse("azblob://c/x").unwrap_err().to_string();
        assert!(err.contains("account_name=NAME"), "{err}");
        let err = Endpoint::parse_with("azblob://c", &opts(&[("colour", "red")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("unknown option 'colour' for azblob endpoints"),
            "{err}"
        );
        let err = Endpoint::parse_with("azblob://acct:hunter2@c/x", &sas)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("credentials in an endpoint URL"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        let in_url = opts(&[("endpoint", "http://a:hunter2@127.0.0.1:1/x")]);
        let err = Endpoint::parse_with("azblob://c", &in_url)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("account_key=@") && !err.contains("hunter2"),
            "{err}"
        );
        let a = |url: &str| Endpoint::parse_with(url, &sas).unwrap();
        assert!(a("azblob://c/a/b").is_within(&a("azblob://c/a")));
        assert!(a("azblob://c/a").is_within(&a("azblob://c")));
        assert!(!a("azblob://c/ab").is_within(&a("azblob://c/a")));
        assert!(!a("azblob://d/a").is_within(&a("azblob://c/a")));
        let other = opts(&[("account_name", "other")]);
        assert!(!Endpoint::parse_with("azblob://c/a", &other)
            .unwrap()
            .is_within(&a("azblob://c")));
    }

    #[test]
    fn block_ids_have_one_length_and_differ_by_upload_and_part() {
        let a = block_id("0123456789abcdef0123456789abcdef", 1);
        let b = block_id("0123456789abcdef0123456789abcdef", 50_000);
        let c = block_id("short", 1);
        assert_eq!(a.len(), b.len());
        assert_eq!(a.len(), c.len());
        assert_ne!(a, b);
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&a)
            .unwrap();
        assert_eq!(raw, b"0123456789abcdef0123456789abcdef-000001");
        assert!(raw.len() <= 64, "Azure takes block ids of up to 64 bytes");
    }

    #[test]
    fn md5s_convert_between_hex_and_base64() {
        // MD5 of the empty string.
        let hex = "d41d8cd98f00b204e9800998ecf8427e";
        assert_eq!(md5_base64(hex).as_deref(), Some("1B2M2Y8AsgTpgAmY7PhCfg=="));
        assert_eq!(md5_hex("1B2M2Y8AsgTpgAmY7PhCfg==").as_deref(), Some(hex));
        assert_eq!(md5_hex("not base64!"), None);
        assert_eq!(md5_base64("abc"), None);
    }

    #[test]
    fn error_bodies_and_block_lists_are_parsed_as_xml() {
        let body = br#"<?xml version="1.0" encoding="utf-8"?><Error><Code>AuthenticationFailed</Code><Message>Server failed to authenticate the request &amp; more.
RequestId:1</Message><AuthenticationErrorDetail>x</AuthenticationErrorDetail></Error>"#;
        let (code, message) = error_body(body);
        assert_eq!(code, "AuthenticationFailed");
        assert!(message.starts_with("Server failed to authenticate the request & more."));
        let list = br#"<?xml version="1.0" encoding="utf-8"?><BlockList><CommittedBlocks><Block><Name>QQ==</Name><Size>1</Size></Block></CommittedBlocks><UncommittedBlocks><Block><Name>Qg==</Name><Size>2</Size></Block><Block><Name>Qw==</Name><Size>3</Size></Block></UncommittedBlocks></BlockList>"#;
        assert_eq!(
            block_list(list, "UncommittedBlocks"),
            vec![("Qg==".to_string(), 2), ("Qw==".to_string(), 3)]
        );
        assert_eq!(
            block_list(list, "CommittedBlocks"),
            vec![("QQ==".to_string(), 1)]
        );
        let busy = AzureError::new(Some(503), "ServerBusy", "");
        assert!(busy.is_transient());
        let auth = AzureError::new(Some(403), "AuthenticationFailed", "no");
        assert!(!auth.is_transient());
        assert!(AzureError::new(Some(400), "Md5Mismatch", "").is_transient());
        assert!(!AzureError::new(Some(400), "InvalidBlockList", "").is_transient());
    }
}
