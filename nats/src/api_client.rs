//! Calls the server's request-reply API (`btp.api.v1.<verb>`), the only way the CLI talks to it.

use std::time::Duration;

use btp_common::api::{ApiError, ApiResponse};
use btp_common::subjects;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// How long a request is sent again while no server answers it.
pub const NO_SERVER_WAIT: Duration = Duration::from_secs(15);

#[derive(Clone)]
pub struct ApiClient {
    nats: async_nats::Client,
    url: String,
    timeout: Duration,
    token: Option<String>,
}

/// The API token every [`ApiClient`] of this process sends (the CLI's `--token`).
static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Sets the API token of this process's API calls; the first call wins.
pub fn set_token(token: String) {
    let _ = TOKEN.set(token);
}

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The server answered with an error.
    #[error("{0}")]
    Api(#[from] ApiError),
    /// Nothing answered, or the transport failed.
    #[error("{0}")]
    Transport(String),
}

impl ApiClient {
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let nats = crate::connect(url, "btp-cli").await?;
        Ok(Self {
            nats,
            url: url.to_string(),
            timeout: Duration::from_secs(30),
            token: TOKEN.get().cloned(),
        })
    }

    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        verb: &str,
        req: &Req,
    ) -> Result<Resp, CallError> {
        let body = serde_json::to_vec(req).map_err(|e| CallError::Transport(e.to_string()))?;
        let request = || {
            let mut request = async_nats::Request::new()
                .payload(body.clone().into())
                .timeout(Some(self.timeout));
            if let Some(t) = &self.token {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(btp_common::api::TOKEN_HEADER, t.as_str());
                request = request.headers(headers);
            }
            request
        };
        // No server answering is retried for a while: between a leader's death and its
        // standby's takeover, or while the server restarts. Nothing received the request,
        // so sending it again is safe.
        let deadline = tokio::time::Instant::now() + NO_SERVER_WAIT;
        let reply = loop {
            match self
                .nats
                .send_request(subjects::api(verb), request())
                .await
            {
                Err(e)
                    if e.kind() == async_nats::RequestErrorKind::NoResponders
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                r => break r,
            }
        }
        .map_err(|e| match e.kind() {
                async_nats::RequestErrorKind::NoResponders => CallError::Transport(format!(
                    "no BeyondTP server answers on {} (start `btp server run` or `btp standalone`; waited {}s)",
                    self.url,
                    NO_SERVER_WAIT.as_secs()
                )),
                async_nats::RequestErrorKind::TimedOut => CallError::Transport(format!(
                    "the server on {} did not answer {verb} in time",
                    self.url
                )),
                _ => CallError::Transport(format!("request {verb} on {}: {e}", self.url)),
            })?;
        match serde_json::from_slice::<ApiResponse<Resp>>(&reply.payload) {
            Ok(ApiResponse::Ok(v)) => Ok(v),
            Ok(ApiResponse::Error(e)) => Err(CallError::Api(e)),
            Err(e) => Err(CallError::Transport(format!(
                "unreadable answer to {verb}: {e}"
            ))),
        }
    }
}
