//! The service under test as a child process: `deprovisiond serve` of this same binary, pointed at the
//! in-process simulator through the documented environment variables, so its peak RSS is its own.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::BenchError;

/// Where the service finds the simulated Azure.
#[derive(Debug, Clone)]
pub struct AzureEnv {
    /// `(variable, value)` pairs: connection strings, base URLs, tier and units.
    pub vars: Vec<(String, String)>,
}

impl AzureEnv {
    /// Adds `extra` (`--service-env`), with each placeholder in a value replaced by its value.
    pub fn with_extra(
        mut self,
        placeholders: &[(&str, String)],
        extra: &[(String, String)],
    ) -> Self {
        for (k, v) in extra {
            let v = placeholders
                .iter()
                .fold(v.clone(), |v, (name, value)| v.replace(name, value));
            self.vars.push((k.clone(), v));
        }
        self
    }
}

/// A running `deprovisiond serve`.
pub struct ServiceProcess {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    pid: u32,
}

impl ServiceProcess {
    /// Starts `exe serve` on a free port against `database_url`, with `extra` arguments, logging to
    /// `log`; waits for the line that says where it listens.
    pub async fn start(
        exe: &Path,
        database_url: &str,
        azure: &AzureEnv,
        worker: bool,
        extra: &[String],
        log: &PathBuf,
    ) -> Result<Self, BenchError> {
        let log_file = std::fs::File::create(log)
            .map_err(|e| BenchError::Io(format!("cannot create {}: {e}", log.display())))?;
        let mut cmd = Command::new(exe);
        cmd.arg("serve")
            .args(["--listen", "127.0.0.1:0", "--database-url", database_url])
            .args(["--tombstone-audit-secs", "0"]);
        if !worker {
            cmd.arg("--no-worker");
        }
        cmd.args(extra)
            // Settings of the parent that would redirect the child elsewhere.
            .env_remove("DATABASE_URL_FILE")
            .env_remove("DEPROVISIOND_AZURE_CONFIG")
            .env_remove("DEPROVISIOND_NO_WORKER")
            .env(
                "RUST_LOG",
                std::env::var("BENCH_SERVICE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true);
        // Variables of the parent naming other DPS instances or hubs would be read by the child too.
        for (k, _) in std::env::vars() {
            if k.starts_with("DEPROVISIOND_DPS_") || k.starts_with("DEPROVISIOND_HUB_") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(azure.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let mut child = cmd.spawn().map_err(|e| {
            BenchError::Service(format!("cannot start {} serve: {e}", exe.display()))
        })?;
        let pid = child
            .id()
            .ok_or_else(|| BenchError::Service("the service exited at once".into()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| BenchError::Service("no stdout of the service".into()))?;
        let mut lines = BufReader::new(stdout).lines();
        let wait = async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let base = rest
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_string();
                    return Some(base);
                }
            }
            None
        };
        let base = match tokio::time::timeout(Duration::from_secs(60), wait).await {
            Ok(Some(base)) => base,
            _ => {
                let _ = child.kill().await;
                let tail = std::fs::read_to_string(log).unwrap_or_default();
                let tail: String = tail.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
                return Err(BenchError::Service(format!(
                    "the service did not say where it listens (log {}: {tail})",
                    log.display()
                )));
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self { child, base, pid })
    }

    /// Peak resident set so far (VmHWM), bytes.
    pub fn peak_rss(&self) -> Option<u64> {
        super::rss::peak_rss_bytes(self.pid)
    }

    /// Reads the peak RSS, then kills the process (the bench needs no graceful shutdown).
    pub async fn stop(mut self) -> Option<u64> {
        let peak = self.peak_rss();
        let _ = self.child.kill().await;
        peak
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_variables_have_their_placeholders_replaced() {
        let env = AzureEnv {
            vars: vec![("A".into(), "1".into())],
        }
        .with_extra(
            &[("{hub_ops_per_minute}", "6000".into())],
            &[
                (
                    "DEPROVISIOND_HUB_BENCH_X".into(),
                    "{hub_ops_per_minute}".into(),
                ),
                ("PLAIN".into(), "v".into()),
            ],
        );
        assert_eq!(
            env.vars,
            vec![
                ("A".to_string(), "1".to_string()),
                ("DEPROVISIOND_HUB_BENCH_X".to_string(), "6000".to_string()),
                ("PLAIN".to_string(), "v".to_string()),
            ]
        );
    }
}
