//! `deprovisiond bench` end to end: the binary with a tiny fleet runs every scenario but rss, and its JSON
//! has every column on every row. Timings are printed by the bench, never asserted here.

use std::process::Command;

use serde_json::Value;

use crate::support::skip;

/// Every column of a row, as `--json` must carry it (null where it does not apply).
const COLUMNS: [&str; 17] = [
    "scenario",
    "store",
    "runner",
    "action",
    "devices",
    "outcome",
    "wall_s",
    "lower_bound_s",
    "ratio_to_bound",
    "ops_per_device",
    "throttled",
    "throttled_share",
    "devices_per_s",
    "speedup_vs_naive",
    "vs_bare",
    "peak_rss_mib",
    "note",
];

fn bench(store: &str, pg_url: Option<&str>) -> Value {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_deprovisiond"));
    cmd.args([
        "bench",
        "--json",
        "--scenario",
        "s1,unthrottled,replicas,intake",
        "--devices",
        "12",
        "--intake-requests",
        "10",
        "--intake-concurrency",
        "4",
        "--job-timeout-secs",
        "120",
        "--stores",
        store,
    ]);
    match pg_url {
        Some(url) => cmd.args(["--postgres-url", url]),
        None => cmd.env_remove("DEPROVISIOND_TEST_PG_URL"),
    };
    let out = cmd.output().expect("the bench runs");
    assert!(
        out.status.success(),
        "bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("--json prints JSON")
}

fn rows<'a>(report: &'a Value, scenario: &str, runner: &str) -> Vec<&'a Value> {
    report["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .filter(|r| r["scenario"] == scenario && r["runner"] == runner)
        .collect()
}

fn check(report: &Value, store: &str) {
    assert_eq!(
        report["machine"]["cores"].as_u64().map(|c| c > 0),
        Some(true)
    );
    let all = report["rows"].as_array().expect("rows");
    assert!(!all.is_empty());
    for row in all {
        let obj = row.as_object().expect("a row is an object");
        for c in COLUMNS {
            assert!(obj.contains_key(c), "row lacks {c}: {row}");
        }
    }
    // Each registry scenario: the service on the store, for disable and delete, and it finished.
    for scenario in ["s1", "unthrottled"] {
        let service = rows(report, scenario, "service");
        assert_eq!(service.len(), 2, "{scenario}: {service:?}");
        for r in service {
            assert_eq!(r["store"], store);
            assert_eq!(r["outcome"], "succeeded", "{r}");
            assert!(r["peak_rss_mib"].as_f64().is_some_and(|m| m > 0.0), "{r}");
            assert!(
                r["ops_per_device"].as_f64().is_some_and(|o| o >= 1.0),
                "{r}"
            );
        }
        // The naive script's operations are known exactly: GET + PUT, or one DELETE, per device.
        for r in rows(report, scenario, "naive") {
            assert_eq!(r["outcome"], "succeeded", "{r}");
            let expected = if r["action"] == "disable" { 2.0 } else { 1.0 };
            assert_eq!(r["ops_per_device"].as_f64(), Some(expected), "{r}");
        }
    }
    // Throttled scenarios have a bound row; the unthrottled one has none.
    assert_eq!(rows(report, "s1", "lower bound").len(), 2);
    assert!(rows(report, "unthrottled", "lower bound").is_empty());
    let intake = rows(report, "intake", "service");
    assert_eq!(intake.len(), 1);
    assert_eq!(intake[0]["outcome"], "succeeded", "{}", intake[0]);
    assert!(intake[0]["vs_bare"].as_f64().is_some(), "{}", intake[0]);
    assert_eq!(
        rows(report, "intake", "bare INSERT")[0]["outcome"],
        "succeeded"
    );
}

#[test]
fn bench_sqlite_runs_and_reports_every_column() {
    let report = bench("sqlite", None);
    check(&report, "sqlite");
    // Two replicas need PostgreSQL: without it the row says so instead of failing the run.
    let replicas = rows(&report, "replicas", "service x2");
    assert_eq!(replicas.len(), 1);
    assert!(
        replicas[0]["outcome"]
            .as_str()
            .is_some_and(|o| o.starts_with("not run")),
        "{}",
        replicas[0]
    );
}

#[test]
fn bench_postgres_runs_and_reports_every_column() {
    let Ok(url) = std::env::var("DEPROVISIOND_TEST_PG_URL") else {
        skip(
            "DEPROVISIOND_TEST_PG_URL is not set (scripts/test.sh sets it)",
            "the PostgreSQL bench",
        );
        return;
    };
    let report = bench("postgres", Some(&url));
    check(&report, "postgres");
    let replicas = rows(&report, "replicas", "service x2");
    assert_eq!(replicas[0]["outcome"], "succeeded", "{}", replicas[0]);
}
