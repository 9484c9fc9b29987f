//! DPS service API (azure-specs README §4): enrollments, groups, registration states, bulk, paging.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use http::Method;
use percent_encoding::percent_decode_str;
use serde_json::{Value, json};

use super::config::{BulkCost, ExistingPutPolicy};
use super::errors::{self, Service, SimResponse};
use super::server::{CallPlan, DropConnection, SimHandle, SimRequest, route_error, run_call};
use super::state::{DpsInstance, DpsOpError, EnrollmentKind, Page, Precondition, Right};

/// Most items a bulk enrollment call takes (spec summary: "maximum of 10").
pub const MAX_BULK: usize = 10;

/// One DPS service operation, routed from method and path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DpsOp {
    /// GET an enrollment or group.
    Get(EnrollmentKind, String),
    /// PUT an enrollment or group.
    Put(EnrollmentKind, String),
    /// DELETE an enrollment or group.
    Delete(EnrollmentKind, String),
    /// POST …/attestationmechanism.
    Attestation(EnrollmentKind, String),
    /// POST /enrollments/query or /enrollmentGroups/query.
    Query(EnrollmentKind),
    /// POST /enrollments or /enrollmentGroups.
    Bulk(EnrollmentKind),
    /// GET /registrations/{id}.
    GetRegistration(String),
    /// DELETE /registrations/{id}.
    DeleteRegistration(String),
    /// POST /registrations/{groupId}/query.
    QueryRegistrations(String),
}

impl DpsOp {
    fn name(&self) -> &'static str {
        use EnrollmentKind::{Group as G, Individual as I};
        match self {
            Self::Get(I, _) => "GetEnrollment",
            Self::Get(G, _) => "GetEnrollmentGroup",
            Self::Put(I, _) => "PutEnrollment",
            Self::Put(G, _) => "PutEnrollmentGroup",
            Self::Delete(I, _) => "DeleteEnrollment",
            Self::Delete(G, _) => "DeleteEnrollmentGroup",
            Self::Attestation(I, _) => "GetEnrollmentAttestation",
            Self::Attestation(G, _) => "GetEnrollmentGroupAttestation",
            Self::Query(I) => "QueryEnrollments",
            Self::Query(G) => "QueryEnrollmentGroups",
            Self::Bulk(I) => "BulkEnrollments",
            Self::Bulk(G) => "BulkEnrollmentGroups",
            Self::GetRegistration(_) => "GetRegistration",
            Self::DeleteRegistration(_) => "DeleteRegistration",
            Self::QueryRegistrations(_) => "QueryRegistrations",
        }
    }

    fn entity(&self) -> Option<String> {
        match self {
            Self::Get(_, id)
            | Self::Put(_, id)
            | Self::Delete(_, id)
            | Self::Attestation(_, id)
            | Self::GetRegistration(id)
            | Self::DeleteRegistration(id)
            | Self::QueryRegistrations(id) => Some(id.clone()),
            Self::Query(_) | Self::Bulk(_) => None,
        }
    }

    fn rights(&self) -> Vec<Right> {
        match self {
            Self::Get(..) | Self::Query(_) | Self::Attestation(..) => vec![Right::EnrollmentRead],
            Self::Put(..) | Self::Delete(..) | Self::Bulk(_) => vec![Right::EnrollmentWrite],
            Self::GetRegistration(_) | Self::QueryRegistrations(_) => {
                vec![Right::RegistrationStatusRead]
            }
            Self::DeleteRegistration(_) => vec![Right::RegistrationStatusWrite],
        }
    }
}

fn decode(seg: &str) -> String {
    percent_decode_str(seg).decode_utf8_lossy().into_owned()
}

/// Routes a request; `Err(404|405)` when nothing matches.
pub fn route(method: &Method, path: &str) -> Result<DpsOp, u16> {
    let segs: Vec<&str> = path
        .trim_start_matches('/')
        .trim_end_matches('/')
        .split('/')
        .collect();
    let kind_of = |s: &str| {
        if s.eq_ignore_ascii_case("enrollments") {
            Some(EnrollmentKind::Individual)
        } else if s.eq_ignore_ascii_case("enrollmentGroups") {
            Some(EnrollmentKind::Group)
        } else {
            None
        }
    };
    let m = method.clone();
    match segs.as_slice() {
        [c] if kind_of(c).is_some() => {
            let k = kind_of(c).ok_or(404u16)?;
            if m == Method::POST {
                Ok(DpsOp::Bulk(k))
            } else {
                Err(405)
            }
        }
        [c, q] if kind_of(c).is_some() && q.eq_ignore_ascii_case("query") && m == Method::POST => {
            Ok(DpsOp::Query(kind_of(c).ok_or(404u16)?))
        }
        [c, id] if kind_of(c).is_some() => {
            let k = kind_of(c).ok_or(404u16)?;
            let id = decode(id);
            match m {
                Method::GET => Ok(DpsOp::Get(k, id)),
                Method::PUT => Ok(DpsOp::Put(k, id)),
                Method::DELETE => Ok(DpsOp::Delete(k, id)),
                _ => Err(405),
            }
        }
        [c, id, a] if kind_of(c).is_some() && a.eq_ignore_ascii_case("attestationmechanism") => {
            if m == Method::POST {
                Ok(DpsOp::Attestation(kind_of(c).ok_or(404u16)?, decode(id)))
            } else {
                Err(405)
            }
        }
        [r, id] if r.eq_ignore_ascii_case("registrations") => match m {
            Method::GET => Ok(DpsOp::GetRegistration(decode(id))),
            Method::DELETE => Ok(DpsOp::DeleteRegistration(decode(id))),
            _ => Err(405),
        },
        [r, id, q]
            if r.eq_ignore_ascii_case("registrations") && q.eq_ignore_ascii_case("query") =>
        {
            if m == Method::POST {
                Ok(DpsOp::QueryRegistrations(decode(id)))
            } else {
                Err(405)
            }
        }
        _ => Err(404),
    }
}

/// Serves one DPS service request for the instance `name`.
pub async fn serve(
    handle: &SimHandle,
    name: &str,
    req: &SimRequest,
) -> Result<SimResponse, DropConnection> {
    let Some(dps) = handle.state().dps(name) else {
        return Ok(route_error(handle, Service::Dps, name, req, 404));
    };
    let op = match route(&req.method, &req.path) {
        Ok(op) => op,
        Err(status) => return Ok(route_error(handle, Service::Dps, name, req, status)),
    };
    let settings = handle.0.throttle.settings();
    let cost = match (&op, settings.bulk_cost) {
        (DpsOp::Bulk(kind), BulkCost::PerItem) => bulk_len(*kind, &req.body).max(1) as f64,
        _ => 1.0,
    };
    let plan = CallPlan {
        service: Service::Dps,
        instance: dps.name.clone(),
        host: dps.host.clone(),
        operation: op.name(),
        entity_id: op.entity(),
        entity_ids: Vec::new(),
        rights: op.rights(),
        quota: Some((
            format!("dps:{}", dps.name),
            settings.dps_ops_per_minute,
            cost,
        )),
    };
    let policies = dps.policies.clone();
    run_call(handle, plan, req, &policies, |tid| {
        execute(handle, &dps, &op, req, tid)
    })
    .await
}

fn bulk_len(kind: EnrollmentKind, body: &[u8]) -> usize {
    let field = bulk_field(kind);
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get(field).and_then(Value::as_array).map(Vec::len))
        .unwrap_or(1)
}

fn bulk_field(kind: EnrollmentKind) -> &'static str {
    match kind {
        EnrollmentKind::Individual => "enrollments",
        EnrollmentKind::Group => "enrollmentGroups",
    }
}

fn error(handle: &SimHandle, tid: &str, e: &DpsOpError) -> SimResponse {
    errors::dps_error(e.status, e.code, &e.message, tid, handle.0.clock.now_utc())
}

fn parse_body(req: &SimRequest) -> Result<Value, DpsOpError> {
    serde_json::from_slice(&req.body)
        .map_err(|e| DpsOpError::bad_request(format!("The request body is not valid JSON: {e}")))
}

fn execute(
    handle: &SimHandle,
    dps: &DpsInstance,
    op: &DpsOp,
    req: &SimRequest,
    tid: &str,
) -> SimResponse {
    match execute_inner(handle, dps, op, req) {
        Ok(resp) => resp,
        Err(e) => error(handle, tid, &e),
    }
}

fn execute_inner(
    handle: &SimHandle,
    dps: &DpsInstance,
    op: &DpsOp,
    req: &SimRequest,
) -> Result<SimResponse, DpsOpError> {
    let cond = Precondition::from_header(req.header("if-match"));
    let policy = handle.0.dps_behavior.put_existing_without_if_match;
    match op {
        DpsOp::Get(kind, id) => {
            let stored = dps.get(*kind, id).ok_or_else(|| not_found(*kind, id))?;
            Ok(errors::json_response(
                200,
                &render(dps, *kind, &stored, false),
            ))
        }
        DpsOp::Put(kind, id) => {
            let body = parse_body(req)?;
            let stored = dps.put(*kind, id, body, &cond, policy)?;
            // The creator gets the keys back (generated ones included); GET and queries hide them.
            Ok(errors::json_response(
                200,
                &render(dps, *kind, &stored, true),
            ))
        }
        DpsOp::Delete(kind, id) => {
            dps.delete(*kind, id, &cond)?;
            Ok(errors::empty_response(204))
        }
        DpsOp::Attestation(kind, id) => {
            let stored = dps.get(*kind, id).ok_or_else(|| not_found(*kind, id))?;
            let att = stored.get("attestation").cloned().unwrap_or(Value::Null);
            Ok(errors::json_response(200, &render_attestation(&att, true)))
        }
        DpsOp::Query(kind) => {
            let body = parse_body(req)?;
            // SDKs and the CLI only send `SELECT *`; any query text returns every record.
            if body.get("query").and_then(Value::as_str).is_none() {
                return Err(DpsOpError::bad_request(
                    "The query specification needs a query string",
                ));
            }
            let (after, size) = paging(handle, req)?;
            let page = dps.page(*kind, after.as_deref(), size);
            let items: Vec<Value> = page
                .items
                .iter()
                .map(|s| render(dps, *kind, s, false))
                .collect();
            let item_type = match kind {
                EnrollmentKind::Individual => "Enrollment",
                EnrollmentKind::Group => "EnrollmentGroup",
            };
            Ok(paged_response(items, &page, item_type, size))
        }
        DpsOp::QueryRegistrations(group) => {
            // The spec has no body here; the Node SDK sends one anyway: ignored.
            let (after, size) = paging(handle, req)?;
            let page = dps.registrations_page(group, after.as_deref(), size);
            Ok(paged_response(
                page.items.clone(),
                &page,
                "DeviceRegistration",
                size,
            ))
        }
        DpsOp::GetRegistration(id) => {
            let r = dps
                .registration(id)
                .ok_or_else(|| DpsOpError::not_found("Registration", id))?;
            Ok(errors::json_response(200, &r.state))
        }
        DpsOp::DeleteRegistration(id) => {
            dps.delete_registration(id, &cond)?;
            Ok(errors::empty_response(204))
        }
        DpsOp::Bulk(kind) => bulk(dps, *kind, parse_body(req)?, policy),
    }
}

fn not_found(kind: EnrollmentKind, id: &str) -> DpsOpError {
    match kind {
        EnrollmentKind::Individual => DpsOpError::not_found("Enrollment", id),
        EnrollmentKind::Group => DpsOpError::not_found("Enrollment group", id),
    }
}

/// Page size and start key from `x-ms-max-item-count` and `x-ms-continuation`.
fn paging(handle: &SimHandle, req: &SimRequest) -> Result<(Option<String>, usize), DpsOpError> {
    let b = &handle.0.dps_behavior;
    let size = req
        .header("x-ms-max-item-count")
        .and_then(|v| v.trim().parse::<i64>().ok())
        .filter(|n| *n > 0)
        .map(|n| (n as usize).min(b.max_page_size))
        .unwrap_or(b.default_page_size);
    let after = match req.header("x-ms-continuation").filter(|t| !t.is_empty()) {
        None => None,
        Some(t) => Some(
            decode_continuation(t)
                .ok_or_else(|| DpsOpError::bad_request("Invalid continuation token"))?,
        ),
    };
    Ok((after, size))
}

/// An opaque continuation token for "after this key".
pub fn encode_continuation(after: &str) -> String {
    B64URL.encode(json!({ "after": after }).to_string())
}

/// The key a continuation token stands for.
pub fn decode_continuation(token: &str) -> Option<String> {
    let raw = B64URL.decode(token.trim().trim_matches('"')).ok()?;
    let v: Value = serde_json::from_slice(&raw).ok()?;
    v.get("after").and_then(Value::as_str).map(str::to_string)
}

/// A JSON array page with the DPS paging headers.
pub fn paged_response(items: Vec<Value>, page: &Page, item_type: &str, size: usize) -> SimResponse {
    let mut resp = errors::json_response(200, &Value::Array(items));
    if let Some(after) = &page.next_after {
        errors::set_header(&mut resp, "x-ms-continuation", &encode_continuation(after));
    }
    errors::set_header(&mut resp, "x-ms-item-type", item_type);
    errors::set_header(&mut resp, "x-ms-max-item-count", &size.to_string());
    resp
}

/// The response form of a stored enrollment or group: no raw certificates, keys only when asked.
pub fn render(dps: &DpsInstance, kind: EnrollmentKind, stored: &Value, show_keys: bool) -> Value {
    let mut out = stored.clone();
    if let Some(att) = stored.get("attestation") {
        out["attestation"] = render_attestation(att, show_keys);
    }
    if kind == EnrollmentKind::Individual
        && let Some(id) = stored.get("registrationId").and_then(Value::as_str)
        && let Some(r) = dps.registration(id)
    {
        out["registrationState"] = r.state;
    }
    out
}

/// An attestation as returned: certificates reduced to `info`, symmetric keys hidden unless `show_keys`.
pub fn render_attestation(att: &Value, show_keys: bool) -> Value {
    let mut out = att.clone();
    if !show_keys && let Some(sk) = out.get_mut("symmetricKey").and_then(Value::as_object_mut) {
        sk.clear();
    }
    if let Some(x) = out.get_mut("x509").and_then(Value::as_object_mut) {
        for field in ["clientCertificates", "signingCertificates"] {
            if let Some(set) = x.get_mut(field).and_then(Value::as_object_mut) {
                for slot in set.values_mut() {
                    if let Some(e) = slot.as_object_mut() {
                        e.remove("certificate");
                    }
                }
            }
        }
    }
    out
}

fn bulk(
    dps: &DpsInstance,
    kind: EnrollmentKind,
    body: Value,
    policy: ExistingPutPolicy,
) -> Result<SimResponse, DpsOpError> {
    let field = bulk_field(kind);
    let id_field = kind.id_field();
    let mode = body
        .get("mode")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if !matches!(
        mode.as_str(),
        "create" | "update" | "updateIfMatchETag" | "delete"
    ) {
        return Err(DpsOpError::bad_request(format!(
            "mode '{mode}' is not create, update, updateIfMatchETag or delete"
        )));
    }
    let items = body
        .get(field)
        .and_then(Value::as_array)
        .ok_or_else(|| DpsOpError::bad_request(format!("{field} is required")))?;
    if items.is_empty() || items.len() > MAX_BULK {
        return Err(DpsOpError::bad_request(format!(
            "A bulk operation takes 1 to {MAX_BULK} items, got {}",
            items.len()
        )));
    }
    let mut seen = std::collections::HashSet::new();
    for it in items {
        let id = it
            .get(id_field)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_ascii_lowercase();
        if !seen.insert(id.clone()) {
            return Err(DpsOpError::bad_request(format!(
                "{id_field} '{id}' appears more than once"
            )));
        }
    }
    let mut errs = Vec::new();
    for it in items {
        let id = it
            .get(id_field)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let etag = it
            .get("etag")
            .and_then(Value::as_str)
            .map(|e| Precondition::Etag(e.trim_matches('"').to_string()));
        let result = match mode.as_str() {
            "create" if dps.get(kind, &id).is_some() => Err(DpsOpError::conflict(&id)),
            "create" | "update" => dps
                .put(
                    kind,
                    &id,
                    it.clone(),
                    &Precondition::None,
                    ExistingPutPolicy::Replace,
                )
                .map(|_| ()),
            "updateIfMatchETag" => {
                let cond = etag.unwrap_or(Precondition::None);
                dps.put(kind, &id, it.clone(), &cond, policy).map(|_| ())
            }
            _ => dps.delete(kind, &id, &Precondition::None).map(|_| ()),
        };
        if let Err(e) = result {
            errs.push(json!({ id_field: id, "errorCode": e.code, "errorStatus": e.message }));
        }
    }
    Ok(errors::json_response(
        200,
        &json!({"isSuccessful": errs.is_empty(), "errors": errs}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_every_operation() {
        use EnrollmentKind::{Group, Individual};
        assert_eq!(
            route(&Method::POST, "/enrollments/query"),
            Ok(DpsOp::Query(Individual))
        );
        assert_eq!(
            route(&Method::POST, "/enrollmentGroups"),
            Ok(DpsOp::Bulk(Group))
        );
        assert_eq!(
            route(&Method::GET, "/enrollments/dev%3A1"),
            Ok(DpsOp::Get(Individual, "dev:1".into()))
        );
        assert_eq!(
            route(&Method::POST, "/enrollmentGroups/g1/attestationmechanism"),
            Ok(DpsOp::Attestation(Group, "g1".into()))
        );
        assert_eq!(
            route(&Method::POST, "/registrations/g1/query"),
            Ok(DpsOp::QueryRegistrations("g1".into()))
        );
        assert_eq!(
            route(&Method::DELETE, "/registrations/r1"),
            Ok(DpsOp::DeleteRegistration("r1".into()))
        );
        assert_eq!(route(&Method::PATCH, "/enrollments/x"), Err(405));
        assert_eq!(route(&Method::GET, "/nothing"), Err(404));
    }

    #[test]
    fn continuation_round_trips() {
        let t = encode_continuation("dev-42");
        assert_eq!(decode_continuation(&t).as_deref(), Some("dev-42"));
        assert_eq!(decode_continuation("%%%"), None);
    }
}
