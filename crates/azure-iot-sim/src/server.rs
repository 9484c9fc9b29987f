//! Listeners and the request pipeline shared by every service: admin routes, faults and latency,
//! api-version, SAS, quota, then the operation; every call is logged.
//!
//! The pipeline works on any connection ([`serve_io`]), so a TLS acceptor or another listener kind can
//! reuse it unchanged.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};

use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Limited};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use super::SimError;
use super::calllog::{CallLog, CallRecord};
use super::clock::{Clock, SystemClock};
use super::config::{ChaosConfig, DpsBehavior, SimConfig};
use super::errors::{self, Service, SimResponse};
use super::faults::{CallInfo, FaultAction, FaultRule, Faults};
use super::state::{Right, SasPolicy, SimState};
use super::throttle::{self, Decision, Throttle, ThrottlePatch, ThrottleSettings};
use super::{admin, auth, dps_service, hub};

/// Largest request body accepted (bulk bodies with certificates stay far below).
const MAX_BODY: usize = 8 * 1024 * 1024;

/// Which API a listener serves.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(tag = "kind", content = "name", rename_all = "snake_case")]
pub enum Endpoint {
    /// The DPS service API of the named instance.
    DpsService(String),
    /// The registry API of the hub with this host name.
    Hub(String),
    /// The DPS device registration API of every instance (by ID scope).
    DeviceApi,
}

/// What the transport knows about a connection (filled by TLS listeners with the client chain).
#[derive(Debug, Clone, Default)]
pub struct ConnInfo {
    /// Remote address.
    pub peer: Option<SocketAddr>,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// Client certificate chain presented in the TLS handshake (DER, leaf first).
    pub client_certs: Vec<Vec<u8>>,
}

/// Returned by the pipeline to close the connection without answering.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("connection dropped by fault injection")]
pub struct DropConnection;

/// A request with its body read, as the operation handlers see it.
#[derive(Debug, Clone)]
pub struct SimRequest {
    /// Method.
    pub method: Method,
    /// Path without query.
    pub path: String,
    /// Query parameters (first value of each, decoded).
    pub query: HashMap<String, String>,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl SimRequest {
    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Shared simulator internals.
#[derive(Debug)]
pub struct Inner {
    /// Instances and their data.
    pub state: Arc<SimState>,
    /// Quotas.
    pub throttle: Throttle,
    /// Fault rules and chaos.
    pub faults: Faults,
    /// Call log.
    pub calls: CallLog,
    /// Time source.
    pub clock: Arc<dyn Clock>,
    /// DPS choices.
    pub dps_behavior: DpsBehavior,
    /// Listeners started so far (endpoint and base URL).
    pub listeners: parking_lot::Mutex<Vec<ListenerInfo>>,
    /// Device registration API: settings and pending operations.
    pub device: super::device_api::DeviceApiState,
    /// TLS configuration when the listeners serve HTTPS.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// PEM of the CA that issued a generated server certificate (clients trust it).
    pub tls_ca_pem: Option<String>,
    /// The hubs' import/export jobs.
    pub jobs: super::jobs::JobsState,
}

/// A listener: what it serves and where.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ListenerInfo {
    /// What it serves.
    pub endpoint: Endpoint,
    /// Base URL, e.g. `http://127.0.0.1:40123`.
    pub url: String,
}

/// A cheap, clonable handle on a simulator: state, call log, faults, throttling.
#[derive(Debug, Clone)]
pub struct SimHandle(pub Arc<Inner>);

impl SimHandle {
    /// Builds the internals without listeners (tests that call the pipeline directly use this).
    pub fn new(config: &SimConfig, clock: Arc<dyn Clock>) -> Result<Self, SimError> {
        // One seed for keys, ids and faults: the configured one, else a fresh one for this run.
        let seed = config.seed.unwrap_or_else(rand::random);
        let config = &SimConfig {
            seed: Some(seed),
            ..config.clone()
        };
        let state = Arc::new(SimState::from_config(config, clock.clone())?);
        let (tls, tls_ca_pem) =
            super::tls::server_config_for(config).map_err(|e| SimError::Config(e.to_string()))?;
        Ok(Self(Arc::new(Inner {
            state,
            throttle: Throttle::new(&config.throttle, config.time_scale, clock.clone()),
            faults: Faults::new(config.chaos.clone(), config.scripted_faults.clone(), seed),
            calls: CallLog::new(config.call_log_capacity),
            clock,
            dps_behavior: config.dps_behavior.clone(),
            listeners: parking_lot::Mutex::new(Vec::new()),
            device: super::device_api::DeviceApiState::new(config.device_api.clone()),
            tls,
            tls_ca_pem,
            jobs: super::jobs::JobsState::new(config.jobs.clone())
                .map_err(|e| SimError::Config(format!("blob client for jobs: {e}")))?,
        })))
    }

    /// The in-memory model.
    pub fn state(&self) -> &Arc<SimState> {
        &self.0.state
    }

    /// Every call-log entry kept.
    pub fn calls(&self) -> Vec<CallRecord> {
        self.0.calls.all()
    }

    /// Call-log entries with `seq > since`.
    pub fn calls_since(&self, since: u64) -> Vec<CallRecord> {
        self.0.calls.since(since)
    }

    /// Empties the call log.
    pub fn reset_log(&self) {
        self.0.calls.clear();
    }

    /// Adds a scripted fault; returns its id.
    pub fn add_fault(&self, rule: FaultRule) -> u64 {
        self.0.faults.add(rule)
    }

    /// Removes a scripted fault.
    pub fn remove_fault(&self, id: u64) -> bool {
        self.0.faults.remove(id)
    }

    /// Removes every scripted fault and zeroes random faults and latency.
    pub fn clear_faults(&self) {
        self.0.faults.clear();
    }

    /// Scripted faults with their counters.
    pub fn faults(&self) -> Vec<FaultRule> {
        self.0.faults.rules()
    }

    /// Replaces latency and random-fault settings.
    pub fn set_chaos(&self, chaos: ChaosConfig) {
        self.0.faults.set_chaos(chaos);
    }

    /// Current throttling settings.
    pub fn throttle_settings(&self) -> ThrottleSettings {
        self.0.throttle.settings()
    }

    /// Changes throttling settings (buckets start full again).
    pub fn patch_throttle(&self, patch: &ThrottlePatch) -> ThrottleSettings {
        self.0.throttle.patch(patch)
    }

    /// Empties every instance's data and forgets every import/export job (active ones are cancelled).
    pub fn reset_state(&self) {
        self.0.jobs.clear();
        self.0.state.clear();
    }

    /// Records a listener so [`SimHandle::endpoints`] can list it.
    pub fn register_listener(&self, endpoint: Endpoint, url: String) {
        self.0.listeners.lock().push(ListenerInfo { endpoint, url });
    }

    /// Listeners started so far.
    pub fn listeners(&self) -> Vec<ListenerInfo> {
        self.0.listeners.lock().clone()
    }

    /// Instances, their URLs and connection strings (all policies) as JSON, for `simulate` and demos.
    pub fn endpoints(&self) -> serde_json::Value {
        use serde_json::json;
        let listeners = self.listeners();
        let url_of = |e: &Endpoint| {
            listeners
                .iter()
                .filter(|l| &l.endpoint == e)
                .map(|l| l.url.clone())
                .collect::<Vec<_>>()
        };
        let cs = |host: &str, policies: &[SasPolicy]| {
            policies
                .iter()
                .map(|p| {
                    (
                        p.name.clone(),
                        json!(format!(
                            "HostName={host};SharedAccessKeyName={};SharedAccessKey={}",
                            p.name,
                            p.primary_key.expose()
                        )),
                    )
                })
                .collect::<serde_json::Map<_, _>>()
        };
        let dps: Vec<_> = self
            .state()
            .dps_instances()
            .iter()
            .map(|d| {
                json!({
                    "name": d.name,
                    "host": d.host,
                    "idScope": d.id_scope,
                    "urls": url_of(&Endpoint::DpsService(d.name.clone())),
                    "linkedHubs": d.linked_hubs(),
                    "connectionStrings": cs(&d.host, &d.policies),
                })
            })
            .collect();
        let hubs: Vec<_> = self
            .state()
            .hubs()
            .iter()
            .map(|h| {
                json!({
                    "host": h.host,
                    "tier": format!("{:?}", h.tier),
                    "units": h.units,
                    "urls": url_of(&Endpoint::Hub(h.host.clone())),
                    "connectionStrings": cs(&h.host, &h.policies),
                })
            })
            .collect();
        json!({
            "dps": dps,
            "hubs": hubs,
            "deviceApi": {
                "host": super::tls::GLOBAL_DEVICE_ENDPOINT,
                "urls": url_of(&Endpoint::DeviceApi),
            },
            "tlsCaPem": self.0.tls_ca_pem,
            "listeners": listeners,
        })
    }
}

/// What the pipeline needs to know about a routed call.
#[derive(Debug, Clone)]
pub struct CallPlan {
    /// Error shape.
    pub service: Service,
    /// DPS name or hub host (call log, fault matching).
    pub instance: String,
    /// Host name tokens must be scoped to.
    pub host: String,
    /// Operation name for the log.
    pub operation: &'static str,
    /// Device / registration / group id, if any.
    pub entity_id: Option<String>,
    /// The device ids a bulk registry call names (empty for other calls).
    pub entity_ids: Vec<String>,
    /// Rights the SAS policy must grant.
    pub rights: Vec<Right>,
    /// Quota bucket, its per-minute rate and this call's cost.
    pub quota: Option<(String, f64, f64)>,
}

fn tracking_id(handle: &SimHandle) -> String {
    handle.state().ids().uuid().replace('-', "")
}

/// What an authorizer sees: the request, the tracking id to put in an error body, the time.
#[derive(Debug)]
pub struct AuthContext<'a> {
    /// The request.
    pub req: &'a SimRequest,
    /// Tracking id of this call (also sent as `x-ms-request-id`).
    pub tracking_id: &'a str,
    /// Current time of the simulator's clock.
    pub now: DateTime<Utc>,
}

/// Runs one routed call through faults, api-version, service SAS auth, quota and `exec`, logging it.
pub async fn run_call(
    handle: &SimHandle,
    plan: CallPlan,
    req: &SimRequest,
    policies: &[SasPolicy],
    exec: impl FnOnce(&str) -> SimResponse,
) -> Result<SimResponse, DropConnection> {
    let service = plan.service;
    let host = plan.host.clone();
    let rights = plan.rights.clone();
    let authorize = |ctx: &AuthContext<'_>| {
        auth::check_service_request(
            ctx.req.header("authorization"),
            &host,
            &ctx.req.path,
            policies,
            &rights,
            ctx.now.timestamp(),
        )
        .map(|_| ())
        .map_err(|e| Box::new(unauthorized(service, &e, ctx.tracking_id, ctx.now)))
    };
    run_call_with(handle, plan, req, authorize, exec).await
}

/// `exec` gets the call's tracking id (for error bodies; it is also sent as `x-ms-request-id`).
///
/// Like [`run_call`] with a custom authorizer (e.g. device SAS or TLS client certificates), which
/// returns the complete error response to send when it refuses.
pub async fn run_call_with(
    handle: &SimHandle,
    plan: CallPlan,
    req: &SimRequest,
    authorize: impl FnOnce(&AuthContext<'_>) -> Result<(), Box<SimResponse>>,
    exec: impl FnOnce(&str) -> SimResponse,
) -> Result<SimResponse, DropConnection> {
    let inner = &handle.0;
    let started = Instant::now();
    let time = inner.clock.now_utc();
    let tid = tracking_id(handle);
    let outcome = pipeline(handle, &plan, req, &tid, authorize, exec).await;
    let (status, fault, result, hang) = match outcome {
        Ok((mut resp, fault)) => {
            errors::set_header(&mut resp, "x-ms-request-id", &tid);
            (Some(resp.status().as_u16()), fault, Ok(resp), None)
        }
        Err((label, hang)) => (None, Some(label), Err(DropConnection), hang),
    };
    inner.calls.push(CallRecord {
        seq: 0,
        time,
        instance: plan.instance.clone(),
        method: req.method.to_string(),
        path: req.path.clone(),
        operation: plan.operation.to_string(),
        entity_id: plan.entity_id.clone(),
        entity_ids: plan.entity_ids.clone(),
        status,
        fault,
        duration_ms: started.elapsed().as_millis() as u64,
        cost: match status {
            Some(429) | None => 0.0,
            Some(_) => plan.quota.as_ref().map_or(0.0, |(_, _, cost)| *cost),
        },
        quota: plan.quota.as_ref().map(|(key, _, _)| key.clone()),
    });
    // Logged before hanging so observers see the call while the client waits.
    if let Some(d) = hang {
        tokio::time::sleep(d).await;
    }
    result
}

/// The steps of a call; `Err((label, hang))` means: drop the connection, after hanging if given.
async fn pipeline(
    handle: &SimHandle,
    plan: &CallPlan,
    req: &SimRequest,
    tid: &str,
    authorize: impl FnOnce(&AuthContext<'_>) -> Result<(), Box<SimResponse>>,
    exec: impl FnOnce(&str) -> SimResponse,
) -> Result<(SimResponse, Option<String>), (String, Option<std::time::Duration>)> {
    let inner = &handle.0;
    let decision = inner.faults.decide(&CallInfo {
        instance: &plan.instance,
        method: req.method.as_str(),
        path: &req.path,
        entity_id: plan.entity_id.as_deref(),
    });
    if !decision.latency.is_zero() {
        tokio::time::sleep(decision.latency).await;
    }
    if let Some((action, label)) = decision.fault {
        let now = inner.clock.now_utc();
        match action {
            FaultAction::Status { status, message } => {
                let msg = message.unwrap_or_else(|| "Injected fault".to_string());
                return Ok((
                    errors::service_error(plan.service, status, &msg, tid, now),
                    Some(label),
                ));
            }
            FaultAction::Throttle { retry_after } => {
                let mut resp = throttled(plan.service, tid, now);
                if let Some(s) = retry_after {
                    errors::set_header(&mut resp, "retry-after", &s.to_string());
                }
                return Ok((resp, Some(label)));
            }
            FaultAction::Hang { ms } => {
                let d = ms
                    .map(std::time::Duration::from_millis)
                    .unwrap_or_else(|| inner.faults.hang_duration());
                return Err((label, Some(d)));
            }
            FaultAction::Drop => return Err((label, None)),
            // Delays were already folded into the latency.
            FaultAction::Delay { .. } => {}
        }
    }
    let now = inner.clock.now_utc();
    if req
        .query
        .get("api-version")
        .is_none_or(|v| !valid_api_version(v))
    {
        return Ok((api_version_error(plan.service, tid, now), None));
    }
    if let Err(resp) = authorize(&AuthContext {
        req,
        tracking_id: tid,
        now,
    }) {
        return Ok((*resp, None));
    }
    if let Some((key, per_minute, cost)) = &plan.quota {
        match inner.throttle.acquire(key, *per_minute, *cost) {
            Decision::Allowed => {}
            Decision::Delayed { wait } => tokio::time::sleep(wait).await,
            Decision::Throttled { retry_after } => {
                let mut resp = throttled(plan.service, tid, now);
                if inner.throttle.settings().retry_after {
                    let secs = throttle::retry_after_seconds(retry_after).to_string();
                    errors::set_header(&mut resp, "retry-after", &secs);
                }
                return Ok((resp, Some("throttled".into())));
            }
        }
    }
    Ok((exec(tid), None))
}

/// Accepts `YYYY-MM-DD` and `YYYY-MM-DD-preview` (unknown dates are not refused).
fn valid_api_version(v: &str) -> bool {
    let date = v.strip_suffix("-preview").unwrap_or(v);
    let b = date.as_bytes();
    b.len() == 10
        && b.iter().enumerate().all(|(i, c)| {
            if i == 4 || i == 7 {
                *c == b'-'
            } else {
                c.is_ascii_digit()
            }
        })
}

fn api_version_error(service: Service, tid: &str, now: DateTime<Utc>) -> SimResponse {
    let msg = "The api-version query parameter is required and must be a valid version, e.g. api-version=2021-10-01";
    match service {
        Service::Dps => errors::dps_error(400, 400_004, msg, tid, now),
        Service::Hub => errors::hub_error(400, "InvalidProtocolVersion", 400_001, msg, tid, now),
    }
}

fn unauthorized(
    service: Service,
    e: &auth::AuthError,
    tid: &str,
    now: DateTime<Utc>,
) -> SimResponse {
    // Azure does not say which check failed; the reason is kept in the log only.
    tracing::debug!(reason = %e, "simulator refused a token");
    match service {
        Service::Dps => errors::dps_error(401, 401_002, "Unauthorized", tid, now),
        Service::Hub => errors::hub_error(
            401,
            "IotHubUnauthorizedAccess",
            401_002,
            "Unauthorized",
            tid,
            now,
        ),
    }
}

fn throttled(service: Service, tid: &str, now: DateTime<Utc>) -> SimResponse {
    errors::service_error(
        service,
        429,
        "Request throttled: the operation quota is exhausted, retry later",
        tid,
        now,
    )
}

/// Logs and answers a request that matched no operation of the service.
pub fn route_error(
    handle: &SimHandle,
    service: Service,
    instance: &str,
    req: &SimRequest,
    status: u16,
) -> SimResponse {
    let tid = tracking_id(handle);
    let now = handle.0.clock.now_utc();
    let msg = if status == 405 {
        "The method is not allowed on this resource"
    } else {
        "The requested resource does not exist"
    };
    let resp = match (service, status) {
        (Service::Hub, 405) => {
            errors::hub_error(405, "GenericMethodNotAllowed", 405_000, msg, &tid, now)
        }
        (Service::Dps, 405) => errors::dps_error(405, 405_000, msg, &tid, now),
        _ => errors::service_error(service, status, msg, &tid, now),
    };
    handle.0.calls.push(CallRecord {
        seq: 0,
        time: now,
        instance: instance.to_string(),
        method: req.method.to_string(),
        path: req.path.clone(),
        operation: "Unknown".into(),
        entity_id: None,
        entity_ids: Vec::new(),
        status: Some(status),
        fault: None,
        duration_ms: 0,
        cost: 0.0,
        quota: None,
    });
    resp
}

fn parse_query(q: Option<&str>) -> HashMap<String, String> {
    let mut out = HashMap::new();
    if let Some(q) = q {
        for (k, v) in url::form_urlencoded::parse(q.as_bytes()) {
            out.entry(k.into_owned()).or_insert_with(|| v.into_owned());
        }
    }
    out
}

/// Handles one HTTP request for `endpoint` (admin routes included).
pub async fn handle_request<B>(
    handle: &SimHandle,
    endpoint: &Endpoint,
    conn: &ConnInfo,
    req: Request<B>,
) -> Result<SimResponse, DropConnection>
where
    B: hyper::body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            tracing::debug!(error = %e, "simulator could not read a request body");
            return Ok(errors::json_response(
                413,
                &serde_json::json!({"message": "request body too large or unreadable"}),
            ));
        }
    };
    let req = SimRequest {
        method: parts.method,
        path: parts.uri.path().to_string(),
        query: parse_query(parts.uri.query()),
        headers: parts.headers,
        body,
    };
    // Each request runs in its own task, so a bug that panics answers this one request with a 500 in
    // the service's error shape instead of tearing down the connection or the listener.
    let task = tokio::spawn(dispatch(
        handle.clone(),
        endpoint.clone(),
        conn.clone(),
        req,
    ));
    match task.await {
        Ok(answer) => answer,
        Err(e) => {
            tracing::error!(error = %e, "simulator request handler panicked");
            let service = match endpoint {
                Endpoint::Hub(_) => Service::Hub,
                Endpoint::DpsService(_) | Endpoint::DeviceApi => Service::Dps,
            };
            let tid = tracking_id(handle);
            Ok(errors::service_error(
                service,
                500,
                "internal error in the simulator (a bug: please report it with the call log)",
                &tid,
                handle.0.clock.now_utc(),
            ))
        }
    }
}

async fn dispatch(
    handle: SimHandle,
    endpoint: Endpoint,
    conn: ConnInfo,
    req: SimRequest,
) -> Result<SimResponse, DropConnection> {
    if req.path == "/_sim/seed" {
        return Ok(super::seed::handle_admin(&handle, &req));
    }
    if req.path == "/_sim" || req.path.starts_with("/_sim/") {
        return Ok(admin::handle(&handle, &req));
    }
    match &endpoint {
        Endpoint::DpsService(name) => dps_service::serve(&handle, name, &req).await,
        Endpoint::Hub(host) => hub::serve(&handle, host, &req).await,
        Endpoint::DeviceApi => super::device_api::serve(&handle, &conn, &req).await,
    }
}

/// Serves HTTP/1.1 and HTTP/2 on one established connection (plain or TLS) until it closes or
/// `shutdown` fires.
pub async fn serve_io<I>(
    handle: SimHandle,
    endpoint: Endpoint,
    conn: ConnInfo,
    io: I,
    shutdown: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = Arc::new(conn);
    let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let handle = handle.clone();
        let endpoint = endpoint.clone();
        let conn = conn.clone();
        async move { handle_request(&handle, &endpoint, &conn, req).await }
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    let served = builder.serve_connection(TokioIo::new(io), svc);
    tokio::select! {
        r = served => {
            if let Err(e) = r {
                tracing::trace!(error = %e, "simulator connection ended");
            }
        }
        () = shutdown.cancelled() => {}
    }
}

/// Accepts plain-HTTP connections on `listener` for `endpoint` until `shutdown` fires.
pub fn spawn_listener(
    handle: SimHandle,
    endpoint: Endpoint,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        if let Some(tls) = handle.0.tls.clone() {
                            conns.spawn(super::tls::serve_tls_connection(handle.clone(), endpoint.clone(), tls, stream, peer, shutdown.clone()));
                        } else {
                            let info = ConnInfo { peer: Some(peer), tls: false, client_certs: Vec::new() };
                            conns.spawn(serve_io(handle.clone(), endpoint.clone(), info, stream, shutdown.clone()));
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "simulator accept failed"),
                },
                // Reap finished connections so the set does not grow without bound.
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        conns.shutdown().await;
    })
}

/// Entry point: builds the state and binds the listeners.
#[derive(Debug)]
pub struct Simulator;

impl Simulator {
    /// Starts a simulator with the system clock.
    pub async fn start(config: SimConfig) -> Result<RunningSimulator, SimError> {
        Self::start_with_clock(config, Arc::new(SystemClock::new())).await
    }

    /// Starts a simulator with an injected clock (SAS expiry, timestamps and quotas follow it).
    pub async fn start_with_clock(
        config: SimConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<RunningSimulator, SimError> {
        let handle = SimHandle::new(&config, clock)?;
        let shutdown = CancellationToken::new();
        let mut running = RunningSimulator {
            handle: handle.clone(),
            shutdown: shutdown.clone(),
            tasks: Vec::new(),
            dps_addrs: BTreeMap::new(),
            hub_addrs: BTreeMap::new(),
            bind_host: config.bind_host.clone(),
            device_addr: None,
        };
        let scheme = if handle.0.tls.is_some() {
            "https"
        } else {
            "http"
        };
        for d in &config.dps {
            let listener = bind(&config.bind_host, d.port).await?;
            let addr = listener.local_addr().map_err(|e| SimError::Bind {
                addr: config.bind_host.clone(),
                source: e,
            })?;
            running.dps_addrs.insert(d.name.clone(), addr);
            handle.register_listener(
                Endpoint::DpsService(d.name.clone()),
                format!("{scheme}://{addr}"),
            );
            running.tasks.push(spawn_listener(
                handle.clone(),
                Endpoint::DpsService(d.name.clone()),
                listener,
                shutdown.clone(),
            ));
        }
        for h in &config.hubs {
            let host = h.host.to_ascii_lowercase();
            let listener = bind(&config.bind_host, h.port).await?;
            let addr = listener.local_addr().map_err(|e| SimError::Bind {
                addr: config.bind_host.clone(),
                source: e,
            })?;
            running.hub_addrs.insert(host.clone(), addr);
            handle.register_listener(Endpoint::Hub(host.clone()), format!("{scheme}://{addr}"));
            running.tasks.push(spawn_listener(
                handle.clone(),
                Endpoint::Hub(host),
                listener,
                shutdown.clone(),
            ));
        }
        if config.device_api.enabled {
            let listener = bind(&config.bind_host, config.device_api.port).await?;
            let addr = listener.local_addr().map_err(|e| SimError::Bind {
                addr: config.bind_host.clone(),
                source: e,
            })?;
            running.device_addr = Some(addr);
            handle.register_listener(Endpoint::DeviceApi, format!("{scheme}://{addr}"));
            running.tasks.push(spawn_listener(
                handle.clone(),
                Endpoint::DeviceApi,
                listener,
                shutdown.clone(),
            ));
        }
        Ok(running)
    }
}

async fn bind(host: &str, port: u16) -> Result<TcpListener, SimError> {
    let addr = format!("{host}:{port}");
    TcpListener::bind(&addr)
        .await
        .map_err(|source| SimError::Bind { addr, source })
}

/// A started simulator: addresses, connection strings, handle, shutdown.
#[derive(Debug)]
pub struct RunningSimulator {
    handle: SimHandle,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    dps_addrs: BTreeMap<String, SocketAddr>,
    hub_addrs: BTreeMap<String, SocketAddr>,
    bind_host: String,
    device_addr: Option<SocketAddr>,
}

impl RunningSimulator {
    /// The handle (state, calls, faults, throttling).
    pub fn handle(&self) -> &SimHandle {
        &self.handle
    }

    /// The in-memory model.
    pub fn state(&self) -> &Arc<SimState> {
        self.handle.state()
    }

    /// Every call-log entry kept.
    pub fn calls(&self) -> Vec<CallRecord> {
        self.handle.calls()
    }

    /// Adds a scripted fault; returns its id.
    pub fn add_fault(&self, rule: FaultRule) -> u64 {
        self.handle.add_fault(rule)
    }

    /// The address of a DPS instance's listener.
    pub fn dps_addr(&self, name: &str) -> Option<SocketAddr> {
        self.dps_addrs.get(name).copied()
    }

    /// The address of a hub's listener.
    pub fn hub_addr(&self, host: &str) -> Option<SocketAddr> {
        self.hub_addrs.get(&host.to_ascii_lowercase()).copied()
    }

    /// `http(s)://127.0.0.1:port` of a DPS instance (panics on an unknown name: a test mistake).
    pub fn dps_base_url(&self, name: &str) -> String {
        match self.dps_addr(name) {
            Some(a) => format!("{}://{a}", self.scheme()),
            None => panic!("no simulated DPS named {name}"),
        }
    }

    /// `http(s)://127.0.0.1:port` of a hub (panics on an unknown host: a test mistake).
    pub fn hub_base_url(&self, host: &str) -> String {
        match self.hub_addr(host) {
            Some(a) => format!("{}://{a}", self.scheme()),
            None => panic!("no simulated hub {host}"),
        }
    }

    /// `http` or `https`, as the listeners serve.
    pub fn scheme(&self) -> &'static str {
        if self.handle.0.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// The address of the device registration API listener, when enabled.
    pub fn device_api_addr(&self) -> Option<SocketAddr> {
        self.device_addr
    }

    /// `http(s)://127.0.0.1:port` of the device API (panics when disabled: a test mistake).
    pub fn device_api_base_url(&self) -> String {
        match self.device_addr {
            Some(a) => format!("{}://{a}", self.scheme()),
            None => panic!("the simulated device API is disabled"),
        }
    }

    /// PEM of the CA clients must trust when the simulator generated its TLS certificate.
    pub fn tls_ca_pem(&self) -> Option<&str> {
        self.handle.0.tls_ca_pem.as_deref()
    }

    /// `HostName=<dps host>;SharedAccessKeyName=<policy>;SharedAccessKey=<primary>`.
    pub fn dps_connection_string(&self, name: &str, policy: &str) -> Option<String> {
        let d = self.state().dps(name)?;
        let p = d.policy(policy)?;
        Some(format!(
            "HostName={};SharedAccessKeyName={};SharedAccessKey={}",
            d.host,
            p.name,
            p.primary_key.expose()
        ))
    }

    /// `HostName=<hub host>;SharedAccessKeyName=<policy>;SharedAccessKey=<primary>`.
    pub fn hub_connection_string(&self, host: &str, policy: &str) -> Option<String> {
        let h = self.state().hub(host)?;
        let p = h.policy(policy)?;
        Some(format!(
            "HostName={};SharedAccessKeyName={};SharedAccessKey={}",
            h.host,
            p.name,
            p.primary_key.expose()
        ))
    }

    /// The host listeners bind to.
    pub fn bind_host(&self) -> &str {
        &self.bind_host
    }

    /// The token that stops every listener (for listeners added by other modules).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Registers a task (e.g. another listener) to be awaited at shutdown.
    pub fn add_task(&mut self, task: JoinHandle<()>) {
        self.tasks.push(task);
    }

    /// Stops accepting, closes open connections and waits for the listener tasks.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        for t in std::mem::take(&mut self.tasks) {
            if let Err(e) = t.await {
                tracing::warn!(error = %e, "simulator listener task failed");
            }
        }
    }
}

impl Drop for RunningSimulator {
    /// A simulator dropped without `shutdown` still stops its listeners.
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
