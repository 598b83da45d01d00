//! A server run with `--admin-token-file`: every API request needs a token, tenants and their
//! tokens are managed with the admin token, and a tenant's token sees, runs and changes only
//! that tenant's tasks and clients. Real processes throughout.

mod support;

use std::path::Path;
use std::time::Duration;

use support::*;

/// `btp ... --output json` with a token; panics with stderr on failure.
fn json_as(url: &str, token: &str, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.extend(["--output", "json"]);
    let out = btp_as(url, token, &all);
    assert!(
        out.status.success(),
        "btp {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json output")
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
    let _client = Proc::spawn_env(
        "client-acme",
        &url,
        &[
            "client",
            "run",
            "--id",
            "client-acme",
            "--tenant",
            "acme",
            "--workers",
            "2",
        ],
        tmp.path(),
        &[],
    );
    wait_for("acme's client online", Duration::from_secs(30), || {
        let l = json_as(&url, &acme, &["client", "list"]);
        (l["clients"].as_array().unwrap().len() == 1).then_some(())
    });
    let src = tmp.path().join("src");
    let tree = gen_tree(&src, 40, 0);
    let dst = tmp.path().join("dst");
    let t = json_as(
        &url,
        &acme,
        &[
            "task",
            "create",
            "--src",
            path(&src),
            "--dst",
            path(&dst),
            "--start",
        ],
    );
    let id = t["id"].as_str().unwrap().to_string();
    assert_eq!(t["tenant"], "acme");
    let done = wait_for("acme's task", Duration::from_secs(60), || {
        let t = json_as(&url, &acme, &["task", "get", &id]);
        (t["state"] != "running").then_some(t)
    });
    assert_eq!(done["state"], "completed");
    assert_eq!(done["files_copied"], tree.files);
    assert_same_tree(&src, &dst);

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
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}
