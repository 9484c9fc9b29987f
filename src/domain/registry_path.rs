//! Which way a hub's share of a job reaches its identity registry: device by device at the hub's paced
//! registry quota, or through import/export jobs and blob storage, which that quota does not cover but
//! which run one at a time per hub and read the whole registry (azure-specs README §6).
//!
//! The choice is arithmetic on what is known before the first write: the job's devices on the hub, the
//! hub's identity count, its registry budget and the modelled job throughput. Pure: no I/O here.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// How a request wants its devices' hub identities written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RegistryPath {
    /// The faster of the two per hub, by the quota arithmetic the preview shows.
    #[default]
    Auto,
    /// Device by device, paced at the hub's registry quota.
    PerDevice,
    /// Export, import and verification-export jobs through blob storage, wherever storage is configured.
    ImportJob,
}

impl RegistryPath {
    /// Whether this is the default (left out of stored and shown requests).
    pub fn is_auto(&self) -> bool {
        *self == RegistryPath::Auto
    }
}

/// The path taken for one hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HubRoute {
    /// Device by device.
    PerDevice,
    /// Import/export jobs.
    ImportJob,
}

/// What the planner knows about one hub before the job writes anything there.
#[derive(Debug, Clone, PartialEq)]
pub struct HubFacts {
    /// The job's devices on this hub.
    pub devices: u64,
    /// Identities in the hub (what each export reads).
    pub hub_devices: u64,
    /// Registry operations one device costs on the per-device path.
    pub ops_per_device: f64,
    /// The hub's registry budget, operations per minute (`None`: not paced).
    pub budget_per_minute: Option<f64>,
    /// Devices an import or export job handles per second (`None`: no blob storage for this hub).
    pub jobs_devices_per_second: Option<f64>,
    /// Time each hub job spends besides its devices: the hub's queue and the polling interval.
    pub job_overhead: Duration,
    /// Whether the job deletes identities (the verification export then reads fewer).
    pub deletes: bool,
}

/// Both estimates for a hub and the path chosen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RouteChoice {
    /// The path taken.
    pub route: HubRoute,
    /// Seconds the per-device path needs at the hub's budget (absent: the hub is not paced).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_device_secs: Option<f64>,
    /// Seconds the job path needs: snapshot export, import and verification export (absent: no storage).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub import_job_secs: Option<f64>,
    /// Why this path, in words.
    pub why: String,
}

/// Hub jobs the import path runs: the snapshot export, the import and the verification export.
pub const JOBS_PER_IMPORT_PATH: u32 = 3;

/// The per-device path's time at the hub's budget; `None` when the hub is not paced.
pub fn per_device_time(f: &HubFacts) -> Option<Duration> {
    let budget = f.budget_per_minute.filter(|b| *b > 0.0)?;
    Some(Duration::from_secs_f64(
        f.devices as f64 * f.ops_per_device / budget * 60.0,
    ))
}

/// The job path's time: each export reads the whole registry, the import the job's devices, and each of
/// the three jobs waits its overhead. `None` without storage.
pub fn import_job_time(f: &HubFacts) -> Option<Duration> {
    let rate = f.jobs_devices_per_second.filter(|r| *r > 0.0)?;
    let after = if f.deletes {
        f.hub_devices.saturating_sub(f.devices)
    } else {
        f.hub_devices
    };
    let devices = f.hub_devices.max(f.devices) + f.devices + after;
    Some(f.job_overhead * JOBS_PER_IMPORT_PATH + Duration::from_secs_f64(devices as f64 / rate))
}

/// The path for one hub: what the request forces, else the faster estimate. The job path needs storage;
/// an unpaced hub goes device by device (its calls are not held back).
pub fn choose(f: &HubFacts, requested: RegistryPath) -> RouteChoice {
    let per_device = per_device_time(f);
    let import_job = import_job_time(f);
    let (route, why) = match (requested, per_device, import_job) {
        (_, _, _) if f.devices == 0 => (HubRoute::PerDevice, "no devices of the job here".into()),
        (RegistryPath::PerDevice, _, _) => (HubRoute::PerDevice, "asked for per_device".into()),
        (_, _, None) => (
            HubRoute::PerDevice,
            "no blob storage is configured for this hub, so no import job can run".into(),
        ),
        (RegistryPath::ImportJob, _, Some(_)) => {
            (HubRoute::ImportJob, "asked for import_job".into())
        }
        (RegistryPath::Auto, None, Some(_)) => (
            HubRoute::PerDevice,
            "the hub is not paced: device by device is not held back".into(),
        ),
        (RegistryPath::Auto, Some(p), Some(j)) if j < p => (
            HubRoute::ImportJob,
            format!(
                "import jobs take about {} where device by device takes {}",
                words(j),
                words(p)
            ),
        ),
        (RegistryPath::Auto, Some(p), Some(j)) => (
            HubRoute::PerDevice,
            format!(
                "device by device takes about {} where import jobs take {}",
                words(p),
                words(j)
            ),
        ),
    };
    RouteChoice {
        route,
        per_device_secs: per_device.map(round_secs),
        import_job_secs: import_job.map(round_secs),
        why,
    }
}

fn round_secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 10.0).round() / 10.0
}

/// A duration the way a person reads an estimate: seconds, minutes, hours or days.
pub fn words(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 120.0 {
        format!("{s:.0} s")
    } else if s < 7_200.0 {
        format!("{:.0} min", s / 60.0)
    } else if s < 172_800.0 {
        format!("{:.1} h", s / 3_600.0)
    } else {
        format!("{:.1} days", s / 86_400.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s1(devices: u64, hub_devices: u64) -> HubFacts {
        HubFacts {
            devices,
            hub_devices,
            ops_per_device: 2.0,
            budget_per_minute: Some(100.0),
            jobs_devices_per_second: Some(278.0),
            job_overhead: Duration::from_secs(10),
            deletes: false,
        }
    }

    #[test]
    fn a_large_group_on_s1_takes_the_import_path() {
        // 100,000 devices disabled one by one on S1 x 1: 200,000 operations at 100 a minute, 33 h.
        let c = choose(&s1(100_000, 100_000), RegistryPath::Auto);
        assert_eq!(c.route, HubRoute::ImportJob);
        assert_eq!(c.per_device_secs, Some(120_000.0));
        // Three jobs' overhead and 300,000 devices at 278 a second.
        let j = c.import_job_secs.unwrap();
        assert!((j - (30.0 + 300_000.0 / 278.0)).abs() < 0.2, "{j}");
        assert!(c.why.contains("33.3 h"), "{}", c.why);
    }

    #[test]
    fn a_few_devices_in_a_big_hub_go_device_by_device() {
        // 10 devices cost 12 s at the quota; the exports read a million identities.
        let c = choose(&s1(10, 1_000_000), RegistryPath::Auto);
        assert_eq!(c.route, HubRoute::PerDevice);
        assert_eq!(c.per_device_secs, Some(12.0));
        assert!(c.import_job_secs.unwrap() > 7_000.0);
    }

    #[test]
    fn the_break_even_follows_the_arithmetic() {
        // 1,000 devices in a hub of 1,000: per device 20 min; import about 41 s.
        assert_eq!(
            choose(&s1(1_000, 1_000), RegistryPath::Auto).route,
            HubRoute::ImportJob
        );
        // On S3 (5,000/min) the same 1,000 take 24 s device by device.
        let s3 = HubFacts {
            budget_per_minute: Some(5_000.0),
            ..s1(1_000, 1_000)
        };
        assert_eq!(choose(&s3, RegistryPath::Auto).route, HubRoute::PerDevice);
    }

    #[test]
    fn deletes_read_fewer_identities_in_the_verification_export() {
        let disable = import_job_time(&s1(500, 1_000)).unwrap();
        let delete = import_job_time(&HubFacts {
            deletes: true,
            ops_per_device: 1.0,
            ..s1(500, 1_000)
        })
        .unwrap();
        assert!(
            (disable - delete).as_secs_f64() - 500.0 / 278.0 < 0.01,
            "{disable:?} {delete:?}"
        );
    }

    #[test]
    fn forcing_either_path_and_its_limits() {
        let small = s1(10, 1_000_000);
        assert_eq!(
            choose(&small, RegistryPath::ImportJob).route,
            HubRoute::ImportJob
        );
        let big = s1(100_000, 100_000);
        let c = choose(&big, RegistryPath::PerDevice);
        assert_eq!(c.route, HubRoute::PerDevice);
        assert!(
            c.import_job_secs.is_some(),
            "both estimates are still shown"
        );
        let no_storage = HubFacts {
            jobs_devices_per_second: None,
            ..big.clone()
        };
        let c = choose(&no_storage, RegistryPath::ImportJob);
        assert_eq!(c.route, HubRoute::PerDevice);
        assert!(c.why.contains("no blob storage"), "{}", c.why);
        assert_eq!(c.import_job_secs, None);
        let unpaced = HubFacts {
            budget_per_minute: None,
            ..big
        };
        assert_eq!(
            choose(&unpaced, RegistryPath::Auto).route,
            HubRoute::PerDevice
        );
        assert_eq!(
            choose(&unpaced, RegistryPath::ImportJob).route,
            HubRoute::ImportJob
        );
        assert_eq!(
            choose(&s1(0, 5), RegistryPath::ImportJob).route,
            HubRoute::PerDevice,
            "nothing to import"
        );
    }

    #[test]
    fn estimates_read_as_people_say_them() {
        assert_eq!(words(Duration::from_secs(45)), "45 s");
        assert_eq!(words(Duration::from_secs(600)), "10 min");
        assert_eq!(words(Duration::from_secs(120_000)), "33.3 h");
        assert_eq!(words(Duration::from_secs(1_200_000)), "13.9 days");
    }
}
