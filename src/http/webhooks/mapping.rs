//! Configurable rules that turn a ticketing system's event into a deprovisioning request.
//!
//! A rule says which events mean "deprovision" (the event name, field values, a change in the changelog) and
//! which fields carry the target, the reason and the ticket key. Fields are JSON pointers (`/issue/fields/x`);
//! for Jira a bare name (`customfield_10050`) is short for `/issue/fields/customfield_10050`.
//!
//! Outcomes: the event does not match (the caller answers 202 and creates nothing), a request, or the fields that
//! could not be mapped (422, each named by its pointer).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::domain::job::{
    DeprovisionRequest, FieldError, NESTED_FIELD_PREFIX, ReasonCode, RegistryAction, RevokeAction,
};

/// A condition on one field: its text must be one of `equals`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// The field (a pointer, or a Jira field name).
    pub field: String,
    /// Accepted values (compared exactly, after trimming).
    pub equals: Vec<String>,
}

/// Jira only: the event's changelog must show `field` changing to one of `to`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Changed {
    /// The changelog item's `field` or `fieldId`, e.g. `status`.
    pub field: String,
    /// Accepted new values (the item's `toString`, or its `to` id).
    pub to: Vec<String>,
}

/// A mapping rule (the `rule` of a Jira or ServiceNow source).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Where the event name is (Jira: `/webhookEvent`; ServiceNow: none unless set).
    #[serde(default)]
    pub event_field: Option<String>,
    /// Event names that can mean "deprovision" (Jira default: `jira:issue_created`, `jira:issue_updated`). Empty:
    /// any.
    #[serde(default)]
    pub events: Option<Vec<String>>,
    /// Every condition must hold.
    #[serde(default)]
    pub when: Vec<Condition>,
    /// Jira: the changelog must show this change (e.g. status to "Deprovision").
    #[serde(default)]
    pub changed: Option<Changed>,
    /// Where the ticket key is (Jira default `/issue/key`; ServiceNow default `/number`).
    #[serde(default)]
    pub ticket_key: Option<String>,
    /// Link to the ticket, with `{key}` replaced by the key, e.g. `https://acme.atlassian.net/browse/{key}`.
    #[serde(default)]
    pub ticket_url: Option<String>,
    /// The registration id of an individual enrollment, or of one device of `group_id`.
    #[serde(default)]
    pub registration_id: Option<String>,
    /// The enrollment group (alone: the whole group; with `registration_id`: one device of it).
    #[serde(default)]
    pub group_id: Option<String>,
    /// A group device's leaf certificate (PEM).
    #[serde(default)]
    pub certificate_pem: Option<String>,
    /// The DPS instance (optional when one is configured).
    #[serde(default)]
    pub dps: Option<String>,
    /// The reason code's field; its text is looked up in `reason_codes`, else read as a code (`stolen`, …).
    #[serde(default)]
    pub reason_code: Option<String>,
    /// Field values to reason codes, e.g. `{"Stolen device": "stolen"}`.
    #[serde(default)]
    pub reason_codes: BTreeMap<String, ReasonCode>,
    /// The code when the field is absent or not configured (default `other`).
    #[serde(default = "default_reason")]
    pub default_reason: ReasonCode,
    /// Free text of the reason (Jira default: the summary, `/issue/fields/summary`).
    #[serde(default)]
    pub reason_text: Option<String>,
    /// Who asked (Jira default `/user/displayName`).
    #[serde(default)]
    pub requested_by: Option<String>,
    /// What happens to DPS access (default `disable`).
    #[serde(default)]
    pub revoke: RevokeAction,
    /// What happens to hub identities (default `disable`).
    #[serde(default)]
    pub registry: RegistryAction,
}

fn default_reason() -> ReasonCode {
    ReasonCode::Other
}

/// Where a source's payloads keep things, for fields a rule leaves out.
#[derive(Debug, Clone, Copy)]
pub struct SourceDefaults {
    /// Ticket system name (`jira`, `servicenow`): the ticket's `system` and the idempotency key's prefix.
    pub system: &'static str,
    /// Prefix of bare field names.
    pub field_prefix: &'static str,
    /// Default event field.
    pub event_field: Option<&'static str>,
    /// Default event names.
    pub events: &'static [&'static str],
    /// Default ticket key field.
    pub ticket_key: &'static str,
    /// Default reason text field.
    pub reason_text: Option<&'static str>,
    /// Default requester field.
    pub requested_by: Option<&'static str>,
}

/// Jira Cloud's payload layout.
pub const JIRA: SourceDefaults = SourceDefaults {
    system: "jira",
    field_prefix: "/issue/fields/",
    event_field: Some("/webhookEvent"),
    events: &["jira:issue_created", "jira:issue_updated"],
    ticket_key: "/issue/key",
    reason_text: Some("/issue/fields/summary"),
    requested_by: Some("/user/displayName"),
};

/// ServiceNow: the body is whatever the outbound REST message's template makes it; pointers say.
pub const SERVICENOW: SourceDefaults = SourceDefaults {
    system: "servicenow",
    field_prefix: "/",
    event_field: None,
    events: &[],
    ticket_key: "/number",
    reason_text: None,
    requested_by: None,
};

/// What a rule made of an event.
#[derive(Debug, Clone, PartialEq)]
pub enum Mapped {
    /// The event does not ask for a deprovisioning; why not.
    Ignored(String),
    /// A request, and the ticket key it came from.
    Deprovision {
        /// The request (its `ticket` is set).
        request: Box<DeprovisionRequest>,
        /// The ticket key.
        ticket_key: String,
    },
}

/// The text of a field: a string, a number, or a Jira option/status object (`value`, `name`); `None` when absent,
/// null or empty.
pub fn text_of(v: &Value) -> Option<String> {
    let s = match v {
        Value::String(s) => s.trim().to_string(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Object(o) => {
            return ["value", "name", "key"]
                .iter()
                .find_map(|k| o.get(*k).and_then(text_of));
        }
        Value::Array(a) if a.len() == 1 => return text_of(&a[0]),
        _ => return None,
    };
    (!s.is_empty()).then_some(s)
}

fn escape(name: &str) -> String {
    name.replace('~', "~0").replace('/', "~1")
}

impl Rule {
    /// Checks the rule can name a target at all.
    pub fn check(&self, at: &str) -> Result<(), super::config::ConfigError> {
        if self.registration_id.is_none() && self.group_id.is_none() {
            return Err(super::config::ConfigError::Invalid(format!(
                "{at}: set `registration_id` and/or `group_id`: the fields that carry the target"
            )));
        }
        Ok(())
    }

    fn pointer(field: &str, d: &SourceDefaults) -> String {
        if field.starts_with('/') {
            field.to_string()
        } else {
            format!("{}{}", d.field_prefix, escape(field))
        }
    }

    fn get(body: &Value, field: &str, d: &SourceDefaults) -> Option<String> {
        body.pointer(&Self::pointer(field, d)).and_then(text_of)
    }

    /// Applies the rule to a payload.
    pub fn apply(&self, body: &Value, d: &SourceDefaults) -> Result<Mapped, Vec<FieldError>> {
        if let Some(ignored) = self.mismatch(body, d) {
            return Ok(Mapped::Ignored(ignored));
        }
        let mut errors = Vec::new();
        let key_field = Self::pointer(self.ticket_key.as_deref().unwrap_or(d.ticket_key), d);
        let ticket_key = Self::get(body, &key_field, d);
        match &ticket_key {
            None => errors.push(FieldError::new(&key_field, "is absent or empty: the ticket key is required")),
            Some(k) if !k.bytes().all(|b| b.is_ascii_graphic()) || k.len() > 128 => errors.push(FieldError::new(
                &key_field,
                "must be at most 128 visible ASCII characters (it becomes the job's idempotency key)",
            )),
            Some(_) => {}
        }
        let field = |f: &Option<String>| f.as_ref().map(|f| Self::pointer(f, d));
        let (reg_f, group_f, pem_f) = (
            field(&self.registration_id),
            field(&self.group_id),
            field(&self.certificate_pem),
        );
        let reg = reg_f.as_ref().and_then(|f| Self::get(body, f, d));
        let group = group_f.as_ref().and_then(|f| Self::get(body, f, d));
        let pem = pem_f.as_ref().and_then(|f| Self::get(body, f, d));
        let target = match (&reg, &group) {
            (Some(r), None) => Some(json!({"kind": "individual_enrollment", "registration_id": r})),
            (None, Some(g)) => Some(json!({"kind": "enrollment_group", "group_id": g})),
            (Some(r), Some(g)) => {
                let mut t = json!({"kind": "group_device", "group_id": g, "registration_id": r});
                if let Some(p) = &pem {
                    t["certificate_pem"] = json!(p);
                }
                Some(t)
            }
            (None, None) => {
                for f in [&reg_f, &group_f].into_iter().flatten() {
                    errors.push(FieldError::new(
                        f,
                        "is absent or empty: the event names no device and no group",
                    ));
                }
                None
            }
        };
        let reason_f = field(&self.reason_code);
        let code = match reason_f
            .as_ref()
            .and_then(|f| Self::get(body, f, d).map(|v| (f, v)))
        {
            None => Some(self.default_reason),
            Some((f, v)) => {
                let found = self
                    .reason_codes
                    .get(&v)
                    .or_else(|| {
                        self.reason_codes
                            .iter()
                            .find(|(k, _)| k.eq_ignore_ascii_case(&v))
                            .map(|(_, c)| c)
                    })
                    .copied()
                    .or_else(|| serde_json::from_value(json!(v.to_ascii_lowercase())).ok());
                if found.is_none() {
                    let mut known: Vec<&str> =
                        self.reason_codes.keys().map(String::as_str).collect();
                    known.extend([
                        "lost",
                        "stolen",
                        "sold",
                        "compromised",
                        "moved",
                        "decommissioned",
                        "other",
                    ]);
                    errors.push(FieldError::new(
                        f,
                        format!(
                            "`{v}` is not a reason this rule knows; expected one of: {}",
                            known.join(", ")
                        ),
                    ));
                }
                found
            }
        };
        let (Some(ticket_key), Some(target), Some(code), true) =
            (ticket_key, target, code, errors.is_empty())
        else {
            return Err(errors);
        };
        let text = self
            .reason_text
            .as_deref()
            .or(d.reason_text)
            .and_then(|f| Self::get(body, f, d))
            .map(|t| t.chars().take(1024).collect::<String>())
            .unwrap_or_else(|| format!("{} ticket {ticket_key}", d.system));
        let mut request = json!({
            "target": target,
            "revoke": self.revoke,
            "registry": self.registry,
            "reason": {"code": code, "text": text},
            "ticket": {"system": d.system, "key": ticket_key},
        });
        if let Some(u) = &self.ticket_url {
            request["ticket"]["url"] = json!(u.replace("{key}", &ticket_key));
        }
        let who = self
            .requested_by
            .as_deref()
            .or(d.requested_by)
            .and_then(|f| Self::get(body, f, d));
        request["requested_by"] = json!(match who {
            Some(w) => format!(
                "{} webhook: {}",
                d.system,
                w.chars().take(200).collect::<String>()
            ),
            None => format!("{} webhook", d.system),
        });
        if let Some(dps) = self.dps.as_ref().and_then(|f| Self::get(body, f, d)) {
            request["dps"] = json!(dps);
        }
        // The ids are parsed by the request's own types: a value they refuse is reported on the field it came from.
        serde_path_to_error::deserialize::<_, DeprovisionRequest>(request)
            .map(|r| Mapped::Deprovision {
                request: Box::new(r),
                ticket_key: ticket_key.clone(),
            })
            .map_err(|e| {
                let path = e.path().to_string();
                let source = match path.as_str() {
                    p if p.starts_with("target") => {
                        // The target names the inner field it refused: `field `group_id`: …`.
                        let inner = e.inner().to_string();
                        let names =
                            |f: &str| inner.starts_with(&format!("{NESTED_FIELD_PREFIX}{f}`"));
                        if names("group_id") {
                            group_f.clone()
                        } else if names("certificate_pem") {
                            pem_f.clone()
                        } else {
                            reg_f.clone().or(group_f.clone())
                        }
                    }
                    p if p.starts_with("dps") => self.dps.as_ref().map(|f| Self::pointer(f, d)),
                    _ => None,
                };
                vec![FieldError::new(
                    source.as_deref().unwrap_or(&path),
                    e.inner().to_string(),
                )]
            })
    }

    /// Why the event is not a deprovisioning request, if it is not.
    fn mismatch(&self, body: &Value, d: &SourceDefaults) -> Option<String> {
        let events: Vec<&str> = match &self.events {
            Some(e) => e.iter().map(String::as_str).collect(),
            None => d.events.to_vec(),
        };
        if !events.is_empty() {
            let field = self
                .event_field
                .as_deref()
                .or(d.event_field)
                .unwrap_or("/event");
            let event = Self::get(body, field, d);
            if !event.as_deref().is_some_and(|e| events.contains(&e)) {
                return Some(format!(
                    "event `{}` is not one the rule maps ({})",
                    event.unwrap_or_default(),
                    events.join(", ")
                ));
            }
        }
        for c in &self.when {
            let v = Self::get(body, &c.field, d);
            if !v
                .as_deref()
                .is_some_and(|v| c.equals.iter().any(|e| e.trim() == v))
            {
                return Some(format!(
                    "{} is `{}`, not one of {}",
                    Self::pointer(&c.field, d),
                    v.unwrap_or_default(),
                    c.equals.join(", ")
                ));
            }
        }
        if let Some(ch) = &self.changed {
            let items = body.pointer("/changelog/items").and_then(Value::as_array);
            let hit = items.into_iter().flatten().any(|item| {
                let named = ["field", "fieldId"]
                    .iter()
                    .any(|k| item.get(*k).and_then(Value::as_str) == Some(&ch.field));
                let to = ["toString", "to"]
                    .iter()
                    .filter_map(|k| item.get(*k).and_then(text_of))
                    .collect::<Vec<_>>();
                named && to.iter().any(|t| ch.to.iter().any(|w| w == t))
            });
            if !hit {
                return Some(format!(
                    "the changelog does not show {} changing to {}",
                    ch.field,
                    ch.to.join(", ")
                ));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(v: Value) -> Rule {
        serde_json::from_value(v).unwrap()
    }

    fn jira_event(status: &str, reg: Option<&str>, group: Option<&str>) -> Value {
        json!({
            "timestamp": 1_764_590_000_000_i64,
            "webhookEvent": "jira:issue_updated",
            "user": {"accountId": "5b10a2844c20165700ede21g", "displayName": "Alice Admin"},
            "issue": {"id": "10002", "key": "OPS-42", "fields": {
                "summary": "Stolen gateway in Lyon",
                "status": {"name": status, "id": "10010"},
                "customfield_10050": reg,
                "customfield_10051": group.map(|g| json!({"value": g, "id": "10100"})),
                "customfield_10052": {"value": "Stolen device"}
            }},
            "changelog": {"id": "10101", "items": [
                {"field": "status", "fieldtype": "jira", "fieldId": "status", "from": "1", "fromString": "Open",
                 "to": "10010", "toString": status}
            ]}
        })
    }

    fn jira_rule() -> Rule {
        rule(json!({
            "changed": {"field": "status", "to": ["Deprovision"]},
            "registration_id": "customfield_10050",
            "group_id": "customfield_10051",
            "reason_code": "customfield_10052",
            "reason_codes": {"Stolen device": "stolen"},
            "ticket_url": "https://acme.atlassian.net/browse/{key}"
        }))
    }

    #[test]
    fn a_matching_jira_event_becomes_a_request() {
        let m = jira_rule()
            .apply(&jira_event("Deprovision", Some("sk-dev-1"), None), &JIRA)
            .unwrap();
        let Mapped::Deprovision {
            request,
            ticket_key,
        } = m
        else {
            panic!("{m:?}")
        };
        assert_eq!(ticket_key, "OPS-42");
        let v = serde_json::to_value(&*request).unwrap();
        assert_eq!(
            v["target"],
            json!({"kind": "individual_enrollment", "registration_id": "sk-dev-1"})
        );
        assert_eq!(
            v["reason"],
            json!({"code": "stolen", "text": "Stolen gateway in Lyon"})
        );
        assert_eq!(
            v["ticket"]["url"],
            "https://acme.atlassian.net/browse/OPS-42"
        );
        assert_eq!(v["requested_by"], "jira webhook: Alice Admin");
    }

    #[test]
    fn group_and_group_device_targets() {
        let m = jira_rule()
            .apply(&jira_event("Deprovision", None, Some("fleet-x509")), &JIRA)
            .unwrap();
        let Mapped::Deprovision { request, .. } = m else {
            panic!()
        };
        assert_eq!(request.target.key(), "group:fleet-x509");
        let m = jira_rule()
            .apply(
                &jira_event("Deprovision", Some("dev-7"), Some("fleet")),
                &JIRA,
            )
            .unwrap();
        let Mapped::Deprovision { request, .. } = m else {
            panic!()
        };
        assert_eq!(
            serde_json::to_value(&request.target).unwrap()["kind"],
            "group_device"
        );
    }

    #[test]
    fn events_that_do_not_match_are_ignored() {
        let r = jira_rule();
        assert!(matches!(
            r.apply(&jira_event("In Progress", Some("a"), None), &JIRA),
            Ok(Mapped::Ignored(_))
        ));
        let mut other = jira_event("Deprovision", Some("a"), None);
        other["webhookEvent"] = json!("comment_created");
        let Ok(Mapped::Ignored(why)) = r.apply(&other, &JIRA) else {
            panic!()
        };
        assert!(why.contains("comment_created"), "{why}");
        let when = rule(
            json!({"when": [{"field": "status", "equals": ["Deprovision"]}], "registration_id": "customfield_10050"}),
        );
        assert!(matches!(
            when.apply(&jira_event("Open", Some("a"), None), &JIRA),
            Ok(Mapped::Ignored(_))
        ));
        assert!(matches!(
            when.apply(&jira_event("Deprovision", Some("a"), None), &JIRA),
            Ok(Mapped::Deprovision { .. })
        ));
    }

    #[test]
    fn unmappable_fields_are_named_by_their_pointer() {
        let r = jira_rule();
        let errs = r
            .apply(&jira_event("Deprovision", None, None), &JIRA)
            .unwrap_err();
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "/issue/fields/customfield_10050",
                "/issue/fields/customfield_10051"
            ]
        );
        let errs = r
            .apply(&jira_event("Deprovision", Some("not valid!"), None), &JIRA)
            .unwrap_err();
        assert_eq!(errs[0].field, "/issue/fields/customfield_10050", "{errs:?}");
        let errs = r
            .apply(
                &jira_event("Deprovision", Some("ok-dev"), Some("bad group!")),
                &JIRA,
            )
            .unwrap_err();
        assert_eq!(errs[0].field, "/issue/fields/customfield_10051", "{errs:?}");
        let mut bad_reason = jira_event("Deprovision", Some("a"), None);
        bad_reason["issue"]["fields"]["customfield_10052"] = json!({"value": "Bored"});
        let errs = r.apply(&bad_reason, &JIRA).unwrap_err();
        assert_eq!(errs[0].field, "/issue/fields/customfield_10052");
        assert!(errs[0].message.contains("Bored"));
        let mut no_key = jira_event("Deprovision", Some("a"), None);
        no_key["issue"].as_object_mut().unwrap().remove("key");
        assert_eq!(r.apply(&no_key, &JIRA).unwrap_err()[0].field, "/issue/key");
    }

    #[test]
    fn servicenow_fields_by_pointer() {
        let r = rule(json!({
            "when": [{"field": "/request/state", "equals": ["approved"]}],
            "ticket_key": "/request/number",
            "registration_id": "/variables/registration_id",
            "reason_code": "/variables/reason"
        }));
        let body = json!({"request": {"number": "RITM0010001", "state": "approved"},
                          "variables": {"registration_id": "tpm-1", "reason": "Lost"}});
        let Ok(Mapped::Deprovision {
            request,
            ticket_key,
        }) = r.apply(&body, &SERVICENOW)
        else {
            panic!()
        };
        assert_eq!(ticket_key, "RITM0010001");
        assert_eq!(request.reason.code, ReasonCode::Lost);
        assert_eq!(
            request.reason.text.as_deref(),
            Some("servicenow ticket RITM0010001")
        );
        assert_eq!(request.requested_by.as_deref(), Some("servicenow webhook"));
    }
}
