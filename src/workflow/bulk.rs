//! Bulk registry calls: device deletes waiting for the same hub at the same time go out together as one
//! `POST /devices` (at most 100 devices), and each device decides from its own entry of the result,
//! classified as the same call for that device alone would have been. Azure charges a bulk call one
//! operation per device, so this saves round trips, not quota: each device's step has already taken
//! its operation from the hub's budget. A delete that waits alone is sent as a plain `DELETE`.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::{mpsc, oneshot};

use crate::azure::hub::{IfMatch, MAX_BULK_DEVICES};
use crate::azure::models::{ExportImportDevice, ImportMode};
use crate::azure::{AzureError, HubClient};

type Reply = oneshot::Sender<Result<(), AzureError>>;

/// Per-hub queues of device deletes, each drained by its own sender task.
#[derive(Default)]
pub(crate) struct BulkDeletes {
    hubs: Mutex<HashMap<String, mpsc::UnboundedSender<(String, Reply)>>>,
}

impl BulkDeletes {
    /// Deletes `device_id` from hub `host` unconditionally (`If-Match: "*"`), alone or in a bulk call
    /// with other deletes waiting for the same hub.
    pub(crate) async fn delete(
        &self,
        host: &str,
        hub: &HubClient,
        device_id: &str,
    ) -> Result<(), AzureError> {
        let queue = {
            // The lock guards the map only; it is never held across an await.
            let mut hubs = self.hubs.lock().unwrap_or_else(|p| p.into_inner());
            hubs.entry(host.to_ascii_lowercase())
                .or_insert_with(|| {
                    let (tx, rx) = mpsc::unbounded_channel();
                    tokio::spawn(send_batches(hub.clone(), rx));
                    tx
                })
                .clone()
        };
        let (reply, answer) = oneshot::channel();
        if queue.send((device_id.to_string(), reply)).is_err() {
            return hub.delete_device(device_id, IfMatch::Any).await;
        }
        match answer.await {
            Ok(result) => result,
            // The sender task is gone (the runtime is shutting down): this delete goes alone.
            Err(_) => hub.delete_device(device_id, IfMatch::Any).await,
        }
    }
}

async fn send_batches(hub: HubClient, mut rx: mpsc::UnboundedReceiver<(String, Reply)>) {
    let mut waiting: Vec<(String, Reply)> = Vec::with_capacity(MAX_BULK_DEVICES);
    while rx.recv_many(&mut waiting, MAX_BULK_DEVICES).await > 0 {
        // The hub refuses a device twice in one call: a repeat waits for the next one.
        let mut batch: Vec<(String, Reply)> = Vec::with_capacity(waiting.len());
        let mut later: Vec<(String, Reply)> = Vec::new();
        for (id, reply) in waiting.drain(..) {
            if batch.iter().any(|(b, _)| *b == id) {
                later.push((id, reply));
            } else {
                batch.push((id, reply));
            }
        }
        send(&hub, batch).await;
        for (id, reply) in later {
            let _ = reply.send(hub.delete_device(&id, IfMatch::Any).await);
        }
    }
}

async fn send(hub: &HubClient, mut batch: Vec<(String, Reply)>) {
    if batch.len() == 1 {
        let (id, reply) = batch.remove(0);
        let _ = reply.send(hub.delete_device(&id, IfMatch::Any).await);
        return;
    }
    let items: Vec<ExportImportDevice> = batch.iter().map(|(id, _)| delete_item(id)).collect();
    match hub.bulk(&items).await {
        Ok(result) => {
            for (id, reply) in batch {
                let outcome = match result.errors.iter().find(|e| e.device_id == id) {
                    None => Ok(()),
                    Some(e) => Err(AzureError::from_bulk_item(
                        &e.error_code,
                        e.error_status.as_deref(),
                        None,
                    )),
                };
                let _ = reply.send(outcome);
            }
        }
        // The call as a whole failed (throttled, unauthorized, unreachable): every device of it did.
        Err(e) => {
            for (_, reply) in batch {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

fn delete_item(id: &str) -> ExportImportDevice {
    ExportImportDevice {
        id: id.to_string(),
        module_id: None,
        e_tag: None,
        import_mode: ImportMode::Delete,
        status: None,
        status_reason: None,
        authentication: None,
        twin_e_tag: None,
        tags: None,
        properties: None,
        capabilities: None,
        device_scope: None,
        parent_scopes: None,
        extra: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bulk_item_error_reads_as_the_single_call_would() {
        let e = AzureError::from_bulk_item("DeviceNotFound", Some("not there"), None);
        assert!(e.is_not_found());
        assert_eq!(e.status(), Some(404));
        let e = AzureError::from_bulk_item("ThrottlingException", None, None);
        assert_eq!(e.status(), Some(429));
        assert!(e.is_retryable());
        let e = AzureError::from_bulk_item("SomethingNew", None, None);
        assert_eq!(e.status(), Some(400));
        assert!(!e.is_retryable());
    }

    #[test]
    fn a_delete_item_is_an_unconditional_delete() {
        let json = serde_json::to_value(delete_item("dev-1")).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"id": "dev-1", "importMode": "delete"})
        );
    }
}
