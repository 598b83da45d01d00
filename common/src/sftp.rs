//! SFTP endpoints: `sftp://[user@]host[:port]/path`, served through OpenDAL's SFTP service,
//! which drives the system `ssh` client (a control master per connection, then the `sftp`
//! subsystem over it). The URL may name a user but never a password: authentication is by key
//! (option `key`, a private key file on the client that runs the job, or ssh's defaults), and
//! the server's host key is checked against the client's known hosts (option
//! `known_hosts_strategy`: `strict`, the default; `add` to record an unknown host; `accept` to
//! take any key, for throwaway test servers only).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use opendal::Operator;

use crate::endpoint::{normalize, EndpointError};
use crate::Endpoint;

/// Options an `sftp://` endpoint takes.
pub const SFTP_OPTIONS: &str = "key, known_hosts_strategy";

const SFTP_CREDENTIALS_HINT: &str =
    "sftp://user@host/path with --dst-opt key=/path/to/private_key (or --src-opt for a source)";

/// The accepted values of `known_hosts_strategy`.
const STRATEGIES: [&str; 3] = ["strict", "add", "accept"];

pub(crate) fn parse(
    url: &str,
    rest: &str,
    options: &BTreeMap<String, String>,
) -> Result<Endpoint, EndpointError> {
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (user, host) = match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            if userinfo.contains(':') {
                return Err(EndpointError::CredentialsInUrl {
                    scheme: "sftp".into(),
                    host: host.chars().take(100).collect(),
                    hint: SFTP_CREDENTIALS_HINT,
                });
            }
            if userinfo.is_empty() || !userinfo.chars().all(is_user_char) {
                return Err(EndpointError::BadUser {
                    url: url.to_string(),
                });
            }
            (Some(userinfo.to_string()), host)
        }
        None => (None, authority),
    };
    if host.is_empty() || host.starts_with('-') || host.chars().any(|c| c.is_whitespace()) {
        return Err(EndpointError::NoHost {
            url: url.to_string(),
        });
    }
    if let Some((_, port)) = host.rsplit_once(':').filter(|(h, _)| !h.ends_with(']')) {
        if !host.starts_with('[') && port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(EndpointError::BadPort {
                url: url.to_string(),
            });
        }
    }
    let (mut key, mut known_hosts_strategy) = (None, None);
    for (k, v) in options {
        match k.as_str() {
            "key" => {
                if !v.starts_with('/') {
                    return Err(EndpointError::BadOption {
                        key: k.clone(),
                        reason: "must be the absolute path of a private key file".into(),
                    });
                }
                key = Some(v.clone());
            }
            "known_hosts_strategy" => {
                let s = v.to_ascii_lowercase();
                if !STRATEGIES.contains(&s.as_str()) {
                    return Err(EndpointError::BadOption {
                        key: k.clone(),
                        reason: "must be strict, add or accept".into(),
                    });
                }
                known_hosts_strategy = Some(s);
            }
            _ => {
                return Err(EndpointError::UnknownOption {
                    key: k.clone(),
                    scheme: "sftp",
                    known: SFTP_OPTIONS,
                })
            }
        }
    }
    Ok(Endpoint::Sftp {
        host: host.to_string(),
        user,
        root: normalize(Path::new(path)),
        key,
        known_hosts_strategy,
    })
}

fn is_user_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// Operators by endpoint: each holds a pool of SSH connections, reused by every job of this
/// process (a connection costs an `ssh` process and a key exchange).
static OPERATORS: Mutex<Vec<(Endpoint, Operator)>> = Mutex::new(Vec::new());

/// The (shared) operator of an SFTP endpoint. Building it connects to nothing: the first
/// operation does (and creates the root directory when missing).
pub(crate) fn operator(ep: &Endpoint) -> opendal::Result<Operator> {
    let Endpoint::Sftp {
        host,
        user,
        root,
        key,
        known_hosts_strategy,
    } = ep
    else {
        return Err(opendal::Error::new(
            opendal::ErrorKind::ConfigInvalid,
            "not an sftp endpoint",
        ));
    };
    let mut cache = OPERATORS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, op)) = cache.iter().find(|(e, _)| e == ep) {
        return Ok(op.clone());
    }
    let mut b = opendal::services::Sftp::default()
        .endpoint(&format!("ssh://{host}"))
        .root(root)
        .known_hosts_strategy(known_hosts_strategy.as_deref().unwrap_or("strict"));
    if let Some(u) = user {
        b = b.user(u);
    }
    if let Some(k) = key {
        b = b.key(k);
    }
    let op = Operator::new(b)?;
    if cache.len() >= 64 {
        cache.remove(0);
    }
    cache.push((ep.clone(), op.clone()));
    Ok(op)
}

/// The same server with `/` as its root: for looking at the endpoint's root without creating
/// it (OpenDAL's SFTP service creates its root on connecting).
pub(crate) fn top(ep: &Endpoint) -> Option<(Endpoint, String)> {
    let Endpoint::Sftp { root, .. } = ep else {
        return None;
    };
    let mut top = ep.clone();
    if let Endpoint::Sftp { root: r, .. } = &mut top {
        *r = "/".into();
    }
    Some((top, root.trim_start_matches('/').to_string()))
}

/// Checks an SFTP endpoint: the server answers with our key, and a source's root is an
/// existing directory (a destination's is created by the first write).
pub(crate) async fn check(ep: &Endpoint, role: &str) -> Result<(), String> {
    let Some((top, rel)) = top(ep) else {
        return Ok(());
    };
    let op = operator(&top).map_err(|e| format!("{role} {ep}: {e}"))?;
    let what = if rel.is_empty() {
        String::from("/")
    } else {
        format!("{rel}/")
    };
    match op.stat(&what).await {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(format!("{role} {ep} is not a directory")),
        Err(e) if e.kind() == opendal::ErrorKind::NotFound && role != "source" => Ok(()),
        Err(e) if e.kind() == opendal::ErrorKind::NotFound => {
            Err(format!("{role} {ep} does not exist"))
        }
        Err(e) if e.kind() == opendal::ErrorKind::PermissionDenied => {
            Err(format!("{role} {ep}: permission denied"))
        }
        Err(e) => Err(format!("{role} {ep} cannot be reached: {}", cause(&e))),
    }
}

/// The useful line of an SFTP or SSH error: ssh's own complaint (`Permission denied
/// (publickey)`, `Host key verification failed.`, `Connection refused`) when there is one.
pub fn cause(e: &opendal::Error) -> String {
    let mut lines = Vec::new();
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(s) = src {
        lines.push(s.to_string());
        src = s.source();
    }
    let all = lines.join("\n");
    // ssh's log (warnings first, the reason last): the last line that says something.
    let said = all
        .lines()
        .rev()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Warning: Permanently added"))
        .filter(|l| {
            l.contains("denied")
                || l.contains("refused")
                || l.contains("verification failed")
                || l.contains("No such file")
                || l.contains("not resolve")
                || l.contains("timed out")
                || l.contains("Load key")
                || l.contains("No route")
        })
        .map(str::to_string)
        .next();
    said.unwrap_or_else(|| {
        lines
            .last()
            .map(|l| l.lines().next().unwrap_or("").to_string())
            .unwrap_or_else(|| e.to_string())
    })
}

/// A file of the server opened for writing through [`Raw`].
pub type RawFile = openssh_sftp_client::file::TokioCompatFile;

/// What a name is on the server, by `lstat` (links are not followed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Link,
    Other,
}

/// One entry of a directory listed with [`Raw::list`].
#[derive(Clone, Debug)]
pub struct RawEntry {
    /// The name; escaped (`\\xNN`) when `utf8` is false.
    pub name: String,
    /// The name is valid UTF-8 (only [`Raw::list_source`] gives entries where it is not).
    pub utf8: bool,
    pub kind: Kind,
    pub size: u64,
    pub mtime_ms: Option<i64>,
}

/// A direct SFTP session for what OpenDAL's service cannot do without following symbolic
/// links: `lstat`, listings with each entry's own type, removing a link. One session per
/// endpoint per process, made on first use. Unlike OpenDAL's connections it runs ssh with no
/// configuration file of the machine's user (`-F /dev/null`).
pub struct Raw {
    sftp: openssh_sftp_client::Sftp,
    root: std::path::PathBuf,
}

type Sessions = tokio::sync::Mutex<Vec<(Endpoint, std::sync::Arc<Raw>)>>;
static SESSIONS: std::sync::OnceLock<Sessions> = std::sync::OnceLock::new();

fn raw_error(e: openssh_sftp_client::Error, what: &str) -> opendal::Error {
    use openssh_sftp_client::error::SftpErrorKind;
    let kind = match &e {
        openssh_sftp_client::Error::SftpError(SftpErrorKind::NoSuchFile, _) => {
            opendal::ErrorKind::NotFound
        }
        openssh_sftp_client::Error::SftpError(SftpErrorKind::PermDenied, _) => {
            opendal::ErrorKind::PermissionDenied
        }
        _ => opendal::ErrorKind::Unexpected,
    };
    let err = opendal::Error::new(kind, format!("sftp {what}: {e}"));
    if kind == opendal::ErrorKind::Unexpected {
        err.set_temporary()
    } else {
        err
    }
}

fn mtime_of(m: &openssh_sftp_client::metadata::MetaData) -> Option<i64> {
    m.modified()
        .and_then(|t| {
            t.as_system_time()
                .duration_since(std::time::UNIX_EPOCH)
                .ok()
        })
        .map(|d| d.as_millis() as i64)
}

fn kind_of(m: &openssh_sftp_client::metadata::MetaData) -> Kind {
    match m.file_type() {
        Some(t) if t.is_dir() => Kind::Dir,
        Some(t) if t.is_file() => Kind::File,
        Some(t) if t.is_symlink() => Kind::Link,
        _ => Kind::Other,
    }
}

impl Raw {
    /// The session of `ep` (an SFTP endpoint), connecting when there is none yet.
    pub async fn get(ep: &Endpoint) -> opendal::Result<std::sync::Arc<Raw>> {
        let sessions = SESSIONS.get_or_init(|| tokio::sync::Mutex::new(Vec::new()));
        let mut all = sessions.lock().await;
        if let Some(i) = all.iter().position(|(e, _)| e == ep) {
            let raw = all[i].1.clone();
            if raw.sftp.fs().metadata("/").await.is_ok() {
                return Ok(raw);
            }
            all.remove(i);
        }
        let raw = std::sync::Arc::new(Self::connect(ep).await?);
        if all.len() >= 16 {
            all.remove(0);
        }
        all.push((ep.clone(), raw.clone()));
        Ok(raw)
    }

    /// A session of `ep` of its own, shared with no one (see [`Raw::get`] for the shared one).
    pub async fn connect(ep: &Endpoint) -> opendal::Result<Raw> {
        let Endpoint::Sftp {
            user,
            root,
            key,
            known_hosts_strategy,
            ..
        } = ep
        else {
            return Err(opendal::Error::new(
                opendal::ErrorKind::ConfigInvalid,
                "not an sftp endpoint",
            ));
        };
        let mut b = openssh::SessionBuilder::default();
        b.known_hosts_check(match known_hosts_strategy.as_deref() {
            Some("accept") => openssh::KnownHosts::Accept,
            Some("add") => openssh::KnownHosts::Add,
            _ => openssh::KnownHosts::Strict,
        });
        b.config_file("/dev/null");
        b.connect_timeout(std::time::Duration::from_secs(20));
        if let Some(u) = user {
            b.user(u.clone());
        }
        if let Some(k) = key {
            b.keyfile(k);
        }
        let dest = format!("ssh://{}", self::host_of(ep));
        let session = b.connect(&dest).await.map_err(|e| {
            opendal::Error::new(opendal::ErrorKind::Unexpected, "ssh error").set_source(e)
        })?;
        let sftp = openssh_sftp_client::Sftp::from_session(session, Default::default())
            .await
            .map_err(|e| raw_error(e, "session"))?;
        Ok(Raw {
            sftp,
            root: std::path::PathBuf::from(root),
        })
    }

    fn full(&self, rel: &str) -> std::path::PathBuf {
        let rel = rel.trim_matches('/');
        if rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        }
    }

    /// What `rel` is, without following a link; None when it does not exist.
    pub async fn lstat(&self, rel: &str) -> opendal::Result<Option<Kind>> {
        match self.sftp.fs().symlink_metadata(self.full(rel)).await {
            Ok(m) => Ok(Some(kind_of(&m))),
            Err(openssh_sftp_client::Error::SftpError(
                openssh_sftp_client::error::SftpErrorKind::NoSuchFile,
                _,
            )) => Ok(None),
            Err(e) => Err(raw_error(e, &format!("lstat {rel}"))),
        }
    }

    /// The entries of directory `rel` with their own types (a link is a link), without `.`
    /// and `..`; None when it does not exist. Names that are not UTF-8 are left out.
    pub async fn list(&self, rel: &str) -> opendal::Result<Option<Vec<RawEntry>>> {
        self.read_dir(rel, false).await
    }

    /// As [`Raw::list`], for a source: names that are not UTF-8 come too, escaped, with
    /// `utf8: false`, so that the listing can account for them.
    pub async fn list_source(&self, rel: &str) -> opendal::Result<Option<Vec<RawEntry>>> {
        self.read_dir(rel, true).await
    }

    async fn read_dir(&self, rel: &str, all: bool) -> opendal::Result<Option<Vec<RawEntry>>> {
        use futures::StreamExt;
        use std::os::unix::ffi::OsStrExt;
        let dir = match self.sftp.fs().open_dir(self.full(rel)).await {
            Ok(d) => d,
            Err(openssh_sftp_client::Error::SftpError(
                openssh_sftp_client::error::SftpErrorKind::NoSuchFile,
                _,
            )) => return Ok(None),
            Err(e) => return Err(raw_error(e, &format!("opendir {rel}"))),
        };
        let mut entries = Vec::new();
        let mut stream = std::pin::pin!(dir.read_dir());
        while let Some(e) = stream.next().await {
            let e = e.map_err(|e| match e {
                // The session's reader stopped on an answer it could not decode: a name that
                // is not valid UTF-8 does this (the client library reads names as text).
                openssh_sftp_client::Error::BackgroundTaskFailure(_) => opendal::Error::new(
                    opendal::ErrorKind::Unsupported,
                    format!("sftp readdir {rel}: the session broke while reading the directory"),
                ),
                e => raw_error(e, &format!("readdir {rel}")),
            })?;
            let (name, utf8) = match e.filename().to_str() {
                Some(n) => (n.to_string(), true),
                None if all => (
                    crate::paths::escape_name(e.filename().as_os_str().as_bytes()),
                    false,
                ),
                None => continue,
            };
            if name == "." || name == ".." {
                continue;
            }
            let m = e.metadata();
            entries.push(RawEntry {
                name,
                utf8,
                kind: kind_of(&m),
                size: m.len().unwrap_or(0),
                mtime_ms: mtime_of(&m),
            });
        }
        Ok(Some(entries))
    }

    /// What `rel` is, links followed: its kind, size and modification time; None when it (or
    /// what a link points to) does not exist.
    pub async fn stat(&self, rel: &str) -> opendal::Result<Option<(Kind, u64, Option<i64>)>> {
        match self.sftp.fs().metadata(self.full(rel)).await {
            Ok(m) => Ok(Some((kind_of(&m), m.len().unwrap_or(0), mtime_of(&m)))),
            Err(openssh_sftp_client::Error::SftpError(
                openssh_sftp_client::error::SftpErrorKind::NoSuchFile,
                _,
            )) => Ok(None),
            Err(e) => Err(raw_error(e, &format!("stat {rel}"))),
        }
    }

    /// The target of the symbolic link `rel`, as stored in the link; None when it is not
    /// valid UTF-8.
    pub async fn read_link(&self, rel: &str) -> opendal::Result<Option<String>> {
        let target = self
            .sftp
            .fs()
            .read_link(self.full(rel))
            .await
            .map_err(|e| raw_error(e, &format!("readlink {rel}")))?;
        Ok(target.to_str().map(str::to_string))
    }

    /// The server's canonical path of `rel`, every link on the way resolved.
    pub async fn real_path(&self, rel: &str) -> opendal::Result<std::path::PathBuf> {
        self.sftp
            .fs()
            .canonicalize(self.full(rel))
            .await
            .map_err(|e| raw_error(e, &format!("realpath {rel}")))
    }

    /// Creates (or truncates) the file `rel` for writing, in an existing directory only: a
    /// missing directory is a NotFound error (nothing is created on the way).
    pub async fn create(&self, rel: &str) -> opendal::Result<RawFile> {
        let f = self
            .sftp
            .options()
            .write(true)
            .create(true)
            .truncate(true)
            .open(self.full(rel))
            .await
            .map_err(|e| raw_error(e, &format!("create {rel}")))?;
        Ok(RawFile::new(f))
    }

    /// Gives the file `rel` the owner and group `owner` and then the permission bits `mode`
    /// (SFTP setstat; the owner first, since a change of owner clears set-user-ID bits). Returns
    /// what the server refused, as the per-file report names it ("" when nothing).
    pub async fn set_mode_owner(
        &self,
        rel: &str,
        mode: Option<u32>,
        owner: Option<(u32, u32)>,
    ) -> String {
        use openssh_sftp_client::metadata::{MetaDataBuilder, Permissions};
        let mut lost = Vec::new();
        let mut fs = self.sftp.fs();
        if let Some(id) = owner {
            let m = MetaDataBuilder::new().id(id).create();
            if let Err(e) = fs.set_metadata(self.full(rel), m).await {
                lost.push(format!("owner (setstat: {e})"));
            }
        }
        if let Some(mode) = mode {
            let perm = Permissions::from((mode & 0o7777) as u16);
            if let Err(e) = fs.set_permissions(self.full(rel), perm).await {
                lost.push(format!("mode (setstat: {e})"));
            }
        }
        lost.join(", ")
    }

    /// Removes a file or a link (the link itself); gone already is fine.
    pub async fn remove_file(&self, rel: &str) -> opendal::Result<()> {
        match self.sftp.fs().remove_file(self.full(rel)).await {
            Ok(()) => Ok(()),
            Err(openssh_sftp_client::Error::SftpError(
                openssh_sftp_client::error::SftpErrorKind::NoSuchFile,
                _,
            )) => Ok(()),
            Err(e) => Err(raw_error(e, &format!("remove {rel}"))),
        }
    }

    /// Removes an empty directory; gone already is fine.
    pub async fn remove_dir(&self, rel: &str) -> opendal::Result<()> {
        match self.sftp.fs().remove_dir(self.full(rel)).await {
            Ok(()) => Ok(()),
            Err(openssh_sftp_client::Error::SftpError(
                openssh_sftp_client::error::SftpErrorKind::NoSuchFile,
                _,
            )) => Ok(()),
            Err(e) => Err(raw_error(e, &format!("rmdir {rel}"))),
        }
    }
}

fn host_of(ep: &Endpoint) -> &str {
    match ep {
        Endpoint::Sftp { host, .. } => host,
        _ => "",
    }
}

impl Endpoint {
    /// The `ssh://[user@]host[:port]` an SFTP endpoint connects to.
    pub fn sftp_destination(&self) -> Option<String> {
        match self {
            Endpoint::Sftp {
                host,
                user: Some(u),
                ..
            } => Some(format!("{u}@{host}")),
            Endpoint::Sftp { host, .. } => Some(host.clone()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn sftp_urls_parse_with_a_user_and_print_the_same() {
        let e = Endpoint::parse_with(
            "sftp://alice@127.0.0.1:2222/srv/data/",
            &opts(&[("key", "/k/id_ed25519"), ("known_hosts_strategy", "Accept")]),
        )
        .unwrap();
        assert_eq!(e.to_string(), "sftp://alice@127.0.0.1:2222/srv/data");
        let Endpoint::Sftp {
            host,
            user,
            root,
            key,
            known_hosts_strategy,
        } = &e
        else {
            panic!("not sftp: {e:?}");
        };
        assert_eq!(host, "127.0.0.1:2222");
        assert_eq!(user.as_deref(), Some("alice"));
        assert_eq!(root, "/srv/data");
        assert_eq!(key.as_deref(), Some("/k/id_ed25519"));
        assert_eq!(known_hosts_strategy.as_deref(), Some("accept"));
        let j = serde_json::to_string(&e).unwrap();
        assert_eq!(serde_json::from_str::<Endpoint>(&j).unwrap(), e);
        assert_eq!(
            Endpoint::parse("sftp://h").unwrap().to_string(),
            "sftp://h/"
        );
        assert_eq!(
            Endpoint::parse("sftp://h/a/../b").unwrap().to_string(),
            "sftp://h/b"
        );
    }

    #[test]
    fn passwords_bad_hosts_and_bad_options_are_refused() {
        let e = Endpoint::parse("sftp://alice:hunter2@host/x")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("credentials in an endpoint URL"), "{e}");
        assert!(!e.contains("hunter2") && !e.contains("alice"), "{e}");
        assert!(e.contains("key=/path/to/private_key"), "{e}");
        assert!(matches!(
            Endpoint::parse("sftp:///x"),
            Err(EndpointError::NoHost { .. })
        ));
        assert!(matches!(
            Endpoint::parse("sftp://-oProxyCommand=x/y"),
            Err(EndpointError::NoHost { .. })
        ));
        assert!(matches!(
            Endpoint::parse("sftp://@h/y"),
            Err(EndpointError::BadUser { .. })
        ));
        assert!(matches!(
            Endpoint::parse("sftp://h:99999/y"),
            Err(EndpointError::BadPort { .. })
        ));
        let e = Endpoint::parse_with("sftp://h/x", &opts(&[("password", "pw")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("unknown option 'password' for sftp endpoints"),
            "{e}"
        );
        assert!(!e.contains("pw'"), "{e}");
        let e = Endpoint::parse_with("sftp://h/x", &opts(&[("known_hosts_strategy", "yolo")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("strict, add or accept"), "{e}");
        assert!(Endpoint::parse_with("sftp://h/x", &opts(&[("key", "rel/key")])).is_err());
    }

    #[test]
    fn containment_compares_host_and_path_components() {
        let a = Endpoint::parse("sftp://u@h:22/a/b").unwrap();
        assert!(a.is_within(&Endpoint::parse("sftp://u@h:22/a").unwrap()));
        assert!(!a.is_within(&Endpoint::parse("sftp://u@h:22/ab").unwrap()));
        assert!(!a.is_within(&Endpoint::parse("sftp://u@other:22/a").unwrap()));
        assert!(!a.is_within(&Endpoint::parse("/a").unwrap()));
    }
}
