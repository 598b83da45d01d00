//! Which server leads. Any number of `btp server run` processes may share one PostgreSQL store:
//! the one holding a PostgreSQL advisory lock, taken on a connection of its own, runs the
//! dispatcher, aggregator, allocator and the API; the others stand by, trying the lock every
//! second, and one of them takes over when the leader's connection ends (PostgreSQL releases a
//! session's advisory locks when the session ends: a killed process closes its socket at once,
//! a vanished host is found out by the TCP keepalives set on that session). No consensus of our
//! own: PostgreSQL decides.
//!
//! SQLite is single-server: a second server on the same database file is refused, by a lock
//! (`flock`) on `<file>.lock` held for the life of the process.

use std::time::Duration;

use anyhow::Context as _;
use sqlx::Connection as _;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The advisory lock key of BeyondTP's leadership ("btp" and 1).
const LOCK_KEY: i64 = 0x6274_7000_0000_0001;

/// How often a standby tries the lock, and the leader checks its lock connection.
const POLL: Duration = Duration::from_secs(1);

/// This server's name in `btp server health` and in PostgreSQL's `pg_stat_activity`
/// (`application_name` of the lock connection): host and process id.
pub fn server_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".to_string());
    format!("{host}/{}", std::process::id())
}

/// What makes this server the only one working on its store, held until dropped.
pub enum Leadership {
    /// The lock file of a SQLite database.
    Sqlite(std::fs::File),
    /// The connection holding the advisory lock.
    Postgres(sqlx::PgConnection),
    /// An in-memory SQLite database: nothing to share.
    Memory,
}

/// The database file of a `sqlite:` URL (None for an in-memory database).
fn sqlite_path(url: &str) -> Option<std::path::PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && !path.starts_with(":memory:")).then(|| path.into())
}

/// Takes the SQLite lock: refused at once with a clear message when another server holds it.
pub fn lock_sqlite(url: &str) -> anyhow::Result<Leadership> {
    use std::io::Write as _;
    use std::os::fd::AsRawFd as _;
    let Some(db) = sqlite_path(url) else {
        return Ok(Leadership::Memory);
    };
    let mut name = db.clone().into_os_string();
    name.push(".lock");
    let path = std::path::PathBuf::from(name);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("open the lock file {}", path.display()))?;
    // SAFETY: flock(2) on a descriptor this function owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let holder = std::fs::read_to_string(&path).unwrap_or_default();
        anyhow::bail!(
            "the SQLite database {} is in use by another btp server ({}); SQLite serves one \
             server only: run several servers on PostgreSQL (--database-url postgres://...)",
            db.display(),
            holder.trim()
        );
    }
    file.set_len(0)?;
    writeln!(file, "server {}", server_id())?;
    Ok(Leadership::Sqlite(file))
}

/// Waits until this server leads on the PostgreSQL store at `url`: returns the connection
/// holding the lock, or None when `cancel` fires first.
pub async fn lead_postgres(
    url: &str,
    cancel: &CancellationToken,
) -> anyhow::Result<Option<Leadership>> {
    let mut conn = lock_connection(url).await?;
    let mut announced = false;
    loop {
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(LOCK_KEY)
            .fetch_one(&mut conn)
            .await
            .context("try the leadership lock")?;
        if got {
            info!(server = %server_id(), "this server leads");
            return Ok(Some(Leadership::Postgres(conn)));
        }
        if !announced {
            let leader = leader_name(&mut conn).await.unwrap_or_default();
            info!(leader = %leader, "standing by: another server leads");
            announced = true;
        }
        tokio::select! {
            _ = cancel.cancelled() => return Ok(None),
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

/// The connection the lock is taken on, named after this server, with TCP keepalives short
/// enough that PostgreSQL ends the session (and frees the lock) within about 15 s when this
/// host vanishes without closing its socket.
async fn lock_connection(url: &str) -> anyhow::Result<sqlx::PgConnection> {
    let opts: sqlx::postgres::PgConnectOptions = url
        .parse()
        .context("parse the database URL for the leadership lock")?;
    let opts = opts.application_name(&format!("btp-server {}", server_id()));
    let mut conn = sqlx::PgConnection::connect_with(&opts)
        .await
        .context("connect to PostgreSQL for the leadership lock")?;
    for set in [
        "SET tcp_keepalives_idle = 5",
        "SET tcp_keepalives_interval = 2",
        "SET tcp_keepalives_count = 3",
    ] {
        if let Err(e) = sqlx::query(set).execute(&mut conn).await {
            warn!(error = %e, "cannot shorten the lock connection's keepalives");
        }
    }
    Ok(conn)
}

/// The `application_name` of the session holding the lock.
async fn leader_name(conn: &mut sqlx::PgConnection) -> anyhow::Result<String> {
    let name: Option<String> = sqlx::query_scalar(
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'advisory' AND l.granted \
         AND l.classid = ($1 >> 32)::oid AND l.objid = ($1 & 4294967295)::oid LIMIT 1",
    )
    .bind(LOCK_KEY)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(name.unwrap_or_default())
}

impl Leadership {
    /// Holds the leadership until `cancel` fires; fails when the lock connection is lost (a
    /// standby may lead already, so this server must stop working: its supervisor starts it
    /// again as a standby).
    pub async fn hold(self, cancel: CancellationToken) -> anyhow::Result<()> {
        match self {
            Leadership::Postgres(mut conn) => loop {
                tokio::select! {
                    _ = cancel.cancelled() => {
                        let _ = conn.close().await;
                        return Ok(());
                    }
                    _ = tokio::time::sleep(POLL) => {}
                }
                if let Err(e) = sqlx::query("SELECT 1").execute(&mut conn).await {
                    anyhow::bail!(
                        "lost the database connection holding the leadership ({e}): stopping, another server may lead now"
                    );
                }
            },
            held => {
                cancel.cancelled().await;
                drop(held);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls_name_their_file() {
        assert_eq!(
            sqlite_path("sqlite:///var/lib/btp/btp.db?mode=rwc"),
            Some("/var/lib/btp/btp.db".into())
        );
        assert_eq!(sqlite_path("sqlite:rel.db"), Some("rel.db".into()));
        assert_eq!(sqlite_path("sqlite::memory:"), None);
    }

    #[test]
    fn a_second_sqlite_server_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("btp.db").display());
        let first = lock_sqlite(&url).unwrap();
        let e = lock_sqlite(&url).err().unwrap().to_string();
        assert!(e.contains("in use by another btp server"), "{e}");
        assert!(e.contains(&server_id()), "names the holder: {e}");
        drop(first);
        lock_sqlite(&url).unwrap();
    }
}
