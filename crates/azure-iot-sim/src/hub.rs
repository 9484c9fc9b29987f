//! IoT Hub registry API (azure-specs README §5): devices, bulk, list, twin query, device statistics;
//! and the import/export jobs API (README §6, [`crate::jobs`]).

use std::sync::Arc;

use http::Method;
use percent_encoding::percent_decode_str;
use serde_json::{Value, json};

use super::config::BulkCost;
use super::dps_service::{decode_continuation, encode_continuation};
use super::errors::{self, Service, SimResponse};
use super::jobs;
use super::server::{CallPlan, DropConnection, SimHandle, SimRequest, route_error, run_call};
use super::state::{HubInstance, HubOpError, Precondition, Right, TwinQuery};

/// Default and largest page of a twin query (*inferred*: the service documents no value).
pub const QUERY_PAGE_SIZE: usize = 100;

/// One registry operation, routed from method and path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HubOp {
    /// GET /devices/{id}.
    GetDevice(String),
    /// PUT /devices/{id}.
    PutDevice(String),
    /// DELETE /devices/{id}.
    DeleteDevice(String),
    /// GET /devices.
    ListDevices,
    /// POST /devices.
    Bulk,
    /// POST /devices/query.
    Query,
    /// GET /statistics/devices (`Statistics_GetDeviceStatistics`): counts of device identities
    /// (`RegistryStatistics`; modules are not counted). Needs RegistryRead. Spends no registry
    /// quota: Azure does not document whether it does, and the simulator chooses "not counted".
    DeviceStatistics,
    /// POST /jobs/create (import/export job).
    CreateJob,
    /// GET /jobs.
    ListJobs,
    /// GET /jobs/{id}.
    GetJob(String),
    /// DELETE /jobs/{id}.
    CancelJob(String),
}

impl HubOp {
    fn name(&self) -> &'static str {
        match self {
            Self::GetDevice(_) => "GetDevice",
            Self::PutDevice(_) => "PutDevice",
            Self::DeleteDevice(_) => "DeleteDevice",
            Self::ListDevices => "ListDevices",
            Self::Bulk => "BulkDevices",
            Self::Query => "QueryTwins",
            Self::DeviceStatistics => "GetDeviceStatistics",
            Self::CreateJob => "CreateImportExportJob",
            Self::ListJobs => "GetImportExportJobs",
            Self::GetJob(_) => "GetImportExportJob",
            Self::CancelJob(_) => "CancelImportExportJob",
        }
    }

    fn entity(&self) -> Option<String> {
        match self {
            Self::GetDevice(id)
            | Self::PutDevice(id)
            | Self::DeleteDevice(id)
            | Self::GetJob(id)
            | Self::CancelJob(id) => Some(id.clone()),
            _ => None,
        }
    }

    /// Rights the SAS policy must grant; `body` tells an export (reads the registry) from an import.
    fn rights(&self, body: &[u8]) -> Vec<Right> {
        match self {
            Self::GetDevice(_)
            | Self::ListDevices
            | Self::DeviceStatistics
            | Self::ListJobs
            | Self::GetJob(_) => vec![Right::RegistryRead],
            Self::CreateJob if jobs::requested_kind(body) == Some(jobs::JobKind::Export) => {
                vec![Right::RegistryRead]
            }
            Self::PutDevice(_)
            | Self::DeleteDevice(_)
            | Self::Bulk
            | Self::CreateJob
            | Self::CancelJob(_) => vec![Right::RegistryWrite],
            // README §3: /devices/query is a twin query and needs ServiceConnect.
            Self::Query => vec![Right::ServiceConnect],
        }
    }
}

/// Routes a request; `Err(404|405)` when nothing matches.
pub fn route(method: &Method, path: &str) -> Result<HubOp, u16> {
    let segs: Vec<&str> = path
        .trim_start_matches('/')
        .trim_end_matches('/')
        .split('/')
        .collect();
    match segs.as_slice() {
        [d] if d.eq_ignore_ascii_case("devices") => match *method {
            Method::GET => Ok(HubOp::ListDevices),
            Method::POST => Ok(HubOp::Bulk),
            _ => Err(405),
        },
        [d, q]
            if d.eq_ignore_ascii_case("devices")
                && q.eq_ignore_ascii_case("query")
                && method == Method::POST =>
        {
            Ok(HubOp::Query)
        }
        [s, d] if s.eq_ignore_ascii_case("statistics") && d.eq_ignore_ascii_case("devices") => {
            match *method {
                Method::GET => Ok(HubOp::DeviceStatistics),
                _ => Err(405),
            }
        }
        [j] if j.eq_ignore_ascii_case("jobs") => match *method {
            Method::GET => Ok(HubOp::ListJobs),
            _ => Err(405),
        },
        [j, c] if j.eq_ignore_ascii_case("jobs") && c.eq_ignore_ascii_case("create") => {
            match *method {
                Method::POST => Ok(HubOp::CreateJob),
                _ => Err(405),
            }
        }
        [j, id] if j.eq_ignore_ascii_case("jobs") => {
            let id = percent_decode_str(id).decode_utf8_lossy().into_owned();
            match *method {
                Method::GET => Ok(HubOp::GetJob(id)),
                Method::DELETE => Ok(HubOp::CancelJob(id)),
                _ => Err(405),
            }
        }
        [d, id] if d.eq_ignore_ascii_case("devices") => {
            let id = percent_decode_str(id).decode_utf8_lossy().into_owned();
            match *method {
                Method::GET => Ok(HubOp::GetDevice(id)),
                Method::PUT => Ok(HubOp::PutDevice(id)),
                Method::DELETE => Ok(HubOp::DeleteDevice(id)),
                _ => Err(405),
            }
        }
        _ => Err(404),
    }
}

/// Serves one registry request for the hub `host`.
pub async fn serve(
    handle: &SimHandle,
    host: &str,
    req: &SimRequest,
) -> Result<SimResponse, DropConnection> {
    let Some(hub) = handle.state().hub(host) else {
        return Ok(route_error(handle, Service::Hub, host, req, 404));
    };
    let op = match route(&req.method, &req.path) {
        Ok(op) => op,
        Err(status) => return Ok(route_error(handle, Service::Hub, host, req, status)),
    };
    let settings = handle.0.throttle.settings();
    let units = f64::from(hub.units);
    let quota = match &op {
        HubOp::Query => Some((
            format!("hub:{}:query", hub.host),
            hub.tier.queries_per_minute_per_unit() * units,
            1.0,
        )),
        // Job operations have their own throttle; the devices a job touches cost no registry
        // operations (README §6).
        HubOp::CreateJob | HubOp::ListJobs | HubOp::GetJob(_) | HubOp::CancelJob(_) => Some((
            format!("hub:{}:jobs", hub.host),
            hub.tier.job_ops_per_minute_per_unit() * units,
            1.0,
        )),
        // Azure does not document whether the statistics call spends the registry quota; the
        // simulator chooses not counted (no bucket), so a planner's count costs no device step.
        HubOp::DeviceStatistics => None,
        HubOp::Bulk => {
            let n = serde_json::from_slice::<Value>(&req.body)
                .ok()
                .and_then(|v| v.as_array().map(Vec::len))
                .unwrap_or(1);
            let cost = if settings.bulk_cost == BulkCost::PerItem {
                n.max(1) as f64
            } else {
                1.0
            };
            Some((
                format!("hub:{}:registry", hub.host),
                hub.tier.registry_ops_per_minute_per_unit() * units,
                cost,
            ))
        }
        _ => Some((
            format!("hub:{}:registry", hub.host),
            hub.tier.registry_ops_per_minute_per_unit() * units,
            1.0,
        )),
    };
    let plan = CallPlan {
        service: Service::Hub,
        instance: hub.host.clone(),
        host: hub.host.clone(),
        operation: op.name(),
        entity_id: op.entity(),
        entity_ids: match op {
            HubOp::Bulk => bulk_ids(&req.body),
            _ => Vec::new(),
        },
        rights: op.rights(&req.body),
        quota,
    };
    let policies = hub.policies.clone();
    run_call(handle, plan, req, &policies, |tid| {
        execute(handle, &hub, &op, req, tid)
    })
    .await
}

fn error(handle: &SimHandle, tid: &str, e: &HubOpError) -> SimResponse {
    errors::hub_error(
        e.status,
        e.name,
        e.code,
        &e.message,
        tid,
        handle.0.clock.now_utc(),
    )
}

fn execute(
    handle: &SimHandle,
    hub: &Arc<HubInstance>,
    op: &HubOp,
    req: &SimRequest,
    tid: &str,
) -> SimResponse {
    match execute_inner(handle, hub, op, req) {
        Ok(r) => r,
        Err(e) => error(handle, tid, &e),
    }
}

/// A device body with its etag also in a quoted `ETag` header.
fn device_response(d: &Value) -> SimResponse {
    let mut resp = errors::json_response(200, d);
    if let Some(e) = d.get("etag").and_then(Value::as_str) {
        errors::set_header(&mut resp, "etag", &format!("\"{e}\""));
    }
    resp
}

fn parse_body(req: &SimRequest) -> Result<Value, HubOpError> {
    serde_json::from_slice(&req.body).map_err(|e| HubOpError {
        status: 400,
        name: "IotHubFormatError",
        code: 400_006,
        message: format!("The request body is not valid JSON: {e}"),
    })
}

fn job_response(p: &jobs::JobProperties) -> SimResponse {
    match serde_json::to_value(p) {
        Ok(v) => errors::json_response(200, &v),
        Err(e) => errors::json_response(500, &json!({"Message": e.to_string()})),
    }
}

fn execute_inner(
    handle: &SimHandle,
    hub: &Arc<HubInstance>,
    op: &HubOp,
    req: &SimRequest,
) -> Result<SimResponse, HubOpError> {
    let cond = Precondition::from_header(req.header("if-match"));
    match op {
        HubOp::GetDevice(id) => {
            let d = hub
                .get_device(id)
                .ok_or_else(|| HubOpError::not_found(id))?;
            Ok(device_response(&d))
        }
        HubOp::PutDevice(id) => {
            let d = hub.put_device(id, parse_body(req)?, &cond)?;
            Ok(device_response(&d))
        }
        HubOp::DeleteDevice(id) => {
            hub.delete_device(id, &cond)?;
            Ok(errors::empty_response(204))
        }
        HubOp::ListDevices => {
            let top = req.query.get("top").and_then(|t| t.parse::<i64>().ok());
            Ok(errors::json_response(
                200,
                &Value::Array(hub.list_devices(top)),
            ))
        }
        HubOp::Bulk => {
            let body = parse_body(req)?;
            let items = body
                .as_array()
                .ok_or_else(|| HubOpError::invalid("The body must be an array of devices"))?;
            let errs = hub.bulk(items)?;
            let list: Vec<Value> = errs
                .iter()
                .map(|e| {
                    json!({
                        "deviceId": e.device_id,
                        "errorCode": e.error_code,
                        "errorStatus": e.error_status,
                        "operation": e.operation,
                    })
                })
                .collect();
            let ok = list.is_empty();
            let result = json!({"isSuccessful": ok, "errors": list, "warnings": []});
            Ok(errors::json_response(if ok { 200 } else { 400 }, &result))
        }
        HubOp::Query => {
            let body = parse_body(req)?;
            let q = body
                .get("query")
                .and_then(Value::as_str)
                .ok_or_else(|| HubOpError::null("query is required"))?;
            let query = TwinQuery::parse(q)?;
            let size = req
                .header("x-ms-max-item-count")
                .and_then(|v| v.trim().parse::<i64>().ok())
                .filter(|n| *n > 0)
                .map(|n| (n as usize).min(QUERY_PAGE_SIZE))
                .unwrap_or(QUERY_PAGE_SIZE);
            let after = match req.header("x-ms-continuation").filter(|t| !t.is_empty()) {
                None => None,
                Some(t) => Some(
                    decode_continuation(t)
                        .ok_or_else(|| HubOpError::invalid("Invalid continuation token"))?,
                ),
            };
            let page = hub.query_twins(&query, after.as_deref(), size);
            let mut resp = errors::json_response(200, &Value::Array(page.items));
            if let Some(a) = &page.next_after {
                errors::set_header(&mut resp, "x-ms-continuation", &encode_continuation(a));
            }
            errors::set_header(&mut resp, "x-ms-item-type", "Twin");
            Ok(resp)
        }
        HubOp::DeviceStatistics => {
            let stats = hub.device_statistics();
            Ok(errors::json_response(
                200,
                &json!({
                    "totalDeviceCount": stats.total,
                    "enabledDeviceCount": stats.enabled,
                    "disabledDeviceCount": stats.disabled,
                }),
            ))
        }
        HubOp::CreateJob => Ok(job_response(&jobs::create(handle, hub, &req.body)?)),
        HubOp::ListJobs => {
            let list = serde_json::to_value(handle.0.jobs.list(&hub.host))
                .unwrap_or_else(|_| Value::Array(Vec::new()));
            Ok(errors::json_response(200, &list))
        }
        HubOp::GetJob(id) => {
            let job = handle
                .0
                .jobs
                .get(&hub.host, id)
                .ok_or_else(|| jobs::job_not_found(id))?;
            Ok(job_response(&job.properties()))
        }
        HubOp::CancelJob(id) => {
            jobs::cancel(handle, &hub.host, id)?;
            Ok(errors::empty_response(204))
        }
    }
}

/// The device ids of a bulk `POST /devices` body, for the call log (unreadable bodies name none).
fn bulk_ids(body: &[u8]) -> Vec<String> {
    serde_json::from_slice::<Vec<Value>>(body)
        .map(|items| {
            items
                .iter()
                .filter_map(|it| it.get("id").and_then(Value::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_every_operation() {
        assert_eq!(route(&Method::GET, "/devices"), Ok(HubOp::ListDevices));
        assert_eq!(route(&Method::POST, "/devices"), Ok(HubOp::Bulk));
        assert_eq!(route(&Method::POST, "/devices/query"), Ok(HubOp::Query));
        assert_eq!(
            route(&Method::GET, "/devices/query"),
            Ok(HubOp::GetDevice("query".into()))
        );
        assert_eq!(
            route(&Method::PUT, "/devices/a%2Bb"),
            Ok(HubOp::PutDevice("a+b".into()))
        );
        assert_eq!(route(&Method::PATCH, "/devices/a"), Err(405));
        assert_eq!(route(&Method::GET, "/twins/a"), Err(404));
        assert_eq!(route(&Method::POST, "/jobs/create"), Ok(HubOp::CreateJob));
        assert_eq!(route(&Method::GET, "/jobs/create"), Err(405));
        assert_eq!(route(&Method::GET, "/jobs"), Ok(HubOp::ListJobs));
        assert_eq!(
            route(&Method::GET, "/jobs/j1"),
            Ok(HubOp::GetJob("j1".into()))
        );
        assert_eq!(
            route(&Method::DELETE, "/jobs/j1"),
            Ok(HubOp::CancelJob("j1".into()))
        );
        assert_eq!(route(&Method::POST, "/jobs"), Err(405));
        assert_eq!(
            route(&Method::GET, "/statistics/devices"),
            Ok(HubOp::DeviceStatistics)
        );
        assert_eq!(route(&Method::POST, "/statistics/devices"), Err(405));
        assert_eq!(route(&Method::GET, "/statistics/service"), Err(404));
    }
}
