//! The bench's rows and how they are shown: a Markdown table (pasteable into the README) or JSON.

use serde::Serialize;

/// One measured (or computed) line of the table. Every field is always present in the JSON; a value that
/// does not apply to the row is `null`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Row {
    /// Scenario name (`s1`, `s3`, `unthrottled`, `replicas`, `intake`, `rss`).
    pub scenario: String,
    /// `sqlite`, `postgres`, or `-` (the baseline and the bound use no database).
    pub store: String,
    /// Who ran it: `service`, `service x2`, `naive`, `lower bound`, `bare INSERT`.
    pub runner: String,
    /// `disable`, `delete` or `intake`.
    pub action: String,
    /// Devices in the group (requests, for intake).
    pub devices: usize,
    /// `succeeded`, `failed (N devices)`, `timed out`, or `not run: why`.
    pub outcome: String,
    /// Wall time, seconds.
    pub wall_s: Option<f64>,
    /// The quota lower bound of the hub phase, seconds (none when the hub is not throttled).
    pub lower_bound_s: Option<f64>,
    /// `wall_s / lower_bound_s`.
    pub ratio_to_bound: Option<f64>,
    /// Hub registry calls not answered 429, per device (intake: simulator calls per request).
    pub ops_per_device: Option<f64>,
    /// Hub calls answered 429.
    pub throttled: Option<u64>,
    /// Share of hub calls answered 429.
    pub throttled_share: Option<f64>,
    /// Devices (requests) per second of wall time.
    pub devices_per_s: Option<f64>,
    /// The naive baseline's wall time over this row's.
    pub speedup_vs_naive: Option<f64>,
    /// Intake only: this row's rate over the bare INSERT handler's.
    pub vs_bare: Option<f64>,
    /// Peak resident set of the service process (VmHWM), MiB; the largest of the replicas.
    pub peak_rss_mib: Option<f64>,
    /// Anything else worth knowing about the row.
    pub note: String,
}

impl Row {
    /// A row that could not run, saying why.
    pub fn not_run(scenario: &str, store: &str, runner: &str, action: &str, why: &str) -> Self {
        Self {
            scenario: scenario.into(),
            store: store.into(),
            runner: runner.into(),
            action: action.into(),
            outcome: format!("not run: {why}"),
            ..Self::default()
        }
    }
}

fn num(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.decimals$}"),
        _ => "—".into(),
    }
}

fn pct(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{:.1} %", v * 100.0),
        _ => "—".into(),
    }
}

fn times(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.2}×"),
        _ => "—".into(),
    }
}

/// The rows as a Markdown table.
pub fn render(rows: &[Row]) -> String {
    let header = [
        "scenario",
        "store",
        "runner",
        "action",
        "devices",
        "outcome",
        "wall s",
        "lower bound s",
        "ratio to bound",
        "ops/device",
        "429s",
        "429 share",
        "devices/s",
        "speed-up vs naive",
        "peak RSS MiB",
        "note",
    ];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let speedup = match (r.speedup_vs_naive, r.vs_bare) {
                (Some(_), _) => times(r.speedup_vs_naive),
                (None, Some(b)) => format!("{} of bare", times(Some(b))),
                _ => "—".into(),
            };
            vec![
                r.scenario.clone(),
                r.store.clone(),
                r.runner.clone(),
                r.action.clone(),
                r.devices.to_string(),
                r.outcome.clone(),
                num(r.wall_s, 2),
                num(r.lower_bound_s, 2),
                times(r.ratio_to_bound),
                num(r.ops_per_device, 2),
                r.throttled.map_or("—".into(), |t| t.to_string()),
                pct(r.throttled_share),
                num(r.devices_per_s, 1),
                speedup,
                num(r.peak_rss_mib, 1),
                r.note.clone(),
            ]
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |values: Vec<String>| {
        let padded: Vec<String> = values
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v}{}", " ".repeat(w - v.chars().count())))
            .collect();
        format!("| {} |\n", padded.join(" | "))
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    out.push_str(&line(widths.iter().map(|w| "-".repeat(*w)).collect()));
    for row in cells {
        out.push_str(&line(row));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_row_with_dashes_for_what_does_not_apply() {
        let rows = vec![
            Row {
                scenario: "s1".into(),
                store: "sqlite".into(),
                runner: "service".into(),
                action: "disable".into(),
                devices: 10,
                outcome: "succeeded".into(),
                wall_s: Some(1.5),
                throttled_share: Some(0.25),
                speedup_vs_naive: Some(3.0),
                ..Row::default()
            },
            Row::not_run("s1", "postgres", "service", "disable", "no database URL"),
        ];
        let text = render(&rows);
        assert_eq!(text.lines().count(), 4);
        assert!(text.contains("| 1.50 "), "{text}");
        assert!(text.contains("25.0 %"), "{text}");
        assert!(text.contains("3.00×"), "{text}");
        assert!(text.contains("not run: no database URL"), "{text}");
        let widths: Vec<usize> = text.lines().map(|l| l.chars().count()).collect();
        assert!(widths.windows(2).all(|w| w[0] == w[1]), "{text}");
    }
}
