//! `drctl status`: last backup, RPO and failures since the last success,
//! from real backups and a real failure.

mod common;

use common::{Drctl, PgCluster};

#[test]
fn status_reports_rpo_window_and_failures_since_the_last_success() {
    let pg = PgCluster::start();
    pg.createdb("shop");
    pg.psql("shop", "CREATE TABLE t AS SELECT 1 AS id;");
    let d = Drctl::new();
    d.write_policy("shop", &pg.url("shop"), "");
    // A policy whose server is down: its backups fail.
    d.write_policy("gone", "postgres://postgres@127.0.0.1:1/gone", "");

    let first = d.backup("shop");
    let last = d.backup("shop");
    assert_eq!(d.run(&["backup", "gone"]).code, 1);
    assert_eq!(d.run(&["backup", "gone"]).code, 1);

    let v = d.run(&["status", "--output", "json"]).ok().json();
    let by = |name: &str| {
        v.as_array()
            .unwrap()
            .iter()
            .find(|s| s["policy"] == name)
            .unwrap()
            .clone()
    };
    let shop = by("shop");
    assert_eq!(shop["last_backup_id"], last.as_str());
    assert_eq!(shop["failures_since_success"], 0);
    let rpo = shop["rpo_seconds"].as_i64().unwrap();
    assert!((0..120).contains(&rpo), "{shop}");
    let listed = d.list("shop");
    let consistent =
        |id: &str| listed.iter().find(|b| b["id"] == id).unwrap()["consistent_at"].clone();
    assert_eq!(shop["window_start"], consistent(&first));
    assert_eq!(shop["window_end"], consistent(&last));
    assert_eq!(shop["next_backup_at"].as_str().unwrap().len(), 20);

    let gone = by("gone");
    assert_eq!(gone["failures_since_success"], 2);
    assert!(gone["rpo_seconds"].is_null());
    assert!(gone["last_backup_at"].is_null());
    assert!(
        gone["last_error"].as_str().unwrap().contains("127.0.0.1"),
        "{gone}"
    );

    let text = d.run(&["status"]).ok().stdout;
    assert!(text.contains("shop") && text.contains("never"), "{text}");
}

#[test]
fn a_broken_policy_file_is_its_own_row_and_hides_no_other() {
    let pg = PgCluster::start();
    pg.createdb("shop");
    pg.psql("shop", "CREATE TABLE t AS SELECT 1 AS id;");
    let d = Drctl::new();
    d.write_policy("shop", &pg.url("shop"), "");
    let id = d.backup("shop");
    d.write_policy_text("bad", "[source\nkind = ");

    let r = d.run(&["status", "--output", "json"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let v = r.json();
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{v}");
    assert_eq!(rows[0]["policy"], "bad", "{v}");
    assert!(
        rows[0]["error"].as_str().unwrap().contains("bad.toml"),
        "{v}"
    );
    assert_eq!(rows[1]["policy"], "shop", "{v}");
    assert_eq!(rows[1]["last_backup_id"], id.as_str(), "{v}");
    let text = d.run(&["status"]);
    assert_eq!(text.code, 1);
    assert!(
        text.stdout.contains("bad") && text.stdout.contains("error:"),
        "{}",
        text.stdout
    );
    assert!(text.stdout.contains("shop"), "{}", text.stdout);

    // From another directory, with only the policies named: the default
    // catalog is the one beside them, not one in the working directory.
    let elsewhere = tempfile::tempdir().unwrap();
    let out = d
        .command(&["list", "--output", "json"])
        .env_remove("DRCTL_CATALOG")
        .current_dir(elsewhere.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!elsewhere.path().join("drctl.db").exists());
    let beside = d.path().join("drctl.db");
    assert!(beside.exists(), "no catalog beside the policies directory");
    // It holds no backup (this test's backups went to DRCTL_CATALOG), and
    // list says which catalog it read.
    let out = d
        .command(&["list"])
        .env_remove("DRCTL_CATALOG")
        .current_dir(elsewhere.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&beside.display().to_string()), "{text}");
}

/// Sources that accept a connection and never answer (a hung server, a
/// black-holed proxy): each is asked within its own bound, and the
/// policies' sources are asked at once, not one after another: eight took
/// 40 s when they were, which a status page then waited for.
#[test]
fn silent_sources_are_asked_at_once_and_each_within_its_bound() {
    let (port, _silent) = common::silent_server();
    let d = Drctl::new();
    for i in 0..8 {
        d.write_physical_policy(
            &format!("p{i}"),
            &format!("postgres://u@127.0.0.1:{port}/db"),
        );
    }
    let t0 = std::time::Instant::now();
    let r = d.run(&["status", "--output", "json"]);
    let took = t0.elapsed();
    let v = r.json();
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 8, "{v}");
    for s in rows {
        // Unanswered: what the repository knows, and said to be that.
        assert_eq!(s["archive"]["from"], "repository", "{s}");
        assert_eq!(s["archive"]["failing"], serde_json::Value::Null, "{s}");
    }
    assert!(
        took < std::time::Duration::from_secs(20),
        "status over 8 silent sources took {took:?}"
    );
}
