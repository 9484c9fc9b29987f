//! One way in, one way out: the binary and the tests build and run the service through [`App`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::domain::clock::SharedClock;
use crate::http::{AppInner, AppState};
use crate::store::Store;
use crate::worker::{Engine, EngineConfig, Waker, Workflow};

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
    /// Names of the configured DPS instances.
    pub dps_names: Vec<String>,
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
}

impl App {
    /// Opens and migrates the database, binds the listener and prepares the engine.
    pub async fn build(
        config: AppConfig,
        workflow: Arc<dyn Workflow>,
        clock: SharedClock,
    ) -> Result<Self, AppError> {
        let store = Store::connect(&config.database_url).await?;
        store.migrate().await?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| AppError::Bind {
                addr: config.listen,
                source,
            })?;
        let waker = Waker::default();
        let engine = config.run_worker.then(|| {
            Engine::new(
                store.clone(),
                workflow.clone(),
                clock.clone(),
                config.engine.clone(),
                waker.clone(),
            )
        });
        let state = AppState::new(AppInner {
            store: store.clone(),
            workflow,
            clock,
            waker,
            dps_names: config.dps_names,
        });
        Ok(Self {
            listener,
            state,
            engine,
            store,
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
        let engine_task = self.engine.map(|e| tokio::spawn(e.run(stop.clone())));
        let router = crate::http::app(self.state);
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
