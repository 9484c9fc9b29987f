//! One way in, one way out: the binary and the tests build and run the service through [`App`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::azure::AzureClients;
use crate::domain::clock::SharedClock;
use crate::http::{AppInner, AppState};
use crate::store::{DbClock, Store, StoreOptions};
use crate::worker::{Engine, EngineConfig, Waker, Workflow};
use crate::workflow::AzureWorkflow;

/// Which workflow runs the jobs.
#[derive(Clone)]
pub enum WorkflowChoice {
    /// The real one, talking to DPS and the hubs through these clients.
    Azure(Arc<AzureClients>),
    /// Another implementation (the rehearsal workflow, or a test double), serving these DPS names.
    Custom(Arc<dyn Workflow>, Vec<String>),
}

/// What the service needs to start.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// `sqlite://…` or `postgres://…`.
    pub database_url: String,
    /// Address to listen on (port 0 picks a free one).
    pub listen: SocketAddr,
    /// Run the background engine in this process.
    pub run_worker: bool,
    /// Engine settings.
    pub engine: EngineConfig,
    /// How often to audit tombstones in the background (`None`: only on request).
    pub tombstone_audit_every: Option<std::time::Duration>,
    /// Largest accepted request body, in bytes.
    pub body_limit: usize,
    /// Who may call (API keys, OIDC, the `Host` allow-list); the default configures nothing, which
    /// serves every request as anonymous and is refused off loopback.
    pub auth: crate::http::auth::AuthConfig,
}

/// Errors starting the service.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The database could not be opened or migrated.
    #[error("database: {0}")]
    Store(#[from] crate::store::StoreError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The authentication settings are wrong, or would leave a network address open.
    #[error(transparent)]
    Auth(#[from] crate::http::auth::ConfigError),
    /// Serving failed.
    #[error("server: {0}")]
    Serve(std::io::Error),
}

/// A built, not yet running, service.
pub struct App {
    listener: TcpListener,
    state: AppState,
    engine: Option<Engine>,
    store: Store,
    azure: Option<Arc<AzureWorkflow>>,
    audit_every: Option<std::time::Duration>,
    clock: SharedClock,
    db_clock: Arc<DbClock>,
    body_limit: usize,
    timeouts: ServerTimeouts,
    webhooks: Arc<crate::http::webhooks::WebhookConfig>,
}

impl App {
    /// Opens and migrates the database, binds the listener and prepares the engine.
    pub async fn build(
        config: AppConfig,
        choice: WorkflowChoice,
        clock: SharedClock,
    ) -> Result<Self, AppError> {
        // Before anything is opened: an open service on a network address is refused outright.
        config.auth.check_bind(config.listen)?;
        // Counters recorded before the recorder exists are lost: install it before any work starts.
        crate::telemetry::prometheus();
        let opts = StoreOptions {
            max_connections: pool_size(config.engine.concurrency, config.run_worker),
            ..StoreOptions::default()
        };
        let store = Store::connect_with(&config.database_url, &opts).await?;
        store.migrate().await?;
        // Leases, due times and backoff are compared across replicas: they run on the database's
        // clock. Azure (SAS expiry) keeps the local one.
        let db_clock = DbClock::synced(store.clone(), clock.clone()).await?;
        let store_clock: SharedClock = db_clock.clone();
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| AppError::Bind {
                addr: config.listen,
                source,
            })?;
        let (workflow, azure, dps_names, default_dps): (
            Arc<dyn Workflow>,
            _,
            Vec<String>,
            Option<String>,
        ) = match choice {
            WorkflowChoice::Azure(clients) => {
                let names = clients
                    .dps_names()
                    .into_iter()
                    .map(str::to_string)
                    .collect();
                let default = clients.default_dps_name().map(str::to_string);
                let wf = Arc::new(AzureWorkflow::new(clients, store.clone(), clock.clone()));
                (wf.clone(), Some(wf), names, default)
            }
            WorkflowChoice::Custom(wf, names) => {
                let default = (names.len() == 1).then(|| names[0].clone());
                (wf, None, names, default)
            }
        };
        let authenticator =
            Arc::new(crate::http::auth::Authenticator::new(&config.auth, clock.clone()).await?);
        let hosts = Arc::new(crate::http::auth::HostPolicy::for_listen(
            &config.auth.allowed_hosts,
            config.listen,
        ));
        let waker = Waker::default();
        let engine = config.run_worker.then(|| {
            Engine::new(
                store.clone(),
                workflow.clone(),
                store_clock.clone(),
                config.engine.clone(),
                waker.clone(),
            )
        });
        let state = AppState::new(AppInner {
            store: store.clone(),
            workflow,
            azure: azure.clone(),
            clock: store_clock.clone(),
            waker,
            dps_names,
            default_dps,
            auth: authenticator,
            hosts,
            approvals: config.auth.approvals.clone(),
        });
        Ok(Self {
            listener,
            state,
            engine,
            store,
            azure,
            audit_every: config.tombstone_audit_every,
            clock,
            db_clock,
            body_limit: config.body_limit,
            timeouts: ServerTimeouts::from_env(),
            webhooks: Arc::default(),
        })
    }

    /// The address the API listens on.
    pub fn local_addr(&self) -> SocketAddr {
        // A bound TCP listener always has a local address.
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    /// The store the app uses (tests inspect it).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Replaces the server's read timeouts (by default [`ServerTimeouts::from_env`]).
    pub fn with_server_timeouts(mut self, timeouts: ServerTimeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// Configures the webhook sources and completion callbacks (by default none: the webhook routes answer 503).
    pub fn with_webhooks(mut self, config: crate::http::webhooks::WebhookConfig) -> Self {
        self.webhooks = Arc::new(config);
        self
    }

    /// Serves until `shutdown` resolves, then stops taking requests and work, and lets the engine
    /// finish or release what it runs.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), AppError> {
        let stop = CancellationToken::new();
        tokio::spawn(self.db_clock.clone().keep_synced(stop.clone()));
        let engine_task = self.engine.map(|e| tokio::spawn(e.run(stop.clone())));
        tokio::spawn(approval_sweep(
            self.store.clone(),
            self.state.clock.clone(),
            stop.clone(),
        ));
        if let (Some(wf), Some(every)) = (self.azure.clone(), self.audit_every) {
            tokio::spawn(audit_loop(wf, every, self.clock.clone(), stop.clone()));
        }
        if self.webhooks.has_callbacks() {
            start_callback_sender(&self.store, &self.webhooks, &self.state, &self.clock, &stop);
        }
        let router = crate::http::app(self.state, self.body_limit).layer(axum::Extension(
            crate::http::webhooks::Webhooks {
                config: self.webhooks.clone(),
                clock: self.clock.clone(),
            },
        ));
        let http_stop = stop.clone();
        let trigger = stop.clone();
        tokio::spawn(async move {
            shutdown.await;
            trigger.cancel();
        });
        let served = serve(self.listener, router, self.timeouts, http_stop).await;
        stop.cancel();
        if let Some(task) = engine_task {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "engine task ended abnormally");
            }
        }
        self.store.close().await;
        served.map_err(AppError::Serve)
    }
}

/// How long the server waits for a client that sends slowly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerTimeouts {
    /// From the connection's first byte (or the end of the previous request) to the end of the request
    /// headers; the connection is then closed (hyper answers nothing: it has no request to answer).
    pub header_read: Duration,
    /// From the end of the headers to the end of the body; then 408 problem+json.
    pub body_read: Duration,
}

impl ServerTimeouts {
    /// Default header-read timeout.
    pub const DEFAULT_HEADER_READ: Duration = Duration::from_secs(10);
    /// Default body-read timeout.
    pub const DEFAULT_BODY_READ: Duration = Duration::from_secs(30);

    /// The defaults, overridden by `DEPROVISIOND_HEADER_READ_TIMEOUT_SECS` and
    /// `DEPROVISIOND_BODY_READ_TIMEOUT_SECS` (whole seconds, at least 1) when set.
    pub fn from_env() -> Self {
        fn secs(var: &str, default: Duration) -> Duration {
            match std::env::var(var).ok().map(|v| v.trim().parse::<u64>()) {
                Some(Ok(n)) if n >= 1 => Duration::from_secs(n),
                Some(_) => {
                    tracing::warn!(var, "not a whole number of seconds >= 1; using the default");
                    default
                }
                None => default,
            }
        }
        Self {
            header_read: secs(
                "DEPROVISIOND_HEADER_READ_TIMEOUT_SECS",
                Self::DEFAULT_HEADER_READ,
            ),
            body_read: secs(
                "DEPROVISIOND_BODY_READ_TIMEOUT_SECS",
                Self::DEFAULT_BODY_READ,
            ),
        }
    }
}

/// Serves `router` on `listener` until `stop`, then lets open connections finish their requests.
///
/// Not `axum::serve`: it offers no header-read timeout, so a client that never finishes its headers held a
/// connection open for as long as it liked.
async fn serve(
    listener: TcpListener,
    router: axum::Router,
    timeouts: ServerTimeouts,
    stop: CancellationToken,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header_read);
    builder.http2().timer(TokioTimer::new());
    let router = router.layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
        timeouts.body_read,
    ));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: keep serving the connections that exist.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let stop = stop.clone();
        connections.spawn(async move {
            let mut conn = std::pin::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
        // Reap finished connections so the set does not grow with every one ever served.
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Starts the completion-callback sender (it stops with `stop`).
fn start_callback_sender(
    store: &Store,
    config: &Arc<crate::http::webhooks::WebhookConfig>,
    state: &AppState,
    clock: &SharedClock,
    stop: &CancellationToken,
) {
    match crate::callbacks::CallbackSender::new(
        store.clone(),
        config.clone(),
        state.clock.clone(),
        clock.clone(),
    ) {
        Ok(sender) => {
            tokio::spawn(sender.run(stop.clone()));
        }
        Err(e) => tracing::error!(error = %e, "completion callbacks are not sent"),
    }
}

/// Ends jobs whose approval expired, every 30 s until stopped (a decision on an expired job is refused
/// at once anyway; this makes the timeline say so and frees the target).
async fn approval_sweep(store: Store, clock: SharedClock, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(30)) => {}
            _ = stop.cancelled() => return,
        }
        match store.expire_approvals(clock.now_ms()).await {
            Ok(ids) if !ids.is_empty() => {
                tracing::info!(jobs = ids.len(), "jobs expired unapproved")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "approval expiry sweep failed"),
        }
    }
}

/// Audits tombstones every `every` until stopped.
async fn audit_loop(
    wf: Arc<AzureWorkflow>,
    every: std::time::Duration,
    clock: SharedClock,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
        match wf.audit_tombstones(clock.now_ms()).await {
            Ok(r) if r.drift.is_empty() => tracing::info!(
                checked = r.checked,
                errors = r.errors,
                "tombstone audit: every block holds"
            ),
            Ok(r) => tracing::warn!(
                checked = r.checked,
                drift = r.drift.len(),
                "tombstone audit found blocks that no longer hold"
            ),
            Err(e) => tracing::error!(error = %e, "tombstone audit failed"),
        }
    }
}

/// PostgreSQL connections a process needs: one per concurrent step (its renewal and its recording
/// take turns on it), two for the engine loop (claims, the settle sweep), and eight for the API
/// and the clock, so requests never wait behind a busy engine.
pub fn pool_size(concurrency: usize, run_worker: bool) -> u32 {
    let engine = if run_worker { concurrency + 2 } else { 0 };
    (engine + 8) as u32
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_pool_grows_with_the_engine() {
        assert_eq!(super::pool_size(16, true), 26);
        assert_eq!(super::pool_size(64, true), 74);
        assert_eq!(super::pool_size(64, false), 8);
    }
}
