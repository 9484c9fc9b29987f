//! The hub jobs client and the blob client against the in-process simulator and a real Blob service
//! (Azurite, from `DEPROVISIOND_TEST_AZURITE_URL`; `scripts/azurite.sh -- cargo test …` starts one).
//! Without it these tests print `SKIPPED:` and pass, except under `CI=true`, where they fail naming it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use azure_iot_sim::{JobsConfig, RunningSimulator, SimConfig, Simulator};
use chrono::Utc;
use deprovisiond::azure::blob::BlobError;
use deprovisiond::azure::models::{
    DeviceStatus, ExportImportDevice, ImportErrorLine, JobStatus, JobType,
};
use deprovisiond::azure::{
    AzureClients, BlobContainerClient, ContainerSasUrl, HubClient, SasPermissions, StorageAccount,
};
use futures::{StreamExt, TryStreamExt, stream};
use serde_json::{Value, json};

use super::{DPS, HUB, clients_for};

const POLL: Duration = Duration::from_millis(20);
/// Longest a job of these tests may take before the test fails.
const JOB_DEADLINE: Duration = Duration::from_secs(30);

/// Mirrors the simulator's own rule (`crates/azure-iot-sim/tests/common`): skipping is allowed,
/// except under `CI=true`.
fn skip(missing: &str, unchecked: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{missing}, and CI=true forbids skipping: {unchecked} would go unchecked");
    }
    eprintln!("SKIPPED: {missing}; {unchecked} not checked");
}

/// The Azurite the environment names, seen as a storage account.
pub(super) fn azurite() -> Option<StorageAccount> {
    let Some(url) = std::env::var("DEPROVISIOND_TEST_AZURITE_URL")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        skip(
            "DEPROVISIOND_TEST_AZURITE_URL is not set (scripts/azurite.sh -- cargo test starts Azurite)",
            "the import/export jobs and the blob client against a real Blob service",
        );
        return None;
    };
    // The connection string the script exports is what a deployment would configure; the URL and key
    // alone also do.
    if let Ok(cs) = std::env::var("DEPROVISIOND_TEST_AZURITE_CONNECTION_STRING")
        && !cs.is_empty()
    {
        return Some(StorageAccount::from_connection_string(&cs).unwrap());
    }
    let url = url.trim_end_matches('/');
    let account = url.rsplit('/').next().unwrap();
    let key = std::env::var("DEPROVISIOND_TEST_AZURITE_KEY")
        .ok()
        .filter(|k| !k.is_empty())
        .unwrap_or_else(|| {
            "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
                .into()
        });
    Some(StorageAccount::new(account, &key, url).unwrap())
}

static CONTAINERS: AtomicU32 = AtomicU32::new(0);

/// A new container, created with an account SAS minted from the key; answers a read-write container
/// SAS URL for it, as the service hands the hub.
pub(super) async fn new_container(account: &StorageAccount) -> ContainerSasUrl {
    let name = format!(
        "dj-{}-{}",
        std::process::id(),
        CONTAINERS.fetch_add(1, Ordering::SeqCst)
    );
    let expiry = Utc::now() + chrono::Duration::hours(1);
    let admin = account.container_admin_sas_url(&name, expiry).unwrap();
    let client = BlobContainerClient::new(admin).unwrap();
    assert!(client.create_if_missing().await.unwrap(), "created");
    assert!(!client.create_if_missing().await.unwrap(), "exists already");
    account
        .container_sas_url(&name, SasPermissions::READ_WRITE, None, expiry)
        .unwrap()
}

struct JobsEnv {
    sim: RunningSimulator,
    clients: AzureClients,
}

impl JobsEnv {
    async fn start(jobs: JobsConfig) -> Self {
        let cfg = SimConfig {
            jobs,
            ..SimConfig::single(DPS, &[HUB])
        };
        let sim = Simulator::start(cfg).await.unwrap();
        let clients = clients_for(&sim, Arc::new(deprovisiond::azure::SystemClock));
        Self { sim, clients }
    }

    /// Jobs as fast as the blob service allows.
    async fn fast() -> Self {
        Self::start(JobsConfig {
            devices_per_second: 0.0,
            queue_seconds: 0.0,
            ..JobsConfig::default()
        })
        .await
    }

    fn hub(&self) -> &HubClient {
        self.clients.hub(HUB).unwrap()
    }

    /// `n` devices `dev-000`…, straight into the simulated registry.
    fn seed(&self, n: usize) -> Vec<String> {
        let hub = self.sim.state().hub(HUB).unwrap();
        (0..n)
            .map(|i| {
                let id = format!("dev-{i:03}");
                hub.upsert_device(&id, json!({"deviceId": id})).unwrap();
                id
            })
            .collect()
    }

    async fn wait(&self, job_id: &str) -> deprovisiond::azure::models::JobProperties {
        tokio::time::timeout(JOB_DEADLINE, self.hub().wait_for_job(job_id, POLL))
            .await
            .expect("the job ended in time")
            .unwrap()
    }
}

/// The lines of a blob, each parsed as JSON.
async fn json_lines(blob: &BlobContainerClient, name: &str) -> Vec<Value> {
    blob.lines(name)
        .try_filter(|l| futures::future::ready(!l.trim().is_empty()))
        .map_ok(|l| serde_json::from_str::<Value>(&l).unwrap())
        .try_collect()
        .await
        .unwrap()
}

#[tokio::test]
async fn blob_lines_go_up_in_blocks_and_come_back_range_by_range() {
    let Some(account) = azurite() else { return };
    let blob = BlobContainerClient::new(new_container(&account).await).unwrap();
    let lines: Vec<String> = (0..3000)
        .map(|i| json!({"id": format!("dev-{i:05}"), "pad": "x".repeat(i % 50)}).to_string())
        .collect();
    let mut writer = blob.writer("run 1/devices.txt").with_block_size(64 * 1024);
    for l in &lines {
        writer.write_line(l).await.unwrap();
    }
    assert!(
        !blob.exists("run 1/devices.txt").await.unwrap(),
        "nothing is visible before the commit"
    );
    let written = writer.finish().await.unwrap();
    assert_eq!(written.lines, 3000);
    assert!(written.blocks > 1, "{written:?}");
    assert!(blob.exists("run 1/devices.txt").await.unwrap());

    // Ranges of 1000 bytes cut most lines in two.
    let mut reader = blob.reader("run 1/devices.txt").with_range_size(1000);
    let mut back = Vec::new();
    while let Some(l) = reader.next_line().await.unwrap() {
        back.push(l);
    }
    assert_eq!(back, lines);
    assert_eq!(reader.position(), (written.bytes, Some(written.bytes)));

    // Small blobs go up in one Put Blob, empty ones too.
    let small = blob
        .put_lines("small.txt", stream::iter(["a", "b"]))
        .await
        .unwrap();
    assert_eq!((small.lines, small.blocks), (2, 0));
    let got: Vec<String> = blob.lines("small.txt").try_collect().await.unwrap();
    assert_eq!(got, ["a", "b"]);
    blob.put_lines("empty.txt", stream::iter(Vec::<String>::new()))
        .await
        .unwrap();
    assert!(blob.exists("empty.txt").await.unwrap());
    assert_eq!(blob.lines("empty.txt").count().await, 0);

    let e = blob
        .writer("bad.txt")
        .write_line("two\nlines")
        .await
        .unwrap_err();
    assert!(matches!(e, BlobError::InvalidLine { .. }), "{e:?}");
    let e = blob
        .lines("missing.txt")
        .try_collect::<Vec<_>>()
        .await
        .unwrap_err();
    assert_eq!(
        (e.status(), e.code()),
        (Some(404), Some("BlobNotFound")),
        "{e}"
    );
    assert!(!blob.exists("missing.txt").await.unwrap());
}

#[tokio::test]
async fn a_block_refused_while_later_lines_are_written_fails_the_blob() {
    let Some(account) = azurite() else { return };
    let writable = new_container(&account).await;
    let name = writable.container().to_string();
    let expiry = Utc::now() + chrono::Duration::hours(1);
    let read_only = account
        .container_sas_url(&name, SasPermissions::READ, None, expiry)
        .unwrap();
    let blob = BlobContainerClient::new(read_only).unwrap();
    // Blocks go up in the background: the refusal of one comes back from a later write or from the commit,
    // never lost.
    let mut writer = blob.writer("devices.txt").with_block_size(64 * 1024);
    let mut failed = None;
    for i in 0..3000 {
        let line = json!({"id": format!("dev-{i:05}"), "pad": "x".repeat(40)}).to_string();
        if let Err(e) = writer.write_line(&line).await {
            failed = Some(e);
            break;
        }
    }
    let e = match failed {
        Some(e) => e,
        None => writer.finish().await.unwrap_err(),
    };
    assert_eq!(e.status(), Some(403), "{e}");
    assert!(e.is_auth_failure(), "{e}");
    assert!(!blob.exists("devices.txt").await.unwrap());
}

#[tokio::test]
async fn a_blob_rewritten_while_its_ranges_are_read_ahead_fails_the_read() {
    let Some(account) = azurite() else { return };
    let blob = BlobContainerClient::new(new_container(&account).await).unwrap();
    let lines = |tag: &str| -> Vec<String> {
        (0..2000)
            .map(|i| json!({"id": format!("dev-{i:05}"), "v": tag}).to_string())
            .collect()
    };
    blob.put_lines("devices.txt", stream::iter(lines("first")))
        .await
        .unwrap();
    let mut reader = blob.reader("devices.txt").with_range_size(1000);
    let first = reader.next_line().await.unwrap().unwrap();
    assert!(first.contains("first"), "{first}");
    blob.put_lines("devices.txt", stream::iter(lines("second")))
        .await
        .unwrap();
    // A range or two may already have come from the first version; every later one is pinned to its ETag.
    let mut read = vec![first];
    let e = loop {
        match reader.next_line().await {
            Ok(Some(l)) => read.push(l),
            Ok(None) => panic!(
                "read {} lines of a rewritten blob without an error",
                read.len()
            ),
            Err(e) => break e,
        }
    };
    assert_eq!(e.status(), Some(412), "{e}");
    assert!(
        read.iter().all(|l| l.contains("first")),
        "no line of the second version"
    );
}

#[tokio::test]
async fn export_job_writes_devices_txt_that_the_blob_client_reads() {
    let Some(account) = azurite() else { return };
    let env = JobsEnv::fast().await;
    let ids = env.seed(25);
    let out = new_container(&account).await;
    let job = env.hub().start_export(&out, None, false).await.unwrap();
    assert_eq!(job.kind, Some(JobType::Export));
    assert_eq!(job.status(), JobStatus::Enqueued);
    let job_id = job.job_id.clone().unwrap();
    let done = env.wait(&job_id).await;
    assert_eq!(done.status(), JobStatus::Completed, "{done:?}");
    assert_eq!(done.progress, Some(100));
    assert!(done.end_time_utc.is_some());
    assert!(
        !format!("{done:?}").contains(&out.expose()),
        "Debug hides the SAS the hub echoes"
    );

    let blob = BlobContainerClient::new(out).unwrap();
    let lines = json_lines(&blob, "devices.txt").await;
    let mut exported: Vec<String> = lines
        .iter()
        .map(|l| l["id"].as_str().unwrap().to_string())
        .collect();
    exported.sort();
    assert_eq!(exported, ids);
    assert!(
        lines
            .iter()
            .all(|l| l["authentication"]["symmetricKey"]["primaryKey"].is_string()),
        "keys are exported"
    );
    let listed = env.hub().list_jobs().await.unwrap();
    assert!(
        listed
            .iter()
            .any(|j| j.job_id.as_deref() == Some(job_id.as_str()))
    );
    assert_eq!(
        env.hub().get_job(&job_id).await.unwrap().status(),
        JobStatus::Completed
    );
}

#[tokio::test]
async fn import_disables_by_etag_and_a_stale_etag_lands_in_import_errors_log() {
    let Some(account) = azurite() else { return };
    let env = JobsEnv::fast().await;
    let ids = env.seed(12);
    let c = new_container(&account).await;
    let blob = BlobContainerClient::new(c.clone()).unwrap();

    // The snapshot: an export, read back line by line.
    let export = env
        .hub()
        .start_export(&c, Some("snapshot.txt"), false)
        .await
        .unwrap();
    let done = env.wait(export.job_id.as_deref().unwrap()).await;
    assert_eq!(done.status(), JobStatus::Completed, "{done:?}");
    let snapshot = json_lines(&blob, "snapshot.txt").await;
    assert_eq!(snapshot.len(), ids.len());

    // One device changes between the export and the import: its exported ETag is stale.
    let stale = "dev-007";
    env.sim
        .state()
        .hub(HUB)
        .unwrap()
        .upsert_device(stale, json!({"deviceId": stale, "statusReason": "touched"}))
        .unwrap();

    let reason = "deprovisioned by job 13";
    let items = snapshot.iter().map(|line| {
        let mut v = line.clone();
        v["importMode"] = json!("updateIfMatchETag");
        let mut item: ExportImportDevice = serde_json::from_value(v).unwrap();
        item.status = Some(DeviceStatus::Disabled);
        item.status_reason = Some(reason.into());
        // Identity only: the twin stays as it is.
        (item.tags, item.properties, item.twin_e_tag) = (None, None, None);
        serde_json::to_string(&item).unwrap()
    });
    let written = blob
        .put_lines("disable.txt", stream::iter(items))
        .await
        .unwrap();
    assert_eq!(written.lines, ids.len() as u64);

    let import = env
        .hub()
        .start_import(&c, Some("disable.txt"), &c)
        .await
        .unwrap();
    assert_eq!(import.kind, Some(JobType::Import));
    let done = env.wait(import.job_id.as_deref().unwrap()).await;
    assert_eq!(done.status(), JobStatus::Completed, "{done:?}");

    let errors: Vec<ImportErrorLine> = json_lines(&blob, "importErrors.log")
        .await
        .into_iter()
        .map(|v| serde_json::from_value(v).unwrap())
        .collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].device_id.as_deref(), Some(stale));
    assert!(errors[0].is_etag_mismatch(), "{errors:?}");

    for (id, line) in ids.iter().zip(&snapshot) {
        let d = env.hub().get_device(id).await.unwrap();
        if id == stale {
            assert_eq!(d.status, Some(DeviceStatus::Enabled), "{id} was refused");
            continue;
        }
        assert_eq!(d.status, Some(DeviceStatus::Disabled), "{id}");
        assert_eq!(d.status_reason.as_deref(), Some(reason));
        let key = d
            .authentication
            .and_then(|a| a.symmetric_key)
            .and_then(|k| k.primary_key);
        assert_eq!(
            key.as_deref(),
            line["authentication"]["symmetricKey"]["primaryKey"].as_str(),
            "{id} keeps its exported key"
        );
    }
}

#[tokio::test]
async fn a_second_job_is_refused_as_job_quota_exceeded_until_the_first_is_cancelled() {
    let Some(account) = azurite() else { return };
    // The first job stays enqueued for ten minutes: long enough to be refused a second.
    let env = JobsEnv::start(JobsConfig {
        queue_seconds: 600.0,
        ..JobsConfig::default()
    })
    .await;
    env.seed(3);
    let out = new_container(&account).await;
    let first = env.hub().start_export(&out, None, false).await.unwrap();
    let first_id = first.job_id.clone().unwrap();

    let e = env
        .hub()
        .start_export(&out, Some("second.txt"), false)
        .await
        .unwrap_err();
    assert!(e.is_job_quota_exceeded(), "{e:?}");
    assert!(e.is_retryable(), "retry once the other job has ended");
    assert_eq!(e.status(), Some(403));
    assert_eq!(e.class(), "job_quota_exceeded");

    let listed = env.hub().list_jobs().await.unwrap();
    let active: Vec<_> = listed.iter().filter(|j| j.status().is_active()).collect();
    assert_eq!(active.len(), 1, "{listed:?}");
    assert_eq!(active[0].job_id.as_deref(), Some(first_id.as_str()));

    env.hub().cancel_job(&first_id).await.unwrap();
    let cancelled = env.wait(&first_id).await;
    assert_eq!(cancelled.status(), JobStatus::Cancelled);
    // Cancelling what has ended is harmless, and the slot is free again.
    env.hub().cancel_job(&first_id).await.unwrap();
    let next = env
        .hub()
        .start_export(&out, Some("second.txt"), false)
        .await
        .unwrap();
    env.hub()
        .cancel_job(next.job_id.as_deref().unwrap())
        .await
        .unwrap();

    let e = env.hub().get_job("no-such-job").await.unwrap_err();
    assert!(e.is_not_found(), "{e:?}");
}

#[tokio::test]
async fn an_expired_sas_fails_clearly_without_showing_its_signature() {
    let Some(account) = azurite() else { return };
    let live = new_container(&account).await;
    let expired = account
        .container_sas_url(
            live.container(),
            SasPermissions::READ_WRITE,
            Some(Utc::now() - chrono::Duration::hours(2)),
            Utc::now() - chrono::Duration::hours(1),
        )
        .unwrap();
    let sig = url::Url::parse(&expired.expose())
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "sig")
        .map(|(_, v)| v.into_owned())
        .unwrap();
    let blob = BlobContainerClient::new(expired.clone()).unwrap();
    let e = blob
        .put_lines("devices.txt", stream::iter(["{}"]))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(403), "{e}");
    // Azure answers AuthenticationFailed ("Signed expiry time … must be after …"); Azurite 3.x
    // answers AuthorizationFailure for the same expired signature.
    assert!(
        matches!(
            e.code(),
            Some("AuthenticationFailed" | "AuthorizationFailure")
        ),
        "{e}"
    );
    assert!(e.is_auth_failure() && !e.is_retryable());
    let text = format!("{e} {e:?} {expired} {expired:?}");
    assert!(
        text.contains(&format!("{}/devices.txt", live.container())),
        "{text}"
    );
    assert!(!text.contains(&sig), "{text}");
    let e = blob.exists("devices.txt").await.unwrap_err();
    assert_eq!(e.status(), Some(403), "{e}");

    // A missing container is named as such.
    let gone = account
        .container_sas_url(
            "dj-never-created",
            SasPermissions::READ_WRITE,
            None,
            Utc::now() + chrono::Duration::hours(1),
        )
        .unwrap();
    let e = BlobContainerClient::new(gone)
        .unwrap()
        .exists("devices.txt")
        .await
        .unwrap_err();
    assert_eq!(
        (e.status(), e.code()),
        (Some(404), Some("ContainerNotFound")),
        "{e}"
    );

    // The hub, handed the expired SAS, ends the job failed with a reason.
    let env = JobsEnv::fast().await;
    env.seed(2);
    let job = env.hub().start_export(&expired, None, false).await.unwrap();
    let done = env.wait(job.job_id.as_deref().unwrap()).await;
    assert_eq!(done.status(), JobStatus::Failed, "{done:?}");
    assert!(
        done.failure_reason
            .as_deref()
            .is_some_and(|r| r.contains("403")),
        "{done:?}"
    );
}
