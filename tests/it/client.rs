//! `deprovisiond client`: the real binary against the real app, as a person or a script runs it.

use std::time::Duration;

use serde_json::Value;

use crate::both_stores;
use crate::support::{Act, Scripted, TestApp, TestDb};

both_stores!(
    client_creates_watches_and_lists_jobs,
    client_errors_are_one_line_and_exit_non_zero,
    client_creates_one_job_per_csv_row_idempotently,
);

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn client(app: &TestApp, args: &[&str]) -> Run {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_deprovisiond"))
        .arg("client")
        .args(["--url", &app.base])
        .args(args)
        .env_remove("DEPROVISIOND_URL")
        .env("DEPROVISIOND_TOKEN", &app.token)
        .output()
        .await
        .expect("run the client");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn json_of(run: &Run) -> Value {
    serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr: {}", run.stdout, run.stderr))
}

async fn client_creates_watches_and_lists_jobs(db: TestDb) {
    let wf = Scripted::new(3);
    let app = TestApp::spawn(&db, wf.clone()).await;

    let created = client(
        &app,
        &[
            "--json",
            "create",
            "--kind",
            "group",
            "--id",
            "fleet-a",
            "--reason",
            "compromised",
            "--text",
            "CA key leaked",
            "--ticket",
            "OPS-1",
        ],
    )
    .await;
    assert_eq!(created.code, 0, "{}", created.stderr);
    let job = json_of(&created);
    let id = job["id"].as_str().unwrap().to_string();
    assert_eq!(job["target"]["group_id"], "fleet-a");
    assert_eq!(job["reason"]["code"], "compromised");
    assert_eq!(job["ticket"]["key"], "OPS-1");

    // Not a terminal: `watch` prints a line per change on stderr, then the finished job as a table.
    let watched = client(&app, &["watch", &id, "--every-ms", "100"]).await;
    assert_eq!(watched.code, 0, "{}", watched.stderr);
    assert!(
        watched.stdout.contains("status    succeeded"),
        "{}",
        watched.stdout
    );
    assert!(
        watched.stdout.contains("devices   3/3 handled: 3 done"),
        "{}",
        watched.stdout
    );
    assert!(
        watched.stderr.contains("succeeded 3/3 devices"),
        "{}",
        watched.stderr
    );

    // The same ticket is the idempotency key: creating again gives back the same job.
    let again = client(
        &app,
        &[
            "--json",
            "create",
            "--kind",
            "group",
            "--id",
            "fleet-a",
            "--reason",
            "compromised",
            "--text",
            "CA key leaked",
            "--ticket",
            "OPS-1",
        ],
    )
    .await;
    assert_eq!(json_of(&again)["id"], id.as_str());

    let got = client(&app, &["get", &id]).await;
    assert!(
        got.stdout.contains(&format!("job       {id}")),
        "{}",
        got.stdout
    );
    assert!(
        got.stdout.contains("target    enrollment_group fleet-a"),
        "{}",
        got.stdout
    );
    let listed = client(&app, &["list", "--status", "succeeded"]).await;
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    let lines: Vec<&str> = listed.stdout.lines().collect();
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("STATUS"),
        "{}",
        listed.stdout
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&id) && l.contains("succeeded") && l.contains("3/3")),
        "{}",
        listed.stdout
    );
    let listed_json = json_of(&client(&app, &["--json", "list"]).await);
    assert_eq!(listed_json["items"][0]["id"], id.as_str());

    // `create --watch` follows a failing job and exits non-zero with its error (the script counts
    // every job's revoke runs: the first job's was the first).
    wf.script("revoke", "-", vec![Act::Succeed, Act::Fail]);
    let failing = client(
        &app,
        &[
            "create",
            "--kind",
            "individual",
            "--id",
            "dev-9",
            "--reason",
            "stolen",
            "--watch",
        ],
    )
    .await;
    assert_ne!(failing.code, 0);
    assert!(failing.stderr.contains("failed"), "{}", failing.stderr);
    app.stop().await;
}

async fn client_errors_are_one_line_and_exit_non_zero(db: TestDb) {
    let wf = Scripted::new(1);
    wf.script("revoke", "-", vec![Act::Hang(Duration::from_secs(30))]);
    let app = TestApp::spawn(&db, wf.clone()).await;
    let bad = client(
        &app,
        &[
            "create",
            "--kind",
            "individual",
            "--id",
            "d-1",
            "--reason",
            "bored",
        ],
    )
    .await;
    assert_eq!(bad.code, 1);
    let line = bad.stderr.trim();
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(line.starts_with("deprovisiond: 422 "), "{line}");
    assert!(line.contains("reason"), "{line}");

    let first = client(
        &app,
        &[
            "--json",
            "create",
            "--kind",
            "individual",
            "--id",
            "d-1",
            "--reason",
            "lost",
        ],
    )
    .await;
    assert_eq!(first.code, 0, "{}", first.stderr);
    let active = json_of(&first)["id"].as_str().unwrap().to_string();
    let conflict = client(
        &app,
        &[
            "create",
            "--kind",
            "individual",
            "--id",
            "d-1",
            "--reason",
            "lost",
        ],
    )
    .await;
    assert_eq!(conflict.code, 1);
    assert!(
        conflict.stderr.starts_with("deprovisiond: 409 "),
        "{}",
        conflict.stderr
    );
    assert!(
        conflict.stderr.contains(&active),
        "names the active job: {}",
        conflict.stderr
    );

    let missing = client(&app, &["get", "0190a7a4-0000-7000-8000-000000000000"]).await;
    assert_eq!(missing.code, 1);
    assert!(
        missing.stderr.starts_with("deprovisiond: 404 "),
        "{}",
        missing.stderr
    );

    let unreachable = tokio::process::Command::new(env!("CARGO_BIN_EXE_deprovisiond"))
        .args(["client", "--url", "http://127.0.0.1:1", "list"])
        .output()
        .await
        .unwrap();
    assert_eq!(unreachable.status.code(), Some(1));
    let text = String::from_utf8_lossy(&unreachable.stderr);
    assert!(
        text.starts_with("deprovisiond: cannot reach http://127.0.0.1:1"),
        "{text}"
    );
    app.stop().await;
}

async fn client_creates_one_job_per_csv_row_idempotently(db: TestDb) {
    let app = TestApp::spawn(&db, Scripted::new(1)).await;
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("stolen.csv");
    std::fs::write(
        &csv,
        "registration_id,group_id,reason,ticket\n\
         sensor-1,,stolen,OPS-7\n\
         sensor-2,,lost,\n\
         dev-0007,fleet-sk,sold,\n",
    )
    .unwrap();
    let path = csv.to_str().unwrap();
    let first = client(
        &app,
        &["--json", "create", "--from-csv", path, "--reason", "other"],
    )
    .await;
    assert_eq!(first.code, 0, "{}", first.stderr);
    let rows = json_of(&first);
    let ids: Vec<String> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["job"]["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 3);
    let kinds: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["job"]["target"]["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "individual_enrollment",
            "individual_enrollment",
            "group_device"
        ]
    );
    assert_eq!(rows[0]["job"]["ticket"]["key"], "OPS-7");
    assert_eq!(rows[1]["job"]["reason"]["code"], "lost");

    // Running the same file again creates nothing new.
    let second = json_of(
        &client(
            &app,
            &["--json", "create", "--from-csv", path, "--reason", "other"],
        )
        .await,
    );
    let again: Vec<String> = second
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["job"]["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(again, ids);

    // A row that cannot become a request fails the file before anything is sent, naming its line.
    std::fs::write(
        &csv,
        "registration_id,kind\nsensor-9,individual\nsensor-10,gadget\n",
    )
    .unwrap();
    let bad = client(&app, &["create", "--from-csv", path]).await;
    assert_eq!(bad.code, 1);
    assert!(
        bad.stderr.contains("line 3") && bad.stderr.contains("gadget"),
        "{}",
        bad.stderr
    );
    let listed = json_of(&client(&app, &["--json", "list"]).await);
    assert_eq!(
        listed["items"].as_array().unwrap().len(),
        3,
        "nothing of the bad file was sent"
    );
    app.stop().await;
}
