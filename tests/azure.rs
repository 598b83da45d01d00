//! Azure Blob storage end to end against Azurite (Microsoft's emulator, started here on a free
//! port), read back with Microsoft's Python SDK: fs -> Azure -> fs of a tree with a large file
//! staged in blocks by two clients, checksum verified, byte for byte; Azure -> Azure; a re-run
//! copies nothing; sync deletes; a cancelled block upload leaves no committed blob and no
//! staged block; a wrong key is one clear permanent error that shows no secret.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use support::backends::{backend_suite, Azurite};
use support::*;

#[test]
fn azurite_passes_the_backend_suite() {
    let tmp = test_dir();
    let Some(azurite) = Azurite::start(tmp.path()) else {
        return;
    };
    backend_suite(&azurite, tmp.path());
}

fn run(c: &Cluster, src: &str, dst: &str, extra: &[String]) -> serde_json::Value {
    let mut args: Vec<String> = ["task", "create", "--src", src, "--dst", dst, "--start"]
        .map(String::from)
        .to_vec();
    args.extend(extra.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let t = btp_json(&c.url, &args);
    let id = t["id"].as_str().unwrap().to_string();
    let started = std::time::Instant::now();
    wait_task(&c.url, &id, Duration::from_secs(600));
    eprintln!("{src} -> {dst}: {:.1} s", started.elapsed().as_secs_f64());
    c.report(&id)
}

fn with(mut a: Vec<String>, extra: &[&str]) -> Vec<String> {
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// The files of a tree as the blob names they get under `prefix` -> size.
fn as_blobs(root: &std::path::Path, prefix: &str) -> BTreeMap<String, u64> {
    tree_files(root)
        .into_iter()
        .map(|(k, v)| (format!("{prefix}/{k}"), v))
        .collect()
}

#[test]
fn files_move_between_a_file_system_and_azure_blob_byte_for_byte() {
    let tmp = test_dir();
    let Some((_azurite, port)) = start_azurite(tmp.path()) else {
        return;
    };
    azure_sdk(port, &["create", "box"]);
    azure_sdk(port, &["create", "other"]);
    let big_mib: u64 = std::env::var("BTP_AZURE_BIG_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let src = tmp.path().join("src");
    let tree = gen_tree(&src, 200, big_mib << 20);
    std::fs::remove_dir(src.join("empty-dir")).unwrap();

    let mut c = Cluster::start(tmp.path(), &[]);
    c.add_client(&["--workers", "4"]);
    c.add_client(&["--workers", "4"]);
    let url = "azblob://box/mirror/data";
    let s = src.to_str().unwrap();
    let checksum = ["--verify", "checksum", "--part-size", "16MiB"];

    // fs -> Azure: what the SDK lists is the tree; the large file went up in blocks staged by
    // both clients and nothing staged is left.
    let up = run(&c, s, url, &with(azurite_opts(port, "dst"), &checksum));
    assert_eq!(up["task"]["state"], "completed", "{up}");
    assert_eq!(up["task"]["files_copied"], tree.files);
    assert_eq!(up["task"]["bytes_copied"], tree.bytes);
    assert_eq!(up["task"]["dst"], url);
    assert_eq!(azure_objects(port, "box"), as_blobs(&src, "mirror/data"));
    assert!(azure_staged(port, "box").is_empty());
    let clients = clients_that_copied_parts(tmp.path(), "big file.bin");
    assert_eq!(
        clients.len(),
        2,
        "blocks of the large file ran on {clients:?}"
    );
    // Byte for byte, downloaded by the SDK, with the content type the name gives.
    let got = tmp.path().join("sdk-big");
    let props = azure_sdk(
        port,
        &[
            "get",
            "box",
            "mirror/data/big file.bin",
            got.to_str().unwrap(),
        ],
    );
    assert_eq!(props["size"], big_mib << 20, "{props}");
    assert!(std::fs::read(&got).unwrap() == std::fs::read(src.join("big file.bin")).unwrap());
    let got = tmp.path().join("sdk-small");
    let props = azure_sdk(
        port,
        &[
            "get",
            "box",
            "mirror/data/with space.txt",
            got.to_str().unwrap(),
        ],
    );
    assert_eq!(props["content_type"], "text/plain", "{props}");
    assert_eq!(
        std::fs::read(&got).unwrap(),
        std::fs::read(src.join("with space.txt")).unwrap()
    );

    // Azure -> fs
    let back = tmp.path().join("back");
    let down = run(
        &c,
        url,
        back.to_str().unwrap(),
        &with(azurite_opts(port, "src"), &checksum),
    );
    assert_eq!(down["task"]["state"], "completed", "{down}");
    assert_same_tree(&src, &back);

    // Azure -> Azure, into another container: the large file in blocks again.
    let across = run(
        &c,
        url,
        "azblob://other/copy",
        &with(
            [azurite_opts(port, "src"), azurite_opts(port, "dst")].concat(),
            &checksum,
        ),
    );
    assert_eq!(across["task"]["state"], "completed", "{across}");
    assert_eq!(across["task"]["files_copied"], tree.files);
    assert_eq!(azure_objects(port, "other"), as_blobs(&src, "copy"));
    assert!(azure_staged(port, "other").is_empty());

    // Unchanged: nothing is sent again; a touched file, and only it, is.
    let again = run(&c, s, url, &azurite_opts(port, "dst"));
    assert_eq!(again["task"]["bytes_copied"], 0, "{again}");
    assert_eq!(again["task"]["files_skipped"], tree.files);
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::File::options()
        .write(true)
        .open(src.join("hash#1.txt"))
        .unwrap()
        .set_modified(std::time::SystemTime::now())
        .unwrap();
    let again = run(&c, s, url, &azurite_opts(port, "dst"));
    assert_eq!(again["task"]["files_copied"], 1, "{again}");
    assert_eq!(again["task"]["files_skipped"], tree.files - 1);

    // Sync deletes what the source no longer has.
    std::fs::remove_file(src.join("percent%20.txt")).unwrap();
    let synced = run(
        &c,
        s,
        url,
        &with(azurite_opts(port, "dst"), &["--mode", "sync"]),
    );
    assert_eq!(synced["task"]["files_deleted"], 1, "{synced}");
    assert_eq!(azure_objects(port, "box"), as_blobs(&src, "mirror/data"));

    // A blob corrupted behind the tool's back (same size, other bytes) is caught by its
    // checksum and copied again.
    let victim = "mirror/data/question?.txt";
    let original = std::fs::read(src.join("question?.txt")).unwrap();
    let corrupt_file = tmp.path().join("corrupt");
    std::fs::write(
        &corrupt_file,
        original.iter().map(|b| b ^ 0x5a).collect::<Vec<_>>(),
    )
    .unwrap();
    azure_sdk(
        port,
        &["put", "box", victim, corrupt_file.to_str().unwrap()],
    );
    let healed = run(
        &c,
        s,
        url,
        &with(
            azurite_opts(port, "dst"),
            &["--compare", "checksum", "--verify", "checksum"],
        ),
    );
    assert_eq!(healed["task"]["state"], "completed", "{healed}");
    assert_eq!(healed["task"]["files_copied"], 1, "{healed}");
    let got = tmp.path().join("sdk-healed");
    azure_sdk(port, &["get", "box", victim, got.to_str().unwrap()]);
    assert_eq!(std::fs::read(&got).unwrap(), original);
}

#[test]
fn cancelling_a_block_upload_leaves_no_blob_and_no_staged_block() {
    let tmp = test_dir();
    let Some((_azurite, port)) = start_azurite(tmp.path()) else {
        return;
    };
    azure_sdk(port, &["create", "box"]);
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let f = std::fs::File::create(src.join("huge.bin")).unwrap();
    f.set_len(256 << 20).unwrap();
    drop(f);

    let mut c = Cluster::start(tmp.path(), &[]);
    c.add_client(&["--workers", "4"]);
    let mut args: Vec<String> = [
        "task",
        "create",
        "--src",
        src.to_str().unwrap(),
        "--dst",
        "azblob://box/in",
        "--start",
        "--part-size",
        "8MiB",
        "--speed-limit",
        "16MiB/s",
    ]
    .map(String::from)
    .to_vec();
    args.extend(azurite_opts(port, "dst"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let id = btp_json(&c.url, &args)["id"].as_str().unwrap().to_string();
    // Mid-copy: blocks are staged on the blob, which is not there yet.
    wait_for("blocks staged", Duration::from_secs(60), || {
        let t = btp_json(&c.url, &["task", "get", &id]);
        (t["bytes_copied"].as_u64().unwrap() >= 16 << 20).then_some(())
    });
    let staged = azure_staged(port, "box");
    assert!(
        staged.get("in/huge.bin").is_some_and(|n| *n >= 2),
        "{staged:?}"
    );
    assert!(
        azure_objects(port, "box").is_empty(),
        "a blob before its completion"
    );
    let t = btp_json(&c.url, &["task", "cancel", &id]);
    assert_eq!(t["state"], "cancelled");
    wait_for("the staged blocks dropped", Duration::from_secs(30), || {
        azure_staged(port, "box").is_empty().then_some(())
    });
    assert!(azure_objects(port, "box").is_empty());
    // And it stays so: no part job of the cancelled task stages anything again.
    std::thread::sleep(Duration::from_secs(3));
    assert!(azure_staged(port, "box").is_empty());
    assert!(azure_objects(port, "box").is_empty());
}

#[test]
fn a_wrong_account_key_is_one_clear_error_that_shows_no_secret() {
    let tmp = test_dir();
    let Some((_azurite, port)) = start_azurite(tmp.path()) else {
        return;
    };
    azure_sdk(port, &["create", "box"]);
    let src = tmp.path().join("src");
    gen_tree(&src, 5, 0);
    let c = Cluster::start(tmp.path(), &[]);
    // A well-formed key that is not the account's.
    let wrong = "V3JvbmdLZXlXcm9uZ0tleVdyb25nS2V5V3JvbmdLZXk=";
    let key_file = tmp.path().join("azure.key");
    std::fs::write(&key_file, format!("{wrong}\n")).unwrap();
    let key = format!("account_key=@{}", key_file.display());
    let endpoint = format!("endpoint={}", azurite_endpoint(port));
    let account = format!("account_name={AZURITE_ACCOUNT}");
    for dst_side in [true, false] {
        let (side, src_url, dst_url) = if dst_side {
            (
                "--dst-opt",
                src.to_str().unwrap().to_string(),
                "azblob://box/x".to_string(),
            )
        } else {
            (
                "--src-opt",
                "azblob://box/x".to_string(),
                tmp.path().join("out").to_string_lossy().into_owned(),
            )
        };
        let out = btp(
            &c.url,
            &[
                "task", "create", "--src", &src_url, "--dst", &dst_url, side, &endpoint, side,
                &account, side, &key,
            ],
        );
        assert!(!out.status.success());
        let line = error_line(&out);
        assert!(line.contains("azblob://box/x: access denied"), "{line}");
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!all.contains(wrong), "the key is shown: {all}");
        assert_eq!(all.trim().lines().count(), 1, "one line, not a dump: {all}");
    }
    // A missing container is named as such.
    let mut args: Vec<String> = [
        "task",
        "create",
        "--src",
        src.to_str().unwrap(),
        "--dst",
        "azblob://nothere/x",
    ]
    .map(String::from)
    .to_vec();
    args.extend(azurite_opts(port, "dst"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = btp(&c.url, &args);
    assert!(!out.status.success());
    let line = error_line(&out);
    assert!(line.contains("azblob://nothere/x does not exist"), "{line}");
    assert!(
        btp_json(&c.url, &["task", "list"])["tasks"]
            .as_array()
            .unwrap()
            .is_empty(),
        "nothing half-created"
    );
    // Neither the key in use nor the wrong one is in any log.
    for entry in std::fs::read_dir(tmp.path()).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "log") && !p.ends_with("azurite-blob.log") {
            let log = std::fs::read_to_string(&p).unwrap();
            assert!(
                !log.contains(wrong) && !log.contains(AZURITE_KEY),
                "{} shows a key",
                p.display()
            );
        }
    }
}

/// A container SAS token (made by Microsoft's SDK from the account key) instead of the key:
/// fs -> Azure (a file in blocks over Put Block and Put Block List) -> fs byte for byte, the
/// token shown nowhere; a read-and-list token as a destination fails every write with the
/// reason and leaves no blob.
#[test]
fn a_sas_token_copies_in_blocks_and_a_read_only_one_writes_nothing() {
    let tmp = test_dir();
    let Some((_azurite, port)) = start_azurite(tmp.path()) else {
        return;
    };
    azure_sdk(port, &["create", "sasbox"]);
    let full = azure_sdk(port, &["sas", "sasbox", "racwdl"])["sas"]
        .as_str()
        .unwrap()
        .to_string();
    let read_only = azure_sdk(port, &["sas", "sasbox", "rl"])["sas"]
        .as_str()
        .unwrap()
        .to_string();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("small.txt"), b"shared access").unwrap();
    std::fs::write(src.join("sub/blocks.bin"), vec![9u8; 12 << 20]).unwrap();
    let mut c = Cluster::start(tmp.path(), &[]);
    c.add_client(&["--workers", "2"]);
    let sas_opts = |side: &str, token: &str| -> Vec<String> {
        [
            format!("endpoint={}", azurite_endpoint(port)),
            format!("account_name={AZURITE_ACCOUNT}"),
            format!("sas_token={token}"),
        ]
        .into_iter()
        .flat_map(|o| [format!("--{side}-opt"), o])
        .chain(
            [
                "--multipart-threshold",
                "8MiB",
                "--part-size",
                "5MiB",
                "--verify",
                "checksum",
            ]
            .map(String::from),
        )
        .collect()
    };
    let s = src.to_str().unwrap();
    let up = run(&c, s, "azblob://sasbox/data", &sas_opts("dst", &full));
    assert_eq!(up["task"]["state"], "completed", "{up}");
    assert_eq!(up["task"]["files_copied"], 2, "{up}");
    assert_eq!(azure_objects(port, "sasbox"), as_blobs(&src, "data"));
    let back = tmp.path().join("back");
    let down = run(
        &c,
        "azblob://sasbox/data",
        back.to_str().unwrap(),
        &sas_opts("src", &full),
    );
    assert_eq!(down["task"]["state"], "completed", "{down}");
    assert_same_tree(&src, &back);
    let sig = full
        .split('&')
        .find_map(|kv| kv.strip_prefix("sig="))
        .unwrap();
    for shown in [up.to_string(), down.to_string()] {
        assert!(!shown.contains(sig), "the SAS signature is shown: {shown}");
    }

    let denied = run(
        &c,
        s,
        "azblob://sasbox/denied",
        &sas_opts("dst", &read_only),
    );
    assert_eq!(denied["task"]["state"], "failed", "{denied}");
    assert_eq!(denied["task"]["files_failed"], 2, "{denied}");
    for f in denied["failures"].as_array().unwrap() {
        let reason = f["reason"].as_str().unwrap();
        assert!(
            reason.contains("403")
                || reason.to_lowercase().contains("denied")
                || reason.contains("AuthorizationPermissionMismatch"),
            "{f}"
        );
    }
    let blobs = azure_objects(port, "sasbox");
    assert!(
        !blobs.keys().any(|k| k.starts_with("denied/")),
        "a read-only token wrote {blobs:?}"
    );
    assert!(azure_staged(port, "sasbox").is_empty());
}
