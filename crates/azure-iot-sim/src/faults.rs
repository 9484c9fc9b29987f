//! Fault and latency injection: fixed + random latency, random faults by probability, and scripted
//! faults matched by instance, method, path pattern, entity id and occurrence.

use std::time::Duration;

use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::config::ChaosConfig;

/// What an injected fault does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum FaultAction {
    /// Answer with this status and the service's error body for it.
    Status {
        /// HTTP status (429, 500, 503...).
        status: u16,
        /// Message in the error body.
        #[serde(default)]
        message: Option<String>,
    },
    /// Answer 429 ThrottlingException, with `Retry-After: seconds` when given.
    Throttle {
        /// Retry-After seconds; none means no header.
        #[serde(default)]
        retry_after: Option<u64>,
    },
    /// Wait, then serve the call normally.
    Delay {
        /// Milliseconds.
        ms: u64,
    },
    /// Hang (longer than any client timeout), then close the connection without answering.
    Hang {
        /// Milliseconds; the chaos `hang_ms` (default 120 s) when absent.
        #[serde(default)]
        ms: Option<u64>,
    },
    /// Close the connection without answering.
    Drop,
}

fn default_nth() -> u64 {
    1
}

fn default_times() -> Option<u64> {
    Some(1)
}

/// A scripted fault: "the 3rd DELETE of device X on hub H fails with 503".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRule {
    /// Assigned when the rule is added.
    #[serde(default)]
    pub id: u64,
    /// DPS name or hub host name (case-insensitive); any when absent.
    #[serde(default)]
    pub instance: Option<String>,
    /// HTTP method (case-insensitive); any when absent.
    #[serde(default)]
    pub method: Option<String>,
    /// Path pattern, `*` matches any run of characters (e.g. `/devices/*`); any when absent.
    #[serde(default)]
    pub path: Option<String>,
    /// Device, registration or group id the call is about; any when absent.
    #[serde(default)]
    pub entity_id: Option<String>,
    /// The first matching call that fails (1-based): 3 = the third.
    #[serde(default = "default_nth")]
    pub nth: u64,
    /// How many matching calls fail from the nth on; null = every one.
    #[serde(default = "default_times")]
    pub times: Option<u64>,
    /// Chance that an eligible call actually fails (1.0 when absent).
    #[serde(default)]
    pub probability: Option<f64>,
    /// What happens.
    pub action: FaultAction,
    /// Matching calls seen so far.
    #[serde(default)]
    pub seen: u64,
    /// Times the fault fired so far.
    #[serde(default)]
    pub fired: u64,
}

/// A fault rule that could not be accepted, with the shape the admin API expects.
#[derive(Debug, thiserror::Error)]
#[error("invalid fault rule: {0}")]
pub struct BadFaultRule(pub String);

impl BadFaultRule {
    /// The error body of `POST /_sim/faults`: what is wrong, the expected shape and an example per action.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": self.to_string(),
            "expected": {
                "instance": "DPS name or hub host name (optional)",
                "method": "GET|PUT|POST|DELETE|... (optional)",
                "path": "path pattern, * matches any run of characters, e.g. /devices/* (optional)",
                "entity_id": "device, registration or group id (optional)",
                "nth": "first matching call that fails, 1-based (default 1)",
                "times": "how many matching calls fail from the nth on; null = every one (default 1)",
                "probability": "0.0..=1.0, chance an eligible call fails (default 1.0)",
                "action": "one of the examples below (required)"
            },
            "actions": [
                {"type": "status", "status": 503, "message": "optional text"},
                {"type": "throttle", "retry_after": 2},
                {"type": "delay", "ms": 250},
                {"type": "hang", "ms": 5000},
                {"type": "drop"}
            ],
            "example": {"instance": "hub-1.azure-devices.net", "method": "DELETE", "path": "/devices/*",
                        "entity_id": "dev-0007", "nth": 3, "action": {"type": "status", "status": 503}}
        })
    }
}

impl FaultRule {
    /// Parses and checks a rule sent to the admin API (unknown fields, impossible numbers refused).
    pub fn parse(json: &[u8]) -> Result<Self, BadFaultRule> {
        let rule: FaultRule =
            serde_json::from_slice(json).map_err(|e| BadFaultRule(e.to_string()))?;
        rule.validate()?;
        Ok(rule)
    }

    /// Checks the numbers a rule carries.
    pub fn validate(&self) -> Result<(), BadFaultRule> {
        if self.nth == 0 {
            return Err(BadFaultRule("nth counts from 1".into()));
        }
        if self.times == Some(0) {
            return Err(BadFaultRule(
                "times must be at least 1 (or null for every matching call)".into(),
            ));
        }
        if let Some(p) = self.probability
            && !(0.0..=1.0).contains(&p)
        {
            return Err(BadFaultRule(format!(
                "probability {p} is not between 0.0 and 1.0"
            )));
        }
        if let Some(m) = &self.method
            && http::Method::from_bytes(m.as_bytes()).is_err()
        {
            return Err(BadFaultRule(format!("method `{m}` is not an HTTP method")));
        }
        if let FaultAction::Status { status, .. } = self.action
            && !(400..=599).contains(&status)
        {
            return Err(BadFaultRule(format!(
                "status {status} is not an error status (400..=599)"
            )));
        }
        Ok(())
    }

    /// A rule firing once on the `nth` call matching method and path pattern.
    pub fn new(method: &str, path: &str, action: FaultAction) -> Self {
        Self {
            id: 0,
            instance: None,
            method: Some(method.into()),
            path: Some(path.into()),
            entity_id: None,
            nth: 1,
            times: Some(1),
            probability: None,
            action,
            seen: 0,
            fired: 0,
        }
    }

    /// Restricts the rule to one instance.
    pub fn on_instance(mut self, instance: &str) -> Self {
        self.instance = Some(instance.into());
        self
    }

    /// Restricts the rule to one device / registration / group id.
    pub fn on_entity(mut self, id: &str) -> Self {
        self.entity_id = Some(id.into());
        self
    }

    /// Fires first on the `nth` matching call.
    pub fn nth(mut self, nth: u64) -> Self {
        self.nth = nth.max(1);
        self
    }

    /// Fires this many times (None: forever).
    pub fn times(mut self, times: Option<u64>) -> Self {
        self.times = times;
        self
    }

    fn matches(&self, call: &CallInfo<'_>) -> bool {
        self.instance
            .as_deref()
            .is_none_or(|i| i.eq_ignore_ascii_case(call.instance))
            && self
                .method
                .as_deref()
                .is_none_or(|m| m.eq_ignore_ascii_case(call.method))
            && self.path.as_deref().is_none_or(|p| glob(p, call.path))
            && self
                .entity_id
                .as_deref()
                .is_none_or(|e| call.entity_id == Some(e))
    }
}

/// `*` matches any run of characters; everything else literally.
pub fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let mut rest = text;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            let Some(r) = rest.strip_prefix(part) else {
                return false;
            };
            rest = r;
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            let Some(pos) = rest.find(part) else {
                return false;
            };
            rest = &rest[pos + part.len()..];
        }
    }
    true
}

/// The call a fault decision is about.
#[derive(Debug, Clone, Copy)]
pub struct CallInfo<'a> {
    /// DPS name or hub host.
    pub instance: &'a str,
    /// HTTP method.
    pub method: &'a str,
    /// Path without query.
    pub path: &'a str,
    /// Device / registration / group id, when the call names one.
    pub entity_id: Option<&'a str>,
}

/// What to do with one call.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultDecision {
    /// Latency to add before anything else.
    pub latency: Duration,
    /// The fault to inject, with a label for the call log.
    pub fault: Option<(FaultAction, String)>,
}

/// Fault rules, chaos settings and the seeded random source.
#[derive(Debug)]
pub struct Faults {
    rules: Mutex<Vec<FaultRule>>,
    chaos: Mutex<ChaosConfig>,
    rng: Mutex<StdRng>,
    next_id: Mutex<u64>,
}

impl Faults {
    /// Faults with these chaos settings, scripted rules and seed.
    pub fn new(chaos: ChaosConfig, rules: Vec<FaultRule>, seed: u64) -> Self {
        let f = Self {
            rules: Mutex::new(Vec::new()),
            chaos: Mutex::new(chaos),
            rng: Mutex::new(StdRng::seed_from_u64(seed ^ 0x5eed_fa17)),
            next_id: Mutex::new(1),
        };
        for r in rules {
            f.add(r);
        }
        f
    }

    /// Adds a rule; returns its id.
    pub fn add(&self, mut rule: FaultRule) -> u64 {
        let mut next = self.next_id.lock();
        rule.id = *next;
        rule.seen = 0;
        rule.fired = 0;
        *next += 1;
        self.rules.lock().push(rule);
        *next - 1
    }

    /// Removes one rule; false if there was none with that id.
    pub fn remove(&self, id: u64) -> bool {
        let mut rules = self.rules.lock();
        let before = rules.len();
        rules.retain(|r| r.id != id);
        rules.len() != before
    }

    /// Removes every rule and zeroes the chaos probabilities and latency.
    pub fn clear(&self) {
        self.rules.lock().clear();
        *self.chaos.lock() = ChaosConfig::default();
    }

    /// Current rules with their counters.
    pub fn rules(&self) -> Vec<FaultRule> {
        self.rules.lock().clone()
    }

    /// Current chaos settings.
    pub fn chaos(&self) -> ChaosConfig {
        self.chaos.lock().clone()
    }

    /// Replaces the chaos settings.
    pub fn set_chaos(&self, chaos: ChaosConfig) {
        *self.chaos.lock() = chaos;
    }

    /// How long a hang lasts when a rule does not say.
    pub fn hang_duration(&self) -> Duration {
        let ms = self.chaos.lock().hang_ms;
        Duration::from_millis(if ms == 0 { 120_000 } else { ms })
    }

    /// Decides latency and fault for one call (scripted rules first, then probabilities).
    pub fn decide(&self, call: &CallInfo<'_>) -> FaultDecision {
        let chaos = self.chaos.lock().clone();
        let mut rng = self.rng.lock();
        let mut latency = Duration::from_millis(chaos.latency_fixed_ms);
        if chaos.latency_random_ms > 0 {
            latency += Duration::from_millis(rng.random_range(0..=chaos.latency_random_ms));
        }
        let mut fault = None;
        {
            let mut rules = self.rules.lock();
            for r in rules.iter_mut().filter(|r| r.matches(call)) {
                r.seen += 1;
                if fault.is_some() || r.seen < r.nth || r.times.is_some_and(|t| r.fired >= t) {
                    continue;
                }
                if let Some(p) = r.probability
                    && rng.random::<f64>() >= p
                {
                    continue;
                }
                r.fired += 1;
                if let FaultAction::Delay { ms } = r.action {
                    latency += Duration::from_millis(ms);
                    continue;
                }
                fault = Some((r.action.clone(), format!("rule {}", r.id)));
            }
        }
        if fault.is_none() {
            let roll: f64 = rng.random();
            let mut acc = 0.0;
            let table = [
                (
                    chaos.p_429,
                    FaultAction::Throttle {
                        retry_after: Some(1),
                    },
                    "random 429",
                ),
                (
                    chaos.p_500,
                    FaultAction::Status {
                        status: 500,
                        message: None,
                    },
                    "random 500",
                ),
                (
                    chaos.p_503,
                    FaultAction::Status {
                        status: 503,
                        message: None,
                    },
                    "random 503",
                ),
                (
                    chaos.p_timeout,
                    FaultAction::Hang { ms: None },
                    "random timeout",
                ),
                (chaos.p_drop, FaultAction::Drop, "random drop"),
            ];
            for (p, action, label) in table {
                acc += p.max(0.0);
                if roll < acc {
                    fault = Some((action, label.to_string()));
                    break;
                }
            }
        }
        FaultDecision { latency, fault }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call<'a>(method: &'a str, path: &'a str, id: Option<&'a str>) -> CallInfo<'a> {
        CallInfo {
            instance: "hub.azure-devices.net",
            method,
            path,
            entity_id: id,
        }
    }

    #[test]
    fn third_delete_of_a_device_fails_once() {
        let f = Faults::new(ChaosConfig::default(), Vec::new(), 1);
        f.add(
            FaultRule::new(
                "DELETE",
                "/devices/*",
                FaultAction::Status {
                    status: 503,
                    message: None,
                },
            )
            .on_entity("x")
            .nth(3),
        );
        let outcomes: Vec<bool> = (0..5)
            .map(|_| {
                f.decide(&call("DELETE", "/devices/x", Some("x")))
                    .fault
                    .is_some()
            })
            .collect();
        assert_eq!(outcomes, vec![false, false, true, false, false]);
        assert!(
            f.decide(&call("DELETE", "/devices/y", Some("y")))
                .fault
                .is_none()
        );
        assert_eq!(f.rules()[0].fired, 1);
    }

    #[test]
    fn probabilities_are_reproducible_with_a_seed() {
        let chaos = ChaosConfig {
            p_500: 0.5,
            ..ChaosConfig::default()
        };
        let run = || {
            let f = Faults::new(chaos.clone(), Vec::new(), 7);
            (0..200)
                .map(|_| f.decide(&call("GET", "/devices/a", None)).fault.is_some())
                .collect::<Vec<_>>()
        };
        let a = run();
        assert_eq!(a, run());
        let n = a.iter().filter(|x| **x).count();
        assert!((60..140).contains(&n), "{n}");
    }

    #[test]
    fn glob_matches() {
        assert!(glob("/devices/*", "/devices/a"));
        assert!(glob("*/query", "/enrollments/query"));
        assert!(glob("/a/*/c", "/a/b/c"));
        assert!(!glob("/devices/*", "/enrollments/a"));
        assert!(glob("/x", "/x"));
    }
}
