//! Admin API under `/_sim/` (a prefix Azure does not have), served on every listener without auth.
//!
//! | Method | Path | Does |
//! |---|---|---|
//! | GET | `/_sim/endpoints` | instances, listener URLs, connection strings |
//! | GET | `/_sim/state` | whole state (DPS enrollments, groups, registrations; hub devices), secrets included |
//! | GET | `/_sim/state/dps/{name}`, `/_sim/state/hubs/{host}` | one instance |
//! | DELETE | `/_sim/state` | empties every instance |
//! | GET | `/_sim/calls?since=N` | call-log entries with `seq > N` |
//! | POST | `/_sim/reset-log` | empties the call log |
//! | GET | `/_sim/faults` | scripted faults (with counters) and chaos settings |
//! | POST | `/_sim/faults` | adds a [`FaultRule`] (JSON), answers `{"id": n}` |
//! | DELETE | `/_sim/faults`, `/_sim/faults/{id}` | removes all (and zeroes chaos) / one |
//! | GET, PUT | `/_sim/chaos` | latency and random-fault settings ([`ChaosConfig`]) |
//! | GET, PATCH | `/_sim/throttle` | throttling settings ([`ThrottlePatch`]) |
//! | POST | `/_sim/seed` | seeds a fleet ([`FleetSpec`](crate::seed::FleetSpec)), answers the devices and their credentials |
//! | GET | `/_sim/jobs` | import/export job settings ([`JobsConfig`](crate::JobsConfig)) and every hub's jobs |
//! | PATCH | `/_sim/jobs` | changes job settings (any of `devices_per_second`, `queue_seconds`, `block_size`, `history`) |
//! | GET | `/_sim/devices/{registrationId}/credentials` | a seeded device's key, endorsement key or certificate + private key + chain, and its id scope |

use http::Method;
use serde_json::{Value, json};

use super::config::ChaosConfig;
use super::errors::{self, SimResponse};
use super::faults::FaultRule;
use super::server::{SimHandle, SimRequest};
use super::throttle::ThrottlePatch;

fn bad(msg: impl std::fmt::Display) -> SimResponse {
    errors::json_response(400, &json!({"error": msg.to_string()}))
}

fn json_of<T: serde::Serialize>(status: u16, v: &T) -> SimResponse {
    match serde_json::to_value(v) {
        Ok(v) => errors::json_response(status, &v),
        Err(e) => errors::json_response(500, &json!({"error": e.to_string()})),
    }
}

/// Answers one admin request.
pub fn handle(h: &SimHandle, req: &SimRequest) -> SimResponse {
    let rest = req.path.trim_start_matches("/_sim").trim_matches('/');
    let segs: Vec<&str> = if rest.is_empty() {
        Vec::new()
    } else {
        rest.split('/').collect()
    };
    match (&req.method, segs.as_slice()) {
        (&Method::GET, ["endpoints"]) => errors::json_response(200, &h.endpoints()),
        (&Method::GET, ["state"]) => errors::json_response(200, &h.state().snapshot()),
        (&Method::GET, ["state", "dps", name]) => match h.state().dps(name) {
            Some(d) => errors::json_response(200, &d.snapshot()),
            None => errors::json_response(404, &json!({"error": "no such DPS instance"})),
        },
        (&Method::GET, ["state", "hubs", host]) => match h.state().hub(host) {
            Some(hub) => errors::json_response(200, &hub.snapshot()),
            None => errors::json_response(404, &json!({"error": "no such hub"})),
        },
        (&Method::DELETE, ["state"]) => {
            h.reset_state();
            errors::empty_response(204)
        }
        (&Method::GET, ["calls"]) => {
            let since = req
                .query
                .get("since")
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0);
            json_of(
                200,
                &json!({"lastSeq": h.0.calls.last_seq(), "calls": h.calls_since(since)}),
            )
        }
        (&Method::POST, ["reset-log"]) => {
            h.reset_log();
            errors::empty_response(204)
        }
        (&Method::GET, ["faults"]) => json_of(
            200,
            &json!({"rules": h.faults(), "chaos": h.0.faults.chaos()}),
        ),
        (&Method::POST, ["faults"]) => match FaultRule::parse(&req.body) {
            Ok(rule) => errors::json_response(201, &json!({"id": h.add_fault(rule)})),
            Err(e) => errors::json_response(400, &e.body()),
        },
        (&Method::DELETE, ["faults"]) => {
            h.clear_faults();
            errors::empty_response(204)
        }
        (&Method::DELETE, ["faults", id]) => match id.parse::<u64>() {
            Ok(id) if h.remove_fault(id) => errors::empty_response(204),
            Ok(_) => errors::json_response(404, &json!({"error": "no such fault"})),
            Err(e) => bad(e),
        },
        (&Method::GET, ["chaos"]) => json_of(200, &h.0.faults.chaos()),
        (&Method::PUT, ["chaos"]) => match serde_json::from_slice::<ChaosConfig>(&req.body) {
            Ok(c) => {
                h.set_chaos(c.clone());
                json_of(200, &c)
            }
            Err(e) => bad(e),
        },
        (&Method::GET, ["devices", rid, "credentials"]) => {
            crate::seed::credentials_response(h, rid)
        }
        (&Method::GET, ["jobs"]) => errors::json_response(200, &h.0.jobs.snapshot()),
        (&Method::PATCH, ["jobs"]) => match serde_json::from_slice::<Value>(&req.body) {
            Ok(p) => match h.0.jobs.patch(&p) {
                Ok(s) => json_of(200, &s),
                Err(e) => bad(e),
            },
            Err(e) => bad(e),
        },
        (&Method::GET, ["throttle"]) => json_of(200, &h.throttle_settings()),
        (&Method::PATCH, ["throttle"]) => {
            match serde_json::from_slice::<ThrottlePatch>(&req.body) {
                Ok(p) => json_of(200, &h.patch_throttle(&p)),
                Err(e) => bad(e),
            }
        }
        _ => errors::json_response(404, &Value::from("unknown admin route")),
    }
}
