//! The web console and the JSON HTTP gateway. `POST /api/v1/<verb>` runs the same handler as
//! the NATS request `btp.api.v1.<verb>` (one implementation of each operation, two transports),
//! with the token in `Authorization: Bearer <token>`. The answer is the same `{"ok": ...}` or
//! `{"error": ...}` body, with an HTTP status that matches the error code.
//! `POST /api/v1/task.report.csv` streams a task's per-file report as CSV, page by page
//! through the same handlers. `GET /` serves the console, embedded in the binary.
//!
//! Every request is checked before any handler runs ([`Guard`]): its `Host` must be the
//! listen address (for a loopback listener also `localhost:PORT`, `127.0.0.1:PORT`,
//! `[::1]:PORT`) or a name of `--http-allowed-host`, so a DNS-rebinding page cannot talk to
//! it; an API request from a browser must come from the console's own origin (`Origin` equal
//! to the `Host`, `Sec-Fetch-Site` `same-origin` or `none`), else 403; an API request must be
//! `Content-Type: application/json`, else 415 (a browser sends that type cross-origin only
//! after a CORS preflight, which this server never grants). With a console token (standalone)
//! an API request must also carry `Authorization: Bearer <token>`, else 401.

use std::net::SocketAddr;

use btp_common::api::{
    verbs, ApiError, ApiResponse, ErrorCode, FileList, FilesCursor, FilesRequest, TaskInfo, TaskRef,
};
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::api::Api;

/// Largest request body (the NATS API's limit too).
const MAX_BODY: usize = 64 << 10;

/// What a request must show before it reaches a handler (see the module docs).
#[derive(Clone, Debug)]
pub struct Guard {
    /// `host:port` values (lowercase) a `Host` header may have.
    hosts: Vec<String>,
    /// Names of `--http-allowed-host` without a port: any port.
    names: Vec<String>,
    /// The port of an unspecified listen address (`0.0.0.0`): any IP literal with it.
    any_ip_port: Option<u16>,
    /// SHA-256 of the console token, when API requests need it.
    token_hash: Option<String>,
}

impl Guard {
    /// The guard of a listener on `addr`, with the extra names of `--http-allowed-host`
    /// (`name` for any port, `name:port` for one) and the console token, if any.
    pub fn new(addr: SocketAddr, allowed: &[String], console_token: Option<&str>) -> Self {
        let port = addr.port();
        let mut hosts = vec![addr.to_string()];
        if addr.ip().is_loopback() {
            for h in ["localhost", "127.0.0.1", "[::1]"] {
                hosts.push(format!("{h}:{port}"));
            }
        }
        let mut names = Vec::new();
        for a in allowed {
            let a = a.trim().to_ascii_lowercase();
            if host_port(&a).1.is_some() {
                hosts.push(a);
            } else {
                names.push(a);
            }
        }
        Self {
            hosts,
            names,
            any_ip_port: addr.ip().is_unspecified().then_some(port),
            token_hash: console_token.map(crate::api::token_hash),
        }
    }

    /// The guard without a console token.
    pub fn open(addr: SocketAddr) -> Self {
        Self::new(addr, &[], None)
    }

    fn host_allowed(&self, host: &str) -> bool {
        let host = host.trim().to_ascii_lowercase();
        if self.hosts.contains(&host) {
            return true;
        }
        let (name, port) = host_port(&host);
        if self.names.iter().any(|n| n == name) {
            return true;
        }
        // An IP literal cannot be rebound; on 0.0.0.0 every address of the host is ours.
        let ip = name.trim_start_matches('[').trim_end_matches(']');
        self.any_ip_port.is_some_and(|p| port == Some(p)) && ip.parse::<std::net::IpAddr>().is_ok()
    }

    /// The refusal of a request, if it is refused: any request with a foreign `Host`, API
    /// requests from another origin, not JSON, or without the console token.
    fn check(&self, req: &Request<Incoming>, api: bool) -> Option<Response<Body>> {
        let header = |name: &str| {
            req.headers()
                .get(name)
                .map(|v| v.to_str().unwrap_or("\u{fffd}"))
        };
        let refuse = |status: StatusCode, code: ErrorCode, message: &str| {
            if code == ErrorCode::Unauthenticated {
                metrics::counter!(crate::telemetry::API_REFUSED).increment(1);
            }
            Some(error(status, code, message))
        };
        let host = header("host").unwrap_or("");
        if !self.host_allowed(host) {
            return refuse(
                StatusCode::FORBIDDEN,
                ErrorCode::PermissionDenied,
                "refused: the Host header is not this server's address; to serve it under another name, start it with --http-allowed-host NAME",
            );
        }
        if !api {
            return None;
        }
        if let Some(origin) = header("origin") {
            let own = origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"))
                .is_some_and(|o| o.eq_ignore_ascii_case(host.trim()));
            if !own {
                return refuse(
                    StatusCode::FORBIDDEN,
                    ErrorCode::PermissionDenied,
                    "refused: a request from a page of another origin",
                );
            }
        }
        if header("sec-fetch-site").is_some_and(|s| s != "same-origin" && s != "none") {
            return refuse(
                StatusCode::FORBIDDEN,
                ErrorCode::PermissionDenied,
                "refused: a request from a page of another site",
            );
        }
        let json = header("content-type").is_some_and(|t| {
            t.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        });
        if req.method() == Method::POST && !json {
            return refuse(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ErrorCode::InvalidArgument,
                "refused: API requests must be Content-Type: application/json",
            );
        }
        if let Some(want) = &self.token_hash {
            let token = bearer(req).unwrap_or_default();
            if token.is_empty() || &crate::api::token_hash(&token) != want {
                return refuse(
                    StatusCode::UNAUTHORIZED,
                    ErrorCode::Unauthenticated,
                    "this console needs the token printed with its URL when btp standalone started (Console: http://.../?token=...)",
                );
            }
        }
        None
    }
}

/// The host and the port of a `Host` value (`[::1]:80`, `name:80`, `name`).
fn host_port(host: &str) -> (&str, Option<u16>) {
    match host.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && (!h.contains(':') || h.ends_with(']')) => {
            match p.parse() {
                Ok(port) => (h, Some(port)),
                Err(_) => (host, None),
            }
        }
        _ => (host, None),
    }
}

fn bearer(req: &Request<Incoming>) -> Option<String> {
    req.headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string())
}

/// Serves the gateway on `listener` until `cancel` fires.
pub async fn serve(
    listener: tokio::net::TcpListener,
    api: Api,
    guard: Guard,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    info!(addr = %listener.local_addr()?, "serving the HTTP API on /api/v1/<verb>");
    loop {
        let (stream, peer) = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    debug!(error = %e, "accepting an HTTP connection failed");
                    continue;
                }
            },
        };
        let (api, guard) = (api.clone(), guard.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let (api, guard) = (api.clone(), guard.clone());
                async move { Ok::<_, std::convert::Infallible>(answer(&api, &guard, req, peer).await) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await
            {
                debug!(%peer, error = %e, "HTTP connection ended with an error");
            }
        });
    }
}

/// Binds `addr` with a clear error.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot serve the HTTP API on {addr}: {e}"))
}

type Body = UnsyncBoxBody<Bytes, std::convert::Infallible>;

/// The console's files: (path, content type, content).
const CONSOLE: &[(&str, &str, &str)] = &[
    (
        "/",
        "text/html; charset=utf-8",
        include_str!("../console/index.html"),
    ),
    (
        "/console.js",
        "text/javascript; charset=utf-8",
        include_str!("../console/console.js"),
    ),
    (
        "/console.css",
        "text/css; charset=utf-8",
        include_str!("../console/console.css"),
    ),
];

fn full(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("cache-control", "no-store")
        .header("x-content-type-options", "nosniff")
        .header(
            "content-security-policy",
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
        )
        .body(Full::new(body.into()).boxed_unsync())
        .expect("a valid response")
}

fn json(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    full(status, "application/json", body)
}

fn error(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Response<Body> {
    let body = ApiResponse::<()>::Error(ApiError::new(code, message));
    json(
        status,
        serde_json::to_vec(&body).expect("serializing an error cannot fail"),
    )
}

/// The HTTP status of an API answer.
pub fn status_of(body: &[u8]) -> StatusCode {
    match serde_json::from_slice::<ApiResponse<serde_json::Value>>(body) {
        Ok(ApiResponse::Ok(_)) => StatusCode::OK,
        Ok(ApiResponse::Error(e)) => match e.code {
            ErrorCode::InvalidArgument => StatusCode::BAD_REQUEST,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::FailedPrecondition => StatusCode::CONFLICT,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorCode::PermissionDenied => StatusCode::FORBIDDEN,
        },
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

async fn answer(
    api: &Api,
    guard: &Guard,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let path = req.uri().path().to_string();
    if let Some(refused) = guard.check(&req, path.starts_with("/api/")) {
        debug!(%peer, path = cut(&path), "HTTP request refused");
        return refused;
    }
    if req.method() == Method::GET || req.method() == Method::HEAD {
        let path = if path == "/index.html" { "/" } else { &path };
        if let Some((_, content_type, body)) = CONSOLE.iter().find(|(p, _, _)| *p == path) {
            return full(StatusCode::OK, content_type, *body);
        }
    }
    let Some(verb) = path.strip_prefix("/api/v1/").map(str::to_string) else {
        return error(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            format!(
                "no such path '{}': the API is POST /api/v1/<verb>",
                cut(&path)
            ),
        );
    };
    if req.method() != Method::POST {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::InvalidArgument,
            "the API takes POST requests with a JSON body",
        );
    }
    let token = bearer(&req);
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::InvalidArgument,
                format!("invalid request: larger than the limit of {MAX_BODY} bytes"),
            )
        }
    };
    debug!(%peer, verb, "HTTP API request");
    if verb == REPORT_CSV {
        return report_csv(api, &body, token).await;
    }
    let out = api.handle_as(&verb, &body, token.as_deref()).await;
    json(status_of(&out), out)
}

/// The per-file report of a task as CSV: one row per file copied (or already up to date),
/// then one per failed file, streamed a page at a time.
const REPORT_CSV: &str = "task.report.csv";

/// Rows of one page of the CSV report.
const CSV_PAGE: u32 = 2000;

/// Calls `verb` as the caller and decodes its answer.
async fn call<Req: serde::Serialize, Resp: serde::de::DeserializeOwned>(
    api: &Api,
    verb: &str,
    req: &Req,
    token: Option<&str>,
) -> Result<Resp, ApiError> {
    let body = serde_json::to_vec(req).map_err(|e| ApiError::internal(e.to_string()))?;
    let out = api.handle_as(verb, &body, token).await;
    match serde_json::from_slice::<ApiResponse<Resp>>(&out) {
        Ok(ApiResponse::Ok(v)) => Ok(v),
        Ok(ApiResponse::Error(e)) => Err(e),
        Err(e) => Err(ApiError::internal(format!("decoding {verb}: {e}"))),
    }
}

/// Where the CSV stream is.
enum CsvAt {
    Files(FilesCursor),
    /// A check task's verdicts after this path (`status` is the verdict, `reason` what
    /// differs or why the path could not be compared).
    Verdicts(Option<String>),
    End,
}

async fn report_csv(api: &Api, body: &[u8], token: Option<String>) -> Response<Body> {
    let id = match serde_json::from_slice::<TaskRef>(body) {
        Ok(r) => r.id,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidArgument,
                format!("invalid request: {e}"),
            )
        }
    };
    // The first call checks the token and the task before the 200 goes out.
    let task: TaskInfo = match call(
        api,
        verbs::TASK_GET,
        &TaskRef { id: id.clone() },
        token.as_deref(),
    )
    .await
    {
        Ok(t) => t,
        Err(e) => {
            let out = serde_json::to_vec(&ApiResponse::<()>::Error(e)).unwrap_or_default();
            return json(status_of(&out), out);
        }
    };
    let header =
        btp_common::csv::line(&["path", "size", "status", "attempts", "reason", "not_kept"]);
    let api = api.clone();
    let rows =
        futures::stream::once(async move { Bytes::from(header) }).chain(futures::stream::unfold(
            if task.check.is_some() {
                CsvAt::Verdicts(None)
            } else {
                CsvAt::Files(FilesCursor::Opaque(String::new()))
            },
            move |at| {
                let (api, id, token) = (api.clone(), id.clone(), token.clone());
                async move {
                    let (text, next) = csv_page(&api, &id, token.as_deref(), at).await;
                    text.map(|t| (Bytes::from(t), next))
                }
            },
        ));
    let body = StreamBody::new(rows.map(|b| Ok(hyper::body::Frame::data(b))));
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/csv; charset=utf-8")
        .header(
            "content-disposition",
            format!("attachment; filename=\"btp-report-{}.csv\"", task.id),
        )
        .header("cache-control", "no-store")
        .body(body.boxed_unsync())
        .expect("a valid response")
}

/// One page of CSV rows and where the next starts; `None` at the end. An error ends the
/// stream with a line saying so, so a cut report cannot pass for a whole one.
async fn csv_page(api: &Api, id: &str, token: Option<&str>, at: CsvAt) -> (Option<String>, CsvAt) {
    let id = id.to_string();
    match at {
        CsvAt::End => (None, CsvAt::End),
        CsvAt::Verdicts(after) => {
            let req = btp_common::api::VerdictsRequest {
                id,
                after,
                limit: CSV_PAGE,
                differences: false,
            };
            match call::<_, btp_common::api::VerdictList>(api, verbs::TASK_VERDICTS, &req, token)
                .await
            {
                Ok(page) => {
                    let mut text = String::new();
                    for v in &page.verdicts {
                        let size = v.size.to_string();
                        text.push_str(&btp_common::csv::line(&[
                            &v.path,
                            &size,
                            v.verdict.as_str(),
                            "",
                            &v.what,
                            "",
                        ]));
                    }
                    let next = match page.next {
                        Some(p) => CsvAt::Verdicts(Some(p)),
                        None => CsvAt::End,
                    };
                    (Some(text), next)
                }
                Err(e) => (Some(cut_line(&e)), CsvAt::End),
            }
        }
        CsvAt::Files(after) => {
            let req = FilesRequest {
                id,
                after: Some(after),
                limit: CSV_PAGE,
            };
            match call::<_, FileList>(api, verbs::TASK_FILES, &req, token).await {
                Ok(page) if page.files.is_empty() && page.next.is_none() => (None, CsvAt::End),
                Ok(page) => {
                    let mut text = String::new();
                    for f in &page.files {
                        let size = f.size.to_string();
                        let attempts = match f.attempts {
                            0 => String::new(),
                            n => n.to_string(),
                        };
                        text.push_str(&btp_common::csv::line(&[
                            &f.path,
                            &size,
                            f.outcome.as_str(),
                            &attempts,
                            &f.reason,
                            &f.not_kept,
                        ]));
                    }
                    let next = match page.next {
                        Some(n) => CsvAt::Files(n),
                        None => CsvAt::End,
                    };
                    (Some(text), next)
                }
                Err(e) => (Some(cut_line(&e)), CsvAt::End),
            }
        }
    }
}

fn cut_line(e: &ApiError) -> String {
    btp_common::csv::line(&["#error", "", "", "", &e.message, ""])
}

/// A path as it may be quoted in an error (bounded).
fn cut(s: &str) -> String {
    s.chars().take(100).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_the_listen_address_loopback_names_and_configured_names() {
        let g = Guard::new("127.0.0.1:8470".parse().unwrap(), &[], None);
        for ok in [
            "127.0.0.1:8470",
            "localhost:8470",
            "LOCALHOST:8470",
            "[::1]:8470",
        ] {
            assert!(g.host_allowed(ok), "{ok}");
        }
        for no in [
            "",
            "evil.example",
            "evil.example:8470",
            "localhost",
            "127.0.0.1:8471",
            "10.0.0.1:8470",
        ] {
            assert!(!g.host_allowed(no), "{no}");
        }
        let g = Guard::new(
            "[::1]:9000".parse().unwrap(),
            &["btp.example".into(), "Other.example:443".into()],
            None,
        );
        for ok in [
            "[::1]:9000",
            "localhost:9000",
            "btp.example",
            "btp.example:1",
            "other.example:443",
        ] {
            assert!(g.host_allowed(ok), "{ok}");
        }
        for no in ["other.example", "other.example:80", "evil.example:9000"] {
            assert!(!g.host_allowed(no), "{no}");
        }
        // On every address: any IP literal with the port (an IP cannot be rebound), no name.
        let g = Guard::open("0.0.0.0:8080".parse().unwrap());
        for ok in ["0.0.0.0:8080", "192.168.1.5:8080", "[fe80::1]:8080"] {
            assert!(g.host_allowed(ok), "{ok}");
        }
        for no in [
            "192.168.1.5:80",
            "192.168.1.5",
            "evil.example:8080",
            "localhost:8080",
        ] {
            assert!(!g.host_allowed(no), "{no}");
        }
    }

    #[test]
    fn host_values_split_into_host_and_port() {
        assert_eq!(host_port("a:1"), ("a", Some(1)));
        assert_eq!(host_port("[::1]:80"), ("[::1]", Some(80)));
        assert_eq!(host_port("[::1]"), ("[::1]", None));
        assert_eq!(host_port("a"), ("a", None));
        assert_eq!(host_port("a:b"), ("a:b", None));
    }
}
