//! RDS against a local AWS API mock (moto's server mode): snapshot jobs
//! with a cross-region copy, retention by tag that leaves hand-made
//! snapshots alone, restores into new instances, refusals (existing target,
//! time outside the window) and AWS errors surfaced, and drills into
//! scratch instances whose checks run against a real PostgreSQL server.
//!
//! Where the mock differs from AWS: it ignores RestoreTime and reports the
//! instance's creation time as LatestRestorableTime, so the window check is
//! drctl's own (tested here by refusals) and a restore inside the window
//! uses that exact instant.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{Drctl, PgCluster, S3Server};

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

    // A lost catalog comes back from the snapshots' tags.
    for f in ["catalog.db", "catalog.db-wal", "catalog.db-shm"] {
        let _ = std::fs::remove_file(d.path().join(f));
    }
    let rb = d
        .run(&["catalog", "rebuild", "--output", "json"])
        .ok()
        .json();
    assert_eq!(rb["rds_snapshots"], 2, "{rb}");
    let rebuilt: Vec<String> = d
        .list("billing")
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(rebuilt, listed);

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
    let (hook, got) = common::webhook();
    d.write_policy_text(
        "gone",
        &format!("[source]\nkind = \"rds\"\ninstance = \"no-such-instance\"\nregion = \"us-east-1\"\n\n[backup]\nmethod = \"rds-snapshot\"\n\n[notify]\nwebhook_url = \"{hook}\"\n"),
    );
    let r = d.run(&["backup", "gone"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    // The failure reaches the webhook, with AWS's error in it.
    let sent = got.lock().unwrap().clone();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(
        sent[0].to_string().contains("DBInstanceNotFound"),
        "{sent:?}"
    );
    assert!(sent[0].to_string().contains("backup_failed"), "{sent:?}");
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

/// Aurora: cluster snapshots, tagged and pruned the same way.
#[test]
fn cluster_snapshots_are_made_and_pruned_by_tag() {
    let (aws, d) = setup();
    boto(
        &aws,
        "r = rds('us-east-1')\n\
         r.create_db_cluster(DBClusterIdentifier='ledger', Engine='aurora-postgresql', MasterUsername='admin', MasterUserPassword='not-a-secret-1')\n\
         r.create_db_cluster_snapshot(DBClusterSnapshotIdentifier='ledger-by-hand', DBClusterIdentifier='ledger')\n\
         print('null')",
    );
    d.write_policy_text(
        "ledger",
        "[source]\nkind = \"rds\"\ncluster = \"ledger\"\nregion = \"us-east-1\"\n\n[backup]\nmethod = \"rds-snapshot\"\n\n[retention]\nkeep_last = 1\n",
    );
    let first = d.run(&["backup", "ledger", "--output", "json"]).ok().json();
    let second = d.run(&["backup", "ledger", "--output", "json"]).ok().json();
    let v = boto(
        &aws,
        "print(json.dumps(sorted(s['DBClusterSnapshotIdentifier'] for s in rds('us-east-1').describe_db_cluster_snapshots(SnapshotType='manual')['DBClusterSnapshots'])))",
    );
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert!(names.contains(&"ledger-by-hand"), "{names:?}");
    assert!(
        names.contains(&second["snapshot"].as_str().unwrap()),
        "{names:?}"
    );
    assert!(
        !names.contains(&first["snapshot"].as_str().unwrap()),
        "{names:?}"
    );
    // Restoring a cluster is refused clearly rather than half done.
    let r = d.run(&[
        "restore",
        "ledger",
        "--latest",
        "--target-instance",
        "ledger-2",
    ]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("Aurora"), "{}", r.stderr);
}

fn instances(aws: &S3Server) -> Vec<String> {
    let v = boto(
        aws,
        "print(json.dumps(sorted(i['DBInstanceIdentifier'] for i in rds('us-east-1').describe_db_instances()['DBInstances'])))",
    );
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

fn check<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {report}"))
}

/// Drills: the mock gives a restored instance the source's port and an
/// endpoint name that resolves nowhere; libpq's own PGHOSTADDR sends the
/// checks to a real PostgreSQL server on loopback holding the data, which
/// requires the password from `password_env`.
#[test]
fn drills_check_a_scratch_instance_and_always_delete_it() {
    let (aws, mut d) = setup();
    let pg = PgCluster::start_with(&[
        "host all postgres 127.0.0.1/32 trust",
        "host all all 127.0.0.1/32 scram-sha-256",
    ]);
    pg.psql(
        "postgres",
        "create role ledger_admin login superuser password 'drill-pw-7'; create database ledger owner ledger_admin;",
    );
    pg.psql(
        "ledger",
        "create table invoices (id int primary key, amount numeric); insert into invoices select g, g * 1.5 from generate_series(1, 3) g;",
    );
    boto(
        &aws,
        &format!(
            "r = rds('us-east-1')\n\
             r.create_db_instance(DBInstanceIdentifier='ledger-prod', DBInstanceClass='db.t3.micro', Engine='postgres', MasterUsername='ledger_admin', MasterUserPassword='drill-pw-7', DBName='ledger', Port={}, AllocatedStorage=20, BackupRetentionPeriod=7)\n\
             tags = lambda started: [{{'Key': 'drctl:drill-of', 'Value': 'ledger'}}, {{'Key': 'drctl:drill-started', 'Value': started}}]\n\
             r.create_db_instance(DBInstanceIdentifier='drctl-drill-ledger-dead0001', DBInstanceClass='db.t3.micro', Engine='postgres', MasterUsername='x', MasterUserPassword='not-a-secret-1', AllocatedStorage=20, Tags=tags('2020-01-01T00:00:00Z'))\n\
             r.create_db_instance(DBInstanceIdentifier='drctl-drill-ledger-running', DBInstanceClass='db.t3.micro', Engine='postgres', MasterUsername='x', MasterUserPassword='not-a-secret-1', AllocatedStorage=20, Tags=tags('2099-01-01T00:00:00Z'))\n\
             r.create_db_instance(DBInstanceIdentifier='scratch-by-hand', DBInstanceClass='db.t3.micro', Engine='postgres', MasterUsername='x', MasterUserPassword='not-a-secret-1', AllocatedStorage=20)\n\
             print('null')",
            pg.port
        ),
    );
    let policy = |expect: &str| {
        format!(
            "[source]\nkind = \"rds\"\ninstance = \"ledger-prod\"\nregion = \"us-east-1\"\npassword_env = \"LEDGER_PW\"\n\n[backup]\nmethod = \"rds-snapshot\"\n\n[drill]\n[[drill.checks]]\nname = \"three invoices\"\nsql = \"select count(*) from invoices\"\nexpect = \"{expect}\"\n"
        )
    };
    d.write_policy_text("ledger", &policy("3"));
    let before = instances(&aws);

    // The secret is checked before any instance exists.
    let r = d.run(&["drill", "ledger"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("LEDGER_PW"), "{}", r.stderr);
    assert_eq!(instances(&aws), before);

    d.extra_env.extend([
        ("PGHOSTADDR".to_string(), "127.0.0.1".to_string()),
        ("LEDGER_PW".to_string(), "drill-pw-7".to_string()),
    ]);
    // Nothing to drill yet: a failure that says so.
    let r = d.run(&["drill", "ledger", "--output", "json"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("drctl backup ledger"));

    let b = d.run(&["backup", "ledger", "--output", "json"]).ok().json();
    let junit = d.path().join("drill.xml");
    let r = d.run(&[
        "drill",
        "ledger",
        "--junit",
        junit.to_str().unwrap(),
        "--output",
        "json",
    ]);
    let rep = r.json();
    assert_eq!(r.code, 0, "{rep}\n{}", r.stderr);
    assert_eq!(rep["passed"], true);
    assert_eq!(rep["backup_id"], b["id"]);
    assert!(check(&rep, "restore")["detail"]
        .as_str()
        .unwrap()
        .contains("drctl-drill-ledger-"));
    assert_eq!(check(&rep, "three invoices")["passed"], true, "{rep}");
    assert_eq!(
        check(&rep, "amcheck (btree indexes)")["passed"],
        true,
        "{rep}"
    );
    assert_eq!(check(&rep, "cleanup")["passed"], true, "{rep}");
    assert!(rep["rto_seconds"].as_f64().unwrap() > 0.0);
    assert!(rep["rpo_seconds"].as_f64().unwrap() >= 0.0);
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(
        xml.contains("three invoices") && xml.contains("failures=\"0\""),
        "{xml}"
    );
    // The scratch instance is gone, and so is the stale leftover of a
    // killed drill; a fresh one (a drill still running) and an instance
    // made by hand are untouched.
    let after = instances(&aws);
    assert!(
        !after
            .iter()
            .any(|i| i.starts_with("drctl-drill-ledger-") && i != "drctl-drill-ledger-running"),
        "{after:?}"
    );
    assert!(after.contains(&"drctl-drill-ledger-running".to_string()));
    assert!(after.contains(&"scratch-by-hand".to_string()));
    assert!(!r.stderr.contains("drill-pw-7") && !r.stdout.contains("drill-pw-7"));
    let status = d.run(&["status", "ledger", "--output", "json"]).ok().json();
    assert_eq!(status[0]["last_drill_passed"], true, "{status}");

    // A failing check fails the drill, and the scratch instance still goes.
    d.write_policy_text("ledger", &policy("4"));
    let r = d.run(&["drill", "ledger", "--output", "json"]);
    let rep = r.json();
    assert_eq!(r.code, 1, "{rep}");
    assert_eq!(rep["passed"], false);
    let c = check(&rep, "three invoices");
    assert_eq!(c["passed"], false);
    assert_eq!(c["actual"], "3", "{c}");
    assert_eq!(check(&rep, "cleanup")["passed"], true, "{rep}");
    let now = instances(&aws);
    assert_eq!(now, after, "the failed drill left an instance behind");

    // A wrong password fails at once (no waiting for a server that is up).
    d.write_policy_text("ledger", &policy("3"));
    let mut wrong = d.extra_env.clone();
    wrong.retain(|(k, _)| k != "LEDGER_PW");
    wrong.push(("LEDGER_PW".into(), "not-it".into()));
    let saved = std::mem::replace(&mut d.extra_env, wrong);
    let t = std::time::Instant::now();
    let r = d.run(&["drill", "ledger", "--output", "json"]);
    d.extra_env = saved;
    let rep = r.json();
    assert_eq!(r.code, 1, "{rep}");
    assert!(check(&rep, "restore")["detail"]
        .as_str()
        .unwrap()
        .contains("password authentication failed"));
    assert!(t.elapsed().as_secs() < 60, "waited for a wrong password");
    assert_eq!(instances(&aws), after);

    // Point in time: outside the window is a failed drill naming the
    // window, creating nothing; inside it, --keep leaves the instance up
    // and says how to delete it.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let r = d.run(&["drill", "ledger", "--to", "3d-ago", "--output", "json"]);
    assert_eq!(r.code, 1);
    assert!(check(&r.json(), "restore")["detail"]
        .as_str()
        .unwrap()
        .contains("outside the restorable window"));
    assert_eq!(instances(&aws), after);
    let plan = d
        .run(&[
            "restore",
            "ledger",
            "--latest",
            "--target-instance",
            "x-plan",
            "--dry-run",
            "--output",
            "json",
        ])
        .ok()
        .json();
    let latest = plan["window_end"].as_str().unwrap();
    // Where the scratch instance goes and its size come from the policy.
    boto(
        &aws,
        "ec2 = boto3.client('ec2', region_name='us-east-1', endpoint_url=ep, aws_access_key_id='testing', aws_secret_access_key='testing')\n\
         vpc = ec2.create_vpc(CidrBlock='10.9.0.0/16')['Vpc']['VpcId']\n\
         a = ec2.create_subnet(VpcId=vpc, CidrBlock='10.9.1.0/24', AvailabilityZone='us-east-1a')['Subnet']['SubnetId']\n\
         b = ec2.create_subnet(VpcId=vpc, CidrBlock='10.9.2.0/24', AvailabilityZone='us-east-1b')['Subnet']['SubnetId']\n\
         rds('us-east-1').create_db_subnet_group(DBSubnetGroupName='ledger-private', DBSubnetGroupDescription='x', SubnetIds=[a, b])\n\
         print('null')",
    );
    d.write_policy_text(
        "ledger",
        &policy("3").replace(
            "[backup]",
            "db_subnet_group = \"ledger-private\"\nvpc_security_group_ids = [\"sg-0drill\"]\n\n[backup]",
        ).replace("[drill]\n", "[drill]\ninstance_class = \"db.t3.small\"\n"),
    );
    let r = d.run(&[
        "drill", "ledger", "--to", latest, "--keep", "--output", "json",
    ]);
    let rep = r.json();
    assert_eq!(r.code, 0, "{rep}\n{}", r.stderr);
    assert_eq!(rep["target_time"], latest);
    assert!(rep["backup_id"].is_null());
    let kept = rep["scratch"].as_str().unwrap();
    assert!(kept.contains("aws rds delete-db-instance"), "{kept}");
    let left: Vec<String> = instances(&aws)
        .into_iter()
        .filter(|i| !after.contains(i))
        .collect();
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(kept.contains(&left[0]), "{kept}");
    let placed = boto(
        &aws,
        &format!("i = rds('us-east-1').describe_db_instances(DBInstanceIdentifier='{}')['DBInstances'][0]\nprint(json.dumps([i['DBInstanceClass'], i['DBSubnetGroup']['DBSubnetGroupName'], [g['VpcSecurityGroupId'] for g in i['VpcSecurityGroups']]]))", left[0]),
    );
    assert_eq!(
        placed,
        serde_json::json!(["db.t3.small", "ledger-private", ["sg-0drill"]])
    );
}

/// The example policy in docs/ is a valid policy.
#[test]
fn documented_example_policy_checks() {
    let d = Drctl::new();
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/examples/billing-rds.toml"),
    )
    .unwrap();
    d.write_policy_text("billing", &text);
    let r = d.run(&["policy", "check"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
}
