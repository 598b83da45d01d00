//! At-least-once delivery made exactly-once: results delivered twice count once, and messages
//! that are not jobs are terminated without stopping the client.

mod support;

use std::time::Duration;

use futures::StreamExt;
use support::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn results_delivered_twice_are_counted_once() {
    let tmp = test_dir();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    let tree = gen_tree(&src, 500, 1 << 20);
    let mut c = Cluster::start(tmp.path(), &[]);
    c.add_client(&["--workers", "4"]);
    let rt = runtime();
    let _guard = rt.enter();
    let nats = rt.block_on(async_nats::connect(&c.url)).unwrap();
    // A plain subscriber sees a copy of every result the workers publish.
    let mut sub = rt.block_on(nats.subscribe("btp.results.>")).unwrap();
    rt.block_on(nats.flush()).unwrap();

    let id = c.start_task(
        &src,
        &dst,
        &["--batch-files", "25", "--list-page-entries", "40"],
    );
    wait_task(&c.url, &id, Duration::from_secs(120));
    let before = c.report(&id);
    assert_complete(&before, &tree, &src, &dst);

    let mut captured = Vec::new();
    rt.block_on(async {
        while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), sub.next()).await {
            captured.push(m);
        }
    });
    let pages = captured
        .iter()
        .filter(|m| m.payload.windows(9).any(|w| w == b"list_page"))
        .count();
    assert!(
        pages > 1 && captured.len() > pages,
        "captured list pages and copy results"
    );

    // Deliver every result again through JetStream, as a redelivery would.
    let js = async_nats::jetstream::new(nats);
    rt.block_on(async {
        for m in &captured {
            js.publish(m.subject.clone(), m.payload.clone())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    });
    wait_for(
        "the results stream to drain",
        Duration::from_secs(30),
        || {
            let info = rt.block_on(async {
                let mut s = js.get_stream("BTP_RESULTS").await.unwrap();
                s.info().await.unwrap().state.messages
            });
            (info == 0).then_some(())
        },
    );
    let after = c.report(&id);
    assert_eq!(
        before["task"], after["task"],
        "counters unchanged by duplicates"
    );
    assert_eq!(before["clients"], after["clients"]);
}

#[test]
fn messages_that_are_not_jobs_are_terminated_and_the_client_keeps_working() {
    let tmp = test_dir();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    let tree = gen_tree(&src, 100, 0);
    let mut c = Cluster::start(tmp.path(), &[]);
    c.add_client(&["--workers", "2"]);
    let rt = runtime();
    let _guard = rt.enter();
    let js = async_nats::jetstream::new(rt.block_on(async_nats::connect(&c.url)).unwrap());
    rt.block_on(async {
        for body in [&b"not json at all"[..], br#"{"v":99,"id":"x"}"#, b"{}"] {
            js.publish("btp.jobs.default.bogus", body.to_vec().into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    });
    let log = tmp.path().join("client-1.log");
    wait_for(
        "the client to terminate the bad messages",
        Duration::from_secs(30),
        || {
            let text = std::fs::read_to_string(&log).unwrap();
            (text
                .matches("terminating a message that is not a job")
                .count()
                == 3)
                .then_some(())
        },
    );
    let id = c.start_task(&src, &dst, &[]);
    wait_task(&c.url, &id, Duration::from_secs(60));
    assert_complete(&c.report(&id), &tree, &src, &dst);
    let clients = btp_json(&c.url, &["client", "list"]);
    assert_eq!(clients["clients"][0]["online"], true);
}
