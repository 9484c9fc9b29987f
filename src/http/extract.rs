//! Extractors whose rejections are problem+json like every other error.

use axum::extract::FromRequest;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

/// `Json` whose rejection is an [`ApiError`].
///
/// Reads the body itself rather than through `axum::Json`: serde_json reports some wrong values (a number
/// where an enum string belongs) as syntax errors, so the body is first checked to be JSON at all (400 if
/// not) and only then deserialised, every failure of which is a 422 naming the field.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        if !is_json(req.headers()) {
            return Err(ApiError::UnsupportedMediaType(
                "send the body as JSON with `Content-Type: application/json`".into(),
            ));
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|r| {
                if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    return too_large();
                }
                let mut source: Option<&dyn std::error::Error> = Some(&r);
                while let Some(e) = source {
                    if e.is::<tower_http::timeout::TimeoutError>() {
                        return ApiError::RequestTimeout(
                            "the request body did not arrive within the body-read timeout \
                             (DEPROVISIOND_BODY_READ_TIMEOUT_SECS, 30 s by default)"
                                .into(),
                        );
                    }
                    source = e.source();
                }
                ApiError::BadRequest(format!(
                    "the request body could not be read: {}",
                    r.body_text()
                ))
            })?;
        // JSON is UTF-8 (RFC 8259), and serde_json does not check strings it skips.
        if let Err(e) = std::str::from_utf8(&bytes) {
            return Err(ApiError::BadRequest(format!(
                "malformed JSON: the body is not UTF-8 (invalid byte at offset {})",
                e.valid_up_to()
            )));
        }
        if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&bytes) {
            return Err(ApiError::BadRequest(format!("malformed JSON: {e}")));
        }
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        serde_path_to_error::deserialize(&mut de)
            .map(ApiJson)
            .map_err(|e| {
                ApiError::Validation(vec![describe(
                    &e.path().to_string(),
                    &e.inner().to_string(),
                )])
            })
    }
}

/// [`ApiJson`] for a body whose every field has a default: a request without a body (no `Content-Type`, no
/// bytes) stands for the defaults; any body must be JSON.
#[derive(Debug)]
pub struct ApiJsonOrDefault<T>(pub T);

impl<T, S> FromRequest<S> for ApiJsonOrDefault<T>
where
    T: serde::de::DeserializeOwned + Default,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let headers = req.headers();
        let no_type = headers.get(axum::http::header::CONTENT_TYPE).is_none();
        let empty = headers
            .get(axum::http::header::CONTENT_LENGTH)
            .is_none_or(|v| v.as_bytes() == b"0");
        if no_type && empty && headers.get(axum::http::header::TRANSFER_ENCODING).is_none() {
            return Ok(Self(T::default()));
        }
        ApiJson::from_request(req, state)
            .await
            .map(|ApiJson(t)| Self(t))
    }
}

/// `application/json` or any `+json` type, parameters ignored (what `axum::Json` accepts).
fn is_json(headers: &axum::http::HeaderMap) -> bool {
    let Some(ct) = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// The answer to a body over the limit.
pub(crate) fn too_large() -> ApiError {
    ApiError::PayloadTooLarge(
        "the request body is larger than the limit (DEPROVISIOND_BODY_LIMIT_BYTES, 1 MiB by default)".into(),
    )
}

impl<T: serde::Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// `Query` whose rejection is an [`ApiError`].
#[derive(Debug, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// `Path` whose rejection is an [`ApiError`].
#[derive(Debug, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::BadRequest(format!("invalid query string: {}", r.body_text()))
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::BadRequest(format!("invalid path: {}", r.body_text()))
    }
}

/// The values of the request's enum fields, to say what a wrong one should have been.
fn enum_values(field: &str) -> Option<&'static str> {
    Some(match field {
        "revoke" | "registry" => "`disable`, `delete`",
        "reason.code" => {
            "`lost`, `stolen`, `sold`, `compromised`, `moved`, `decommissioned`, `other`"
        }
        "target.kind" => "`individual_enrollment`, `enrollment_group`, `group_device`",
        _ => return None,
    })
}

fn join(path: &str, field: &str) -> String {
    if path == "." || path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

/// The first `` `quoted` `` word of `s`.
fn quoted(s: &str) -> Option<&str> {
    let start = s.find('`')? + 1;
    let len = s[start..].find('`')?;
    Some(&s[start..start + len])
}

/// serde's words for a JSON value, in JSON's words.
fn json_kind(serde_kind: &str) -> String {
    let k = serde_kind.trim();
    if k == "sequence" {
        "an array".into()
    } else if k == "map" {
        "an object".into()
    } else if k == "unit" || k == "null" {
        "null".into()
    } else {
        k.replace("boolean", "a boolean")
            .replace("floating point", "a number")
            .replace("integer", "an integer")
            .replace("string", "a string")
    }
}

/// What serde expected, in the API's words (never a Rust type name).
fn expected_words(field: &str, expected: &str) -> String {
    let e = expected.trim();
    if e.starts_with("struct ") || e == "a map" || e.starts_with("a map ") {
        "an object".into()
    } else if e.contains("variant identifier") || e.starts_with("enum ") {
        match enum_values(field) {
            Some(v) => format!("one of {v}"),
            None => "one of the documented string values".into(),
        }
    } else if ["u8", "u16", "u32", "u64", "usize"].contains(&e) {
        "a non-negative integer".into()
    } else if ["i8", "i16", "i32", "i64", "isize"].contains(&e) {
        "an integer".into()
    } else if e == "a borrowed string" {
        "a string".into()
    } else {
        e.to_string()
    }
}

/// Turns a serde error at `path` into a field error that speaks the API's words with the full field path.
pub(crate) fn describe(path: &str, message: &str) -> crate::domain::job::FieldError {
    use crate::domain::job::{FieldError, NESTED_FIELD_PREFIX};
    let mut path = path.to_string();
    // serde_json appends " at line L column C"; the field path says more to a caller.
    let mut message = message
        .split(" at line ")
        .next()
        .unwrap_or(message)
        .to_string();
    // A target reports the path inside it in its message (see `Target`'s Deserialize).
    while let Some(rest) = message.strip_prefix(NESTED_FIELD_PREFIX) {
        let Some((inner, msg)) = rest.split_once("`: ") else {
            break;
        };
        path = join(&path, inner);
        message = msg.to_string();
    }
    let field_or_body = |p: &str| {
        if p == "." || p.is_empty() {
            "body".to_string()
        } else {
            p.to_string()
        }
    };
    if let Some(rest) = message.strip_prefix("missing field ") {
        let name = quoted(rest).unwrap_or(rest);
        return FieldError::new(&join(&path, name), "is required");
    }
    if let Some(rest) = message.strip_prefix("unknown field ") {
        let name = quoted(rest).unwrap_or(rest).to_string();
        let field = if path.ends_with(&name) {
            path.clone()
        } else {
            join(&path, &name)
        };
        let known = rest
            .split_once("expected one of ")
            .map(|(_, k)| format!("; the fields here are {k}"))
            .or_else(|| {
                rest.split_once("there are no fields")
                    .map(|_| "; no fields are allowed here".to_string())
            })
            .unwrap_or_default();
        return FieldError::new(&field, format!("is not a field of this object{known}"));
    }
    let field = field_or_body(&path);
    if message == "expected value" {
        // serde_json's answer to a number or object where an enum string belongs.
        if let Some(v) = enum_values(&field) {
            return FieldError::new(&field, format!("must be one of {v}"));
        }
        return FieldError::new(&field, "has the wrong type of value");
    }
    if let Some(rest) = message.strip_prefix("unknown variant ") {
        let got = quoted(rest).unwrap_or("");
        let expected = enum_values(&field)
            .map(str::to_string)
            .or_else(|| {
                rest.split_once("expected one of ")
                    .map(|(_, k)| k.to_string())
            })
            .or_else(|| rest.split_once("expected ").map(|(_, k)| k.to_string()))
            .unwrap_or_default();
        return FieldError::new(&field, format!("must be one of {expected} (got `{got}`)"));
    }
    if let Some(rest) = message.strip_prefix("invalid type: ") {
        if let Some((got, expected)) = rest.split_once(", expected ") {
            return FieldError::new(
                &field,
                format!(
                    "must be {} (got {})",
                    expected_words(&field, expected),
                    json_kind(got)
                ),
            );
        }
    }
    if let Some(rest) = message.strip_prefix("invalid length ") {
        if let Some((_, expected)) = rest.split_once(", expected ") {
            let what = expected_words(&field, expected);
            let got = if what == "an object" {
                " (got an array)"
            } else {
                ""
            };
            return FieldError::new(&field, format!("must be {what}{got}"));
        }
    }
    if let Some(rest) = message.strip_prefix("invalid value: ") {
        if let Some((got, expected)) = rest.split_once(", expected ") {
            return FieldError::new(
                &field,
                format!(
                    "must be {} (got {})",
                    expected_words(&field, expected),
                    json_kind(got)
                ),
            );
        }
    }
    FieldError::new(&field, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::job::DeprovisionRequest;
    use serde_json::json;

    fn error_of(v: serde_json::Value) -> (String, String) {
        let text = v.to_string();
        let mut de = serde_json::Deserializer::from_str(&text);
        let e = serde_path_to_error::deserialize::<_, DeprovisionRequest>(&mut de).unwrap_err();
        let f = describe(&e.path().to_string(), &e.inner().to_string());
        (f.field, f.message)
    }

    const REASON: &str = "reason";

    #[test]
    fn errors_name_the_full_field_path_in_the_apis_words() {
        let ok_reason = json!({"code": "lost"});
        let cases = [
            (
                json!({"target": {"kind": "individual_enrollment", "registration_id": 123}, REASON: ok_reason}),
                "target.registration_id",
                "must be a string (got an integer `123`)",
            ),
            (
                json!({"target": {"kind": "group_device", "group_id": "g"}, REASON: ok_reason}),
                "target.registration_id",
                "is required",
            ),
            (
                json!({"target": {"kind": "group_device", "group_id": "g", "registration_id": "a", "x": 1}, REASON: ok_reason}),
                "target.x",
                "is not a field of this object; the fields here are `group_id`, `registration_id`, `certificate_pem`",
            ),
            (
                json!({"target": {"kind": "nope"}, REASON: ok_reason}),
                "target.kind",
                "unknown target kind `nope`; expected one of individual_enrollment, enrollment_group, group_device",
            ),
            (
                json!({"target": {"registration_id": "a"}, REASON: ok_reason}),
                "target.kind",
                "is required",
            ),
            (
                json!({"target": {"kind": "enrollment_group", "group_id": ".."}, REASON: ok_reason}),
                "target.group_id",
                "must not be `.` or `..` (they would change the Azure URL the id is sent in)",
            ),
            (
                json!({"target": {"kind": "enrollment_group", "group_id": "g"}, "revoke": 5, REASON: ok_reason}),
                "revoke",
                "must be one of `disable`, `delete`",
            ),
            (
                json!({"target": {"kind": "enrollment_group", "group_id": "g"}, REASON: {"code": "bored"}}),
                "reason.code",
                "must be one of `lost`, `stolen`, `sold`, `compromised`, `moved`, `decommissioned`, `other` (got `bored`)",
            ),
            (
                json!({"target": {"kind": "enrollment_group", "group_id": "g"}}),
                "reason",
                "is required",
            ),
            (
                json!({"dps": "a.b", "target": {"kind": "enrollment_group", "group_id": "g"}, REASON: ok_reason}),
                "dps",
                "contains '.'; allowed characters are letters, digits and -",
            ),
            (json!([]), "body", "must be an object (got an array)"),
            (json!("x"), "body", "must be an object (got a string \"x\")"),
            (json!(null), "body", "must be an object (got null)"),
        ];
        for (body, field, message) in cases {
            let (f, m) = error_of(body.clone());
            assert_eq!((f.as_str(), m.as_str()), (field, message), "{body}");
            assert!(
                !m.contains("struct") && !m.contains("variant identifier"),
                "{m}"
            );
        }
    }
}
