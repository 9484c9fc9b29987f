//! Where a hub's import/export blobs go (issue 13): the container configured for that hub, or one
//! container per deprovision job and hub minted from the storage account.
//!
//! A minted container's name is a function of the job id and the hub's host name only, so the export
//! snapshot an undo needs is found again days later without storing anything secret: the database keeps
//! job ids, never a SAS, and a fresh SAS is minted from the account key whenever the container is used.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use super::blob::{BlobContainerClient, BlobError, ContainerSasUrl};
use super::storage_account::{SasPermissions, StorageAccount};

/// Prefix of every container minted for a job, so they are easy to find (and clean up) in an account.
pub const MINTED_CONTAINER_PREFIX: &str = "dpv-";
/// Longest part of the job id a minted name keeps: 63 (the limit) minus the prefix, a `-` and the
/// 8 hex characters of the hash.
const MAX_JOB_PART: usize = 63 - MINTED_CONTAINER_PREFIX.len() - 1 - 8;
/// Lifetime of the account SAS used only to create a minted container (capped by the job SAS's).
const ADMIN_SAS_TTL: Duration = Duration::from_secs(15 * 60);

/// What the SAS handed out for a minted container allows: the hub reads the import blob and writes
/// the export and `importErrors.log`; the service writes, reads and lists blobs and removes its own.
pub const MINTED_SAS_PERMISSIONS: SasPermissions = SasPermissions {
    read: true,
    add: true,
    create: true,
    write: true,
    delete: true,
    list: true,
};

/// Where a hub's import/export blobs go: the hub's own container, or containers minted per job from a
/// storage account. `Debug` hides the SAS signature and the account key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobsStorage {
    /// A container configured for the hub (`DEPROVISIOND_HUB_<LABEL>_JOBS_CONTAINER_SAS_URL`), shared
    /// by all its jobs.
    Container(ContainerSasUrl),
    /// A storage account (`DEPROVISIOND_STORAGE_CONNECTION_STRING`): one container per job and hub,
    /// created on first use, each SAS valid for `sas_ttl`.
    Account {
        /// The account the containers are minted in.
        account: StorageAccount,
        /// Lifetime of each SAS minted.
        sas_ttl: Duration,
    },
}

impl JobsStorage {
    /// The container client for deprovision job `job_id`'s blobs in hub `host`, created when it is
    /// minted from the account and missing. The SAS is valid for `sas_ttl` from `now` (unix seconds).
    pub async fn container(
        &self,
        job_id: &str,
        host: &str,
        now_unix: i64,
        http: &reqwest::Client,
    ) -> Result<BlobContainerClient, BlobError> {
        match self {
            Self::Container(url) => Ok(BlobContainerClient::with_http_client(
                url.clone(),
                http.clone(),
            )),
            Self::Account { account, sas_ttl } => {
                let name = minted_container_name(job_id, host);
                let now = DateTime::<Utc>::from_timestamp(now_unix, 0).ok_or_else(|| {
                    BlobError::Setup(format!("{now_unix} is not a time a SAS can start at"))
                })?;
                let expiry = |ttl: Duration| {
                    chrono::Duration::from_std(ttl)
                        .ok()
                        .and_then(|d| now.checked_add_signed(d))
                        .ok_or_else(|| {
                            BlobError::Setup(format!("a SAS lifetime of {ttl:?} is out of range"))
                        })
                };
                // A container SAS cannot create its own container: a short account SAS does, once.
                let admin =
                    account.container_admin_sas_url(&name, expiry(ADMIN_SAS_TTL.min(*sas_ttl))?)?;
                let created = BlobContainerClient::with_http_client(admin, http.clone())
                    .create_if_missing()
                    .await?;
                if created {
                    tracing::info!(
                        container = %self.describe(job_id, host),
                        job_id,
                        hub = host,
                        "created the blob container of a hub job"
                    );
                }
                let sas = account.container_sas_url(
                    &name,
                    MINTED_SAS_PERMISSIONS,
                    None,
                    expiry(*sas_ttl)?,
                )?;
                Ok(BlobContainerClient::with_http_client(sas, http.clone()))
            }
        }
    }

    /// The container's URL without any SAS (safe to show in events and job views).
    pub fn describe(&self, job_id: &str, host: &str) -> String {
        match self {
            Self::Container(url) => url.container_url().to_string(),
            Self::Account { account, .. } => {
                let name = minted_container_name(job_id, host);
                match account.container_url(&name) {
                    Ok(url) => url.to_string(),
                    // Not reached: minted names are valid container names (tested below).
                    Err(_) => format!("{}/{name}", account.blob_endpoint()),
                }
            }
        }
    }
}

/// The container minted for job `job_id` in hub `host`: `dpv-` + the job id in lower case with every
/// run of other characters than `a-z`/`0-9` read as one `-` (at most 50 characters) + `-` + the first 8
/// hex characters of SHA-256(job id, NUL, lower-case host). The same (job, host) always gives the same
/// name, another host another one, and two job ids the sanitising or the cut confuses still differ by
/// the hash. A valid container name: 3-63 of `a-z`, `0-9` and single inner `-`.
pub fn minted_container_name(job_id: &str, host: &str) -> String {
    let mut part = String::with_capacity(job_id.len());
    for c in job_id.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            part.push(c);
        } else if !part.is_empty() && !part.ends_with('-') {
            part.push('-');
        }
    }
    part.truncate(MAX_JOB_PART);
    let part = part.trim_end_matches('-');
    let part = if part.is_empty() { "job" } else { part };
    let mut hash = Sha256::new();
    hash.update(job_id.as_bytes());
    hash.update([0u8]);
    hash.update(host.trim().to_ascii_lowercase().as_bytes());
    let digest = hash.finalize();
    let hex: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("{MINTED_CONTAINER_PREFIX}{part}-{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const AZURITE_CS: &str = "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;";
    const JOB: &str = "01936f0e-7c1a-7b3e-9a41-3f2b8c0d9e12";
    const HUB: &str = "hub-1.azure-devices.net";

    fn valid(name: &str) -> bool {
        (3..=63).contains(&name.len())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !name.starts_with('-')
            && !name.ends_with('-')
            && !name.contains("--")
    }

    #[test]
    fn minted_names_are_deterministic_valid_and_per_hub() {
        let name = minted_container_name(JOB, HUB);
        assert!(name.starts_with(&format!("dpv-{JOB}-")), "{name}");
        assert_eq!(name.len(), 4 + JOB.len() + 1 + 8);
        assert!(valid(&name), "{name}");
        assert_eq!(name, minted_container_name(JOB, HUB), "deterministic");
        assert_eq!(
            name,
            minted_container_name(JOB, " HUB-1.azure-devices.net"),
            "host names are case-insensitive"
        );
        assert_ne!(name, minted_container_name(JOB, "hub-2.azure-devices.net"));
        assert_ne!(
            name,
            minted_container_name("01936f0e-7c1a-7b3e-9a41-3f2b8c0d9e13", HUB)
        );
    }

    #[test]
    fn odd_job_ids_still_give_valid_distinct_names() {
        let long = "x".repeat(200);
        let cases = [
            "",
            "-",
            "___",
            "Job 42 / Fleet#7",
            "UPPER-case--dashes-",
            "é-ü-ß",
            long.as_str(),
        ];
        let mut names: Vec<String> = cases
            .iter()
            .map(|id| minted_container_name(id, HUB))
            .collect();
        for (id, name) in cases.iter().zip(&names) {
            assert!(valid(name), "{id:?} -> {name}");
        }
        assert_eq!(names[0], names[0].to_lowercase());
        assert!(names[3].starts_with("dpv-job-42-fleet-7-"), "{}", names[3]);
        assert!(
            names[4].starts_with("dpv-upper-case-dashes-"),
            "{}",
            names[4]
        );
        assert_eq!(names[6].len(), 63);
        // "Job_1" and "job-1" sanitise alike; the hash of the exact id keeps them apart.
        assert_ne!(
            minted_container_name("Job_1", HUB),
            minted_container_name("job-1", HUB)
        );
        names.sort();
        names.dedup();
        assert_eq!(names.len(), cases.len(), "{names:?}");
    }

    #[test]
    fn describe_shows_the_container_without_a_sas() {
        let account = StorageAccount::from_connection_string(AZURITE_CS).unwrap();
        let minted = JobsStorage::Account {
            account,
            sas_ttl: Duration::from_secs(3600),
        };
        assert_eq!(
            minted.describe(JOB, HUB),
            format!(
                "http://127.0.0.1:10000/devstoreaccount1/{}",
                minted_container_name(JOB, HUB)
            )
        );
        assert!(
            !format!("{minted:?}").contains("Eby8"),
            "Debug hides the key"
        );
        let own = JobsStorage::Container(
            ContainerSasUrl::parse(
                "https://acct.blob.core.windows.net/hub-1-jobs?sv=2021-08-06&sr=c&sp=rwdl&sig=c2VjcmV0",
            )
            .unwrap(),
        );
        assert_eq!(
            own.describe(JOB, HUB),
            "https://acct.blob.core.windows.net/hub-1-jobs"
        );
        assert!(
            !format!("{own:?}").contains("c2VjcmV0"),
            "Debug hides the sig"
        );
    }

    #[test]
    fn minted_sas_permissions() {
        assert_eq!(MINTED_SAS_PERMISSIONS.as_sp(), "racwdl");
    }
}
