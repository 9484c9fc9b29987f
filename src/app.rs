//! One way in, one way out: the binary and the tests build and run the service through [`App`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

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
}

impl App {
    /// Opens and migrates the database, binds the listener and prepares the engine.
    pub async fn build(
        config: AppConfig,
        choice: WorkflowChoice,
        clock: SharedClock,
    ) -> Result<Self, AppError> {
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

    /// Serves until `shutdown` resolves, then stops taking requests and work, and lets the engine
    /// finish or release what it runs.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), AppError> {
        let stop = CancellationToken::new();
        tokio::spawn(self.db_clock.clone().keep_synced(stop.clone()));
        let engine_task = self.engine.map(|e| tokio::spawn(e.run(stop.clone())));
        if let (Some(wf), Some(every)) = (self.azure.clone(), self.audit_every) {
            tokio::spawn(audit_loop(wf, every, self.clock.clone(), stop.clone()));
        }
        let router = crate::http::app(self.state, self.body_limit);
        let http_stop = stop.clone();
        let trigger = stop.clone();
        tokio::spawn(async move {
            shutdown.await;
            trigger.cancel();
        });
        let served = axum::serve(self.listener, router)
            .with_graceful_shutdown(async move { http_stop.cancelled().await })
            .await;
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
