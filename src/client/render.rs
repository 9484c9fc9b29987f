//! What the client prints: aligned tables for people, the service's JSON for scripts.

use serde_json::Value;

use super::csv_jobs::RowOutcome;

/// How to print.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    /// Print the JSON the service answered instead of a table.
    pub json: bool,
}

/// Left-aligned columns with a header row, two spaces apart.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push('\n');
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `individual_enrollment sk-sensor-001`, `group_device fleet-sk/sk-dev-0007`.
pub fn target_text(t: &Value) -> String {
    let kind = t["kind"].as_str().unwrap_or("?");
    match kind {
        "enrollment_group" => format!("{kind} {}", text(&t["group_id"])),
        "group_device" => format!(
            "{kind} {}/{}",
            text(&t["group_id"]),
            text(&t["registration_id"])
        ),
        _ => format!("{kind} {}", text(&t["registration_id"])),
    }
}

/// `done/total` of a job's devices: everything no longer pending or running.
pub fn progress_counts(job: &Value) -> (u64, u64) {
    let p = &job["progress"];
    let n = |k: &str| p[k].as_u64().unwrap_or(0);
    let total = n("total");
    (total.saturating_sub(n("pending") + n("running")), total)
}

impl Output {
    fn print_json(&self, v: &Value) {
        println!(
            "{}",
            serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
        );
    }

    /// One job: its summary, then its steps.
    pub fn job(&self, job: &Value) {
        if self.json {
            return self.print_json(job);
        }
        let (done, total) = progress_counts(job);
        let p = &job["progress"];
        println!("job       {}", text(&job["id"]));
        println!("status    {}", text(&job["status"]));
        println!("target    {}", target_text(&job["target"]));
        println!(
            "actions   revoke {}, registry {}",
            text(&job["revoke"]),
            text(&job["registry"])
        );
        println!(
            "reason    {}{}",
            text(&job["reason"]["code"]),
            job["reason"]["text"]
                .as_str()
                .map(|t| format!(" ({t})"))
                .unwrap_or_default()
        );
        println!(
            "devices   {done}/{total} handled: {} done, {} skipped, {} failed, {} cancelled",
            p["registry_done"].as_u64().unwrap_or(0),
            p["skipped"].as_u64().unwrap_or(0),
            p["failed"].as_u64().unwrap_or(0),
            p["cancelled"].as_u64().unwrap_or(0)
        );
        if let Some(e) = job["last_error"].as_object() {
            println!(
                "error     {}",
                text(e.get("message").unwrap_or(&Value::Null))
            );
        }
        if let Some(steps) = job["steps"].as_array() {
            let rows: Vec<Vec<String>> = steps
                .iter()
                .map(|s| vec![text(&s["name"]), text(&s["state"]), text(&s["attempt"])])
                .collect();
            println!("\n{}", table(&["STEP", "STATE", "ATTEMPT"], &rows));
        }
    }

    /// A page of jobs.
    pub fn jobs(&self, page: &Value) {
        if self.json {
            return self.print_json(page);
        }
        let rows: Vec<Vec<String>> = page["items"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|j| {
                let (done, total) = progress_counts(j);
                vec![
                    text(&j["id"]),
                    text(&j["status"]),
                    target_text(&j["target"]),
                    format!("{done}/{total}"),
                    text(&j["created_at"]),
                ]
            })
            .collect();
        println!(
            "{}",
            table(&["ID", "STATUS", "TARGET", "DEVICES", "CREATED"], &rows)
        );
        if let Some(c) = page["next_cursor"].as_str() {
            println!("(more: the service's next_cursor is {c})");
        }
    }

    /// A preview: what was found and what each step would do.
    pub fn preview(&self, preview: &Value) {
        if self.json {
            return self.print_json(preview);
        }
        // The preview's shape grows with the service; print its top-level facts generically.
        if let Some(obj) = preview.as_object() {
            for (k, v) in obj {
                match v {
                    Value::Array(items) => {
                        println!("{k}:");
                        for item in items {
                            println!("  - {}", text(item));
                        }
                    }
                    Value::Object(_) => println!("{k}: {v}"),
                    _ => println!("{k}: {}", text(v)),
                }
            }
        }
    }

    /// One line per CSV row: accepted (job id) or why not.
    pub fn csv_outcomes(&self, outcomes: &[RowOutcome]) {
        if self.json {
            let v: Vec<Value> = outcomes
                .iter()
                .map(|o| match &o.result {
                    Ok(job) => serde_json::json!({"line": o.line, "job": job}),
                    Err(e) => serde_json::json!({"line": o.line, "error": e}),
                })
                .collect();
            return self.print_json(&Value::Array(v));
        }
        let rows: Vec<Vec<String>> = outcomes
            .iter()
            .map(|o| match &o.result {
                Ok(job) => vec![
                    o.line.to_string(),
                    o.target.clone(),
                    format!("accepted {}", text(&job["id"])),
                ],
                Err(e) => vec![
                    o.line.to_string(),
                    o.target.clone(),
                    format!("refused: {e}"),
                ],
            })
            .collect();
        println!("{}", table(&["LINE", "TARGET", "RESULT"], &rows));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let t = table(
            &["ID", "STATUS"],
            &[
                vec!["a".into(), "succeeded".into()],
                vec!["bbbb".into(), "failed".into()],
            ],
        );
        assert_eq!(t, "ID    STATUS\na     succeeded\nbbbb  failed");
    }

    #[test]
    fn targets_and_progress_read_from_job_json() {
        let job = serde_json::json!({"target": {"kind": "group_device", "group_id": "g", "registration_id": "d"},
            "progress": {"total": 10, "pending": 3, "running": 2}});
        assert_eq!(target_text(&job["target"]), "group_device g/d");
        assert_eq!(progress_counts(&job), (5, 10));
    }
}
