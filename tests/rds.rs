//! RDS against a local AWS API mock (moto's server mode): snapshot jobs
//! with a cross-region copy, retention by tag that leaves hand-made
//! snapshots alone, restores into new instances, refusals (existing target,
//! time outside the window) and AWS errors surfaced.
//!
//! Where the mock differs from AWS: it ignores RestoreTime and reports the
//! instance's creation time as LatestRestorableTime, so the window check is
//! drctl's own (tested here by refusals) and a restore inside the window
//! uses that exact instant.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{Drctl, S3Server};

fn python() -> PathBuf {
    let moto = std::env::var_os("DRCTL_TEST_MOTO")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/moto_server")
        });
    moto.parent().unwrap().join("python3")
}

/// Run boto3 against the mock; the script's stdout (JSON).
fn boto(aws: &S3Server, script: &str) -> serde_json::Value {
    let prelude = format!(
        "import boto3, json\nep = '{}'\ndef rds(region):\n    return boto3.client('rds', region_name=region, endpoint_url=ep, aws_access_key_id='testing', aws_secret_access_key='testing')\n",
        aws.endpoint()
    );
    let out = Command::new(python())
        .args(["-c", &format!("{prelude}{script}")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "boto3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

fn snapshots(aws: &S3Server, region: &str) -> Vec<String> {
    let v = boto(
        aws,
        &format!("print(json.dumps(sorted(s['DBSnapshotIdentifier'] for s in rds('{region}').describe_db_snapshots(SnapshotType='manual')['DBSnapshots'])))"),
    );
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

fn setup() -> (S3Server, Drctl) {
    let aws = S3Server::start();
    boto(
        &aws,
        "r = rds('us-east-1')\n\
         r.create_db_instance(DBInstanceIdentifier='billing-prod', DBInstanceClass='db.t3.micro', Engine='postgres', MasterUsername='admin', MasterUserPassword='not-a-secret-1', AllocatedStorage=20, BackupRetentionPeriod=7)\n\
         r.create_db_snapshot(DBSnapshotIdentifier='by-hand', DBInstanceIdentifier='billing-prod')\n\
         r.create_db_snapshot(DBSnapshotIdentifier='by-hand-tagged-other', DBInstanceIdentifier='billing-prod', Tags=[{'Key': 'drctl:policy', 'Value': 'other'}, {'Key': 'drctl:backup-id', 'Value': 'x'}])\n\
         print('null')",
    );
    let mut d = Drctl::new();
    d.extra_env.extend([
        ("AWS_ENDPOINT_URL".to_string(), aws.endpoint()),
        ("DRCTL_RDS_POLL_MS".to_string(), "100".to_string()),
        ("DRCTL_RDS_WAIT_SECONDS".to_string(), "30".to_string()),
    ]);
    d.write_policy_text(
        "billing",
        "[source]\nkind = \"rds\"\ninstance = \"billing-prod\"\nregion = \"us-east-1\"\ncopy_to_region = \"us-west-2\"\n\n[backup]\nmethod = \"rds-snapshot\"\nschedule = \"0 4 * * *\"\n\n[retention]\nkeep_last = 2\n",
    );
    (aws, d)
}

#[test]
fn snapshots_copies_and_retention_by_tag() {
    let (aws, d) = setup();
    let mut made = Vec::new();
    for _ in 0..3 {
        let b = d
            .run(&["backup", "billing", "--output", "json"])
            .ok()
            .json();
        assert_eq!(b["region"], "us-east-1");
        assert_eq!(b["copy_region"], "us-west-2");
        made.push((
            b["id"].as_str().unwrap().to_string(),
            b["snapshot"].as_str().unwrap().to_string(),
        ));
    }
    // keep_last = 2: the first is gone from both regions; the hand-made
    // snapshots, including one tagged for another policy, are untouched.
    let east = snapshots(&aws, "us-east-1");
    let west = snapshots(&aws, "us-west-2");
    let mut want: Vec<String> = vec![
        "by-hand".into(),
        "by-hand-tagged-other".into(),
        made[1].1.clone(),
        made[2].1.clone(),
    ];
    want.sort();
    assert_eq!(east, want);
    let mut want_west = vec![made[1].1.clone(), made[2].1.clone()];
    want_west.sort();
    assert_eq!(west, want_west);
    // The snapshots carry drctl's tags.
    let tags = boto(
        &aws,
        &format!("r = rds('us-east-1')\narn = r.describe_db_snapshots(DBSnapshotIdentifier='{}')['DBSnapshots'][0]['DBSnapshotArn']\nprint(json.dumps({{t['Key']: t['Value'] for t in r.list_tags_for_resource(ResourceName=arn)['TagList']}}))", made[2].1),
    );
    assert_eq!(tags["drctl:policy"], "billing");
    assert_eq!(tags["drctl:backup-id"], made[2].0.as_str());

    let listed: Vec<String> = d
        .list("billing")
        .iter()
        .filter(|b| b["status"] == "complete")
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed, [made[2].0.clone(), made[1].0.clone()]);
    let s = d
        .run(&["status", "billing", "--output", "json"])
        .ok()
        .json();
    assert_eq!(s[0]["last_backup_id"], made[2].0.as_str());

    // prune --dry-run says why each stays.
    let p = d
        .run(&["prune", "billing", "--dry-run", "--output", "json"])
        .ok()
        .json();
    assert!(p.as_array().unwrap().iter().all(|e| e["action"] == "keep"));
}

#[test]
fn restores_into_new_instances_and_refuses_what_it_must() {
    let (aws, d) = setup();
    let b = d
        .run(&["backup", "billing", "--output", "json"])
        .ok()
        .json();
    let id = b["id"].as_str().unwrap();

    // From a snapshot, by drctl backup id.
    let r = d
        .run(&[
            "restore",
            "billing",
            "--backup",
            id,
            "--target-instance",
            "billing-restored",
            "--output",
            "json",
        ])
        .ok()
        .json();
    assert_eq!(r["status"], "available", "{r}");
    assert!(
        r["endpoint"].as_str().unwrap().contains("billing-restored"),
        "{r}"
    );
    assert_eq!(r["snapshot"], b["snapshot"]);

    // An existing target is refused before anything happens.
    let e = d.run(&[
        "restore",
        "billing",
        "--latest",
        "--target-instance",
        "billing-restored",
    ]);
    assert_eq!(e.code, 2, "{}", e.stderr);
    assert!(
        e.stderr.contains("billing-restored already exists"),
        "{}",
        e.stderr
    );
    // So is the source itself.
    let e = d.run(&[
        "restore",
        "billing",
        "--latest",
        "--target-instance",
        "billing-prod",
    ]);
    assert_eq!(e.code, 2, "{}", e.stderr);
    assert!(e.stderr.contains("never restores in place"), "{}", e.stderr);

    // Point in time: the window is drctl's own check. (The mock's window
    // runs from the instance's creation to now: give it a whole second.)
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let plan = d
        .run(&[
            "restore",
            "billing",
            "--latest",
            "--target-instance",
            "billing-pitr",
            "--dry-run",
            "--output",
            "json",
        ])
        .ok()
        .json();
    let latest = plan["window_end"].as_str().unwrap().to_string();
    assert!(plan["window_start"].is_string());
    assert_eq!(plan["dry_run"], true);
    let e = d.run(&[
        "restore",
        "billing",
        "--to",
        "3d-ago",
        "--target-instance",
        "billing-pitr",
    ]);
    assert_eq!(e.code, 2, "{}", e.stderr);
    assert!(
        e.stderr.contains("outside the restorable window") && e.stderr.contains(&latest),
        "{}",
        e.stderr
    );
    let e = d.run(&[
        "restore",
        "billing",
        "--to",
        "2099-01-01T00:00:00Z",
        "--target-instance",
        "billing-pitr",
    ]);
    assert_eq!(e.code, 2, "{}", e.stderr);
    // The dry run and refusals created nothing.
    let exists = boto(
        &aws,
        "print(json.dumps([i['DBInstanceIdentifier'] for i in rds('us-east-1').describe_db_instances()['DBInstances']]))",
    );
    assert!(!exists.to_string().contains("billing-pitr"), "{exists}");

    let r = d
        .run(&[
            "restore",
            "billing",
            "--to",
            &latest,
            "--target-instance",
            "billing-pitr",
            "--output",
            "json",
        ])
        .ok()
        .json();
    assert_eq!(r["status"], "available", "{r}");
    assert_eq!(r["target_time"], latest.as_str());
}

#[test]
fn aws_errors_fail_the_backup_with_their_message() {
    let (_aws, d) = setup();
    d.write_policy_text(
        "gone",
        "[source]\nkind = \"rds\"\ninstance = \"no-such-instance\"\nregion = \"us-east-1\"\n\n[backup]\nmethod = \"rds-snapshot\"\n",
    );
    let r = d.run(&["backup", "gone"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("DBInstanceNotFound"), "{}", r.stderr);
    assert!(r.stderr.contains("no-such-instance"), "{}", r.stderr);
    let rows = d.list("gone");
    assert_eq!(rows[0]["status"], "failed");
    assert!(
        !r.stderr.contains("testing"),
        "credentials in the error: {}",
        r.stderr
    );
}
