//! The statements of the dispatch and result paths and the report's pages
//! (`btp_server::store::sql`) read a bounded range of an index: no full scan of a table, no sort, on SQLite and on PostgreSQL, over a store
//! of a million jobs (`BTP_PLAN_JOBS` overrides) with thousands of finished and cancelled tasks.
//! The plans come from the databases' own EXPLAIN (SQLite's rows, PostgreSQL's JSON, parsed).

use btp_server::store::{sql, Store};
use sqlx::{Connection, Row};

fn jobs() -> i64 {
    std::env::var("BTP_PLAN_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

#[derive(Clone, Copy)]
enum Arg {
    S(&'static str),
    I(i64),
}

/// Each statement with the values the server binds to it.
fn statements() -> Vec<(&'static str, &'static str, Vec<Arg>)> {
    use Arg::*;
    vec![
        ("running tasks", sql::RUNNING_TASKS, vec![S("running")]),
        ("tasks with aborts", sql::TASKS_WITH_PENDING_ABORTS, vec![]),
        (
            "task in state",
            sql::TASK_IN_STATE,
            vec![S("aborting"), S("cancelled")],
        ),
        (
            "pending jobs",
            sql::PENDING_JOBS,
            vec![S("big"), S("pending"), I(256), I(i64::MAX), I(3)],
        ),
        (
            "pending aborts",
            sql::PENDING_JOBS,
            vec![S("big"), S("pending"), I(256), I(i64::MAX), I(0)],
        ),
        (
            "jobs in flight",
            sql::COUNT_JOBS_IN_STATE,
            vec![S("big"), S("published")],
        ),
        (
            "mark published",
            sql::MARK_PUBLISHED,
            vec![S("published"), S("big"), I(999_999), S("pending")],
        ),
        ("job by seq", sql::JOB_BY_SEQ, vec![S("big"), I(12345)]),
        (
            "finish job",
            sql::FINISH_JOB,
            vec![
                S("done"),
                S("client-1"),
                I(1),
                I(1),
                S("big"),
                I(12345),
                S(""),
            ],
        ),
        // The report's pages: the first (from row 0), then after the last key of a page.
        ("failures", sql::FAILURES_FROM, vec![S("big"), I(100), I(0)]),
        (
            "failures after",
            sql::FAILURES_AFTER,
            vec![S("big"), I(100), S("d/000050000")],
        ),
        (
            "report failures",
            sql::REPORT_FAILURES_FROM,
            vec![S("big"), I(100), I(0)],
        ),
        (
            "report failures after",
            sql::REPORT_FAILURES_AFTER,
            vec![S("big"), I(100), S("d/000050000")],
        ),
        ("entries", sql::ENTRIES_FROM, vec![S("big"), I(100), I(0)]),
        (
            "entries after",
            sql::ENTRIES_AFTER,
            vec![S("big"), I(100), S("d/000050000")],
        ),
        ("changes", sql::CHANGES_FROM, vec![S("big"), I(100), I(0)]),
        (
            "changes after",
            sql::CHANGES_AFTER,
            vec![S("big"), I(100), S("d/000050000"), S("copy")],
        ),
        ("not kept", sql::NOT_KEPT_FROM, vec![S("big"), I(100), I(0)]),
        (
            "not kept after",
            sql::NOT_KEPT_AFTER,
            vec![S("big"), I(100), S("d/000050000"), I(5000)],
        ),
        (
            "done file jobs",
            sql::DONE_FILE_JOBS,
            vec![S("big"), I(12345), I(16)],
        ),
    ]
}

/// The store: a running task `big` with `n` jobs (90% done, the rest pending or published, of
/// every kind), 3,000 completed and 3,000 cancelled tasks of 10 done jobs each, one cancelled
/// task with an abort still pending, and failures, entries, changes and not-kept rows.
fn fill(n: i64, postgres: bool) -> Vec<String> {
    let numbers = |count: &str| {
        if postgres {
            format!("FROM generate_series(0, {count} - 1) AS n(i)")
        } else {
            format!(
                "FROM (WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {count} - 1) SELECT i FROM n)"
            )
        }
    };
    // Aborts are rare (one job in a thousand), as they are in a running task.
    let kind = "CASE WHEN i % 1000 = 2 THEN 'abort' WHEN i % 10 = 0 THEN 'list' \
                WHEN i % 10 = 1 THEN 'complete' ELSE 'copy' END";
    let prio =
        "CASE WHEN i % 1000 = 2 THEN 0 WHEN i % 10 = 0 THEN 2 WHEN i % 10 = 1 THEN 1 ELSE 3 END";
    let task = |id: &str, state: &str, created: &str| {
        format!(
            "INSERT INTO tasks (id, tenant, state, src, dst, options, created_ms) \
             SELECT {id}, 'default', '{state}', '/src', '/dst', '{{}}', {created}"
        )
    };
    // Half of the report's rows on `big`, the rest spread over the finished tasks.
    let rows = (n / 10).max(6000);
    let t = "CASE WHEN i % 2 = 0 THEN 'big' ELSE 'done-' || CAST(i % 3000 AS TEXT) END";
    let path = if postgres {
        "'d/' || LPAD(CAST(i AS TEXT), 9, '0')"
    } else {
        "'d/' || SUBSTR('000000000' || CAST(i AS TEXT), -9)"
    };
    vec![
        format!("{} {}", task("'big'", "running", "0"), numbers("1")),
        format!(
            "{} {}",
            task("'done-' || CAST(i AS TEXT)", "completed", "i + 1"),
            numbers("3000")
        ),
        format!(
            "{} {}",
            task("'cancel-' || CAST(i AS TEXT)", "cancelled", "i + 10000"),
            numbers("3000")
        ),
        format!("{} {}", task("'aborting'", "cancelled", "50000"), numbers("1")),
        format!(
            "INSERT INTO jobs (task_id, seq, kind, state, payload, prio) \
             SELECT 'big', i, {kind}, CASE WHEN i < {n} * 9 / 10 THEN 'done' WHEN i % 2 = 0 \
             THEN 'pending' ELSE 'published' END, 'sealed payload of about sixty bytes, as a copy job', \
             {prio} {}",
            numbers(&n.to_string())
        ),
        format!(
            "INSERT INTO jobs (task_id, seq, kind, state, payload, prio) \
             SELECT CASE WHEN i % 6000 < 3000 THEN 'done-' ELSE 'cancel-' END || CAST(i % 3000 AS TEXT), \
             i / 6000, {kind}, 'done', '', {prio} {}",
            numbers("60000")
        ),
        "INSERT INTO jobs (task_id, seq, kind, state, payload, prio) \
         VALUES ('aborting', 0, 'abort', 'pending', '', 0)"
            .to_string(),
        // The report's rows: a tenth of the jobs as many of each, on `big` and on the finished
        // tasks.
        format!(
            "INSERT INTO failures (task_id, path, kind, size, reason, attempts, job_seq) \
             SELECT {t}, {path}, CASE WHEN i % 100 = 0 THEN 'dir' ELSE 'file' END, 1, \
             'permission denied', 1, i {}",
            numbers(&rows.to_string())
        ),
        format!(
            "INSERT INTO entries (task_id, path, size, outcome, reason, job_seq) \
             SELECT {t}, {path}, 1, 'excluded', 'excluded by filter', i {}",
            numbers(&rows.to_string())
        ),
        format!(
            "INSERT INTO changes (task_id, action, path, size) \
             SELECT {t}, CASE WHEN i % 3 = 0 THEN 'delete' ELSE 'copy' END, {path}, 1 {}",
            numbers(&rows.to_string())
        ),
        format!(
            "INSERT INTO not_kept (task_id, job_seq, path, what) \
             SELECT {t}, i / 10, {path}, 'mode' {}",
            numbers(&rows.to_string())
        ),
        "ANALYZE".to_string(),
    ]
}

/// What is wrong with a plan: full scans and sorts, one line each.
fn sqlite_faults(details: &[String]) -> Vec<String> {
    details
        .iter()
        .filter(|d| {
            (d.starts_with("SCAN") && !d.contains("jobs_pending_aborts"))
                || d.contains("TEMP B-TREE")
        })
        .cloned()
        .collect()
}

fn pg_faults(node: &serde_json::Value, out: &mut Vec<String>) {
    let kind = node["Node Type"].as_str().unwrap_or_default();
    let index = node["Index Name"].as_str().unwrap_or_default();
    let relation = node["Relation Name"].as_str().unwrap_or_default();
    let bounded = node.get("Index Cond").is_some() || index == "jobs_pending_aborts";
    match kind {
        "Seq Scan" => out.push(format!("Seq Scan on {relation}")),
        "Sort" | "Incremental Sort" => out.push(format!("{kind} by {}", node["Sort Key"])),
        "Index Scan" | "Index Only Scan" | "Bitmap Index Scan" if !bounded => {
            out.push(format!("{kind} of all of {index}"))
        }
        _ => {}
    }
    for child in node["Plans"].as_array().into_iter().flatten() {
        pg_faults(child, out);
    }
}

#[tokio::test]
async fn dispatch_and_result_statements_read_bounded_index_ranges() {
    let n = jobs();
    // SQLite: a file made by the store itself (its migrations), then filled directly.
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("btp.db").display());
    drop(Store::open(&url).await.unwrap());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    for stmt in fill(n, false) {
        sqlx::query(&stmt).execute(&mut conn).await.unwrap();
    }
    let mut faults = Vec::new();
    for (name, stmt, args) in statements() {
        let text = format!("EXPLAIN QUERY PLAN {stmt}");
        let mut q = sqlx::query(&text);
        for a in &args {
            q = match *a {
                Arg::S(s) => q.bind(s),
                Arg::I(i) => q.bind(i),
            };
        }
        let details: Vec<String> = q
            .fetch_all(&mut conn)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<String, _>(3))
            .collect();
        assert!(!details.is_empty(), "sqlite gave no plan for {name}");
        eprintln!("sqlite: {name}: {details:?}");
        for f in sqlite_faults(&details) {
            faults.push(format!("sqlite: {name}: {f}"));
        }
    }

    // PostgreSQL: a fresh database on the machine's server.
    let admin = std::env::var("BTP_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
    match sqlx::PgConnection::connect(&admin).await {
        Ok(mut admin_conn) => {
            let name = format!(
                "btp_plans_{}",
                &uuid::Uuid::new_v4().simple().to_string()[..12]
            );
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&mut admin_conn)
                .await
                .unwrap();
            let (base, _) = admin.rsplit_once('/').unwrap();
            let url = format!("{base}/{name}");
            drop(Store::open(&url).await.unwrap());
            let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
            for stmt in fill(n, true) {
                sqlx::query(&stmt).execute(&mut conn).await.unwrap();
            }
            for (what, stmt, args) in statements() {
                let text = format!("EXPLAIN (FORMAT JSON) {stmt}");
                let mut q = sqlx::query(&text);
                for a in &args {
                    q = match *a {
                        Arg::S(s) => q.bind(s),
                        Arg::I(i) => q.bind(i),
                    };
                }
                let row = q.fetch_one(&mut conn).await.unwrap();
                // The plan is a json value; its text is read as is.
                let plan: String = row.try_get_unchecked(0).unwrap();
                let plan: serde_json::Value = serde_json::from_str(&plan).unwrap();
                let root = &plan[0]["Plan"];
                assert!(
                    root.is_object(),
                    "postgresql gave no plan for {what}: {plan}"
                );
                eprintln!("postgresql: {what}: {root}");
                let mut found = Vec::new();
                pg_faults(root, &mut found);
                for f in found {
                    faults.push(format!("postgresql: {what}: {f}"));
                }
            }
            drop(conn);
            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut admin_conn)
                .await
                .unwrap();
        }
        Err(e) if std::env::var_os("CI").is_some() => {
            panic!("PostgreSQL is required under CI ({admin}): {e}")
        }
        Err(e) => eprintln!("skipping PostgreSQL: {admin}: {e}"),
    }
    assert!(faults.is_empty(), "unbounded plans:\n{}", faults.join("\n"));
}

#[test]
fn the_plan_checks_catch_scans_and_sorts() {
    // The checks themselves can fail: plans as the databases print them for a scan and a sort.
    let sqlite = [
        "SCAN jobs".to_string(),
        "USE TEMP B-TREE FOR ORDER BY".to_string(),
        "SEARCH jobs USING INDEX jobs_dispatch (task_id=? AND state=? AND prio<?)".to_string(),
        "SCAN j USING INDEX jobs_pending_aborts".to_string(),
    ];
    assert_eq!(sqlite_faults(&sqlite), sqlite[..2].to_vec());
    let pg: serde_json::Value = serde_json::from_str(
        r#"{"Node Type": "Limit", "Plans": [{"Node Type": "Sort", "Sort Key": ["prio"],
            "Plans": [{"Node Type": "Seq Scan", "Relation Name": "jobs"},
                      {"Node Type": "Index Scan", "Index Name": "jobs_dispatch"},
                      {"Node Type": "Index Scan", "Index Name": "jobs_dispatch", "Index Cond": "(task_id = 'big')"}]}]}"#,
    )
    .unwrap();
    let mut found = Vec::new();
    pg_faults(&pg, &mut found);
    assert_eq!(
        found,
        [
            "Sort by [\"prio\"]",
            "Seq Scan on jobs",
            "Index Scan of all of jobs_dispatch"
        ]
    );
}
