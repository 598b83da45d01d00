//! One store test suite, run against every backend: SQLite (a temp file) and PostgreSQL (a fresh
//! database on the machine's server, `BTP_TEST_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`). Under CI a missing PostgreSQL fails the suite.

use btp_common::api::{ErrorCode, TaskInfo, TaskOptions, TaskState};
use btp_common::wire::{FileEntry, FileFailure, Heartbeat, JobResult, ResultBody};
use btp_common::{Endpoint, WIRE_VERSION};
use btp_server::aggregator::{apply, Applied, Effects};
use btp_server::store::{self, PageAt, Store, TaskRow};
use sqlx::Connection;

/// A fresh store on each backend: (name, store, cleanup).
async fn backends() -> Vec<(&'static str, Store, Option<(String, String)>)> {
    let dir = tempfile::tempdir().unwrap().keep();
    let sqlite = Store::open(&format!("sqlite://{}", dir.join("btp.db").display()))
        .await
        .unwrap();
    let mut out = vec![("sqlite", sqlite, None)];
    let admin = std::env::var("BTP_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
    match sqlx::PgConnection::connect(&admin).await {
        Ok(mut conn) => {
            let name = format!(
                "btp_test_{}",
                &uuid::Uuid::new_v4().simple().to_string()[..12]
            );
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&mut conn)
                .await
                .unwrap();
            let (base, _) = admin.rsplit_once('/').unwrap();
            let store = Store::open(&format!("{base}/{name}")).await.unwrap();
            out.push(("postgresql", store, Some((admin, name))));
        }
        Err(e) if std::env::var_os("CI").is_some() => {
            panic!("PostgreSQL is required under CI ({admin}): {e}")
        }
        Err(e) => eprintln!("skipping PostgreSQL: {admin}: {e}"),
    }
    out
}

async fn drop_db(cleanup: Option<(String, String)>) {
    if let Some((admin, name)) = cleanup {
        let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
        sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut conn)
            .await
            .unwrap();
    }
}

/// Runs `test` on every backend.
macro_rules! on_every_backend {
    ($name:ident, $body:expr) => {
        #[tokio::test]
        async fn $name() {
            for (backend, store, cleanup) in backends().await {
                eprintln!("backend: {backend}");
                let f: fn(Store) -> _ = $body;
                f(store).await;
                drop_db(cleanup).await;
            }
        }
    };
}

fn info(id: &str, opts: TaskOptions) -> TaskInfo {
    TaskInfo::new(
        id.into(),
        "default".into(),
        "fs:///src".into(),
        "fs:///dst".into(),
        opts,
        btp_common::now_ms(),
    )
}

async fn new_task(store: &Store, id: &str, opts: TaskOptions) -> TaskRow {
    let ep = |p: &str| Endpoint::parse(p).unwrap();
    store
        .insert_task(&info(id, opts), &ep("/src"), &ep("/dst"), None)
        .await
        .unwrap();
    store.task(id).await.unwrap()
}

fn result(task: &str, seq: i64, page: u32, last: bool, body: ResultBody) -> JobResult {
    JobResult {
        v: WIRE_VERSION,
        job: store::job_id(task, seq),
        tenant: "default".into(),
        task: task.into(),
        client: "c1".into(),
        seq: page,
        last,
        attempt: 1,
        bytes_through: 0,
        body,
    }
}

async fn apply_one(store: &Store, r: &JobResult) -> Applied {
    let mut tx = store.begin().await.unwrap();
    let a = apply(&mut tx, r, &mut Effects::default()).await.unwrap();
    tx.commit().await.unwrap();
    a
}

fn files(n: usize, size: u64) -> Vec<FileEntry> {
    (0..n)
        .map(|i| FileEntry::new(format!("f{i:03}"), size, None))
        .collect()
}

fn copy_ok(n: u64, bytes: u64) -> ResultBody {
    ResultBody::Copy {
        up_to_date: Vec::new(),
        would_copy: vec![],
        changed: vec![],
        not_kept: vec![],
        files_copied: n,
        bytes_copied: bytes,
        files_skipped: 0,
        bytes_skipped: 0,
        failures: vec![],
        retry: vec![],
        retry_after_ms: 0,
    }
}

on_every_backend!(
    a_task_runs_from_listing_to_completion_and_counts_each_result_once,
    |store| Box::pin(async move {
        let opts = TaskOptions {
            batch_files: 4,
            ..Default::default()
        };
        let t = new_task(&store, "t1", opts).await;
        store.start_task(&t, 1).await.unwrap();
        assert_eq!(
            store.task("t1").await.unwrap().info.state,
            TaskState::Running
        );

        // Root listing in two pages: 6 files, then 2 files and one sub-directory.
        let p0 = result(
            "t1",
            0,
            0,
            false,
            ResultBody::ListPage {
                noted: Vec::new(),
                extra: Vec::new(),
                verdicts: Vec::new(),
                excluded: 0,
                deleted: vec![],
                skipped: 0,
                bytes_skipped: 0,
                files: files(6, 10),
                dirs: vec![],
            },
        );
        let p1 = result(
            "t1",
            0,
            1,
            true,
            ResultBody::ListPage {
                noted: Vec::new(),
                extra: Vec::new(),
                verdicts: Vec::new(),
                excluded: 0,
                deleted: vec![],
                skipped: 0,
                bytes_skipped: 0,
                files: files(2, 5),
                dirs: vec!["sub/".into()],
            },
        );
        assert_eq!(
            apply_one(&store, &p1).await,
            Applied::Defer,
            "a page ahead of its turn waits"
        );
        assert_eq!(apply_one(&store, &p0).await, Applied::Yes);
        assert_eq!(apply_one(&store, &p0).await, Applied::Duplicate);
        assert_eq!(apply_one(&store, &p1).await, Applied::Yes);
        assert_eq!(apply_one(&store, &p1).await, Applied::Duplicate);
        let t = store.task("t1").await.unwrap().info;
        assert_eq!((t.files_found, t.bytes_found), (8, 70));
        // Jobs: root list, 2 copies from page 0 (4+2), 1 copy and 1 list from page 1.
        assert_eq!((t.jobs_total, t.jobs_done), (5, 1));
        assert!(!t.listing_done);

        let sub = result(
            "t1",
            4,
            0,
            true,
            ResultBody::ListPage {
                noted: Vec::new(),
                extra: Vec::new(),
                verdicts: Vec::new(),
                excluded: 0,
                deleted: vec![],
                skipped: 0,
                bytes_skipped: 0,
                files: vec![],
                dirs: vec![],
            },
        );
        assert_eq!(apply_one(&store, &sub).await, Applied::Yes);
        assert!(store.task("t1").await.unwrap().info.listing_done);

        for (seq, n, bytes) in [(1, 4, 40), (2, 2, 20), (3, 2, 10)] {
            let r = result("t1", seq, 0, true, copy_ok(n, bytes));
            assert_eq!(apply_one(&store, &r).await, Applied::Yes);
            assert_eq!(apply_one(&store, &r).await, Applied::Duplicate);
        }
        let t = store.task("t1").await.unwrap().info;
        assert_eq!(t.state, TaskState::Completed);
        assert_eq!((t.files_copied, t.bytes_copied, t.jobs_done), (8, 70, 5));
        let shares = store.client_shares("t1").await.unwrap();
        assert_eq!(shares.len(), 1);
        assert_eq!(
            (shares[0].jobs, shares[0].files, shares[0].bytes),
            (5, 8, 70)
        );
    })
);

on_every_backend!(failures_are_recorded_paged_and_retried_alone, |store| {
    Box::pin(async move {
        let t = new_task(&store, "t2", TaskOptions::default()).await;
        store.start_task(&t, 1).await.unwrap();
        let page = result(
            "t2",
            0,
            0,
            true,
            ResultBody::ListPage {
                noted: Vec::new(),
                extra: Vec::new(),
                verdicts: Vec::new(),
                excluded: 0,
                deleted: vec![],
                skipped: 0,
                bytes_skipped: 0,
                files: files(3, 7),
                dirs: vec![],
            },
        );
        apply_one(&store, &page).await;
        let failure = |p: &str| FileFailure {
            mtime_ms: None,
            posix: Default::default(),
            path: p.into(),
            size: 7,
            reason: "permission denied".into(),
            attempts: 1,
        };
        let body = ResultBody::Copy {
            up_to_date: Vec::new(),
            would_copy: vec![],
            changed: vec![],
            not_kept: vec![],
            files_copied: 1,
            files_skipped: 0,
            bytes_skipped: 0,
            bytes_copied: 7,
            failures: vec![failure("f001"), failure("f002")],
            retry: vec![],
            retry_after_ms: 0,
        };
        apply_one(&store, &result("t2", 1, 0, true, body)).await;
        let t = store.task("t2").await.unwrap();
        assert_eq!(t.info.state, TaskState::Failed);
        assert_eq!((t.info.files_failed, t.info.bytes_failed), (2, 14));
        let page1 = store.failures("t2", 1, &PageAt::START).await.unwrap();
        let page2 = store.failures("t2", 1, &PageAt::Offset(1)).await.unwrap();
        // After a key: the same page as at its row number.
        let after = PageAt::After(page1[0].path.clone());
        let keyed = store.failures("t2", 1, &after).await.unwrap();
        assert_eq!(
            (page1[0].path.as_str(), page2[0].path.as_str()),
            ("f001", "f002")
        );
        assert_eq!(keyed, page2);
        let last = PageAt::After(page2[0].path.clone());
        assert!(store.failures("t2", 1, &last).await.unwrap().is_empty());
        assert_eq!(page1[0].attempts, 1);

        assert_eq!(store.retry_task(&t).await.unwrap(), 2);
        let t = store.task("t2").await.unwrap().info;
        assert_eq!(
            (t.state, t.files_failed, t.jobs_total),
            (TaskState::Running, 0, 3)
        );
        let pending = store.pending_jobs("t2", 10, i64::MAX, false).await.unwrap();
        assert_eq!(pending.len(), 1);
        assert!(
            pending[0].1.contains("f001")
                && pending[0].1.contains("f002")
                && !pending[0].1.contains("f000")
        );
        apply_one(&store, &result("t2", 2, 0, true, copy_ok(2, 14))).await;
        let t = store.task("t2").await.unwrap().info;
        assert_eq!(
            (t.state, t.files_copied, t.bytes_copied),
            (TaskState::Completed, 3, 21)
        );
        assert!(store
            .failures("t2", 10, &PageAt::START)
            .await
            .unwrap()
            .is_empty());
    })
});

on_every_backend!(transient_failures_become_delayed_retry_jobs, |store| {
    Box::pin(async move {
        let t = new_task(&store, "t3", TaskOptions::default()).await;
        store.start_task(&t, 1).await.unwrap();
        apply_one(
            &store,
            &result(
                "t3",
                0,
                0,
                true,
                ResultBody::ListPage {
                    noted: Vec::new(),
                    extra: Vec::new(),
                    verdicts: Vec::new(),
                    excluded: 0,
                    deleted: vec![],
                    skipped: 0,
                    bytes_skipped: 0,
                    files: files(2, 3),
                    dirs: vec![],
                },
            ),
        )
        .await;
        let retry = vec![FileFailure {
            mtime_ms: None,
            posix: Default::default(),
            path: "f001".into(),
            size: 3,
            reason: "timeout".into(),
            attempts: 1,
        }];
        let body = ResultBody::Copy {
            up_to_date: Vec::new(),
            would_copy: vec![],
            changed: vec![],
            not_kept: vec![],
            files_copied: 1,
            files_skipped: 0,
            bytes_skipped: 0,
            bytes_copied: 3,
            failures: vec![],
            retry,
            retry_after_ms: 60_000,
        };
        apply_one(&store, &result("t3", 1, 0, true, body)).await;
        let t = store.task("t3").await.unwrap().info;
        assert_eq!(
            (t.files_retried, t.jobs_total, t.state),
            (1, 3, TaskState::Running)
        );
        let now = btp_common::now_ms();
        assert!(
            store
                .pending_jobs("t3", 10, now, false)
                .await
                .unwrap()
                .is_empty(),
            "waits out its backoff"
        );
        let later = store
            .pending_jobs("t3", 10, now + 120_000, false)
            .await
            .unwrap();
        assert_eq!(later.len(), 1);
        assert!(later[0].1.contains(r#""attempt":2"#), "{}", later[0].1);
    })
});

on_every_backend!(illegal_transitions_are_refused_with_a_reason, |store| {
    Box::pin(async move {
        let t = new_task(&store, "t4", TaskOptions::default()).await;
        let code = |r: Result<(), btp_common::api::ApiError>| r.unwrap_err().code;
        assert_eq!(
            code(store.pause_task("t4").await),
            ErrorCode::FailedPrecondition
        );
        assert_eq!(
            code(store.resume_task("t4").await),
            ErrorCode::FailedPrecondition
        );
        assert_eq!(
            code(store.retry_task(&t).await.map(|_| ())),
            ErrorCode::FailedPrecondition
        );
        store.start_task(&t, 1).await.unwrap();
        assert_eq!(
            code(store.start_task(&t, 2).await),
            ErrorCode::FailedPrecondition
        );
        assert_eq!(
            code(store.resume_task("t4").await),
            ErrorCode::FailedPrecondition
        );
        assert_eq!(
            code(store.delete_task("t4").await),
            ErrorCode::FailedPrecondition
        );
        store.pause_task("t4").await.unwrap();
        assert_eq!(
            code(store.pause_task("t4").await),
            ErrorCode::FailedPrecondition
        );
        store.resume_task("t4").await.unwrap();
        store.cancel_task("t4", 3).await.unwrap();
        let e = store.cancel_task("t4", 4).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::FailedPrecondition);
        assert_eq!(e.message, "task t4 cannot be cancelled: it is cancelled");
        assert_eq!(
            code(store.resume_task("t4").await),
            ErrorCode::FailedPrecondition
        );
        // Results of a cancelled task are ignored.
        let r = result(
            "t4",
            0,
            0,
            true,
            ResultBody::ListPage {
                noted: Vec::new(),
                extra: Vec::new(),
                verdicts: Vec::new(),
                excluded: 0,
                deleted: vec![],
                skipped: 0,
                bytes_skipped: 0,
                files: files(1, 1),
                dirs: vec![],
            },
        );
        assert_eq!(apply_one(&store, &r).await, Applied::Duplicate);
        store.delete_task("t4").await.unwrap();
        assert_eq!(
            store.task("t4").await.unwrap_err().code,
            ErrorCode::NotFound
        );
        assert_eq!(
            code(store.cancel_task("nope", 1).await),
            ErrorCode::NotFound
        );
    })
});

on_every_backend!(pause_requeues_published_jobs, |store| Box::pin(
    async move {
        let t = new_task(&store, "t5", TaskOptions::default()).await;
        store.start_task(&t, 1).await.unwrap();
        store.mark_published("t5", &[0]).await.unwrap();
        assert_eq!(store.inflight_jobs("t5").await.unwrap(), 1);
        let epoch = store.task("t5").await.unwrap().epoch;
        store.pause_task("t5").await.unwrap();
        assert_eq!(store.inflight_jobs("t5").await.unwrap(), 0);
        assert_eq!(
            store.pending_jobs("t5", 10, 0, false).await.unwrap().len(),
            1
        );
        assert_eq!(store.task("t5").await.unwrap().epoch, epoch + 1);
        assert!(store.running_tasks().await.unwrap().is_empty());
    }
));

on_every_backend!(tasks_are_listed_by_state_and_paged, |store| Box::pin(
    async move {
        for i in 0..5 {
            let t = new_task(&store, &format!("l{i}"), TaskOptions::default()).await;
            if i % 2 == 0 {
                store.start_task(&t, 1).await.unwrap();
            }
        }
        assert_eq!(store.tasks("default", None, 100, 0).await.unwrap().len(), 5);
        assert_eq!(
            store
                .tasks("default", Some(TaskState::Running), 100, 0)
                .await
                .unwrap()
                .len(),
            3
        );
        assert_eq!(
            store
                .tasks("default", Some(TaskState::Created), 100, 0)
                .await
                .unwrap()
                .len(),
            2
        );
        let p1 = store.tasks("default", None, 2, 0).await.unwrap();
        let p3 = store.tasks("default", None, 2, 4).await.unwrap();
        assert_eq!((p1.len(), p3.len()), (2, 1));
    }
));

on_every_backend!(agents_register_and_go_offline, |store| Box::pin(
    async move {
        let mut hb = Heartbeat {
            v: WIRE_VERSION,
            id: "c1".into(),
            host: "h".into(),
            tenant: "default".into(),
            workers: 4,
            busy: 1,
            started_ms: 1,
            jobs_done: 7,
            online: true,
            draining: false,
            tasks: vec![],
            tenants: vec![],
            fs_roots: None,
        };
        store.upsert_agent("default", &hb, 1_000).await.unwrap();
        let a = store.agents(2_000, 5_000).await.unwrap();
        assert_eq!((a.len(), a[0].online, a[0].jobs_done), (1, true, 7));
        assert!(
            !store.agents(10_000, 5_000).await.unwrap()[0].online,
            "silent too long"
        );
        hb.online = false;
        hb.draining = true;
        store.upsert_agent("default", &hb, 3_000).await.unwrap();
        let a = store.agents(3_000, 5_000).await.unwrap();
        assert!(!a[0].online && a[0].draining);
        // Another tenant's heartbeat with the same id is a row of its own: the first stays.
        let mut posing = hb.clone();
        posing.tenant = "globex".into();
        posing.host = "elsewhere".into();
        posing.draining = false;
        posing.online = true;
        store.upsert_agent("globex", &posing, 3_000).await.unwrap();
        let a = store.agents(3_000, 5_000).await.unwrap();
        assert_eq!(a.len(), 2);
        let mine = a.iter().find(|c| c.tenant == "default").unwrap();
        assert_eq!((mine.host.as_str(), mine.draining), ("h", true));
    }
));

#[tokio::test]
async fn database_urls_are_checked_and_passwords_never_shown() {
    let e = Store::open("mysql://u:secret@h/db")
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("unsupported database url") && !e.contains("secret"),
        "{e}"
    );
    assert_eq!(
        store::redact("postgres://u:pw@h:5432/db"),
        "postgres://u:***@h:5432/db"
    );
    assert_eq!(store::redact("postgres://u@h/db"), "postgres://u@h/db");
    let e = Store::open("postgres://u:topsecret@127.0.0.1:1/db")
        .await
        .err()
        .unwrap();
    assert!(!format!("{e:#}").contains("topsecret"));
}

on_every_backend!(
    a_retry_that_found_files_changed_corrects_the_bytes_found_and_the_report,
    |store| Box::pin(async move {
        let t = new_task(&store, "t9", TaskOptions::default()).await;
        store.start_task(&t, 1).await.unwrap();
        let page = ResultBody::ListPage {
            noted: Vec::new(),
            extra: Vec::new(),
            verdicts: Vec::new(),
            excluded: 0,
            deleted: vec![],
            skipped: 0,
            bytes_skipped: 0,
            files: files(3, 10),
            dirs: vec![],
        };
        apply_one(&store, &result("t9", 0, 0, true, page)).await;
        // f001 grew from 10 to 25 bytes before the retry copied it.
        let grown = FileEntry {
            size: 25,
            ..files(3, 10).remove(1)
        };
        let mut body = copy_ok(3, 45);
        if let ResultBody::Copy { changed, .. } = &mut body {
            changed.push(grown);
        }
        assert_eq!(
            apply_one(&store, &result("t9", 1, 0, true, body)).await,
            Applied::Yes
        );
        let t = store.task("t9").await.unwrap().info;
        assert_eq!(t.state, TaskState::Completed);
        assert_eq!((t.bytes_found, t.bytes_copied), (45, 45));
        let kept = store.done_file_jobs("t9", -1, 10).await.unwrap();
        assert_eq!(kept.len(), 1);
        // The done job keeps its files in the compact form, without the task's endpoints.
        assert!(btp_server::kept::is_compact(&kept[0].1), "{}", kept[0].1);
        assert!(!kept[0].1.contains("/src"), "{}", kept[0].1);
        let files = btp_server::kept::read(&kept[0].1).unwrap().done;
        let sizes: Vec<u64> = files.iter().map(|f| f.1).collect();
        assert_eq!(sizes, [10, 25, 10]);
    })
);

on_every_backend!(a_job_the_server_fails_itself_has_no_client, |store| {
    Box::pin(async move {
        let t = new_task(&store, "t10", TaskOptions::default()).await;
        store.start_task(&t, 1).await.unwrap();
        let page = ResultBody::ListPage {
            noted: Vec::new(),
            extra: Vec::new(),
            verdicts: Vec::new(),
            excluded: 0,
            deleted: vec![],
            skipped: 0,
            bytes_skipped: 0,
            files: files(2, 10),
            dirs: vec![],
        };
        apply_one(&store, &result("t10", 0, 0, true, page)).await;
        let failed = JobResult {
            client: String::new(),
            attempt: 3,
            bytes_through: 0,
            ..result(
                "t10",
                1,
                0,
                true,
                ResultBody::Failed {
                    reason: "worker crashed 3 times on this job".into(),
                },
            )
        };
        assert_eq!(apply_one(&store, &failed).await, Applied::Yes);
        let t = store.task("t10").await.unwrap().info;
        assert_eq!(t.state, TaskState::Failed);
        assert_eq!((t.files_failed, t.bytes_failed, t.bytes_found), (2, 20, 20));
        let shares = store.client_shares("t10").await.unwrap();
        let clients: Vec<&str> = shares.iter().map(|s| s.client.as_str()).collect();
        assert_eq!(clients, ["c1"], "only the client that listed");
        let f = store.failures("t10", 10, &PageAt::START).await.unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].reason, "worker crashed 3 times on this job");
        assert_eq!(f[0].attempts, 3);
    })
});

on_every_backend!(
    a_tenant_is_deleted_only_once_it_has_no_tasks_or_endpoints,
    |store| Box::pin(async move {
        let tenant = |name: &str| btp_common::api::TenantInfo {
            name: name.into(),
            created_ms: 1,
            max_running_tasks: None,
            speed_limit: None,
            tokens: 0,
            tasks: 0,
        };
        store.create_tenant(&tenant("acme")).await.unwrap();
        let mut i = info("ta", TaskOptions::default());
        i.tenant = "acme".into();
        let ep = |p: &str| Endpoint::parse(p).unwrap();
        store
            .insert_task(&i, &ep("/src"), &ep("/dst"), None)
            .await
            .unwrap();
        let opts = [("secret_access_key".to_string(), "S".to_string())].into();
        store
            .create_endpoint("acme", "vault", "s3://b/p", &opts, 1)
            .await
            .unwrap();
        let e = store.delete_tenant("acme").await.unwrap_err();
        assert_eq!(e.code, ErrorCode::FailedPrecondition);
        assert!(
            e.message
                .contains("it still has 1 task and 1 named endpoint; delete them first"),
            "{}",
            e.message
        );
        store.delete_task("ta").await.unwrap();
        let e = store.delete_tenant("acme").await.unwrap_err();
        assert!(
            e.message.contains("still has 1 named endpoint;"),
            "{}",
            e.message
        );
        store.delete_endpoint("acme", "vault").await.unwrap();
        store.delete_tenant("acme").await.unwrap();
        // A tenant created again under the name inherits nothing.
        store.create_tenant(&tenant("acme")).await.unwrap();
        assert!(store.endpoints("acme", None).await.unwrap().is_empty());
        assert!(store.tasks("acme", None, 10, 0).await.unwrap().is_empty());
    })
);

on_every_backend!(
    metadata_not_kept_is_stored_for_those_files_only_once_and_goes_with_the_task,
    |store| Box::pin(async move {
        let t = new_task(&store, "tk", TaskOptions::default()).await;
        store.start_task(&t, 1).await.unwrap();
        let page = ResultBody::ListPage {
            noted: Vec::new(),
            extra: Vec::new(),
            verdicts: Vec::new(),
            excluded: 0,
            deleted: vec![],
            skipped: 0,
            bytes_skipped: 0,
            files: files(3, 5),
            dirs: vec![],
        };
        apply_one(&store, &result("tk", 0, 0, true, page)).await;
        let lost = |p: &str, w: &str| btp_common::wire::NotKept {
            path: p.into(),
            what: w.into(),
        };
        let mut body = copy_ok(3, 15);
        if let ResultBody::Copy { not_kept, .. } = &mut body {
            *not_kept = vec![
                lost("f002", "owner (chown: Operation not permitted)"),
                lost("f000", "content-type, x-amz-meta-color"),
            ];
        }
        let r = result("tk", 1, 0, true, body);
        apply_one(&store, &r).await;
        // A redelivered result changes nothing.
        apply_one(&store, &r).await;
        let by_job = store.not_kept("tk", 1, 1).await.unwrap();
        assert_eq!(by_job.len(), 2, "{by_job:?}");
        assert_eq!(
            by_job[&(1, "f000".to_string())],
            "content-type, x-amz-meta-color"
        );
        assert!(
            !by_job.contains_key(&(1, "f001".to_string())),
            "nothing lost: no row"
        );
        assert!(store.not_kept("tk", 2, 9).await.unwrap().is_empty());
        let page = store
            .not_kept_page("tk", 1, &PageAt::Offset(1))
            .await
            .unwrap();
        assert_eq!(
            page,
            vec![(lost("f002", "owner (chown: Operation not permitted)"), 1)]
        );
        let first = store.not_kept_page("tk", 1, &PageAt::START).await.unwrap();
        let after = PageAt::After((first[0].0.path.clone(), first[0].1));
        assert_eq!(store.not_kept_page("tk", 1, &after).await.unwrap(), page);
        assert_eq!(
            store.task("tk").await.unwrap().info.state,
            TaskState::Completed
        );
        store.delete_task("tk").await.unwrap();
        assert!(store
            .not_kept_page("tk", 10, &PageAt::START)
            .await
            .unwrap()
            .is_empty());
    })
);

fn schedule_row(name: &str, next: i64, max_failures: i64) -> btp_server::store::ScheduleRow {
    btp_server::store::ScheduleRow {
        tenant: "default".into(),
        name: name.into(),
        cron: String::new(),
        every_secs: 10,
        timezone: String::new(),
        template: btp_common::api::CreateTask {
            src: "/data/in".into(),
            dst: "/data/out".into(),
            src_options: Default::default(),
            dst_options: [("secret_access_key".to_string(), "s3cr3t".to_string())].into(),
            options: TaskOptions::default(),
            start: false,
            files_from: None,
            files_from_options: Default::default(),
            report_to: None,
            report_to_options: Default::default(),
            report_level: None,
            notify: None,
        },
        state: "active".into(),
        paused_reason: String::new(),
        max_failures,
        failures: 0,
        next_fire_ms: next,
        created_ms: 1,
    }
}

on_every_backend!(
    a_firing_is_claimed_once_and_failures_in_a_row_pause,
    |store| {
        Box::pin(async move {
            use btp_server::store::run_outcome;
            let s = schedule_row("nightly", 10_000, 2);
            store.insert_schedule(&s).await.unwrap();
            let e = store.insert_schedule(&s).await.unwrap_err();
            assert!(e.message.contains("already exists"), "{e}");
            assert!(store.due_schedules(9_999).await.unwrap().is_empty());
            let due = store.due_schedules(10_000).await.unwrap();
            assert_eq!(due.len(), 1);
            assert_eq!(due[0].template.dst_options["secret_access_key"], "s3cr3t");
            // Two servers (or a restart) claiming the same firing: one wins.
            let first = store
                .claim_firing(&due[0], 20_000, 10_050, "task-a", "")
                .await
                .unwrap();
            let second = store
                .claim_firing(&due[0], 20_000, 10_060, "task-b", "")
                .await
                .unwrap();
            assert_eq!(first, Some(1));
            assert_eq!(second, None);
            let s = store.schedule("default", "nightly").await.unwrap();
            assert_eq!(s.next_fire_ms, 20_000);
            let pending = store.runs_in(run_outcome::PENDING).await.unwrap();
            assert_eq!(pending.len(), 1);
            assert_eq!(pending[0].task_id, "task-a");
            assert_eq!(pending[0].fire_ms, 10_000);
            assert!(store
                .run_going("default", "nightly")
                .await
                .unwrap()
                .is_some());

            // Run 1 fails; run 2 (a skip) changes nothing; run 3 could not start: paused.
            let r1 = pending[0].clone();
            assert!(store
                .settle_run(&r1, run_outcome::PENDING, run_outcome::STARTED, "")
                .await
                .unwrap());
            assert!(!store
                .settle_run(&r1, run_outcome::PENDING, run_outcome::STARTED, "")
                .await
                .unwrap());
            assert!(store
                .settle_run(&r1, run_outcome::STARTED, "failed", "")
                .await
                .unwrap());
            assert!(store
                .run_going("default", "nightly")
                .await
                .unwrap()
                .is_none());
            let s = store.schedule("default", "nightly").await.unwrap();
            assert_eq!((s.failures, s.state.as_str()), (1, "active"));
            let skip = store
                .claim_firing(&s, 30_000, 20_001, "", "the previous run is still going")
                .await
                .unwrap();
            assert_eq!(skip, Some(2));
            let s = store.schedule("default", "nightly").await.unwrap();
            let seq = store
                .claim_firing(&s, 40_000, 30_001, "task-c", "")
                .await
                .unwrap()
                .unwrap();
            let r3 = store.runs_in(run_outcome::PENDING).await.unwrap()[0].clone();
            assert_eq!(r3.seq, seq);
            store
                .settle_run(&r3, run_outcome::PENDING, run_outcome::ERROR, "source gone")
                .await
                .unwrap();
            let s = store.schedule("default", "nightly").await.unwrap();
            assert_eq!(s.state, "paused");
            assert_eq!(
                s.paused_reason,
                "paused after 2 failed runs in a row; the last: run 3 could not start: source gone"
            );
            // A paused schedule is not due and cannot be claimed.
            assert!(store.due_schedules(i64::MAX).await.unwrap().is_empty());
            assert_eq!(
                store
                    .claim_firing(&s, 50_000, 40_001, "x", "")
                    .await
                    .unwrap(),
                None
            );
            let runs = store
                .schedule_runs("default", "nightly", 10, 0)
                .await
                .unwrap();
            let outcomes: Vec<&str> = runs.iter().map(|r| r.outcome.as_str()).collect();
            assert_eq!(outcomes, ["error", "skipped", "failed"]);
            store
                .resume_schedule("default", "nightly", 60_000)
                .await
                .unwrap();
            let s = store.schedule("default", "nightly").await.unwrap();
            assert_eq!(
                (s.failures, s.state.as_str(), s.next_fire_ms),
                (0, "active", 60_000)
            );
            assert!(s.paused_reason.is_empty());
            // Another tenant's name space is its own.
            assert!(store.schedule("acme", "nightly").await.is_err());
            store.delete_schedule("default", "nightly").await.unwrap();
            assert!(store
                .schedule_runs("default", "nightly", 10, 0)
                .await
                .unwrap()
                .is_empty());
            assert!(store.delete_schedule("default", "nightly").await.is_err());
        })
    }
);

on_every_backend!(
    deliveries_wait_for_the_end_of_their_task_and_keep_their_outcome,
    |store| {
        Box::pin(async move {
            use btp_common::api::DeliveryState;
            use btp_server::store::{delivery_kind, NewDelivery};
            let ep = |p: &str| Endpoint::parse(p).unwrap();
            let report = NewDelivery {
                kind: delivery_kind::REPORT,
                target: serde_json::to_string(&ep("/reports")).unwrap(),
                shown: "fs:///reports".into(),
                level: "errors".into(),
            };
            let notify = NewDelivery {
                kind: delivery_kind::NOTIFY,
                target: "\"http://127.0.0.1:9/hook?token=x\"".into(),
                shown: "http://127.0.0.1:9/hook?***".into(),
                level: String::new(),
            };
            store
                .insert_task_with(
                    &info("d1", TaskOptions::default()),
                    &ep("/src"),
                    &ep("/dst"),
                    None,
                    &[report, notify],
                )
                .await
                .unwrap();
            let t = store.task("d1").await.unwrap();
            let rows = store.deliveries("d1").await.unwrap();
            assert_eq!(rows.len(), 2);
            assert_eq!(
                (rows[0].kind.as_str(), rows[1].kind.as_str()),
                ("notify", "report")
            );
            assert_eq!(rows[0].target, "\"http://127.0.0.1:9/hook?token=x\"");
            assert_eq!(rows[1].level, "errors");
            assert!(rows.iter().all(|d| d.state == "pending" && d.attempts == 0));
            // Not due before the task ends.
            store.start_task(&t, 1).await.unwrap();
            assert!(store.due_deliveries(i64::MAX, 10).await.unwrap().is_empty());
            store.cancel_task("d1", 2).await.unwrap();
            assert_eq!(store.due_deliveries(i64::MAX, 10).await.unwrap().len(), 2);
            // A failed attempt waits for its next time; a done one is no longer due.
            store
                .settle_delivery("d1", "notify", DeliveryState::Pending, 1, 5_000, "HTTP 500")
                .await
                .unwrap();
            store
                .settle_delivery("d1", "report", DeliveryState::Done, 1, 1_000, "")
                .await
                .unwrap();
            assert!(store.due_deliveries(4_999, 10).await.unwrap().is_empty());
            let due = store.due_deliveries(5_000, 10).await.unwrap();
            assert_eq!(due.len(), 1);
            assert_eq!(
                (due[0].attempts, due[0].last_error.as_str()),
                (1, "HTTP 500")
            );
            store
                .settle_delivery("d1", "notify", DeliveryState::Failed, 8, 6_000, "HTTP 500")
                .await
                .unwrap();
            let rows = store.deliveries("d1").await.unwrap();
            assert_eq!(
                rows.iter()
                    .map(|d| (d.state.as_str(), d.done_ms))
                    .collect::<Vec<_>>(),
                [("failed", None), ("done", Some(1_000))]
            );
            // A settled delivery is not changed again.
            store
                .settle_delivery("d1", "report", DeliveryState::Failed, 2, 0, "late")
                .await
                .unwrap();
            assert_eq!(store.deliveries("d1").await.unwrap()[1].state, "done");
            store.delete_task("d1").await.unwrap();
            assert!(store.deliveries("d1").await.unwrap().is_empty());
        })
    }
);
