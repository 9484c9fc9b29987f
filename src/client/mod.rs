//! `deprovisiond client`: the command-line client of a running service (create, preview, get, list,
//! watch, cancel, retry), with tables for people and `--json` for scripts.
//!
//! It talks HTTP only, so it works against any deployed version; answers are read as JSON values rather
//! than the server's own types, and problem+json errors become one line naming the status and detail.

mod api;
mod csv_jobs;
mod render;
mod watch;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};

pub use api::{ApiClient, ClientError};

/// Where the service is and how to authenticate.
#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// Base URL of the service.
    #[arg(
        long,
        env = "DEPROVISIOND_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub url: String,
    /// Bearer token (an API key or an OIDC token) sent as `Authorization: Bearer …`.
    #[arg(
        long,
        env = "DEPROVISIOND_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub token: Option<String>,
    /// Print the service's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// Seconds to wait for each answer.
    #[arg(long, default_value_t = 30, global = true)]
    pub timeout_secs: u64,
}

/// `client` options.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Server and output.
    #[command(flatten)]
    pub connection: Connection,
    /// What to do.
    #[command(subcommand)]
    pub command: ClientCommand,
}

/// What the client does.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Queue a job (or one per row of `--from-csv`).
    Create(CreateArgs),
    /// Show what a request would do, changing nothing.
    Preview(RequestArgs),
    /// Show one job.
    Get {
        /// Job id.
        id: String,
    },
    /// List jobs, newest first.
    List(ListArgs),
    /// Follow a job with a progress bar until it ends; exits non-zero unless it succeeded.
    Watch(WatchArgs),
    /// Cancel a queued or running job.
    Cancel {
        /// Job id.
        id: String,
    },
    /// Retry a failed job from where it stopped.
    Retry {
        /// Job id.
        id: String,
    },
}

/// Target kinds as the command line names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KindArg {
    /// `--id` is a registration id of an individual enrollment.
    Individual,
    /// `--id` is an enrollment group id: every device of the group.
    Group,
    /// `--group` and `--id`: one device of a group.
    GroupDevice,
}

/// A request, built from flags or read whole from a file.
#[derive(Debug, Clone, Args)]
pub struct RequestArgs {
    /// The whole request body as JSON (a file, or `-` for standard input); the other flags are ignored.
    #[arg(long, conflicts_with_all = ["kind", "id"])]
    pub body: Option<PathBuf>,
    /// What the target is.
    #[arg(long, value_enum, required_unless_present_any = ["body", "from_csv"])]
    pub kind: Option<KindArg>,
    /// Registration id (individual, group-device) or group id (group).
    #[arg(long, required_unless_present_any = ["body", "from_csv"])]
    pub id: Option<String>,
    /// The group of a `group-device` target.
    #[arg(long, required_if_eq("kind", "group-device"))]
    pub group: Option<String>,
    /// The device's leaf certificate (PEM file) for an X.509 `group-device`.
    #[arg(long)]
    pub certificate: Option<PathBuf>,
    /// DPS instance (the service's default when absent).
    #[arg(long)]
    pub dps: Option<String>,
    /// `disable` (default) or `delete` the enrollment.
    #[arg(long)]
    pub revoke: Option<String>,
    /// `disable` (default) or `delete` the hub identity.
    #[arg(long)]
    pub registry: Option<String>,
    /// lost, stolen, sold, compromised, moved, decommissioned or other.
    #[arg(long, default_value = "other")]
    pub reason: String,
    /// Free text about the reason (required with `other`).
    #[arg(long)]
    pub text: Option<String>,
    /// Ticket key (e.g. OPS-1234); also the job's idempotency key unless `--idempotency-key` is given.
    #[arg(long)]
    pub ticket: Option<String>,
    /// Who asks (recorded on the job).
    #[arg(long)]
    pub requested_by: Option<String>,
    /// Groups: also delete the registration records.
    #[arg(long)]
    pub delete_registrations: bool,
    /// Groups: delete the group, last.
    #[arg(long)]
    pub delete_group: bool,
    /// Delete the group even when an enabled group higher in its chain would re-admit its devices.
    #[arg(long)]
    pub force: bool,
    /// Rows of a CSV file become one job each (`create` only): a `registration_id` or `group_id` column,
    /// optional `kind`, `group`, `reason`, `text`, `ticket`, `registry`, `revoke`.
    #[arg(long, conflicts_with_all = ["body", "kind", "id"])]
    pub from_csv: Option<PathBuf>,
}

/// `create` options.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The request.
    #[command(flatten)]
    pub request: RequestArgs,
    /// `Idempotency-Key` header: the same key and body give back the same job.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Follow the job (one job only) until it ends, as `watch` does.
    #[arg(long)]
    pub watch: bool,
}

/// `list` options.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only jobs in this status.
    #[arg(long)]
    pub status: Option<String>,
    /// Only jobs of this target kind (individual_enrollment, enrollment_group, group_device).
    #[arg(long)]
    pub target_kind: Option<String>,
    /// Only jobs of this ticket.
    #[arg(long)]
    pub ticket: Option<String>,
    /// At most this many jobs.
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
}

/// `watch` options.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Job id.
    pub id: String,
    /// Milliseconds between looks.
    #[arg(long, default_value_t = 1000)]
    pub every_ms: u64,
}

/// Runs a client command; the error is the one line the binary prints.
pub async fn run(args: ClientArgs) -> anyhow::Result<()> {
    let conn = args.connection;
    let api = ApiClient::new(&conn.url, conn.token.clone(), conn.timeout_secs)?;
    let out = render::Output { json: conn.json };
    match args.command {
        ClientCommand::Create(c) => create(&api, &out, c).await,
        ClientCommand::Preview(r) => {
            let body = request_body(&r)?;
            let preview = api.post("/v1/deprovisions/preview", &body, None).await?;
            out.preview(&preview);
            Ok(())
        }
        ClientCommand::Get { id } => {
            out.job(
                &api.get(&format!("/v1/deprovisions/{}", api::segment(&id)))
                    .await?,
            );
            Ok(())
        }
        ClientCommand::List(l) => {
            let mut query = vec![("limit".to_string(), l.limit.to_string())];
            for (k, v) in [
                ("status", l.status),
                ("target_kind", l.target_kind),
                ("ticket_key", l.ticket),
            ] {
                if let Some(v) = v {
                    query.push((k.to_string(), v));
                }
            }
            out.jobs(&api.get_query("/v1/deprovisions", &query).await?);
            Ok(())
        }
        ClientCommand::Watch(w) => {
            watch::watch(
                &api,
                &out,
                &w.id,
                Duration::from_millis(w.every_ms.max(100)),
            )
            .await
        }
        ClientCommand::Cancel { id } => {
            let path = format!("/v1/deprovisions/{}/cancel", api::segment(&id));
            out.job(&api.post(&path, &json!({}), None).await?);
            Ok(())
        }
        ClientCommand::Retry { id } => {
            let path = format!("/v1/deprovisions/{}/retry", api::segment(&id));
            out.job(&api.post(&path, &json!({}), None).await?);
            Ok(())
        }
    }
}

async fn create(api: &ApiClient, out: &render::Output, c: CreateArgs) -> anyhow::Result<()> {
    if let Some(csv) = &c.request.from_csv {
        if c.watch {
            anyhow::bail!(
                "--watch follows one job; with --from-csv use `client list` or `client watch ID`"
            );
        }
        let rows = csv_jobs::read(csv, &c.request)?;
        let outcomes = csv_jobs::submit(api, rows).await;
        out.csv_outcomes(&outcomes);
        let failed = outcomes.iter().filter(|o| o.result.is_err()).count();
        if failed > 0 {
            anyhow::bail!("{failed} of {} row(s) were not accepted", outcomes.len());
        }
        return Ok(());
    }
    let body = request_body(&c.request)?;
    let key = c
        .idempotency_key
        .clone()
        .or_else(|| c.request.ticket.clone());
    let job = api.post("/v1/deprovisions", &body, key.as_deref()).await?;
    if c.watch {
        let id = job["id"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("the service answered a job without an id"))?
            .to_string();
        return watch::watch(api, out, &id, Duration::from_secs(1)).await;
    }
    out.job(&job);
    Ok(())
}

/// The request body the flags (or `--body`) describe.
pub fn request_body(r: &RequestArgs) -> anyhow::Result<Value> {
    if let Some(path) = &r.body {
        let text = if path.as_os_str() == "-" {
            std::io::read_to_string(std::io::stdin())?
        } else {
            std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?
        };
        return serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{} is not JSON: {e}", path.display()));
    }
    let (Some(kind), Some(id)) = (r.kind, r.id.as_deref()) else {
        anyhow::bail!("give --kind and --id, or --body FILE");
    };
    let certificate = match &r.certificate {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))?,
        ),
        None => None,
    };
    let target = target(kind, id, r.group.as_deref(), certificate)?;
    Ok(body_for(target, r))
}

fn target(
    kind: KindArg,
    id: &str,
    group: Option<&str>,
    certificate_pem: Option<String>,
) -> anyhow::Result<Value> {
    Ok(match kind {
        KindArg::Individual => json!({"kind": "individual_enrollment", "registration_id": id}),
        KindArg::Group => json!({"kind": "enrollment_group", "group_id": id}),
        KindArg::GroupDevice => {
            let group =
                group.ok_or_else(|| anyhow::anyhow!("a group-device target needs --group"))?;
            let mut t = json!({"kind": "group_device", "group_id": group, "registration_id": id});
            if let Some(pem) = certificate_pem {
                t["certificate_pem"] = json!(pem);
            }
            t
        }
    })
}

fn body_for(target: Value, r: &RequestArgs) -> Value {
    let mut reason = json!({"code": r.reason});
    if let Some(t) = &r.text {
        reason["text"] = json!(t);
    }
    let mut body = json!({"target": target, "reason": reason});
    let optional = [
        ("dps", r.dps.clone()),
        ("revoke", r.revoke.clone()),
        ("registry", r.registry.clone()),
        ("requested_by", r.requested_by.clone()),
    ];
    for (k, v) in optional {
        if let Some(v) = v {
            body[k] = json!(v);
        }
    }
    if let Some(key) = &r.ticket {
        body["ticket"] = json!({"system": "cli", "key": key});
    }
    for (k, on) in [
        ("delete_registrations", r.delete_registrations),
        ("delete_group", r.delete_group),
        ("force", r.force),
    ] {
        if on {
            body[k] = json!(true);
        }
    }
    body
}
