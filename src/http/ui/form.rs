//! The "new job" form: its fields, and the request they make.

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::domain::job::{DeprovisionRequest, FieldError, NESTED_FIELD_PREFIX, Target};

/// What the form posts. Every field is optional text: browsers leave out unchecked boxes and the request's
/// own parser, not this struct, decides what is valid, so the form reports exactly what the API would.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct JobForm {
    /// DPS instance (several configured).
    pub dps: String,
    /// Target kind.
    pub kind: String,
    /// Registration id (individual enrollment, group device).
    pub registration_id: String,
    /// Group id (group, group device).
    pub group_id: String,
    /// Leaf certificate of a group device (PEM).
    pub certificate_pem: String,
    /// `disable` or `delete`.
    pub revoke: String,
    /// `disable` or `delete`.
    pub registry: String,
    /// `assigned` or `all_hubs`.
    pub sweep: String,
    /// Checkbox.
    pub delete_registrations: Option<String>,
    /// Checkbox.
    pub delete_group: Option<String>,
    /// Checkbox.
    pub force: Option<String>,
    /// Reason code.
    pub reason_code: String,
    /// Reason text.
    pub reason_text: String,
    /// Ticket system.
    pub ticket_system: String,
    /// Ticket key.
    pub ticket_key: String,
    /// Ticket link.
    pub ticket_url: String,
    /// Who asks.
    pub requested_by: String,
}

impl JobForm {
    /// The form as a new page shows it: the reversible choices preselected.
    pub fn initial() -> Self {
        JobForm {
            kind: "individual_enrollment".into(),
            revoke: "disable".into(),
            registry: "disable".into(),
            sweep: "assigned".into(),
            ..JobForm::default()
        }
    }

    /// Whether a checkbox was ticked.
    pub fn checked(v: &Option<String>) -> bool {
        v.as_deref().is_some_and(|s| !s.is_empty())
    }

    /// The request the form describes, or every problem found in it, named by the request's field paths.
    pub fn to_request(&self) -> Result<DeprovisionRequest, Vec<FieldError>> {
        let mut errors = Vec::new();
        let text = |s: &str| s.trim().to_string();
        let mut required = |field: &str, value: &str| {
            if value.trim().is_empty() {
                errors.push(FieldError::new(
                    field,
                    "is required for this kind of target",
                ));
            }
            text(value)
        };
        let target = match self.kind.as_str() {
            "individual_enrollment" => json!({
                "kind": "individual_enrollment",
                "registration_id": required("target.registration_id", &self.registration_id),
            }),
            "enrollment_group" => json!({
                "kind": "enrollment_group",
                "group_id": required("target.group_id", &self.group_id),
            }),
            "group_device" => {
                let mut t = json!({
                    "kind": "group_device",
                    "group_id": required("target.group_id", &self.group_id),
                    "registration_id": required("target.registration_id", &self.registration_id),
                });
                if !self.certificate_pem.trim().is_empty() {
                    t["certificate_pem"] = Value::String(self.certificate_pem.trim().to_string());
                }
                t
            }
            _ => {
                errors.push(FieldError::new("target.kind", "choose what to deprovision"));
                Value::Null
            }
        };
        if self.reason_code.trim().is_empty() {
            errors.push(FieldError::new("reason.code", "choose a reason"));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut body = Map::new();
        body.insert("target".into(), target);
        for (key, value) in [
            ("dps", &self.dps),
            ("revoke", &self.revoke),
            ("registry", &self.registry),
            ("sweep", &self.sweep),
            ("requested_by", &self.requested_by),
        ] {
            if !value.trim().is_empty() {
                body.insert(key.into(), Value::String(text(value)));
            }
        }
        for (key, value) in [
            ("delete_registrations", &self.delete_registrations),
            ("delete_group", &self.delete_group),
            ("force", &self.force),
        ] {
            body.insert(key.into(), Value::Bool(Self::checked(value)));
        }
        let mut reason = json!({"code": text(&self.reason_code)});
        if !self.reason_text.trim().is_empty() {
            reason["text"] = Value::String(text(&self.reason_text));
        }
        body.insert("reason".into(), reason);
        if !(self.ticket_system.trim().is_empty() && self.ticket_key.trim().is_empty()) {
            let mut ticket =
                json!({"system": text(&self.ticket_system), "key": text(&self.ticket_key)});
            if !self.ticket_url.trim().is_empty() {
                ticket["url"] = Value::String(text(&self.ticket_url));
            }
            body.insert("ticket".into(), ticket);
        }
        serde_path_to_error::deserialize::<_, DeprovisionRequest>(Value::Object(body)).map_err(
            |e| {
                let path = e.path().to_string();
                let message = e.into_inner().to_string();
                // The target's own parser prefixes the inner field's path to its message.
                let (field, message) = match message.strip_prefix(NESTED_FIELD_PREFIX) {
                    Some(rest) => match rest.split_once("`: ") {
                        Some((inner, m)) => (format!("{path}.{inner}"), m.to_string()),
                        None => (path, message.clone()),
                    },
                    None => (path, message),
                };
                vec![FieldError::new(&field, message)]
            },
        )
    }

    /// The form filled in from a request (to change a previewed request).
    pub fn from_request(r: &DeprovisionRequest) -> Self {
        fn s(v: &impl serde::Serialize) -> String {
            serde_json::to_value(v)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        }
        let mut f = JobForm {
            dps: r.dps.as_ref().map(|d| d.to_string()).unwrap_or_default(),
            kind: r.target.kind().as_str().into(),
            revoke: s(&r.revoke),
            registry: s(&r.registry),
            sweep: s(&r.sweep),
            delete_registrations: r.delete_registrations.then(|| "on".into()),
            delete_group: r.delete_group.then(|| "on".into()),
            force: r.force.then(|| "on".into()),
            reason_code: r.reason.code.as_str().into(),
            reason_text: r.reason.text.clone().unwrap_or_default(),
            requested_by: r.requested_by.clone().unwrap_or_default(),
            ..JobForm::default()
        };
        if let Some(t) = &r.ticket {
            f.ticket_system = t.system.clone();
            f.ticket_key = t.key.clone();
            f.ticket_url = t.url.clone().unwrap_or_default();
        }
        match &r.target {
            Target::IndividualEnrollment(t) => f.registration_id = t.registration_id.to_string(),
            Target::EnrollmentGroup(t) => f.group_id = t.group_id.to_string(),
            Target::GroupDevice(t) => {
                f.group_id = t.group_id.to_string();
                f.registration_id = t.registration_id.to_string();
                f.certificate_pem = t.certificate_pem.clone().unwrap_or_default();
            }
        }
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filled_form_makes_the_request_the_api_would_parse() {
        let f = JobForm {
            kind: "group_device".into(),
            group_id: " fleet-sk ".into(),
            registration_id: "sk-dev-0007".into(),
            registry: "delete".into(),
            reason_code: "sold".into(),
            ticket_system: "jira".into(),
            ticket_key: "OPS-9".into(),
            force: Some("on".into()),
            ..JobForm::initial()
        };
        let r = f.to_request().unwrap();
        assert_eq!(r.target.key(), "individual:sk-dev-0007");
        assert!(r.force && !r.delete_group);
        assert_eq!(r.ticket.as_ref().unwrap().key, "OPS-9");
        let back = JobForm::from_request(&r);
        assert_eq!(back.to_request().unwrap(), r);
    }

    #[test]
    fn problems_are_named_by_the_request_field() {
        let f = JobForm {
            kind: "enrollment_group".into(),
            ..JobForm::initial()
        };
        let fields: Vec<String> = f
            .to_request()
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(fields, ["target.group_id", "reason.code"]);
        let f = JobForm {
            registration_id: "<script>".into(),
            reason_code: "stolen".into(),
            ..JobForm::initial()
        };
        let e = f.to_request().unwrap_err();
        assert_eq!(e[0].field, "target.registration_id", "{e:?}");
    }
}
