//! Where each hub's import/export blobs go, against a real Blob service (Azurite, found as in
//! `jobs.rs`: without it these tests print `SKIPPED:` and pass, except under `CI=true`): a container
//! minted per job and hub from the storage account, or the container configured for the hub.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deprovisiond::azure::jobs_storage::minted_container_name;
use deprovisiond::azure::{
    AzureClients, AzureConfig, BlobContainerClient, ContainerSasUrl, JobsStorage, StorageAccount,
    StorageConfig,
};
use futures::{TryStreamExt, stream};

use super::jobs::{azurite, new_container};

/// A hub with its own jobs container, and two that share the storage account.
const HUB_OWN: &str = "jobs-own.azure-devices.net";
const HUB_A: &str = "jobs-a.azure-devices.net";
const HUB_B: &str = "jobs-b.azure-devices.net";
const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const SAS_TTL: Duration = Duration::from_secs(3600);

/// Clients configured as a deployment would be: hubs and the storage connection string from the
/// environment (when the test environment gives one, else the account is set directly).
fn clients(account: &StorageAccount, own: &ContainerSasUrl) -> AzureClients {
    let mut vars: HashMap<String, String> = HashMap::new();
    for (label, host) in [("OWN", HUB_OWN), ("A", HUB_A), ("B", HUB_B)] {
        vars.insert(
            format!("DEPROVISIOND_HUB_{label}_CONNECTION_STRING"),
            format!("HostName={host};SharedAccessKeyName=registryReadWrite;SharedAccessKey={KEY}"),
        );
    }
    vars.insert(
        "DEPROVISIOND_HUB_OWN_JOBS_CONTAINER_SAS_URL".into(),
        own.expose(),
    );
    let config = match std::env::var("DEPROVISIOND_TEST_AZURITE_CONNECTION_STRING")
        .ok()
        .filter(|c| !c.is_empty())
    {
        Some(cs) => {
            vars.insert("DEPROVISIOND_STORAGE_CONNECTION_STRING".into(), cs);
            vars.insert(
                "DEPROVISIOND_STORAGE_SAS_TTL_SECS".into(),
                SAS_TTL.as_secs().to_string(),
            );
            AzureConfig::from_env_map(&vars).unwrap()
        }
        None => AzureConfig {
            storage: Some(StorageConfig {
                account: account.clone(),
                sas_ttl: SAS_TTL,
            }),
            ..AzureConfig::from_env_map(&vars).unwrap()
        },
    };
    AzureClients::new(&config).unwrap()
}

/// The query pairs of a SAS URL.
fn sas_query(url: &ContainerSasUrl) -> HashMap<String, String> {
    url::Url::parse(&url.expose())
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect()
}

async fn read_lines(client: &BlobContainerClient, blob: &str) -> Vec<String> {
    client.lines(blob).try_collect().await.unwrap()
}

#[tokio::test]
async fn minted_containers_are_created_per_job_and_hub_and_found_again() {
    let Some(account) = azurite() else { return };
    let own = new_container(&account).await;
    let clients = clients(&account, &own);
    let storage = clients.jobs_storage(HUB_A).unwrap();
    assert!(
        matches!(storage, JobsStorage::Account { sas_ttl, .. } if *sas_ttl == SAS_TTL),
        "{storage:?}"
    );
    let job = uuid::Uuid::now_v7().to_string();
    let now = Utc::now().timestamp();

    let first = storage
        .container(&job, HUB_A, now, clients.http())
        .await
        .unwrap();
    assert_eq!(
        first.container().container(),
        minted_container_name(&job, HUB_A)
    );
    let shown = storage.describe(&job, HUB_A);
    assert_eq!(shown, first.container().container_url().as_str());
    assert!(!shown.contains('?'), "{shown}");
    let q = sas_query(first.container());
    assert_eq!((q["sr"].as_str(), q["sp"].as_str()), ("c", "racwdl"));
    let expiry = DateTime::<Utc>::from_timestamp(now + SAS_TTL.as_secs() as i64, 0).unwrap();
    assert_eq!(
        q["se"],
        expiry.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );

    // Created, writable and readable through the client.
    let lines = [r#"{"id":"dev-1"}"#, r#"{"id":"dev-2"}"#];
    first
        .put_lines("snapshot/devices.txt", stream::iter(lines))
        .await
        .unwrap();
    assert_eq!(read_lines(&first, "snapshot/devices.txt").await, lines);

    // Days later (a new SAS), the same job and hub find the same container and its snapshot.
    let again = storage
        .container(&job, HUB_A, now + 60, clients.http())
        .await
        .unwrap();
    assert_eq!(again.container().container(), first.container().container());
    assert_ne!(sas_query(again.container())["se"], q["se"], "a fresh SAS");
    assert_eq!(read_lines(&again, "snapshot/devices.txt").await, lines);

    // Another hub, or another job, gets a container of its own, created empty.
    let other_hub = storage
        .container(&job, HUB_B, now, clients.http())
        .await
        .unwrap();
    assert_ne!(
        other_hub.container().container(),
        first.container().container()
    );
    assert!(
        !other_hub.exists("snapshot/devices.txt").await.unwrap(),
        "the container exists (else ContainerNotFound) and holds nothing"
    );
    let other_job = storage
        .container(
            &uuid::Uuid::now_v7().to_string(),
            HUB_A,
            now,
            clients.http(),
        )
        .await
        .unwrap();
    assert_ne!(
        other_job.container().container(),
        first.container().container()
    );
    assert!(!other_job.exists("snapshot/devices.txt").await.unwrap());

    // The SAS counts from the `now` given: minted two hours ago, it has expired.
    let e = storage
        .container(&job, HUB_A, now - 7200, clients.http())
        .await
        .unwrap_err();
    assert!(e.is_auth_failure(), "{e}");
    assert!(!e.to_string().contains("sig="), "{e}");
}

#[tokio::test]
async fn a_hub_with_its_own_container_gets_that_container() {
    let Some(account) = azurite() else { return };
    let own = new_container(&account).await;
    let clients = clients(&account, &own);
    let storage = clients.jobs_storage(HUB_OWN).unwrap();
    assert_eq!(storage, &JobsStorage::Container(own.clone()));
    assert_eq!(
        storage.describe("job-1", HUB_OWN),
        own.container_url().as_str()
    );

    let now = Utc::now().timestamp();
    let client = storage
        .container("job-1", HUB_OWN, now, clients.http())
        .await
        .unwrap();
    assert_eq!(client.container(), &own, "the configured SAS, as given");
    client
        .put_lines("devices.txt", stream::iter(["{}"]))
        .await
        .unwrap();
    let later = storage
        .container("job-2", HUB_OWN, now + 86_400, clients.http())
        .await
        .unwrap();
    assert_eq!(later.container(), &own, "every job of the hub shares it");
    assert_eq!(read_lines(&later, "devices.txt").await, ["{}"]);
}
