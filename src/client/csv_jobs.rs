//! `client create --from-csv FILE`: one job per row of a CSV of registration (or group) ids.
//!
//! Columns, by header name: `registration_id` or `group_id` (one is required), and optionally `kind`
//! (`individual`, `group`, `group-device`, or the API's names), `group`, `reason`, `text`, `ticket`,
//! `registry`, `revoke`. Missing values take the command line's flags. Each row is sent with an
//! `Idempotency-Key` derived from its body, so running the same file twice creates no second job.

use std::path::Path;

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::api::ApiClient;
use super::render::target_text;
use super::{KindArg, RequestArgs, body_for, target};

/// One row turned into a request.
#[derive(Debug)]
pub struct Row {
    /// Line number in the file (the header is line 1).
    pub line: u64,
    /// The request body.
    pub body: Value,
}

/// What became of a row.
#[derive(Debug)]
pub struct RowOutcome {
    /// Line number in the file.
    pub line: u64,
    /// The row's target, for people.
    pub target: String,
    /// The job, or why it was not accepted.
    pub result: Result<Value, String>,
}

fn kind_of(text: &str) -> Option<KindArg> {
    match text.trim().to_ascii_lowercase().replace('_', "-").as_str() {
        "individual" | "individual-enrollment" => Some(KindArg::Individual),
        "group" | "enrollment-group" => Some(KindArg::Group),
        "group-device" => Some(KindArg::GroupDevice),
        _ => None,
    }
}

/// Reads every row of `path`; a row that cannot become a request fails the whole file, naming its line.
pub fn read(path: &Path, defaults: &RequestArgs) -> anyhow::Result<Vec<Row>> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_path(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let headers = reader
        .headers()
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        .clone();
    let col = |name: &str| headers.iter().position(|h| h.eq_ignore_ascii_case(name));
    let (rid, gid) = (col("registration_id"), col("group_id"));
    if rid.is_none() && gid.is_none() {
        anyhow::bail!(
            "{}: the header needs a registration_id or a group_id column",
            path.display()
        );
    }
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let line = record.position().map_or(0, |p| p.line());
        let get = |i: Option<usize>| {
            i.and_then(|i| record.get(i))
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };
        let at = |msg: String| anyhow::anyhow!("{} line {line}: {msg}", path.display());
        let registration_id = get(rid);
        let group_id = get(gid).or_else(|| get(col("group")));
        let kind = match get(col("kind")) {
            Some(k) => kind_of(&k).ok_or_else(|| {
                at(format!(
                    "kind {k:?} is not individual, group or group-device"
                ))
            })?,
            None => match (&registration_id, &group_id) {
                (Some(_), Some(_)) => KindArg::GroupDevice,
                (Some(_), None) => KindArg::Individual,
                (None, Some(_)) => KindArg::Group,
                (None, None) => return Err(at("no registration_id or group_id".into())),
            },
        };
        let id = match kind {
            KindArg::Group => group_id.clone(),
            _ => registration_id.clone(),
        }
        .ok_or_else(|| at(format!("a {kind:?} row needs its id")))?;
        let row_args = RequestArgs {
            reason: get(col("reason")).unwrap_or_else(|| defaults.reason.clone()),
            text: get(col("text")).or_else(|| defaults.text.clone()),
            ticket: get(col("ticket")).or_else(|| defaults.ticket.clone()),
            registry: get(col("registry")).or_else(|| defaults.registry.clone()),
            revoke: get(col("revoke")).or_else(|| defaults.revoke.clone()),
            ..defaults.clone()
        };
        let t = target(kind, &id, group_id.as_deref(), None).map_err(|e| at(e.to_string()))?;
        rows.push(Row {
            line,
            body: body_for(t, &row_args),
        });
    }
    if rows.is_empty() {
        anyhow::bail!("{}: no rows under the header", path.display());
    }
    Ok(rows)
}

/// The idempotency key of a row: its body's hash, so a re-run finds the same job.
pub fn row_key(body: &Value) -> String {
    let digest = Sha256::digest(body.to_string().as_bytes());
    let hex: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
    format!("csv-{hex}")
}

/// Sends every row, one after the other; each outcome is kept, so one refusal does not hide the rest.
pub async fn submit(api: &ApiClient, rows: Vec<Row>) -> Vec<RowOutcome> {
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let result = api
            .post("/v1/deprovisions", &row.body, Some(&row_key(&row.body)))
            .await
            .map_err(|e| e.to_string());
        out.push(RowOutcome {
            line: row.line,
            target: target_text(&row.body["target"]),
            result,
        });
    }
    out
}
