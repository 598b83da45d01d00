//! Property test of request handling: thousands of malformed, mistyped, huge, deeply nested and
//! mutated requests to every verb. None may panic, every answer is a well-formed response, and
//! nothing is stored except by a request that was answered `ok`.

use std::sync::Arc;

use btp_common::api::{verbs, ApiResponse};
use btp_server::api::Api;
use btp_server::{Shared, Store};

const VERBS: &[&str] = &[
    verbs::TASK_CREATE,
    verbs::TASK_START,
    verbs::TASK_GET,
    verbs::TASK_LIST,
    verbs::TASK_REPORT,
    verbs::TASK_PAUSE,
    verbs::TASK_RESUME,
    verbs::TASK_CANCEL,
    verbs::TASK_RETRY,
    verbs::TASK_DELETE,
    verbs::TASK_SET,
    verbs::TASK_FILES,
    verbs::TASK_VERIFY,
    verbs::TASK_VERDICTS,
    verbs::CLIENT_LIST,
    verbs::CLIENT_GET,
    verbs::CLIENT_DRAIN,
    verbs::SERVER_HEALTH,
    verbs::TENANT_LIST,
    verbs::TENANT_DELETE,
    verbs::TOKEN_CREATE,
    verbs::TOKEN_LIST,
    verbs::TOKEN_DELETE,
    verbs::ENDPOINT_CREATE,
    verbs::ENDPOINT_LIST,
    verbs::ENDPOINT_DELETE,
    verbs::SCHEDULE_CREATE,
    verbs::SCHEDULE_LIST,
    verbs::SCHEDULE_GET,
    verbs::SCHEDULE_PAUSE,
    verbs::SCHEDULE_RESUME,
    verbs::SCHEDULE_DELETE,
    verbs::SCHEDULE_RUNS,
    "task.nope",
    "",
];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

/// A random JSON value, biased towards the shapes and edge values requests meet.
fn value(rng: &mut Rng, depth: usize) -> String {
    let keys = [
        "id",
        "src",
        "dst",
        "start",
        "options",
        "state",
        "limit",
        "offset",
        "batch_files",
        "batch_bytes",
        "max_attempts",
        "list_page_entries",
        "list_page_bytes",
        "failures_limit",
        "after",
        "speed_limit",
        "x",
    ];
    match rng.below(if depth > 6 { 6 } else { 9 }) {
        0 => "null".into(),
        1 => rng.pick(&["true", "false"]).into(),
        2 => rng
            .pick(&[
                "0",
                "-1",
                "1",
                "18446744073709551615",
                "-9223372036854775808",
                "1e309",
                "3.5",
            ])
            .into(),
        3 => format!(
            "\"{}\"",
            rng.pick(&[
                "",
                "/tmp",
                "fs:///tmp/x",
                "s3://b/k",
                "gopher://x",
                "..",
                "running",
                "\\u0000",
                "%00?#"
            ])
        ),
        4 => format!("\"{}\"", "a".repeat(rng.below(3) * 30_000)),
        5 => rng.pick(&["{", "}", "[", "\"", "nul", ""]).into(),
        6 => {
            let n = rng.below(4);
            let items: Vec<String> = (0..n).map(|_| value(rng, depth + 1)).collect();
            format!("[{}]", items.join(","))
        }
        _ => {
            let n = rng.below(5);
            let items: Vec<String> = (0..n)
                .map(|_| format!("\"{}\":{}", rng.pick(&keys), value(rng, depth + 1)))
                .collect();
            format!("{{{}}}", items.join(","))
        }
    }
}

fn request(rng: &mut Rng, src: &str) -> Vec<u8> {
    let valid = [
        format!(r#"{{"src":"{src}","dst":"{src}/../out","start":true}}"#),
        r#"{"id":"0123456789ab"}"#.to_string(),
        r#"{"state":"running","limit":5,"offset":0}"#.to_string(),
        r#"{"id":"x","failures_limit":10}"#.to_string(),
        r#"{"id":"x","after":3,"limit":10}"#.to_string(),
        r#"{"id":"x","speed_limit":"50MiB/s"}"#.to_string(),
    ];
    match rng.below(4) {
        0 => value(rng, 0).into_bytes(),
        1 => {
            // Byte-level mutation of a valid request.
            let mut b = valid[rng.below(valid.len())].clone().into_bytes();
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(b.len());
                match rng.below(3) {
                    0 => b[i] = (rng.next() & 0xff) as u8,
                    1 => {
                        b.remove(i);
                    }
                    _ => b.insert(i, b"{}[]\",:0-"[rng.below(9)]),
                }
            }
            b
        }
        2 => "[".repeat(rng.below(2) * 100_000 + 1).into_bytes(),
        _ => valid[rng.below(valid.len())].clone().into_bytes(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_panics_the_server_or_stores_anything_unanswered() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut nats_server = btp_nats::NatsServer::start(&dir.path().join("nats"), None).unwrap();
    let nats = btp_nats::connect(&nats_server.url(), "fuzz").await.unwrap();
    let js = async_nats::jetstream::new(nats.clone());
    btp_nats::topology::ensure_streams(&js).await.unwrap();
    let store = Store::open(&format!("sqlite://{}", dir.path().join("btp.db").display()))
        .await
        .unwrap();
    let api = Api {
        ctx: Shared {
            store: store.clone(),
            nats,
            js,
            wake_dispatcher: Arc::default(),
            dispatch_lock: Default::default(),
            speed: Arc::default(),
            client_speed: Arc::default(),
            live: Arc::default(),
            wake_allocator: Arc::default(),
        },
        admin_hash: None,
        consumer: Default::default(),
    };
    let cases: usize = std::env::var("BTP_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let mut rng = Rng(0x2545f4914f6cdd1d);
    let src = src.to_string_lossy().into_owned();
    let mut created = 0;
    let mut errors = 0;
    for _ in 0..cases {
        let verb = rng.pick(VERBS);
        let body = request(&mut rng, &src);
        let answer = api.handle(verb, &body).await;
        let parsed: ApiResponse<serde_json::Value> = serde_json::from_slice(&answer)
            .unwrap_or_else(|e| {
                panic!(
                    "{verb}: unreadable answer {e}: {}",
                    String::from_utf8_lossy(&answer)
                )
            });
        match parsed {
            ApiResponse::Ok(_) if verb == verbs::TASK_CREATE => created += 1,
            ApiResponse::Ok(_) => {}
            ApiResponse::Error(e) => {
                assert!(!e.message.is_empty());
                assert!(
                    e.message.len() < 2000,
                    "{verb}: error messages stay short: {}",
                    e.message.len()
                );
                errors += 1;
            }
        }
    }
    let stored = store.tasks("default", None, 10_000, 0).await.unwrap().len();
    assert_eq!(stored, created, "only answered creates store tasks");
    assert!(
        errors > cases / 2,
        "most random requests are refused ({errors}/{cases})"
    );
    assert!(created > 0, "some valid creates were among the cases");
    eprintln!("{cases} requests: {created} tasks created, {errors} refused");
    nats_server.stop();
}
