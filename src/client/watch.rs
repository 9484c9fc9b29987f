//! `client watch`: a live progress bar (devices handled, rate, ETA) until the job ends.

use std::io::IsTerminal as _;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use super::api::{ApiClient, segment};
use super::render::{Output, progress_counts};

const TERMINAL: [&str; 3] = ["succeeded", "failed", "cancelled"];

/// Follows job `id` until it ends, then prints it; an error unless it succeeded, so scripts can branch.
pub async fn watch(api: &ApiClient, out: &Output, id: &str, every: Duration) -> anyhow::Result<()> {
    let path = format!("/v1/deprovisions/{}", segment(id));
    // A bar only on a terminal; elsewhere (CI logs, pipes) one line per change.
    let live = std::io::stderr().is_terminal() && !out.json;
    let bar = if live {
        let bar = ProgressBar::new(0);
        let style = ProgressStyle::with_template(
            "{spinner} {msg:9} [{bar:40}] {pos}/{len} devices  {per_sec}  ETA {eta}  {elapsed}",
        )
        .map_err(|e| anyhow::anyhow!("progress bar template: {e}"))?
        .progress_chars("=> ");
        bar.set_style(style);
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    } else {
        ProgressBar::hidden()
    };
    let mut last_line = String::new();
    loop {
        let job = api.get(&path).await?;
        let (done, total) = progress_counts(&job);
        let status = job["status"].as_str().unwrap_or("?").to_string();
        bar.set_length(total);
        bar.set_position(done);
        bar.set_message(status.clone());
        if !live && !out.json {
            let line = format!("{status} {done}/{total} devices");
            if line != last_line {
                eprintln!("{line}");
                last_line = line;
            }
        }
        if TERMINAL.contains(&status.as_str()) {
            bar.finish_and_clear();
            out.job(&job);
            if status == "succeeded" {
                return Ok(());
            }
            let why = job["last_error"]["message"]
                .as_str()
                .map(|m| format!(": {m}"))
                .unwrap_or_default();
            anyhow::bail!("job {id} {status}{why}");
        }
        tokio::time::sleep(every).await;
    }
}
