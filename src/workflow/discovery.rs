//! Where a device's hub identity can be (pure rules over what DPS and the configuration say).
//!
//! DPS's registration record is a hint, not proof: it keeps `assignedHub` and `deviceId` from its last
//! assignment whatever its status (a device that retried after its enrollment was disabled has a
//! `disabled` record and is still connected), and it can be missing (never provisioned, or deleted by
//! hand) while an identity exists. So:
//! - a record that names a hub makes an item for that hub, whatever its status;
//! - an item with no hub is looked up by device id in the hubs the enrollment or group links (its
//!   `iotHubs`, else every configured hub); so is a device whose named hub has no identity for it;
//! - the `all_hubs` sweep checks every configured hub for every device, for identities an earlier
//!   assignment left behind.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::azure::models::{DeviceRegistrationState, RegistrationStatus};
use crate::domain::job::Sweep;
use crate::store::NewItem;

/// Item-data key of the status of the device's registration record when it was discovered.
pub const RECORD_STATUS: &str = "record_status";
/// The record status word used when DPS has no record for the device.
pub const NO_RECORD: &str = "no_record";

/// The wire name of a registration record's status (`no_record` when there is none).
pub fn record_status_name(reg: Option<&DeviceRegistrationState>) -> &'static str {
    match reg.and_then(|r| r.status) {
        None if reg.is_none() => NO_RECORD,
        // A record without a status field: DPS documents none, treat it as not assigned.
        None => "unassigned",
        Some(RegistrationStatus::Unassigned) => "unassigned",
        Some(RegistrationStatus::Assigning) => "assigning",
        Some(RegistrationStatus::Assigned) => "assigned",
        Some(RegistrationStatus::Failed) => "failed",
        Some(RegistrationStatus::Disabled) => "disabled",
        // A status newer than this client: the record's hub (if any) is still acted on.
        Some(RegistrationStatus::Unknown) => "unknown",
    }
}

/// The hub a registration record names (lower case), whatever the record's status.
pub fn named_hub(reg: Option<&DeviceRegistrationState>) -> Option<String> {
    reg.and_then(|r| r.assigned_hub.as_deref())
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(str::to_ascii_lowercase)
}

/// The device item for a registration record (or for its absence). The device id defaults to the
/// registration id, as DPS does; an item without a hub is looked up by its registry step.
pub fn item_for(registration_id: &str, reg: Option<&DeviceRegistrationState>) -> NewItem {
    NewItem {
        registration_id: registration_id.to_string(),
        device_id: Some(
            reg.and_then(|r| r.device_id.clone())
                .filter(|d| !d.is_empty())
                .unwrap_or_else(|| registration_id.to_string()),
        ),
        hub: named_hub(reg),
        data: Some(json!({ RECORD_STATUS: record_status_name(reg) })),
    }
}

/// The record status stored with an item (`None` for items written before it was recorded).
pub fn item_record_status(data: Option<&Value>) -> Option<&str> {
    data.and_then(|d| d[RECORD_STATUS].as_str())
}

/// Hubs an enrollment or group can assign its devices to: its `iotHubs`, else its (deprecated)
/// `iotHubHostName`, else every configured hub. Lower case, sorted, without duplicates.
pub fn linked_hubs(
    iot_hubs: Option<&[String]>,
    iot_hub_host_name: Option<&str>,
    configured: &[&str],
) -> Vec<String> {
    let listed: Vec<String> = match iot_hubs {
        Some(hubs) if !hubs.is_empty() => hubs.to_vec(),
        _ => iot_hub_host_name.map(str::to_string).into_iter().collect(),
    };
    let chosen: Vec<String> = if listed.iter().any(|h| !h.trim().is_empty()) {
        listed
    } else {
        configured.iter().map(|h| h.to_string()).collect()
    };
    let mut hubs: Vec<String> = chosen
        .iter()
        .map(|h| h.trim().to_ascii_lowercase())
        .filter(|h| !h.is_empty())
        .collect();
    hubs.sort();
    hubs.dedup();
    hubs
}

/// Where the registry step looks for one device's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubSearch {
    /// Hubs checked in every case, the named hub first.
    pub first: Vec<String>,
    /// Hubs checked only when every hub of `first` answered 404: a record that names a hub where no
    /// identity exists is no proof that none exists elsewhere.
    pub if_absent: Vec<String>,
}

impl HubSearch {
    /// Every hub the search may ask, in order.
    pub fn all(&self) -> impl Iterator<Item = &String> {
        self.first.iter().chain(self.if_absent.iter())
    }
}

fn push_new(hubs: &mut Vec<String>, more: impl IntoIterator<Item = String>) {
    for h in more {
        if !hubs.contains(&h) {
            hubs.push(h);
        }
    }
}

/// The hubs to check for a device whose record names `named` (lower case), given the enrollment's
/// linked hubs, the configured hubs and the request's sweep.
pub fn hub_search(
    named: Option<&str>,
    linked: &[String],
    configured: &[&str],
    sweep: Sweep,
) -> HubSearch {
    let configured = configured.iter().map(|h| h.to_ascii_lowercase());
    let mut first: Vec<String> = named.map(str::to_string).into_iter().collect();
    match (named, sweep) {
        (_, Sweep::AllHubs) => {
            push_new(&mut first, linked.iter().cloned());
            push_new(&mut first, configured);
            HubSearch {
                first,
                if_absent: Vec::new(),
            }
        }
        (Some(h), Sweep::Assigned) => HubSearch {
            first,
            if_absent: linked.iter().filter(|l| *l != h).cloned().collect(),
        },
        (None, Sweep::Assigned) => {
            push_new(&mut first, linked.iter().cloned());
            HubSearch {
                first,
                if_absent: Vec::new(),
            }
        }
    }
}

/// Identity-registry operations the registry steps cost at least, per hub: the full cost of a
/// cut-off (`ops_per_device`) in the hub the record names or where the identity was found, one
/// lookup in every other hub searched first. Lookups after a 404 in the named hub are not counted.
pub fn registry_ops_per_hub<'a>(
    devices: impl IntoIterator<Item = (Option<&'a str>, Option<&'a str>)>,
    linked: &[String],
    configured: &[&str],
    sweep: Sweep,
    ops_per_device: u64,
) -> BTreeMap<String, u64> {
    let mut ops: BTreeMap<String, u64> = BTreeMap::new();
    for (named, found) in devices {
        let search = hub_search(named, linked, configured, sweep);
        for hub in &search.first {
            let full = Some(hub.as_str()) == named || Some(hub.as_str()) == found;
            *ops.entry(hub.clone()).or_default() += if full { ops_per_device } else { 1 };
        }
        if let Some(f) = found.filter(|f| !search.first.iter().any(|h| h == f)) {
            *ops.entry(f.to_string()).or_default() += ops_per_device;
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(v: Value) -> DeviceRegistrationState {
        serde_json::from_value(v).unwrap()
    }

    const HUBS: [&str; 3] = ["a.net", "b.net", "c.net"];

    #[test]
    fn any_record_that_names_a_hub_is_an_item_for_that_hub() {
        for status in ["assigned", "disabled", "failed", "assigning", "unassigned"] {
            let r = reg(
                json!({"registrationId": "d1", "status": status, "assignedHub": "A.net", "deviceId": "dev-1"}),
            );
            let item = item_for("d1", Some(&r));
            assert_eq!(item.hub.as_deref(), Some("a.net"), "{status}");
            assert_eq!(item.device_id.as_deref(), Some("dev-1"));
            assert_eq!(item_record_status(item.data.as_ref()), Some(status));
        }
    }

    #[test]
    fn no_record_or_no_hub_is_looked_up_under_the_registration_id() {
        let item = item_for("d1", None);
        assert_eq!((item.hub, item.device_id.as_deref()), (None, Some("d1")));
        assert_eq!(item_record_status(item.data.as_ref()), Some(NO_RECORD));
        let r = reg(json!({"registrationId": "d1", "status": "failed"}));
        assert_eq!(item_for("d1", Some(&r)).hub, None);
    }

    #[test]
    fn linked_hubs_fall_back_to_every_configured_hub() {
        let listed = vec!["B.net".to_string(), "b.net".to_string()];
        assert_eq!(linked_hubs(Some(&listed), None, &HUBS), ["b.net"]);
        assert_eq!(linked_hubs(None, Some("C.net"), &HUBS), ["c.net"]);
        assert_eq!(linked_hubs(Some(&[]), None, &HUBS), HUBS);
    }

    #[test]
    fn search_order_per_sweep() {
        let linked = vec!["b.net".to_string(), "c.net".to_string()];
        let s = hub_search(Some("b.net"), &linked, &HUBS, Sweep::Assigned);
        assert_eq!(
            (s.first, s.if_absent),
            (vec!["b.net".into()], vec!["c.net".into()])
        );
        let s = hub_search(None, &linked, &HUBS, Sweep::Assigned);
        assert_eq!(s.first, linked);
        assert!(s.if_absent.is_empty());
        let s = hub_search(Some("c.net"), &linked, &HUBS, Sweep::AllHubs);
        assert_eq!(s.first, ["c.net", "b.net", "a.net"]);
        assert!(s.if_absent.is_empty());
    }

    #[test]
    fn costs_per_sweep() {
        let linked: Vec<String> = HUBS.iter().map(|h| h.to_string()).collect();
        let devices = [(Some("a.net"), None), (None, Some("b.net")), (None, None)];
        let assigned = registry_ops_per_hub(devices, &linked, &HUBS, Sweep::Assigned, 3);
        // a: 3 (named) + 1 + 1; b: 3 (found) + 1; c: 1 + 1.
        assert_eq!(assigned.values().sum::<u64>(), 5 + 4 + 2);
        let all = registry_ops_per_hub(devices, &linked, &HUBS, Sweep::AllHubs, 3);
        // the named device now also costs a lookup in b and c.
        assert_eq!(all.values().sum::<u64>(), 11 + 2);
    }
}
