//! Policies, init, the catalog and secrets, driven through the binary.

mod common;

use common::{Drctl, PgCluster, SAMPLE_SQL};

#[test]
fn policy_check_reports_every_problem_with_file_key_and_reason() {
    let d = Drctl::new();
    let repo = format!("file://{}", d.repo_dir().display());
    d.write_policy("good", "postgres://backup@127.0.0.1:5432/orders", "");
    d.write_policy_text(
        "typo",
        &format!(
            "[source]\nkind = \"postgres\"\nurl = \"postgres://u@h/db\"\n[backup]\nmethod = \"dump\"\n\
             [retention]\nkeep_dayly = 7\n[repository]\nurl = \"{repo}\"\n[encryption]\nrecipients = [\"{}\"]\n",
            d.recipient
        ),
    );
    d.write_policy_text(
        "secret",
        &format!(
            "[source]\nkind = \"postgres\"\nurl = \"postgres://u:hunter2-topsecret@h/db\"\n[backup]\nmethod = \"dump\"\n\
             schedule = \"61 * * * *\"\n[repository]\nurl = \"{repo}\"\n[encryption]\nrecipients = [\"age1notakey\"]\n"
        ),
    );
    d.write_policy_text("broken", "[source\nkind = ");

    let r = d.run(&["policy", "check"]);
    assert_eq!(r.code, 2, "{} {}", r.stdout, r.stderr);
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(
        all.contains("typo.toml") && all.contains("retention.keep_dayly"),
        "{all}"
    );
    assert!(
        all.contains("secret.toml") && all.contains("source.url"),
        "{all}"
    );
    assert!(all.contains("backup.schedule"), "{all}");
    assert!(all.contains("encryption.recipients"), "{all}");
    assert!(all.contains("broken.toml"), "{all}");
    assert!(
        !all.contains("hunter2-topsecret"),
        "a password is never echoed: {all}"
    );

    let j = d.run(&["policy", "check", "--output", "json"]);
    assert_eq!(j.code, 2);
    let v = j.json();
    assert_eq!(v["ok"], false);
    let keys: Vec<String> = v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["key"].as_str().unwrap().to_string())
        .collect();
    assert!(keys.iter().any(|k| k == "retention.keep_dayly"), "{keys:?}");

    // Only the named policy: the good one passes on its own.
    d.run(&["policy", "check", "good"]).ok();
    // Commands on a broken policy are usage errors that touch nothing.
    let r = d.run(&["backup", "typo"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(
        !d.repo_dir().exists(),
        "nothing written for a broken policy"
    );
    let r = d.run(&["backup", "nosuch"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("good"),
        "lists known policies: {}",
        r.stderr
    );
}

#[test]
fn usage_errors_exit_2() {
    let d = Drctl::new();
    d.write_policy("good", "postgres://backup@127.0.0.1:5432/orders", "");
    for args in [
        vec!["restore", "good"],
        vec!["restore", "good", "--latest", "--backup", "x"],
        vec!["frobnicate"],
        vec!["list", "--output", "yaml"],
        vec!["show", "not-an-id"],
        vec![
            "restore",
            "good",
            "--to-lsn",
            "0/3000060",
            "--to-xid",
            "745",
        ],
        vec!["restore", "good", "--to", "now", "--to-xid", "745"],
    ] {
        let r = d.run(&args);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
    }
    // A dump is not replayed: WAL targets are refused, naming why.
    let r = d.run(&[
        "restore",
        "good",
        "--to-lsn",
        "0/3000060",
        "--target",
        "postgres://x@127.0.0.1:1/y",
    ]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("for physical policies"), "{}", r.stderr);
}

#[test]
fn init_writes_a_valid_policy_and_a_private_key_only_we_can_read() {
    use std::os::unix::fs::PermissionsExt;
    let pg = PgCluster::start();
    pg.createdb("shop");
    pg.psql("shop", SAMPLE_SQL);
    let d = Drctl::new();
    let repo = format!("file://{}/repo2", d.path().display());
    let r = d
        .run(&[
            "init",
            "--repo",
            &repo,
            "--source",
            &pg.url("shop"),
            "--name",
            "shop",
        ])
        .ok();
    assert!(r.stdout.contains("age1"), "{}", r.stdout);
    let key = d.path().join("drctl-identity.txt");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(std::fs::read_to_string(&key)
        .unwrap()
        .contains("AGE-SECRET-KEY-1"));
    let policy = std::fs::read_to_string(d.path().join("policies/shop.toml")).unwrap();
    assert!(
        !policy.contains("AGE-SECRET-KEY"),
        "private key never in a policy"
    );
    d.run(&["policy", "check"]).ok();
    // The generated pair works end to end.
    let id = d.backup("shop");
    d.run(&[
        "restore",
        "shop",
        "--backup",
        &id,
        "--target",
        &pg.url("shop2"),
        "--identity",
        key.to_str().unwrap(),
    ])
    .ok();
    assert_eq!(pg.fingerprint("shop2"), pg.fingerprint("shop"));
    // The policy's comment names it by its own name.
    let text = std::fs::read_to_string(d.path().join("policies/shop.toml")).unwrap();
    assert!(text.contains("file stem (\"shop\")"), "{text}");
    assert!(!text.contains("\"example\""), "{text}");
    // A second init must not overwrite the policy.
    let r = d.run(&["init", "--repo", &repo, "--name", "shop"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
}

#[test]
fn catalog_rebuild_recovers_every_backup_without_the_key() {
    let pg = PgCluster::start();
    pg.createdb("shop");
    pg.psql("shop", SAMPLE_SQL);
    let d = Drctl::new();
    d.write_policy("shop", &pg.url("shop"), "");
    d.write_policy("other", &pg.url("postgres"), "");
    let a = d.backup("shop");
    let b = d.backup("shop");
    let c = d.backup("other");
    let before = d.list("shop");
    // A leftover without a manifest (a crashed backup) must not come back
    // as a backup.
    let crashed = d.repo_dir().join("shop/backups/20200101T000000Z-dead");
    std::fs::create_dir_all(&crashed).unwrap();
    std::fs::write(crashed.join("data.zst.age"), b"partial").unwrap();

    std::fs::remove_file(d.catalog()).unwrap();
    // No identity anywhere: the manifests are enough.
    std::fs::remove_file(&d.identity).unwrap();
    let r = d
        .run(&["catalog", "rebuild", "--output", "json"])
        .ok()
        .json();
    assert_eq!(r["backups"], 3);
    assert_eq!(r["incomplete"], 1);
    let after = d.list("shop");
    let ids: Vec<&str> = after.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec![b.as_str(), a.as_str()], "newest first");
    for (x, y) in before.iter().zip(after.iter()) {
        for f in [
            "id",
            "policy",
            "method",
            "status",
            "consistent_at",
            "stored_bytes",
            "source_bytes",
        ] {
            assert_eq!(x[f], y[f], "field {f}");
        }
    }
    assert_eq!(d.list("other")[0]["id"], c.as_str());
    // Rebuilding again is idempotent, and forgets backups deleted from the repo.
    std::fs::remove_dir_all(d.repo_dir().join(format!("shop/backups/{a}"))).unwrap();
    d.run(&["catalog", "rebuild"]).ok();
    let ids: Vec<String> = d
        .list("shop")
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, vec![b]);
}

#[test]
fn passwords_stay_out_of_argv_logs_catalog_and_manifests() {
    const SECRET: &str = "Pa55-never-log-me-7731";
    let pg = PgCluster::start_with(&[
        "host all postgres 127.0.0.1/32 trust",
        "host all app 127.0.0.1/32 scram-sha-256",
    ]);
    pg.createdb("shop");
    pg.psql("shop", SAMPLE_SQL);
    pg.psql(
        "postgres",
        &format!("CREATE ROLE app LOGIN PASSWORD '{SECRET}'; GRANT pg_read_all_data TO app;"),
    );
    let mut d = Drctl::new();
    d.write_policy("shop", &pg.url_as("app", "shop"), "");
    // password_env goes in [source]; rewrite the policy with it.
    let text = std::fs::read_to_string(d.path().join("policies/shop.toml"))
        .unwrap()
        .replace(
            "kind = \"postgres\"\n",
            "kind = \"postgres\"\npassword_env = \"SHOP_PW\"\n",
        );
    d.write_policy_text("shop", &text);

    // Unset variable: a usage error naming it.
    let r = d.run(&["backup", "shop"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("SHOP_PW"), "{}", r.stderr);

    // Wrong password: one line, exit 1, the password not echoed.
    d.extra_env = vec![("SHOP_PW".into(), "wrong-password-xyz".into())];
    let r = d.run(&["backup", "shop"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("password authentication failed"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("wrong-password-xyz"));

    d.extra_env = vec![("SHOP_PW".into(), SECRET.into())];
    let r = d
        .run(&["-vv", "--log-format", "json", "backup", "shop"])
        .ok();
    assert!(!r.stdout.contains(SECRET) && !r.stderr.contains(SECRET));
    d.run(&["verify", "shop", "--deep", "--identity", &d.identity_arg()])
        .ok();
    let mut files = d.repo_files("");
    for ext in ["", "-wal", "-shm"] {
        files.push(std::path::PathBuf::from(format!(
            "{}{ext}",
            d.catalog().display()
        )));
    }
    for f in files {
        if let Ok(bytes) = std::fs::read(&f) {
            assert!(
                !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
                "secret found in {}",
                f.display()
            );
        }
    }
}

/// Many drctl processes opening a catalog that does not exist yet (cron and
/// the daemon starting together) all succeed: migrations are serialised.
#[test]
fn concurrent_first_opens_of_a_new_catalog_all_succeed() {
    for round in 0..3 {
        let d = Drctl::new();
        let _ = std::fs::remove_file(d.catalog());
        let children: Vec<_> = (0..8)
            .map(|_| {
                d.command(&["list", "--output", "json"])
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for c in children {
            let out = c.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "round {round}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// Run drctl with stdout a pipe whose reader has already gone (what
/// `drctl list | head -1` becomes once head exits).
fn run_into_closed_pipe(d: &Drctl, args: &[&str]) -> (i32, String) {
    use std::os::fd::FromRawFd;
    let mut fds = [0i32; 2];
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    unsafe { libc::close(fds[0]) };
    let stdout = unsafe { std::process::Stdio::from_raw_fd(fds[1]) };
    let out = d
        .command(args)
        .stdout(stdout)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn read_commands_cut_short_by_a_closed_pipe_exit_quietly() {
    let d = Drctl::new();
    d.write_policy("shop", "postgres://backup@127.0.0.1:1/shop", "");
    for args in [
        &["list"][..],
        &["list", "--output", "json"],
        &["policy", "check"],
        &["status", "--output", "json"],
        &["restore", "shop", "--latest", "--dry-run"],
    ] {
        let (code, stderr) = run_into_closed_pipe(&d, args);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(!stderr.contains("Broken pipe"), "{args:?}: {stderr}");
        // The dry run fails for want of a backup, and says so; the others
        // were only cut short.
        if args[0] != "restore" {
            assert_eq!(code, 0, "{args:?}: {stderr}");
        }
    }
}

#[test]
fn a_policy_that_is_not_utf8_says_so() {
    let d = Drctl::new();
    std::fs::write(
        d.path().join("policies/bad.toml"),
        [0xff, 0xfe, 0x00, 0x5b, 0x80],
    )
    .unwrap();
    let r = d.run(&["backup", "bad"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("not UTF-8"), "{}", r.stderr);
    assert!(!r.stderr.contains("no policy"), "{}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    let r = d.run(&["policy", "check"]);
    assert_eq!(r.code, 2);
    assert!(
        format!("{}{}", r.stdout, r.stderr).contains("not UTF-8"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_target_in_the_future_is_refused_naming_now() {
    let d = Drctl::new();
    d.write_policy("shop", "postgres://backup@127.0.0.1:1/shop", "");
    d.write_physical_policy("pitr", "postgres://backup@127.0.0.1:1/postgres");
    let in_an_hour = (jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1)).to_string();
    for policy in ["shop", "pitr"] {
        for to in ["2999-01-01T00:00:00Z", in_an_hour.as_str()] {
            let mut args = vec!["restore", policy, "--to", to, "--dry-run"];
            if policy == "pitr" {
                args.extend(["--target-dir", "/nonexistent/x"]);
            }
            let r = d.run(&args);
            assert_eq!(r.code, 2, "{policy} {to}: {}", r.stderr);
            assert!(
                r.stderr.contains("is in the future (now is "),
                "{}",
                r.stderr
            );
            assert!(r.stderr.contains("recoverable window:"), "{}", r.stderr);
        }
    }
}

#[test]
fn completions_and_man_pages_come_from_the_command_definitions() {
    let d = Drctl::new();
    // bash: a script bash accepts, completing subcommands and their flags.
    let bash = d.run(&["completions", "bash"]).ok().stdout;
    for want in ["_drctl()", "restore", "--target-dir", "--tablespace-map"] {
        assert!(
            bash.contains(want),
            "{want} missing from the bash completion"
        );
    }
    let script = d.path().join("drctl.bash");
    std::fs::write(&script, &bash).unwrap();
    let st = std::process::Command::new("bash")
        .arg("-n")
        .arg(&script)
        .status()
        .unwrap();
    assert!(st.success(), "bash rejects the completion script");
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let out = d.run(&["completions", shell]).ok().stdout;
        assert!(out.contains("restore"), "{shell}: {out}");
    }
    let r = d.run(&["completions", "tcsh"]);
    assert_eq!(r.code, 2, "{}", r.stderr);

    // man: one page per visible command, each one man renders, with the
    // global flags on the subcommands' pages.
    let dir = d.path().join("man1");
    d.run(&["man", "--dir", dir.to_str().unwrap()]).ok();
    let mut pages: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    for want in [
        "drctl.1",
        "drctl-backup.1",
        "drctl-restore.1",
        "drctl-catalog-rebuild.1",
    ] {
        assert!(pages.iter().any(|p| p == want), "{want} in {pages:?}");
    }
    assert!(!pages.iter().any(|p| p.contains("prefetch")), "{pages:?}");
    let rendered = std::process::Command::new("man")
        .args(["-l", "-P", "cat"])
        .arg(dir.join("drctl-restore.1"))
        .env("MANWIDTH", "100")
        .output()
        .unwrap();
    assert!(rendered.status.success());
    let text = String::from_utf8_lossy(&rendered.stdout);
    for want in [
        "drctl restore",
        "--target-dir",
        "--policies",
        "DRCTL_CATALOG",
    ] {
        assert!(
            text.contains(want),
            "{want} missing from man drctl-restore:\n{text}"
        );
    }
    // Without --dir, drctl.1 on stdout.
    let top = d.run(&["man"]).ok().stdout;
    assert!(
        top.starts_with(".ie") || top.contains(".TH drctl 1"),
        "{top}"
    );
}
