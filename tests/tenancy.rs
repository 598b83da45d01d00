//! A server run with `--admin-token-file`: every API request needs a token, tenants and their
//! tokens are managed with the admin token, and a tenant's token sees, runs and changes only
//! that tenant's tasks and clients. Real processes throughout.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use support::*;

/// `btp ... --output json` with a token; panics with stderr on failure.
fn json_as(url: &str, token: &str, args: &[&str]) -> serde_json::Value {
    json_env(url, &[("BTP_TOKEN", token)], args)
}

/// A client of tenant acme (2 workers) with extra environment.
fn acme_client(url: &str, dir: &Path, env: &[(&str, &str)]) -> Proc {
    let args = [
        "client",
        "run",
        "--id",
        "client-acme",
        "--tenant",
        "acme",
        "--workers",
        "2",
    ];
    Proc::spawn_env("client-acme", url, &args, dir, env)
}

/// Waits until `n` clients are online for the caller of `env`.
fn wait_clients(url: &str, env: &[(&str, &str)], n: usize) {
    wait_for(
        &format!("{n} clients online"),
        Duration::from_secs(30),
        || {
            let l = json_env(url, env, &["client", "list"]);
            let online = l["clients"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|c| c["online"] == true)
                .count();
            (online == n).then_some(())
        },
    );
}

/// Copies a generated tree of `files` files as the caller of `env`; returns the task's report
/// after checking it completed and the copy is identical.
fn copy_tree(url: &str, env: &[(&str, &str)], dir: &Path, files: usize) -> serde_json::Value {
    let (src, dst) = (dir.join("src"), dir.join("dst"));
    let tree = gen_tree(&src, files, 0);
    let id = start_env(url, env, &src, &dst, &[]);
    let r = finished_env(url, env, &id, Duration::from_secs(60));
    assert_eq!(r["task"]["state"], "completed", "{r}");
    assert_eq!(r["task"]["files_copied"], tree.files);
    assert_same_tree(&src, &dst);
    r
}

/// The one error line of a refused command (and that it exited non-zero).
fn refused(url: &str, token: Option<&str>, args: &[&str]) -> String {
    let out = match token {
        Some(t) => btp_as(url, t, args),
        None => btp(url, args),
    };
    assert!(!out.status.success(), "btp {args:?} should be refused");
    error_line(&out)
}

#[test]
fn tokens_authenticate_every_request_and_scope_it_to_one_tenant() {
    let tmp = test_dir();
    let admin_file = tmp.path().join("admin.token");
    let c = Cluster::start(
        tmp.path(),
        &["--admin-token-file", admin_file.to_str().unwrap()],
    );
    let url = c.url.clone();
    // The server wrote a new admin token, readable by its owner only.
    let admin = std::fs::read_to_string(&admin_file)
        .unwrap()
        .trim()
        .to_string();
    assert!(admin.starts_with("btp_") && admin.len() == 68, "{admin}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&admin_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    // No token, a wrong token: refused, with one clear line; health needs none.
    let e = refused(&url, None, &["task", "list"]);
    assert!(e.contains("requires an API token"), "{e}");
    let e = refused(&url, Some("btp_not-a-real-token"), &["task", "list"]);
    assert!(e.contains("not valid"), "{e}");
    assert!(
        !e.contains("btp_not-a-real-token"),
        "the token is not echoed: {e}"
    );
    assert!(btp(&url, &["server", "health"]).status.success());

    // The admin creates two tenants and a token for each.
    for name in ["acme", "globex"] {
        json_as(&url, &admin, &["tenant", "create", name]);
    }
    let e = refused(&url, Some(&admin), &["tenant", "create", "Bad Name"]);
    assert!(e.contains("invalid tenant name"), "{e}");
    let token_of = |tenant: &str| -> (String, String) {
        let t = json_as(
            &url,
            &admin,
            &["token", "create", "--tenant", tenant, "--label", "test"],
        );
        (
            t["token"].as_str().unwrap().to_string(),
            t["id"].as_str().unwrap().to_string(),
        )
    };
    let (acme, acme_id) = token_of("acme");
    let (globex, _) = token_of("globex");
    let e = refused(
        &url,
        Some(&admin),
        &["token", "create", "--tenant", "nobody"],
    );
    assert!(e.contains("unknown tenant 'nobody'"), "{e}");
    // Listings show ids and labels, never a token.
    let listed =
        String::from_utf8_lossy(&btp_as(&url, &admin, &["token", "list"]).stdout).to_string();
    assert!(
        listed.contains(&acme_id) && !listed.contains(&acme),
        "{listed}"
    );

    // A tenant's token cannot manage tenants.
    let e = refused(&url, Some(&acme), &["tenant", "list"]);
    assert!(e.contains("needs the admin token"), "{e}");

    // acme's client runs acme's task.
    let _client = acme_client(&url, tmp.path(), &[]);
    let acme_env = [("BTP_TOKEN", acme.as_str())];
    wait_clients(&url, &acme_env, 1);
    let r = copy_tree(&url, &acme_env, tmp.path(), 40);
    assert_eq!(r["task"]["tenant"], "acme");
    let id = r["task"]["id"].as_str().unwrap().to_string();

    // globex sees neither the task nor the client, and cannot change them.
    for args in [
        vec!["task", "get", id.as_str()],
        vec!["task", "report", id.as_str()],
        vec!["task", "retry", id.as_str()],
        vec!["task", "delete", id.as_str()],
    ] {
        let e = refused(&url, Some(&globex), &args);
        assert!(
            e.contains(&format!("unknown task id '{id}'")),
            "{args:?}: {e}"
        );
    }
    let l = json_as(&url, &globex, &["task", "list"]);
    assert_eq!(l["tasks"].as_array().unwrap().len(), 0);
    let l = json_as(&url, &globex, &["client", "list"]);
    assert_eq!(l["clients"].as_array().unwrap().len(), 0);
    let e = refused(&url, Some(&globex), &["client", "drain", "client-acme"]);
    assert!(e.contains("unknown client id"), "{e}");
    // ...and acme still sees its task (globex's delete did nothing).
    let l = json_as(&url, &acme, &["task", "list"]);
    assert_eq!(l["tasks"].as_array().unwrap().len(), 1);

    // A deleted token is refused from then on.
    json_as(&url, &admin, &["token", "delete", &acme_id]);
    let e = refused(&url, Some(&acme), &["task", "get", &id]);
    assert!(e.contains("not valid"), "{e}");
    // A tenant with a finished task can be deleted, and its other tokens go with it.
    json_as(&url, &admin, &["tenant", "delete", "globex"]);
    let e = refused(&url, Some(&globex), &["task", "list"]);
    assert!(e.contains("not valid"), "{e}");
    let tenants = json_as(&url, &admin, &["tenant", "list"]);
    assert_eq!(tenants["tenants"].as_array().unwrap().len(), 1);
    // A tenant with a task is not deleted: a tenant created again under its name would
    // inherit the task.
    let e = refused(&url, Some(&admin), &["tenant", "delete", "acme"]);
    assert!(
        e.contains("tenant 'acme' cannot be deleted: it still has 1 task;"),
        "{e}"
    );
    let tenants = json_as(&url, &admin, &["tenant", "list"]);
    assert_eq!(tenants["tenants"].as_array().unwrap().len(), 1);
}

/// `btp` with extra environment (NATS credentials, token).
fn btp_env(url: &str, env: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new(btp_bin())
        .args(args)
        .env("BTP_NATS_URL", url)
        .envs(env.iter().copied())
        .env_remove("BTP_LOG")
        .output()
        .expect("run btp")
}

fn json_env(url: &str, env: &[(&str, &str)], args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.extend(["--output", "json"]);
    let out = btp_env(url, env, &all);
    assert!(
        out.status.success(),
        "btp {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json output")
}

/// A NATS connection speaking the protocol itself, to see exactly what the server answers.
struct Raw {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Raw {
    /// Connects as `user`; returns the connection and what the server said to CONNECT.
    fn connect(port: u16, user: &str, password: &str) -> (Raw, String) {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut raw = Raw {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        };
        let mut info = String::new();
        raw.reader.read_line(&mut info).unwrap();
        assert!(info.starts_with("INFO"), "{info}");
        let connect = serde_json::json!({"verbose": true, "pedantic": false, "user": user,
            "pass": password, "protocol": 1, "lang": "test", "version": "0"});
        let answer = raw.exchange(&format!("CONNECT {connect}\r\n"));
        (raw, answer)
    }

    /// Sends `cmd` and a PING; returns every line before the PONG (or before the server hung up).
    fn exchange(&mut self, cmd: &str) -> String {
        self.writer
            .write_all(format!("{cmd}PING\r\n").as_bytes())
            .unwrap();
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) if line.trim() == "PONG" => break,
                Ok(_) => lines.push(line.trim().to_string()),
            }
        }
        lines.join(" | ")
    }
}

#[test]
fn a_tenants_nats_user_reaches_only_its_own_subjects() {
    let tmp = test_dir();
    let port = btp_nats::launcher::free_port().unwrap();
    let conf = tmp.path().join("nats-conf");
    let listen = format!("127.0.0.1:{port}");
    let store = tmp.path().join("js");
    let out = btp(
        "nats://unused",
        &[
            "nats",
            "config",
            "--tenant",
            "acme",
            "--tenant",
            "globex",
            "--dir",
            path(&conf),
            "--listen",
            &listen,
            "--store-dir",
            path(&store),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let nats = Command::new(btp_nats::launcher::find_binary().unwrap())
        .args(["-c", path(&conf.join("nats-server.conf"))])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(tmp.path().join("nats.log")).unwrap())
        .spawn()
        .unwrap();
    let _nats = KillOnDrop(nats);
    wait_for("nats-server", Duration::from_secs(15), || {
        TcpStream::connect(("127.0.0.1", port)).ok()
    });
    let url = format!("nats://{listen}");
    let creds = |user: &str| {
        btp_nats::auth::Credentials::read(&conf.join(format!("{user}.creds"))).unwrap()
    };
    let acme = creds("tenant-acme");

    // The server refuses a wrong password, and every subject of another tenant.
    let (_, answer) = Raw::connect(port, "tenant-acme", "wrong");
    assert!(answer.contains("Authorization Violation"), "{answer}");
    let (mut conn, answer) = Raw::connect(port, &acme.user, &acme.password);
    assert_eq!(answer, "+OK");
    for denied in [
        "SUB btp.jobs.globex.> 1\r\n",
        "SUB btp.jobs.acme.> 2\r\n",
        "SUB btp.control.globex 3\r\n",
        "SUB _INBOX.tenant-globex.> 4\r\n",
        "SUB btp.results.acme.> 5\r\n",
        "PUB btp.results.globex.t1 2\r\nhi\r\n",
        "PUB btp.jobs.globex.t1 2\r\nhi\r\n",
        "PUB $JS.API.CONSUMER.MSG.NEXT.BTP_JOBS.workers-globex 2\r\n{}\r\n",
        "PUB $JS.ACK.BTP_JOBS.workers-globex.1.1.1.1.1.0 2\r\n+A\r\n",
    ] {
        let answer = conn.exchange(denied);
        assert!(
            answer.contains("Permissions Violation"),
            "{denied:?}: {answer}"
        );
    }
    for allowed in [
        "SUB btp.control.acme 6\r\n",
        "SUB _INBOX.tenant-acme.> 7\r\n",
        "PUB btp.results.acme.t1 2\r\nhi\r\n",
    ] {
        assert_eq!(conn.exchange(allowed), "+OK", "{allowed:?}");
    }

    // The server and acme's client work with just those permissions.
    let server_creds = conf.join("server.creds");
    let admin_file = tmp.path().join("admin.token");
    let server_env = [("BTP_NATS_CREDS", path(&server_creds))];
    let _server = Proc::spawn_env(
        "server",
        &url,
        &[
            "server",
            "run",
            "--data-dir",
            path(&tmp.path().join("server")),
            "--admin-token-file",
            path(&admin_file),
        ],
        tmp.path(),
        &server_env,
    );
    wait_for("server", Duration::from_secs(30), || {
        btp_env(&url, &server_env, &["server", "health"])
            .status
            .success()
            .then_some(())
    });
    let admin = std::fs::read_to_string(&admin_file)
        .unwrap()
        .trim()
        .to_string();
    let admin_env = [
        ("BTP_NATS_CREDS", path(&server_creds)),
        ("BTP_TOKEN", admin.as_str()),
    ];
    json_env(&url, &admin_env, &["tenant", "create", "acme"]);
    let t = json_env(&url, &admin_env, &["token", "create", "--tenant", "acme"]);
    let token = t["token"].as_str().unwrap().to_string();
    let acme_creds = conf.join("tenant-acme.creds");
    let acme_env = [
        ("BTP_NATS_CREDS", path(&acme_creds)),
        ("BTP_TOKEN", token.as_str()),
    ];
    let _client = acme_client(&url, tmp.path(), &acme_env);
    wait_clients(&url, &acme_env, 1);
    copy_tree(&url, &acme_env, tmp.path(), 30);
    // No password or token in any log of the run.
    let secrets = [acme.password.as_str(), token.as_str(), admin.as_str()];
    for entry in std::fs::read_dir(tmp.path()).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "log") {
            let log = std::fs::read_to_string(&p).unwrap();
            for s in secrets {
                assert!(!log.contains(s), "{} shows a secret", p.display());
            }
        }
    }
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A cluster with tokens required, its admin token, and tenants created with `extra` flags.
fn tenant_cluster(dir: &Path, tenants: &[(&str, &[&str])]) -> (Cluster, String, Vec<String>) {
    let admin_file = dir.join("admin.token");
    let c = Cluster::start(dir, &["--admin-token-file", admin_file.to_str().unwrap()]);
    let admin = std::fs::read_to_string(&admin_file)
        .unwrap()
        .trim()
        .to_string();
    let mut tokens = Vec::new();
    for (name, extra) in tenants {
        let mut args = vec!["tenant", "create", name];
        args.extend_from_slice(extra);
        json_as(&c.url, &admin, &args);
        let t = json_as(&c.url, &admin, &["token", "create", "--tenant", name]);
        tokens.push(t["token"].as_str().unwrap().to_string());
    }
    (c, admin, tokens)
}

/// Creates and starts a task as the caller of `env`; returns its id.
fn start_env(url: &str, env: &[(&str, &str)], src: &Path, dst: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "task",
        "create",
        "--src",
        path(src),
        "--dst",
        path(dst),
        "--start",
    ];
    args.extend_from_slice(extra);
    json_env(url, env, &args)["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Waits until the task ends; returns its report.
fn finished_env(url: &str, env: &[(&str, &str)], id: &str, timeout: Duration) -> serde_json::Value {
    wait_for(&format!("task {id}"), timeout, || {
        let t = json_env(url, env, &["task", "get", id]);
        (t["state"] != "running").then_some(t)
    });
    json_env(url, env, &["task", "report", id])
}

fn start_as(url: &str, token: &str, src: &Path, dst: &Path, extra: &[&str]) -> String {
    start_env(url, &[("BTP_TOKEN", token)], src, dst, extra)
}

fn finished_as(url: &str, token: &str, id: &str, timeout: Duration) -> serde_json::Value {
    finished_env(url, &[("BTP_TOKEN", token)], id, timeout)
}

#[test]
fn a_small_task_of_one_tenant_is_not_starved_by_a_large_task_of_another() {
    let tmp = test_dir();
    let (c, _, tokens) = tenant_cluster(
        tmp.path(),
        &[("big", &["--max-tasks", "1"]), ("small", &[])],
    );
    let (big, small) = (&tokens[0], &tokens[1]);
    // Two clients shared by both tenants.
    let mut clients = Vec::new();
    for id in ["shared-1", "shared-2"] {
        clients.push(Proc::spawn_env(
            id,
            &c.url,
            &[
                "client",
                "run",
                "--id",
                id,
                "--tenant",
                "big",
                "--tenant",
                "small",
                "--fs-root",
                path(tmp.path()),
                "--workers",
                "2",
            ],
            tmp.path(),
            &[],
        ));
    }
    wait_clients(&c.url, &[("BTP_TOKEN", small.as_str())], 2);
    // One job per file, so the large task is a deep queue of jobs.
    let one = ["--batch-files", "1"];
    let small_src = tmp.path().join("small-src");
    let small_tree = gen_tree(&small_src, 200, 0);

    // The small task alone.
    let id = start_as(&c.url, small, &small_src, &tmp.path().join("alone"), &one);
    let alone = finished_as(&c.url, small, &id, Duration::from_secs(120));
    assert_eq!(alone["task"]["state"], "completed");
    let alone_ms = alone["duration_ms"].as_u64().unwrap();

    // The large task first, then the small one while it runs.
    let big_src = tmp.path().join("big-src");
    let big_tree = gen_tree(&big_src, 20_000, 0);
    let big_dst = tmp.path().join("big-dst");
    let big_id = start_as(&c.url, big, &big_src, &big_dst, &one);
    wait_for("the large task under way", Duration::from_secs(60), || {
        let t = json_as(&c.url, big, &["task", "get", &big_id]);
        (t["files_copied"].as_u64().unwrap() >= 500).then_some(())
    });
    // Its tenant's quota: one running task.
    let e = refused(
        &c.url,
        Some(big),
        &[
            "task",
            "create",
            "--src",
            path(&small_src),
            "--dst",
            path(&tmp.path().join("x")),
            "--start",
        ],
    );
    assert!(e.contains("quota"), "{e}");
    let listed = json_as(&c.url, big, &["task", "list"]);
    assert_eq!(
        listed["tasks"].as_array().unwrap().len(),
        1,
        "the refused task was not created"
    );

    let small_dst = tmp.path().join("small-dst");
    let id = start_as(&c.url, small, &small_src, &small_dst, &one);
    let together = finished_as(&c.url, small, &id, Duration::from_secs(120));
    assert_eq!(together["task"]["state"], "completed");
    assert_eq!(together["task"]["files_copied"], small_tree.files);
    let together_ms = together["duration_ms"].as_u64().unwrap();
    let big_now = json_as(&c.url, big, &["task", "get", &big_id]);
    assert_eq!(
        big_now["state"], "running",
        "the large task was still running meanwhile"
    );
    // Starvation shows first above: a client that served the large tenant's queue first would
    // finish the whole large task (tens of seconds here) before the small one. The time bound
    // is wide, five times the time alone plus 5 s: beside a large task the small one's listing
    // (one round trip through the server per directory level) shares the workers, and a 2-core
    // machine measured 2.3x to 5.8x.
    assert!(
        together_ms <= 5 * alone_ms + 5000,
        "small task: {together_ms} ms beside the large one, {alone_ms} ms alone"
    );
    eprintln!("small task: {alone_ms} ms alone, {together_ms} ms beside the large task");
    assert_same_tree(&small_src, &small_dst);

    let big_done = finished_as(&c.url, big, &big_id, Duration::from_secs(600));
    assert_eq!(big_done["task"]["files_copied"], big_tree.files);
    assert_same_tree(&big_src, &big_dst);
}

#[test]
fn a_tenants_speed_quota_holds_over_its_tasks() {
    let tmp = test_dir();
    let (c, _, tokens) = tenant_cluster(tmp.path(), &[("slow", &["--speed-limit", "8MiB/s"])]);
    let token = &tokens[0];
    let _client = Proc::spawn_env(
        "client-slow",
        &c.url,
        &[
            "client",
            "run",
            "--id",
            "client-slow",
            "--tenant",
            "slow",
            "--workers",
            "4",
        ],
        tmp.path(),
        &[],
    );
    wait_clients(&c.url, &[("BTP_TOKEN", token.as_str())], 1);
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..4 {
        std::fs::write(src.join(format!("f{i}.bin")), vec![i as u8; 6 << 20]).unwrap();
    }
    let id = start_as(&c.url, token, &src, &tmp.path().join("dst"), &[]);
    let r = finished_as(&c.url, token, &id, Duration::from_secs(120));
    assert_eq!(r["task"]["state"], "completed");
    let secs = r["duration_ms"].as_u64().unwrap() as f64 / 1000.0;
    let rate = (24 << 20) as f64 / secs / (1 << 20) as f64;
    // 24 MiB at 8 MiB/s: not faster than the quota allows (a first burst aside).
    assert!(rate <= 8.0 * 1.3, "{rate:.1} MiB/s over {secs:.1} s");
    assert_same_tree(&src, &tmp.path().join("dst"));
}

#[test]
fn the_http_gateway_answers_like_the_nats_api_with_the_same_tokens() {
    let tmp = test_dir();
    let addr = format!("127.0.0.1:{}", btp_nats::launcher::free_port().unwrap());
    let admin_file = tmp.path().join("admin.token");
    let c = Cluster::start(
        tmp.path(),
        &[
            "--admin-token-file",
            path(&admin_file),
            "--http-addr",
            &addr,
        ],
    );
    let admin = std::fs::read_to_string(&admin_file)
        .unwrap()
        .trim()
        .to_string();
    let post = |verb: &str, token: Option<&str>, body: &str| {
        let (status, body) = http_post(&addr, &format!("/api/v1/{verb}"), token, body);
        let v: serde_json::Value = serde_json::from_str(&body).expect("a JSON answer");
        (status, v)
    };
    let (status, v) = post("server.health", None, "{}");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["ok"]["api"], "v1");
    // The same refusals as over NATS, with matching statuses.
    let (status, v) = post("task.list", None, "{}");
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (401, Some("unauthenticated"))
    );
    let (status, _) = post("task.list", Some("btp_wrong"), "{}");
    assert_eq!(status, 401);
    let (status, v) = post("tenant.create", Some(&admin), r#"{"name": "acme"}"#);
    assert_eq!(status, 200, "{v}");
    let (_, v) = post("token.create", Some(&admin), r#"{"tenant": "acme"}"#);
    let acme = v["ok"]["token"].as_str().unwrap().to_string();
    let (status, v) = post("tenant.list", Some(&acme), "{}");
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (403, Some("permission_denied"))
    );
    let (status, v) = post("task.get", Some(&acme), r#"{"id": "nope"}"#);
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (status, v) = post("task.list", Some(&acme), r#"{"limit": "many"}"#);
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("invalid_argument"))
    );
    let (status, _) = post("no.such.verb", Some(&acme), "{}");
    assert_eq!(status, 404);
    let big = format!("{{\"pad\": \"{}\"}}", "x".repeat(100 << 10));
    let (status, _) = post("task.list", Some(&acme), &big);
    assert_eq!(status, 413);
    let (status, v) = http_post(&addr, "/elsewhere", None, "");
    assert_eq!(status, 404, "{v}");

    // A task created over HTTP is the one the CLI sees over NATS.
    let src = tmp.path().join("src");
    gen_tree(&src, 5, 0);
    let body = serde_json::json!({"src": path(&src), "dst": path(&tmp.path().join("dst"))});
    let (status, v) = post("task.create", Some(&acme), &body.to_string());
    assert_eq!(status, 200, "{v}");
    let id = v["ok"]["id"].as_str().unwrap();
    let t = json_as(&c.url, &acme, &["task", "get", id]);
    assert_eq!(
        (t["tenant"].as_str(), t["state"].as_str()),
        (Some("acme"), Some("created"))
    );
    // The console is served to anyone (it holds no data); its CSV report needs the token of
    // the task's tenant like every other call.
    let page = http_get(&addr, "/");
    assert!(page.contains("<title>BeyondTP</title>") && page.contains("/console.js"));
    assert!(http_get(&addr, "/console.js").contains("/api/v1/"));
    let csv = |token: Option<&str>| {
        http_post(
            &addr,
            "/api/v1/task.report.csv",
            token,
            &format!(r#"{{"id": "{id}"}}"#),
        )
    };
    assert_eq!(csv(None).0, 401);
    post("tenant.create", Some(&admin), r#"{"name": "globex"}"#);
    let (_, v) = post("token.create", Some(&admin), r#"{"tenant": "globex"}"#);
    let other = v["ok"]["token"].as_str().unwrap().to_string();
    assert_eq!(csv(Some(&other)).0, 404, "another tenant's report");
    assert_eq!(
        csv(Some(&acme)),
        (
            200,
            "path,size,status,attempts,reason,not_kept\n".to_string()
        ),
        "a task not started has no files yet"
    );
    // A taken address fails the server's start with one line.
    let out = btp(
        &c.url,
        &[
            "server",
            "run",
            "--data-dir",
            path(&tmp.path().join("second")),
            "--http-addr",
            &addr,
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot serve the HTTP API on {addr}")),
        "{err}"
    );
}

#[test]
fn named_endpoints_keep_their_secrets_and_belong_to_one_tenant() {
    let tmp = test_dir();
    let (c, _, tokens) = tenant_cluster(tmp.path(), &[("acme", &[]), ("globex", &[])]);
    let (url, acme, globex) = (c.url.clone(), &tokens[0], &tokens[1]);
    let _client = acme_client(&url, tmp.path(), &[]);
    wait_clients(&url, &[("BTP_TOKEN", acme.as_str())], 1);
    let (data, out) = (tmp.path().join("data"), tmp.path().join("out"));
    gen_tree(&data.join("in"), 20, 0);
    json_as(&url, acme, &["endpoint", "create", "data", path(&data)]);
    json_as(&url, acme, &["endpoint", "create", "out", path(&out)]);
    // Credentials go in and never come back out.
    let secret = "S3CR3T-never-shown";
    let e = json_as(
        &url,
        acme,
        &[
            "endpoint",
            "create",
            "archive",
            "s3://bucket/prefix",
            "--opt",
            "access_key_id=AK",
            "--opt",
            &format!("secret_access_key={secret}"),
        ],
    );
    assert_eq!(e["url"], "s3://bucket/prefix");
    assert_eq!(
        e["option_keys"],
        serde_json::json!(["access_key_id", "secret_access_key"])
    );
    let listed = json_as(&url, acme, &["endpoint", "list"]);
    assert_eq!(listed["endpoints"].as_array().unwrap().len(), 3);
    assert!(!listed.to_string().contains(secret));
    let table =
        String::from_utf8_lossy(&btp_as(&url, acme, &["endpoint", "list"]).stdout).to_string();
    assert!(
        table.contains("archive") && !table.contains(secret),
        "{table}"
    );

    // A task on named endpoints.
    let t = json_as(
        &url,
        acme,
        &[
            "task",
            "create",
            "--src",
            "data:/in",
            "--dst",
            "out:/copy",
            "--start",
        ],
    );
    assert_eq!(t["src"], format!("fs://{}/in", path(&data)));
    let id = t["id"].as_str().unwrap().to_string();
    let r = finished_as(&url, acme, &id, Duration::from_secs(60));
    assert_eq!(r["task"]["state"], "completed", "{r}");
    assert_same_tree(&data.join("in"), &out.join("copy"));

    // Clear refusals, and nothing created.
    for (args, want) in [
        (
            vec!["task", "create", "--src", "nope:/x", "--dst", "out:/y"],
            "unknown endpoint 'nope'",
        ),
        (
            vec![
                "task",
                "create",
                "--src",
                "data:/in",
                "--dst",
                "out:/y",
                "--src-opt",
                "region=x",
            ],
            "options go with the endpoint 'data'",
        ),
        (
            vec!["task", "create", "--src", "data:/../etc", "--dst", "out:/y"],
            "'..' is not allowed",
        ),
        (
            vec!["endpoint", "create", "data", "/tmp"],
            "endpoint 'data' already exists",
        ),
        (
            vec!["endpoint", "create", "bad", "gopher://x/y"],
            "unsupported endpoint scheme 'gopher'",
        ),
        (
            vec!["endpoint", "create", "Bad Name", "/tmp"],
            "invalid endpoint name",
        ),
    ] {
        let e = refused(&url, Some(acme), &args);
        assert!(e.contains(want), "{args:?}: {e}");
    }
    assert_eq!(
        json_as(&url, acme, &["task", "list"])["tasks"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Another tenant has none of them.
    let l = json_as(&url, globex, &["endpoint", "list"]);
    assert_eq!(l["endpoints"].as_array().unwrap().len(), 0);
    let e = refused(
        &url,
        Some(globex),
        &["task", "create", "--src", "data:/in", "--dst", "/tmp/x"],
    );
    assert!(e.contains("unknown endpoint 'data'"), "{e}");
    let e = refused(&url, Some(globex), &["endpoint", "delete", "data"]);
    assert!(e.contains("unknown endpoint 'data'"), "{e}");
    // Deleted: gone for new tasks.
    json_as(&url, acme, &["endpoint", "delete", "data"]);
    let e = refused(
        &url,
        Some(acme),
        &["task", "create", "--src", "data:/in", "--dst", "out:/z"],
    );
    assert!(e.contains("unknown endpoint 'data'"), "{e}");
}

// ---- A hostile tenant (issue 16): real nats-server with the generated per-tenant users ----

/// nats-server with the users of `btp nats config`, the server with its own user, an admin
/// token and metrics, and the tenants with a token each.
struct AuthCluster {
    url: String,
    conf: std::path::PathBuf,
    metrics: String,
    admin: String,
    tokens: std::collections::BTreeMap<String, String>,
    port: u16,
    _server: Proc,
    _nats: KillOnDrop,
}

impl AuthCluster {
    fn start(dir: &Path, tenants: &[&str]) -> AuthCluster {
        let port = btp_nats::launcher::free_port().unwrap();
        let conf = dir.join("nats-conf");
        let listen = format!("127.0.0.1:{port}");
        let mut args = vec!["nats", "config"];
        for t in tenants {
            args.extend(["--tenant", t]);
        }
        let store = dir.join("js");
        args.extend(["--dir", path(&conf), "--listen", &listen]);
        args.extend(["--store-dir", path(&store)]);
        let out = btp("nats://unused", &args);
        assert!(out.status.success(), "{}", error_line(&out));
        let nats = Command::new(btp_nats::launcher::find_binary().unwrap())
            .args(["-c", path(&conf.join("nats-server.conf"))])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("nats.log")).unwrap())
            .spawn()
            .unwrap();
        let nats = KillOnDrop(nats);
        wait_for("nats-server", Duration::from_secs(15), || {
            TcpStream::connect(("127.0.0.1", port)).ok()
        });
        let url = format!("nats://{listen}");
        let admin_file = dir.join("admin.token");
        let metrics = format!("127.0.0.1:{}", btp_nats::launcher::free_port().unwrap());
        let server_creds = conf.join("server.creds");
        let server_env = [("BTP_NATS_CREDS", path(&server_creds))];
        let server = Proc::spawn_env(
            "server",
            &url,
            &[
                "server",
                "run",
                "--data-dir",
                path(&dir.join("server")),
                "--admin-token-file",
                path(&admin_file),
                "--metrics-addr",
                &metrics,
            ],
            dir,
            &server_env,
        );
        wait_for("server", Duration::from_secs(30), || {
            btp_env(&url, &server_env, &["server", "health"])
                .status
                .success()
                .then_some(())
        });
        let admin = std::fs::read_to_string(&admin_file)
            .unwrap()
            .trim()
            .to_string();
        let mut c = AuthCluster {
            url,
            conf,
            metrics,
            admin,
            tokens: Default::default(),
            port,
            _server: server,
            _nats: nats,
        };
        for t in tenants {
            let admin_env = c.admin_env();
            let env: Vec<(&str, &str)> = admin_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            json_env(&c.url, &env, &["tenant", "create", t]);
            let tok = json_env(&c.url, &env, &["token", "create", "--tenant", t]);
            c.tokens
                .insert(t.to_string(), tok["token"].as_str().unwrap().to_string());
        }
        c
    }

    fn creds(&self, user: &str) -> String {
        path(&self.conf.join(format!("{user}.creds"))).to_string()
    }

    fn admin_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("BTP_NATS_CREDS", self.creds("server")),
            ("BTP_TOKEN", self.admin.clone()),
        ]
    }

    /// NATS credentials and API token of `tenant`.
    fn env(&self, tenant: &str) -> Vec<(&'static str, String)> {
        vec![
            ("BTP_NATS_CREDS", self.creds(&format!("tenant-{tenant}"))),
            ("BTP_TOKEN", self.tokens[tenant].clone()),
        ]
    }

    /// A raw NATS connection as `tenant`'s user.
    fn raw(&self, tenant: &str) -> Raw {
        let c =
            btp_nats::auth::Credentials::read(&self.conf.join(format!("tenant-{tenant}.creds")))
                .unwrap();
        let (raw, answer) = Raw::connect(self.port, &c.user, &c.password);
        assert_eq!(answer, "+OK");
        raw
    }

    /// The value of a server counter with these labels (0 when absent).
    fn metric(&self, name_and_labels: &str) -> f64 {
        let text = http_get(&self.metrics, "/metrics");
        text.lines()
            .find_map(|l| l.strip_prefix(name_and_labels))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }
}

fn envs<'a>(e: &'a [(&'static str, String)]) -> Vec<(&'a str, &'a str)> {
    e.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

impl Raw {
    /// Publishes `payload` on `subject`; returns what the server answered.
    fn publish(&mut self, subject: &str, payload: &[u8]) -> String {
        let mut cmd = format!("PUB {subject} {}\r\n", payload.len()).into_bytes();
        cmd.extend_from_slice(payload);
        cmd.extend_from_slice(b"\r\n");
        self.exchange(std::str::from_utf8(&cmd).unwrap())
    }
}

/// A result as a client would send it.
fn forged(
    tenant: &str,
    task: &str,
    seq: i64,
    last: bool,
    body: btp_common::wire::ResultBody,
) -> Vec<u8> {
    serde_json::to_vec(&btp_common::wire::JobResult {
        v: btp_common::WIRE_VERSION,
        job: format!("{task}.{seq}"),
        tenant: tenant.into(),
        task: task.into(),
        client: "client-acme".into(),
        seq: 0,
        last,
        attempt: 1,
        bytes_through: 0,
        body,
    })
    .unwrap()
}

fn forged_copy(files: u64) -> btp_common::wire::ResultBody {
    btp_common::wire::ResultBody::Copy {
        files_copied: files,
        bytes_copied: files,
        files_skipped: 0,
        bytes_skipped: 0,
        failures: vec![],
        retry: vec![],
        retry_after_ms: 0,
        would_copy: vec![],
        up_to_date: vec![],
        changed: vec![],
        not_kept: vec![],
    }
}

fn forged_page() -> btp_common::wire::ResultBody {
    btp_common::wire::ResultBody::ListPage {
        files: vec![btp_common::wire::FileEntry::new("injected.txt", 5, None)],
        dirs: vec!["injected-dir".into()],
        excluded: 0,
        deleted: vec![],
        skipped: 0,
        bytes_skipped: 0,
        noted: vec![],
        extra: vec![],
        verdicts: vec![],
    }
}

#[test]
fn a_hostile_tenant_cannot_forge_results_or_heartbeats_for_another() {
    let tmp = test_dir();
    let c = AuthCluster::start(tmp.path(), &["acme", "globex"]);
    let (acme_e, globex_e) = (c.env("acme"), c.env("globex"));
    let (acme, globex) = (envs(&acme_e), envs(&globex_e));
    let _client = acme_client(&c.url, tmp.path(), &acme);
    wait_clients(&c.url, &acme, 1);
    let before = json_env(&c.url, &acme, &["client", "list"]);

    // acme's task runs for some seconds (a speed limit) while globex attacks it.
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    let tree = gen_tree(&src, 60, 12 << 20);
    let id = start_env(&c.url, &acme, &src, &dst, &["--speed-limit", "2MiB/s"]);
    let mut raw = c.raw("globex");
    // nats-server refuses acme's subjects to globex's user...
    let on_acme = format!("btp.results.acme.{id}");
    let answer = raw.publish(&on_acme, &forged("acme", &id, 1, true, forged_copy(1)));
    assert!(answer.contains("Permissions Violation"), "{answer}");
    let answer = raw.publish("btp.agents.acme.heartbeat", b"{}");
    assert!(answer.contains("Permissions Violation"), "{answer}");
    // ...and the server drops what globex may publish on its own subjects, whatever the body says.
    let on_globex = format!("btp.results.globex.{id}");
    let mut sent = 0;
    for seq in 0..40 {
        for tenant in ["acme", "globex"] {
            let r = forged(tenant, &id, seq, true, forged_copy(1000));
            assert_eq!(raw.publish(&on_globex, &r), "+OK");
            let r = forged(tenant, &id, seq, true, forged_page());
            assert_eq!(raw.publish(&on_globex, &r), "+OK");
            sent += 2;
        }
    }
    // A heartbeat naming acme on globex's subject, and one posing as acme's client id.
    let hb = |tenant: &str| {
        serde_json::to_vec(&btp_common::wire::Heartbeat {
            v: btp_common::WIRE_VERSION,
            id: "client-acme".into(),
            host: "evil".into(),
            tenant: tenant.into(),
            workers: 99,
            busy: 0,
            started_ms: 1,
            jobs_done: 0,
            online: true,
            draining: true,
            tasks: vec![id.clone()],
            tenants: vec![],
            fs_roots: None,
        })
        .unwrap()
    };
    for _ in 0..3 {
        assert_eq!(
            raw.publish("btp.agents.globex.heartbeat", &hb("acme")),
            "+OK"
        );
        assert_eq!(
            raw.publish("btp.agents.globex.heartbeat", &hb("globex")),
            "+OK"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    wait_for(
        "the forged results dropped",
        Duration::from_secs(20),
        || {
            (c.metric("btp_server_results_rejected_total{reason=\"tenant\"}") >= sent as f64)
                .then_some(())
        },
    );
    assert!(c.metric("btp_server_heartbeats_rejected_total{reason=\"tenant\"}") >= 3.0);
    let t = json_env(&c.url, &acme, &["task", "get", &id]);
    assert_eq!(t["state"], "running", "not completed early: {t}");
    // acme's client list is unchanged: same host, workers, not draining.
    let after = json_env(&c.url, &acme, &["client", "list"]);
    let strip = |v: &serde_json::Value| {
        v["clients"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["id"].clone(),
                    c["host"].clone(),
                    c["tenant"].clone(),
                    c["workers"].clone(),
                    c["draining"].clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&before), strip(&after), "{after}");
    // The speed share of acme's one client is still the whole limit: the posing client does
    // not count for acme.
    let mut control = c.raw("acme");
    assert_eq!(control.exchange("SUB btp.control.acme 1\r\n"), "+OK");
    let share = wait_for("a speed share", Duration::from_secs(10), || {
        let mut line = String::new();
        control.reader.read_line(&mut line).ok()?;
        if !line.starts_with("MSG") {
            return None;
        }
        let mut body = String::new();
        control.reader.read_line(&mut body).ok()?;
        let v: serde_json::Value = serde_json::from_str(body.trim()).ok()?;
        (v["action"] == "limit").then(|| v["bytes_per_sec"].as_u64())?
    });
    assert_eq!(share, 2 << 20, "acme's one client gets the whole limit");

    let r = finished_env(&c.url, &acme, &id, Duration::from_secs(120));
    assert_eq!(r["task"]["state"], "completed", "{r}");
    assert_eq!(r["task"]["files_copied"], tree.files);
    assert_eq!(r["task"]["files_found"], tree.files);
    assert_same_tree(&src, &dst);
    assert!(!dst.join("injected.txt").exists());
    let report = report_entries_env(&c.url, &acme, &id);
    assert_eq!(report.len() as u64, tree.files, "nothing injected");
    assert!(report.values().all(|e| e.outcome == "copied"), "{report:?}");
    let want: std::collections::BTreeSet<String> = tree_files(&src).into_keys().collect();
    let got: std::collections::BTreeSet<String> = report.into_keys().collect();
    assert_eq!(want, got);
    // globex sees nothing of it.
    let l = json_env(&c.url, &globex, &["client", "list"]);
    assert!(
        l["clients"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["host"] == "evil"),
        "{l}"
    );
}

#[test]
fn poison_results_delay_no_other_task_and_are_counted() {
    let tmp = test_dir();
    let c = AuthCluster::start(tmp.path(), &["acme", "idle"]);
    let (acme_e, idle_e) = (c.env("acme"), c.env("idle"));
    let (acme, idle) = (envs(&acme_e), envs(&idle_e));
    let _client = acme_client(&c.url, tmp.path(), &acme);
    wait_clients(&c.url, &acme, 1);
    let src = tmp.path().join("src");
    let tree = gen_tree(&src, 2000, 0);

    // Alone.
    let alone_dst = tmp.path().join("alone");
    let id = start_env(&c.url, &acme, &src, &alone_dst, &[]);
    let r = finished_env(&c.url, &acme, &id, Duration::from_secs(300));
    assert_eq!(r["task"]["state"], "completed", "{r}");
    let alone_ms = r["duration_ms"].as_u64().unwrap();

    // A task of a tenant with no client: its root List job stays live, and results that do not
    // fit it (an upload begun, a part) stream in all along.
    let victim = start_env(&c.url, &idle, &src, &tmp.path().join("never"), &[]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut raw = c.raw("idle");
    let subject = format!("btp.results.idle.{victim}");
    let poisons = [
        forged(
            "idle",
            &victim,
            0,
            true,
            btp_common::wire::ResultBody::Begun {
                upload_id: "u1".into(),
                file: None,
            },
        ),
        forged("idle", &victim, 0, true, forged_copy(5)),
    ];
    let flag = stop.clone();
    let poisoner = std::thread::spawn(move || {
        let mut sent = 0u64;
        // 50 at a time, about 1,000 a second.
        let mut burst = String::new();
        for i in 0..50 {
            let p = std::str::from_utf8(&poisons[i % 2]).unwrap();
            burst.push_str(&format!("PUB {subject} {}\r\n{p}\r\n", p.len()));
        }
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            let answer = raw.exchange(&burst);
            assert_eq!(answer.matches("+OK").count(), 50, "{answer}");
            sent += 50;
            std::thread::sleep(Duration::from_millis(50));
        }
        sent
    });
    std::thread::sleep(Duration::from_millis(500));
    let beside_dst = tmp.path().join("beside");
    let id = start_env(&c.url, &acme, &src, &beside_dst, &[]);
    let r = finished_env(&c.url, &acme, &id, Duration::from_secs(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = poisoner.join().unwrap();
    assert_eq!(r["task"]["state"], "completed", "{r}");
    assert_eq!(r["task"]["files_copied"], tree.files);
    assert_same_tree(&src, &beside_dst);
    let beside_ms = r["duration_ms"].as_u64().unwrap();
    eprintln!("2,000 files: {alone_ms} ms alone, {beside_ms} ms beside {sent} poison results");
    // Poison costs the server a decode and a drop each; a victim held up behind it (results
    // in one queue applied in order) would wait for all of it. A factor of 3 plus 2 s leaves
    // room for a loaded 2-core machine (the test runs alone: .config/nextest.toml) and is far
    // below the minutes the poison stream lasts.
    assert!(
        beside_ms as f64 <= 3.0 * alone_ms as f64 + 2000.0,
        "{beside_ms} ms beside poison, {alone_ms} ms alone"
    );
    // Every poison is terminated and counted; the victim's job is untouched.
    wait_for("every poison counted", Duration::from_secs(30), || {
        let n = c.metric("btp_server_results_rejected_total{reason=\"poison\"}");
        (n >= sent as f64).then_some(())
    });
    let v = json_env(&c.url, &idle, &["task", "get", &victim]);
    assert_eq!(
        (v["state"].as_str(), v["jobs_done"].as_u64()),
        (Some("running"), Some(0)),
        "{v}"
    );
}

#[test]
fn a_shared_client_touches_no_path_outside_its_fs_roots() {
    let tmp = test_dir();
    let c = AuthCluster::start(tmp.path(), &["acme", "globex"]);
    let (globex_e, admin_e) = (c.env("globex"), c.admin_env());
    let (globex, admin) = (envs(&globex_e), envs(&admin_e));
    let (shared, outside) = (tmp.path().join("shared"), tmp.path().join("outside"));
    let tree = gen_tree(&shared.join("src"), 20, 0);
    gen_tree(&outside.join("src"), 20, 0);
    std::fs::create_dir_all(outside.join("dst")).unwrap();
    std::fs::write(outside.join("dst/keep.txt"), "the host's own").unwrap();
    let untouched = walk(&outside);

    // Before any client is online nothing is known: a task on paths outside is accepted, and
    // the shared client refuses its jobs before touching the file system.
    let early = start_env(
        &c.url,
        &globex,
        &outside.join("src"),
        &outside.join("dst"),
        &[],
    );
    let later = json_env(
        &c.url,
        &globex,
        &[
            "task",
            "create",
            "--src",
            path(&shared.join("src")),
            "--dst",
            path(&outside.join("later")),
        ],
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    let client = |id: &str, roots: &[&Path]| {
        let mut args = vec![
            "client", "run", "--id", id, "--tenant", "acme", "--tenant", "globex",
        ];
        for r in roots {
            args.extend(["--fs-root", path(r)]);
        }
        // The server's user is allowed every tenant's subjects.
        Proc::spawn_env(id, &c.url, &args, tmp.path(), &admin)
    };
    let _shared_client = client("shared-1", &[&shared]);
    let r = finished_env(&c.url, &globex, &early, Duration::from_secs(60));
    assert_eq!(r["task"]["state"], "failed", "{r}");
    let failures = r["failures"].to_string();
    assert!(
        failures.contains("path outside this client's --fs-root"),
        "{r}"
    );
    assert_eq!(
        walk(&outside),
        untouched,
        "nothing read or written outside the roots"
    );

    // Once the client is online, the server refuses such a task at once.
    wait_clients(&c.url, &globex, 1);
    let refused_create = btp_env(
        &c.url,
        &globex,
        &[
            "task",
            "create",
            "--src",
            path(&outside.join("src")),
            "--dst",
            path(&shared.join("stolen")),
            "--start",
        ],
    );
    assert!(!refused_create.status.success());
    let e = error_line(&refused_create);
    assert!(
        e.contains("no online client of tenant 'globex' may touch this path")
            && e.contains(path(&std::fs::canonicalize(&shared).unwrap())),
        "{e}"
    );
    assert!(!shared.join("stolen").exists());
    // ...and at start, for a task created before any client was online.
    let out = btp_env(&c.url, &globex, &["task", "start", &later]);
    assert!(!out.status.success());
    let e = error_line(&out);
    assert!(
        e.contains("destination") && e.contains("no online client of tenant 'globex'"),
        "{e}"
    );
    assert!(!outside.join("later").exists());
    // Paths inside the roots copy as usual.
    let id = start_env(
        &c.url,
        &globex,
        &shared.join("src"),
        &shared.join("dst"),
        &[],
    );
    let r = finished_env(&c.url, &globex, &id, Duration::from_secs(60));
    assert_eq!(r["task"]["state"], "completed", "{r}");
    assert_eq!(r["task"]["files_copied"], tree.files);
    assert_same_tree(&shared.join("src"), &shared.join("dst"));
    assert_eq!(walk(&outside), untouched);
}
