//! The JSON HTTP gateway: `POST /api/v1/<verb>` runs the same handler as the NATS request
//! `btp.api.v1.<verb>` (one implementation of each operation, two transports), with the token in
//! `Authorization: Bearer <token>`. The answer is the same `{"ok": ...}` or `{"error": ...}`
//! body, with an HTTP status that matches the error code.

use std::net::SocketAddr;

use btp_common::api::{ApiError, ApiResponse, ErrorCode};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::api::Api;

/// Largest request body (the NATS API's limit too).
const MAX_BODY: usize = 64 << 10;

/// Serves the gateway on `listener` until `cancel` fires.
pub async fn serve(
    listener: tokio::net::TcpListener,
    api: Api,
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
        let api = api.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let api = api.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&api, req, peer).await) }
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

fn json(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("cache-control", "no-store")
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response")
}

fn error(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Response<Full<Bytes>> {
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

async fn answer(api: &Api, req: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
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
    let token = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string());
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
    let out = api.handle_as(&verb, &body, token.as_deref()).await;
    json(status_of(&out), out)
}

/// A path as it may be quoted in an error (bounded).
fn cut(s: &str) -> String {
    s.chars().take(100).collect()
}
