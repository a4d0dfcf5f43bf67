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
