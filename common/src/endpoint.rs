//! Storage endpoints: where a task reads from and writes to.
//!
//! An endpoint is parsed from a URL given by a user (`fs:///data/in` or a plain absolute path) and
//! travels inside every job, so a worker needs nothing but the job to run it. New schemes (S3,
//! Azure Blob, ...) are new variants here plus one arm in [`Endpoint::operator`].

use std::fmt;
use std::path::{Component, Path, PathBuf};

use opendal::Operator;
use serde::{Deserialize, Serialize};

/// Schemes this build understands.
pub const SUPPORTED_SCHEMES: &str = "fs, s3, webdav, webdavs, azblob, gs, sftp";

/// Options an `s3://` endpoint takes (`--src-opt` / `--dst-opt KEY=VALUE`).
pub const S3_OPTIONS: &str =
    "endpoint, region, access_key_id, secret_access_key, session_token, virtual_host";

/// Options a `gs://` endpoint takes.
pub const GCS_OPTIONS: &str = "credential, token, endpoint, anonymous";

/// Options a `webdav://` endpoint takes.
pub const WEBDAV_OPTIONS: &str = "username, password";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "scheme", rename_all = "snake_case", deny_unknown_fields)]
pub enum Endpoint {
    /// A directory of a local (or mounted) file system; `root` is absolute and normalized.
    Fs { root: String },
    /// A bucket (and prefix) of an S3-compatible object store. Credentials missing here are
    /// taken from the standard AWS environment variables of the client that runs the job.
    S3 {
        bucket: String,
        /// Prefix inside the bucket without leading or trailing `/`; empty for the whole bucket.
        prefix: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        endpoint: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        region: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        access_key_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        secret_access_key: Option<Secret>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session_token: Option<Secret>,
        #[serde(default)]
        virtual_host: bool,
    },
    /// A directory of a WebDAV server: `webdav://host:port/path` (http) or `webdavs://` (https).
    Webdav {
        /// `http(s)://host[:port]`.
        endpoint: String,
        /// Absolute path on the server, without a trailing `/` (`/` for the top).
        root: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        username: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        password: Option<Secret>,
    },
    /// A container (and prefix) of Azure Blob storage: `azblob://container/prefix`.
    Azblob {
        container: String,
        /// Blob name prefix without leading or trailing `/`; empty for the whole container.
        prefix: String,
        /// The service URL (`https://<account>.blob.core.windows.net` when not given).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        endpoint: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        account_name: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        account_key: Option<Secret>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sas_token: Option<Secret>,
    },
    /// A bucket (and prefix) of Google Cloud Storage: `gs://bucket/prefix`. Without `credential`
    /// or `token` the client's default Google credentials are used (GOOGLE_APPLICATION_CREDENTIALS,
    /// the well-known file, VM metadata); `anonymous` sends no credentials (emulators).
    Gcs {
        bucket: String,
        /// Prefix inside the bucket without leading or trailing `/`; empty for the whole bucket.
        prefix: String,
        /// The JSON API's `scheme://host[:port]` (emulators); GCS itself by default.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        endpoint: Option<String>,
        /// Service-account JSON (as is, or in base64).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        credential: Option<Secret>,
        /// An OAuth2 bearer token.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<Secret>,
        #[serde(default)]
        anonymous: bool,
    },
    /// A directory of an SFTP server: `sftp://[user@]host[:port]/path` (see `crate::sftp`).
    Sftp {
        /// `host` or `host:port`.
        host: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
        /// Absolute path on the server, normalized.
        root: String,
        /// Path of a private key file on the client.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
        /// `strict` (the default), `add` or `accept`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        known_hosts_strategy: Option<String>,
    },
}

/// A credential: serialized as is (jobs need it), never shown by `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EndpointError {
    #[error("unsupported endpoint scheme '{scheme}' in '{url}' (supported: {SUPPORTED_SCHEMES})")]
    UnknownScheme { scheme: String, url: String },
    #[error("endpoint '{0}' is not an absolute path (use fs:///absolute/path or /absolute/path)")]
    NotAbsolute(String),
    #[error("endpoint is empty")]
    Empty,
    #[error("'{url}' names no bucket (use s3://bucket/prefix)")]
    NoBucket { url: String },
    #[error("unknown option '{key}' for {scheme} endpoints (known: {known})")]
    UnknownOption {
        key: String,
        scheme: &'static str,
        known: &'static str,
    },
    #[error("'{url}' names no host (use webdav://host:port/path)")]
    NoHost { url: String },
    #[error("'{url}' names no container (use azblob://container/prefix)")]
    NoContainer { url: String },
    #[error("'{url}' needs an account: give --src-opt/--dst-opt account_name=NAME (and account_key or sas_token), or endpoint=URL")]
    NoAccount { url: String },
    #[error("option '{key}' must be true or false")]
    NotABool { key: String },
    #[error("option '{key}' {reason}")]
    BadOption { key: String, reason: String },
    #[error("'{url}' has an empty or invalid user name (use sftp://user@host/path)")]
    BadUser { url: String },
    #[error("'{url}' has an invalid port (1 to 65535)")]
    BadPort { url: String },
    /// `user:password@` in a URL: it would show in task info, logs and `ps`. The URL is not
    /// repeated (it holds the password).
    #[error("credentials in an endpoint URL ({scheme}://...@{host}) are refused: give them as options, e.g. {hint}")]
    CredentialsInUrl {
        scheme: String,
        host: String,
        hint: &'static str,
    },
}

const WEBDAV_CREDENTIALS_HINT: &str =
    "--dst-opt username=NAME --dst-opt password=@/path/to/file (or --src-opt for a source)";
const GCS_CREDENTIALS_HINT: &str =
    "--dst-opt credential=@/path/to/key.json or --dst-opt token=@/path/to/file (or --src-opt for a source)";
const S3_CREDENTIALS_HINT: &str = "--dst-opt access_key_id=ID --dst-opt secret_access_key=@/path/to/file (or --src-opt for a source)";

/// Refuses `user[:password]@` in the authority of `url` (`scheme://authority/...`).
pub(crate) fn refuse_userinfo(
    scheme: &str,
    authority: &str,
    hint: &'static str,
) -> Result<(), EndpointError> {
    match authority.rsplit_once('@') {
        Some((_, host)) => Err(EndpointError::CredentialsInUrl {
            scheme: scheme.to_string(),
            host: host.chars().take(100).collect(),
            hint,
        }),
        None => Ok(()),
    }
}

impl Endpoint {
    /// Parses `fs:///abs/path`, `file:///abs/path`, `/abs/path` or `s3://bucket/prefix`.
    pub fn parse(url: &str) -> Result<Self, EndpointError> {
        Self::parse_with(url, &std::collections::BTreeMap::new())
    }

    /// Parses an endpoint URL with its options (`endpoint`, `region`, credentials for S3).
    pub fn parse_with(
        url: &str,
        options: &std::collections::BTreeMap<String, String>,
    ) -> Result<Self, EndpointError> {
        let url = url.trim();
        if url.is_empty() {
            return Err(EndpointError::Empty);
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            return parse_s3(url, rest, options);
        }
        if let Some(rest) = url.strip_prefix("azblob://") {
            return crate::azblob::parse(url, rest, options);
        }
        if let Some(rest) = url.strip_prefix("gs://") {
            return parse_gcs(url, rest, options);
        }
        if let Some(rest) = url.strip_prefix("sftp://") {
            return crate::sftp::parse(url, rest, options);
        }
        for (prefix, http) in [("webdav://", "http"), ("webdavs://", "https")] {
            if let Some(rest) = url.strip_prefix(prefix) {
                return parse_webdav(url, http, rest, options);
            }
        }
        if let Some(key) = options.keys().next() {
            return Err(EndpointError::UnknownOption {
                key: key.clone(),
                scheme: "fs",
                known: "none",
            });
        }
        let path = if let Some((scheme, rest)) = url.split_once("://") {
            match scheme.to_ascii_lowercase().as_str() {
                "fs" | "file" => rest,
                _ => {
                    return Err(EndpointError::UnknownScheme {
                        scheme: scheme.to_string(),
                        url: url.to_string(),
                    })
                }
            }
        } else if let Some((scheme, _)) = url.split_once(':').filter(|(s, _)| looks_like_scheme(s))
        {
            return Err(EndpointError::UnknownScheme {
                scheme: scheme.to_string(),
                url: url.to_string(),
            });
        } else {
            url
        };
        if !path.starts_with('/') {
            return Err(EndpointError::NotAbsolute(url.to_string()));
        }
        Ok(Endpoint::Fs {
            root: normalize(Path::new(path)),
        })
    }

    /// The OpenDAL operator for writing to this endpoint (a missing fs root is created).
    pub fn operator(&self) -> opendal::Result<Operator> {
        match self {
            Endpoint::Fs { root } => Operator::new(opendal::services::Fs::default().root(root)),
            Endpoint::S3 {
                bucket,
                prefix,
                endpoint,
                region,
                access_key_id,
                secret_access_key,
                session_token,
                virtual_host,
            } => {
                // The HTTP transport object stores use (reqwest, rustls), installed once.
                static HTTP: std::sync::Once = std::sync::Once::new();
                HTTP.call_once(opendal::install_default);
                let mut b = opendal::services::S3::default()
                    .bucket(bucket)
                    .root(&format!("/{prefix}"))
                    .region(region.as_deref().unwrap_or("us-east-1"));
                if let Some(e) = endpoint {
                    b = b.endpoint(e);
                }
                if let Some(k) = access_key_id {
                    b = b.access_key_id(k);
                }
                if let Some(s) = secret_access_key {
                    b = b.secret_access_key(&s.0);
                }
                if let Some(t) = session_token {
                    b = b.session_token(&t.0);
                }
                if *virtual_host {
                    b = b.enable_virtual_host_style();
                }
                Operator::new(b)
            }
            Endpoint::Webdav {
                endpoint,
                root,
                username,
                password,
            } => {
                static HTTP: std::sync::Once = std::sync::Once::new();
                HTTP.call_once(opendal::install_default);
                let mut b = opendal::services::Webdav::default()
                    .endpoint(endpoint)
                    .root(root);
                if let Some(u) = username {
                    b = b.username(u);
                }
                if let Some(p) = password {
                    b = b.password(&p.0);
                }
                Operator::new(b)
            }
            Endpoint::Azblob { .. } => crate::azblob::operator(self),
            Endpoint::Gcs {
                bucket,
                prefix,
                endpoint,
                credential,
                token,
                anonymous,
            } => {
                static HTTP: std::sync::Once = std::sync::Once::new();
                HTTP.call_once(opendal::install_default);
                let mut b = opendal::services::Gcs::default()
                    .bucket(bucket)
                    .root(&format!("/{prefix}"));
                if let Some(e) = endpoint {
                    b = b.endpoint(e);
                }
                if let Some(c) = credential {
                    match crate::gcs::ServiceAccountTokens::of(&c.0, Default::default()) {
                        // Nothing else is tried when the key gets no token: no environment,
                        // no well-known file, no VM metadata of the client's machine.
                        Some(p) => {
                            b = b
                                .credential_provider(p)
                                .disable_vm_metadata()
                                .disable_config_load()
                        }
                        None => b = b.credential(&crate::gcs::credential_base64(&c.0)),
                    }
                }
                if let Some(t) = token {
                    b = b.token(t.0.clone());
                }
                if *anonymous {
                    b = b
                        .skip_signature()
                        .disable_vm_metadata()
                        .disable_config_load();
                }
                Operator::new(b)
            }
            Endpoint::Sftp { .. } => crate::sftp::operator(self),
        }
    }

    /// The operator for looking at this endpoint without changing it (a dry run's destination):
    /// as [`Endpoint::operator`], but None for a file-system root that does not exist, which
    /// building the operator would create.
    pub fn operator_if_exists(&self) -> opendal::Result<Option<Operator>> {
        if let Endpoint::Fs { root } = self {
            if let Err(e) = std::fs::metadata(root) {
                if e.kind() == std::io::ErrorKind::NotFound {
                    return Ok(None);
                }
            }
        }
        self.operator().map(Some)
    }

    /// True for endpoints on a local file system (they keep modification times, need no
    /// multipart uploads and get their empty directories created).
    pub fn is_local(&self) -> bool {
        matches!(self, Endpoint::Fs { .. })
    }

    /// Most parts one file can be assembled from at this destination: GCS composes at most
    /// 1,024 components into an object; S3 takes 10,000 parts (9,000 kept as a margin), Azure
    /// 50,000 blocks, the others assemble what they are given.
    pub fn max_parts(&self) -> u64 {
        match self {
            Endpoint::Gcs { .. } => crate::gcs::MAX_COMPONENTS as u64,
            _ => crate::api::MAX_PARTS,
        }
    }

    /// The OpenDAL operator for reading from this endpoint. Unlike [`Endpoint::operator`] it
    /// never creates anything: a missing fs root is a `NotFound` error.
    pub fn source_operator(&self) -> opendal::Result<Operator> {
        if let Endpoint::Fs { root } = self {
            if let Err(e) = std::fs::metadata(root) {
                let kind = match e.kind() {
                    std::io::ErrorKind::NotFound => opendal::ErrorKind::NotFound,
                    std::io::ErrorKind::PermissionDenied => opendal::ErrorKind::PermissionDenied,
                    _ => opendal::ErrorKind::Unexpected,
                };
                return Err(opendal::Error::new(
                    kind,
                    format!("source root {root}: {e}"),
                ));
            }
        }
        self.operator()
    }

    /// Checks that this endpoint can be read as a task's source: it exists and is a directory.
    /// (Object stores are checked by [`Endpoint::check_remote`].)
    pub fn check_source(&self) -> Result<(), String> {
        match self {
            Endpoint::S3 { .. }
            | Endpoint::Webdav { .. }
            | Endpoint::Azblob { .. }
            | Endpoint::Gcs { .. }
            | Endpoint::Sftp { .. } => Ok(()),
            Endpoint::Fs { root } => match std::fs::metadata(root) {
                Ok(m) if m.is_dir() => Ok(()),
                Ok(_) => Err(format!("source {self} is not a directory")),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Err(format!("source {self} does not exist"))
                }
                Err(e) => Err(format!("source {self} cannot be read: {e}")),
            },
        }
    }

    /// Checks that this endpoint can be a task's destination: a directory or nothing yet.
    pub fn check_destination(&self) -> Result<(), String> {
        match self {
            Endpoint::S3 { .. }
            | Endpoint::Webdav { .. }
            | Endpoint::Azblob { .. }
            | Endpoint::Gcs { .. }
            | Endpoint::Sftp { .. } => Ok(()),
            Endpoint::Fs { root } => match std::fs::metadata(root) {
                Ok(m) if m.is_dir() => Ok(()),
                Ok(_) => Err(format!("destination {self} exists and is not a directory")),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    // The first missing ancestor must be creatable: its parent must be a directory.
                    let mut p = Path::new(root);
                    while let Some(parent) = p.parent() {
                        if let Ok(m) = std::fs::metadata(parent) {
                            return if m.is_dir() {
                                Ok(())
                            } else {
                                Err(format!(
                                    "destination {self}: {} is not a directory",
                                    parent.display()
                                ))
                            };
                        }
                        p = parent;
                    }
                    Ok(())
                }
                Err(e) => Err(format!("destination {self} cannot be used: {e}")),
            },
        }
    }

    /// The local path of a file-system endpoint.
    pub fn local_root(&self) -> Option<&str> {
        match self {
            Endpoint::Fs { root } => Some(root),
            Endpoint::S3 { .. }
            | Endpoint::Webdav { .. }
            | Endpoint::Azblob { .. }
            | Endpoint::Gcs { .. }
            | Endpoint::Sftp { .. } => None,
        }
    }

    /// True when `self` is `other` or lies inside it (a copy into it would read its own output).
    pub fn is_within(&self, other: &Endpoint) -> bool {
        match (self, other) {
            (Endpoint::Fs { root: a }, Endpoint::Fs { root: b }) => {
                Path::new(a).starts_with(Path::new(b))
            }
            (
                Endpoint::S3 {
                    bucket: b1,
                    prefix: p1,
                    endpoint: e1,
                    ..
                },
                Endpoint::S3 {
                    bucket: b2,
                    prefix: p2,
                    endpoint: e2,
                    ..
                },
            ) => {
                b1 == b2
                    && e1 == e2
                    && Path::new(&format!("/{p1}")).starts_with(Path::new(&format!("/{p2}")))
            }
            (
                Endpoint::Webdav {
                    endpoint: e1,
                    root: r1,
                    ..
                },
                Endpoint::Webdav {
                    endpoint: e2,
                    root: r2,
                    ..
                },
            ) => e1 == e2 && Path::new(r1).starts_with(Path::new(r2)),
            (Endpoint::Azblob { .. }, Endpoint::Azblob { .. }) => {
                crate::azblob::is_within(self, other)
            }
            (
                Endpoint::Gcs {
                    bucket: b1,
                    prefix: p1,
                    endpoint: e1,
                    ..
                },
                Endpoint::Gcs {
                    bucket: b2,
                    prefix: p2,
                    endpoint: e2,
                    ..
                },
            ) => {
                b1 == b2
                    && e1 == e2
                    && Path::new(&format!("/{p1}")).starts_with(Path::new(&format!("/{p2}")))
            }
            (
                Endpoint::Sftp {
                    host: h1, root: r1, ..
                },
                Endpoint::Sftp {
                    host: h2, root: r2, ..
                },
            ) => h1 == h2 && Path::new(r1).starts_with(Path::new(r2)),
            _ => false,
        }
    }

    /// Checks an object-store endpoint by listing it: the bucket must exist and be readable.
    pub async fn check_remote(&self, role: &str) -> Result<(), String> {
        if self.is_local() {
            return Ok(());
        }
        if let Endpoint::Sftp { .. } = self {
            return crate::sftp::check(self, role).await;
        }
        // A service-account key is exchanged for a token first: OpenDAL's credential chain
        // would hide why that fails behind "failed to load signing credential".
        if let Endpoint::Gcs {
            credential: Some(c),
            ..
        } = self
        {
            if let Some(p) = crate::gcs::ServiceAccountTokens::of(&c.0, Default::default()) {
                use reqsign_core::ProvideCredential;
                p.provide_credential(&reqsign_core::Context::new())
                    .await
                    .map_err(|e| format!("{role} {self}: no token for its service account: {e}"))?;
            }
        }
        let op = self.operator().map_err(|e| format!("{role} {self}: {e}"))?;
        let mut lister = match op.lister_with("/").await {
            Ok(l) => l,
            // A WebDAV destination directory is created by the first write.
            Err(e)
                if e.kind() == opendal::ErrorKind::NotFound
                    && matches!(self, Endpoint::Webdav { .. })
                    && role == "destination" =>
            {
                return Ok(())
            }
            Err(e) => return Err(remote_error(role, self, e)),
        };
        use futures::TryStreamExt;
        lister
            .try_next()
            .await
            .map_err(|e| remote_error(role, self, e))?;
        Ok(())
    }
}

fn remote_error(role: &str, e: &Endpoint, err: opendal::Error) -> String {
    let text = err.to_string();
    if matches!(e, Endpoint::Webdav { .. }) && err.kind() == opendal::ErrorKind::NotFound {
        return format!("{role} {e} does not exist");
    }
    if text.contains("ContainerNotFound") {
        return format!("{role} {e} does not exist (no such container)");
    }
    if text.contains("NoSuchBucket") || text.contains("status: 404") {
        return format!("{role} {e} does not exist (no such bucket)");
    }
    if text.contains("status: 403")
        || text.contains("AccessDenied")
        || text.contains("InvalidAccessKeyId")
        || text.contains("AuthenticationFailed")
        || text.contains("AuthorizationFailure")
    {
        return format!("{role} {e}: access denied (check the credentials)");
    }
    match err.kind() {
        opendal::ErrorKind::NotFound => format!("{role} {e} does not exist (no such bucket)"),
        opendal::ErrorKind::PermissionDenied => format!("{role} {e}: access denied"),
        _ => {
            let mut cause = err.to_string();
            let mut src: Option<&dyn std::error::Error> = std::error::Error::source(&err);
            while let Some(s) = src {
                cause = s.to_string();
                src = s.source();
            }
            format!(
                "{role} {e} cannot be reached: {}",
                cause.lines().next().unwrap_or("")
            )
        }
    }
}

fn parse_s3(
    url: &str,
    rest: &str,
    options: &std::collections::BTreeMap<String, String>,
) -> Result<Endpoint, EndpointError> {
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    refuse_userinfo("s3", bucket, S3_CREDENTIALS_HINT)?;
    if let Some(e) = options.get("endpoint") {
        if let Some((scheme, rest)) = e.split_once("://") {
            let authority = rest.split('/').next().unwrap_or(rest);
            refuse_userinfo(scheme, authority, S3_CREDENTIALS_HINT)?;
        }
    }
    if bucket.is_empty() {
        return Err(EndpointError::NoBucket {
            url: url.to_string(),
        });
    }
    let prefix = prefix.trim_matches('/').to_string();
    let mut ep = Endpoint::S3 {
        bucket: bucket.to_string(),
        prefix,
        endpoint: None,
        region: None,
        access_key_id: None,
        secret_access_key: None,
        session_token: None,
        virtual_host: false,
    };
    if let Endpoint::S3 {
        endpoint,
        region,
        access_key_id,
        secret_access_key,
        session_token,
        virtual_host,
        ..
    } = &mut ep
    {
        for (k, v) in options {
            match k.as_str() {
                "endpoint" => *endpoint = Some(v.clone()),
                "region" => *region = Some(v.clone()),
                "access_key_id" => *access_key_id = Some(v.clone()),
                "secret_access_key" => *secret_access_key = Some(Secret(v.clone())),
                "session_token" => *session_token = Some(Secret(v.clone())),
                "virtual_host" => {
                    *virtual_host = v
                        .parse()
                        .map_err(|_| EndpointError::NotABool { key: k.clone() })?
                }
                _ => {
                    return Err(EndpointError::UnknownOption {
                        key: k.clone(),
                        scheme: "s3",
                        known: S3_OPTIONS,
                    })
                }
            }
        }
    }
    Ok(ep)
}

fn parse_gcs(
    url: &str,
    rest: &str,
    options: &std::collections::BTreeMap<String, String>,
) -> Result<Endpoint, EndpointError> {
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    refuse_userinfo("gs", bucket, GCS_CREDENTIALS_HINT)?;
    if let Some(e) = options.get("endpoint") {
        if let Some((scheme, rest)) = e.split_once("://") {
            let authority = rest.split('/').next().unwrap_or(rest);
            refuse_userinfo(scheme, authority, GCS_CREDENTIALS_HINT)?;
        }
    }
    if bucket.is_empty() {
        return Err(EndpointError::NoBucket {
            url: url.to_string(),
        });
    }
    let (mut endpoint, mut credential, mut token, mut anonymous) = (None, None, None, false);
    for (k, v) in options {
        match k.as_str() {
            "endpoint" => endpoint = Some(v.trim_end_matches('/').to_string()),
            "credential" => {
                crate::gcs::check_credential(v).map_err(|reason| EndpointError::BadOption {
                    key: k.clone(),
                    reason,
                })?;
                credential = Some(Secret(v.clone()))
            }
            "token" => token = Some(Secret(v.clone())),
            "anonymous" => {
                anonymous = v
                    .parse()
                    .map_err(|_| EndpointError::NotABool { key: k.clone() })?
            }
            _ => {
                return Err(EndpointError::UnknownOption {
                    key: k.clone(),
                    scheme: "gs",
                    known: GCS_OPTIONS,
                })
            }
        }
    }
    Ok(Endpoint::Gcs {
        bucket: bucket.to_string(),
        prefix: prefix.trim_matches('/').to_string(),
        endpoint,
        credential,
        token,
        anonymous,
    })
}

fn parse_webdav(
    url: &str,
    http: &str,
    rest: &str,
    options: &std::collections::BTreeMap<String, String>,
) -> Result<Endpoint, EndpointError> {
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let scheme = if http == "https" { "webdavs" } else { "webdav" };
    refuse_userinfo(scheme, host, WEBDAV_CREDENTIALS_HINT)?;
    if host.is_empty() {
        return Err(EndpointError::NoHost {
            url: url.to_string(),
        });
    }
    let root = normalize(Path::new(&format!("/{path}")));
    let (mut username, mut password) = (None, None);
    for (k, v) in options {
        match k.as_str() {
            "username" => username = Some(v.clone()),
            "password" => password = Some(Secret(v.clone())),
            _ => {
                return Err(EndpointError::UnknownOption {
                    key: k.clone(),
                    scheme: "webdav",
                    known: WEBDAV_OPTIONS,
                })
            }
        }
    }
    Ok(Endpoint::Webdav {
        endpoint: format!("{http}://{host}"),
        root,
        username,
        password,
    })
}

fn looks_like_scheme(s: &str) -> bool {
    s.len() > 1
        && s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-' || c == '.')
}

/// Lexically normalizes an absolute path: drops `.`, resolves `..`, removes trailing slashes.
pub(crate) fn normalize(path: &Path) -> String {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out.to_string_lossy().into_owned()
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Fs { root } => write!(f, "fs://{root}"),
            Endpoint::S3 { bucket, prefix, .. } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            Endpoint::S3 { bucket, prefix, .. } => write!(f, "s3://{bucket}/{prefix}"),
            Endpoint::Azblob {
                container, prefix, ..
            } if prefix.is_empty() => write!(f, "azblob://{container}"),
            Endpoint::Azblob {
                container, prefix, ..
            } => write!(f, "azblob://{container}/{prefix}"),
            Endpoint::Gcs { bucket, prefix, .. } if prefix.is_empty() => write!(f, "gs://{bucket}"),
            Endpoint::Gcs { bucket, prefix, .. } => write!(f, "gs://{bucket}/{prefix}"),
            Endpoint::Webdav { endpoint, root, .. } => {
                let (scheme, host) = match endpoint.split_once("://") {
                    Some(("https", h)) => ("webdavs", h),
                    Some((_, h)) => ("webdav", h),
                    None => ("webdav", endpoint.as_str()),
                };
                write!(
                    f,
                    "{scheme}://{host}{}",
                    if root == "/" { "" } else { root }
                )
            }
            Endpoint::Sftp { root, .. } => write!(
                f,
                "sftp://{}{root}",
                self.sftp_destination().unwrap_or_default()
            ),
        }
    }
}

impl std::str::FromStr for Endpoint {
    type Err = EndpointError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Endpoint::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fs(root: &str) -> Endpoint {
        Endpoint::Fs { root: root.into() }
    }

    #[test]
    fn plain_paths_and_fs_urls_parse_to_the_same_endpoint() {
        assert_eq!(Endpoint::parse("/data/in").unwrap(), fs("/data/in"));
        assert_eq!(Endpoint::parse("fs:///data/in/").unwrap(), fs("/data/in"));
        assert_eq!(
            Endpoint::parse("file:///data/./x/../in").unwrap(),
            fs("/data/in")
        );
        assert_eq!(
            Endpoint::parse("fs:///data/in").unwrap().to_string(),
            "fs:///data/in"
        );
    }

    #[test]
    fn unknown_schemes_and_relative_paths_are_refused_with_a_clear_reason() {
        let e = Endpoint::parse("gopher://x/y").unwrap_err();
        assert_eq!(
            e.to_string(),
            "unsupported endpoint scheme 'gopher' in 'gopher://x/y' (supported: fs, s3, webdav, webdavs, azblob, gs, sftp)"
        );
        assert!(matches!(
            Endpoint::parse("ftp:/x"),
            Err(EndpointError::UnknownScheme { .. })
        ));
        assert!(matches!(
            Endpoint::parse("data/in"),
            Err(EndpointError::NotAbsolute(_))
        ));
        assert!(matches!(
            Endpoint::parse("fs://relative"),
            Err(EndpointError::NotAbsolute(_))
        ));
        assert_eq!(Endpoint::parse("  "), Err(EndpointError::Empty));
    }

    #[test]
    fn s3_urls_take_options_and_never_show_secrets() {
        let opts: std::collections::BTreeMap<String, String> = [
            ("endpoint", "http://127.0.0.1:9000"),
            ("access_key_id", "AKID"),
            ("secret_access_key", "TOPSECRET"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let e = Endpoint::parse_with("s3://bucket/some/prefix/", &opts).unwrap();
        assert_eq!(e.to_string(), "s3://bucket/some/prefix");
        assert!(!format!("{e:?}").contains("TOPSECRET"));
        assert!(
            serde_json::to_string(&e).unwrap().contains("TOPSECRET"),
            "jobs carry the secret"
        );
        assert_eq!(Endpoint::parse("s3://b").unwrap().to_string(), "s3://b");
        assert!(matches!(
            Endpoint::parse("s3:///x"),
            Err(EndpointError::NoBucket { .. })
        ));
        let bad: std::collections::BTreeMap<String, String> =
            [("colour".to_string(), "red".to_string())].into();
        let err = Endpoint::parse_with("s3://b", &bad)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("unknown option 'colour' for s3 endpoints"),
            "{err}"
        );
        assert!(
            Endpoint::parse_with("/tmp/x", &bad).is_err(),
            "fs takes no options"
        );
        let inner = Endpoint::parse("s3://b/a/b").unwrap();
        assert!(inner.is_within(&Endpoint::parse("s3://b/a").unwrap()));
        assert!(!inner.is_within(&Endpoint::parse("s3://b/ab").unwrap()));
        assert!(!inner.is_within(&Endpoint::parse("s3://c/a").unwrap()));
    }

    #[test]
    fn gcs_urls_take_options_and_never_show_secrets() {
        let opts: std::collections::BTreeMap<String, String> = [
            ("endpoint", "http://127.0.0.1:4443/"),
            ("token", "TOPSECRET-TOKEN"),
            (
                "credential",
                r#"{"type":"service_account","client_email":"a@b.iam.gserviceaccount.com","private_key":"-----BEGIN PRIVATE KEY-----TOPSECRET-KEY"}"#,
            ),
            ("anonymous", "false"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let e = Endpoint::parse_with("gs://bucket/some/prefix/", &opts).unwrap();
        assert_eq!(e.to_string(), "gs://bucket/some/prefix");
        let debug = format!("{e:?}");
        assert!(!debug.contains("TOPSECRET"), "{debug}");
        let json = serde_json::to_string(&e).unwrap();
        assert!(json.contains("TOPSECRET-TOKEN"), "jobs carry the secret");
        assert_eq!(serde_json::from_str::<Endpoint>(&json).unwrap(), e);
        let Endpoint::Gcs { endpoint, .. } = &e else {
            panic!("not gcs: {e:?}");
        };
        assert_eq!(endpoint.as_deref(), Some("http://127.0.0.1:4443"));
        assert!(e.operator().is_ok());
        assert_eq!(Endpoint::parse("gs://b").unwrap().to_string(), "gs://b");
        assert!(matches!(
            Endpoint::parse("gs:///x"),
            Err(EndpointError::NoBucket { .. })
        ));
        let bad: std::collections::BTreeMap<String, String> =
            [("region".to_string(), "eu".to_string())].into();
        let err = Endpoint::parse_with("gs://b", &bad)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "unknown option 'region' for gs endpoints (known: credential, token, endpoint, anonymous)"
        );
        let notbool = [("anonymous".to_string(), "yes".to_string())].into();
        assert!(matches!(
            Endpoint::parse_with("gs://b", &notbool),
            Err(EndpointError::NotABool { .. })
        ));
        let e = Endpoint::parse("gs://tok:hunter2@b/x")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("credentials in an endpoint URL") && !e.contains("hunter2"),
            "{e}"
        );
        let inner = Endpoint::parse("gs://b/a/b").unwrap();
        assert!(inner.is_within(&Endpoint::parse("gs://b/a").unwrap()));
        assert!(inner.is_within(&Endpoint::parse("gs://b").unwrap()));
        assert!(!inner.is_within(&Endpoint::parse("gs://b/ab").unwrap()));
        assert!(!inner.is_within(&Endpoint::parse("gs://c/a").unwrap()));
        assert!(!inner.is_within(&Endpoint::parse("s3://b/a").unwrap()));
    }

    #[test]
    fn a_destination_inside_the_source_is_detected_by_path_components() {
        assert!(fs("/a/b/c").is_within(&fs("/a/b")));
        assert!(fs("/a/b").is_within(&fs("/a/b")));
        assert!(!fs("/a/bc").is_within(&fs("/a/b")));
        assert!(!fs("/a").is_within(&fs("/a/b")));
    }

    #[test]
    fn credentials_in_urls_are_refused_without_repeating_them() {
        for url in [
            "webdav://alice:hunter2@dav.example:8080/data",
            "webdavs://alice:hunter2@dav.example/data",
            "s3://AKIA:hunter2@bucket/x",
        ] {
            let e = Endpoint::parse(url).unwrap_err().to_string();
            assert!(e.starts_with("credentials in an endpoint URL"), "{e}");
            assert!(!e.contains("hunter2") && !e.contains("alice"), "{e}");
            assert!(e.contains("=@/path/to/file"), "{e}");
        }
        let opts = [(
            "endpoint".to_string(),
            "http://k:hunter2@minio:9000".to_string(),
        )]
        .into();
        let e = Endpoint::parse_with("s3://b/x", &opts)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("secret_access_key=@") && !e.contains("hunter2"),
            "{e}"
        );
        // A file name may hold an '@'.
        assert!(Endpoint::parse("/home/a@b/data").is_ok());
    }

    #[test]
    fn webdav_urls_parse_and_print_without_the_password() {
        let opts = [("username", "u"), ("password", "pw-secret")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let e = Endpoint::parse_with("webdav://127.0.0.1:8080/dav/data/", &opts).unwrap();
        assert_eq!(e.to_string(), "webdav://127.0.0.1:8080/dav/data");
        assert!(!format!("{e:?}").contains("pw-secret"));
        let Endpoint::Webdav { endpoint, root, .. } = &e else {
            panic!("not webdav: {e:?}");
        };
        assert_eq!(
            (endpoint.as_str(), root.as_str()),
            ("http://127.0.0.1:8080", "/dav/data")
        );
        assert!(Endpoint::parse("webdav:///x").is_err());
        assert_eq!(
            Endpoint::parse("webdavs://h/").unwrap().to_string(),
            "webdavs://h"
        );
    }

    #[test]
    fn endpoints_round_trip_through_json_and_refuse_unknown_fields() {
        let e = fs("/x");
        let j = serde_json::to_string(&e).unwrap();
        assert_eq!(j, r#"{"scheme":"fs","root":"/x"}"#);
        assert_eq!(serde_json::from_str::<Endpoint>(&j).unwrap(), e);
        assert!(serde_json::from_str::<Endpoint>(r#"{"scheme":"fs","root":"/x","k":1}"#).is_err());
    }
}
