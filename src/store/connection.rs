//! Connecting to PostgreSQL or SQLite, migrating, and what the connection itself can tell.

use std::str::FromStr;
use std::time::Duration;

use sqlx::AnyPool;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};

use super::{Backend, Result, Store, StoreError, StoreOptions};
use crate::domain::clock::Millis;

static PG_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");
static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

impl Store {
    /// Connects to `url` (`postgres://…` or `sqlite://…`) with default [`StoreOptions`]; does not migrate.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, &StoreOptions::default()).await
    }

    /// Connects to `url` with `opts`; does not migrate.
    pub async fn connect_with(url: &str, opts: &StoreOptions) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            return Err(StoreError::BadUrl(
                "expected postgres://… or sqlite://… (e.g. sqlite://deprovisiond.db)".into(),
            ));
        };
        let options = AnyConnectOptions::from_str(url)?;
        let pool = match backend {
            Backend::Postgres => {
                // One direct connection first: a pool only reports "timed out" when the server is
                // unreachable, while the connection itself says why (refused, bad password, no database).
                let probe = tokio::time::timeout(
                    Duration::from_secs(10),
                    <sqlx::AnyConnection as sqlx::Connection>::connect_with(&options),
                )
                .await
                .map_err(|_| StoreError::Unreachable("no answer within 10 s".into()))?
                .map_err(|e| StoreError::Unreachable(e.to_string()))?;
                sqlx::Connection::close(probe).await?;
                let timeout_ms = opts.statement_timeout.as_millis().max(1) as u64;
                AnyPoolOptions::new()
                    .max_connections(opts.max_connections.max(1))
                    .acquire_timeout(Duration::from_secs(10))
                    .after_connect(move |conn, _| {
                        Box::pin(async move {
                            sqlx::query(sql!("SET statement_timeout = {timeout_ms}"))
                                .execute(&mut *conn)
                                .await?;
                            Ok(())
                        })
                    })
                    .connect_with(options)
                    .await?
            }
            Backend::Sqlite => {
                // One connection: SQLite allows one writer, and a single connection never meets
                // SQLITE_BUSY between our own transactions.
                AnyPoolOptions::new()
                    .max_connections(1)
                    .min_connections(1)
                    .idle_timeout(None)
                    .max_lifetime(None)
                    .acquire_timeout(Duration::from_secs(30))
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            for pragma in [
                                "PRAGMA journal_mode = WAL",
                                // FULL: a commit (an answered 202) survives a power cut, not
                                // only a crash of the process; it costs an fsync per commit.
                                "PRAGMA synchronous = FULL",
                                "PRAGMA busy_timeout = 5000",
                                "PRAGMA foreign_keys = ON",
                            ] {
                                sqlx::query(pragma).execute(&mut *conn).await?;
                            }
                            Ok(())
                        })
                    })
                    .connect_with(options)
                    .await?
            }
        };
        Ok(Self { pool, backend })
    }

    /// Applies pending migrations.
    pub async fn migrate(&self) -> Result<()> {
        match self.backend {
            Backend::Postgres => PG_MIGRATIONS.run(&self.pool).await?,
            Backend::Sqlite => SQLITE_MIGRATIONS.run(&self.pool).await?,
        }
        Ok(())
    }

    /// Whether the database answers and every migration of this build is applied.
    pub async fn ready(&self) -> Result<bool> {
        let migrator = match self.backend {
            Backend::Postgres => &PG_MIGRATIONS,
            Backend::Sqlite => &SQLITE_MIGRATIONS,
        };
        let latest = migrator.iter().map(|m| m.version).max().unwrap_or(0);
        let applied: Option<i64> =
            sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success = $1")
                .bind(true)
                .fetch_one(&self.pool)
                .await
                .or_else(|e| match e {
                    // No migrations table yet: not ready.
                    sqlx::Error::Database(_) => Ok(None),
                    other => Err(other),
                })?;
        Ok(applied.unwrap_or(0) >= latest)
    }

    /// The engine behind the store.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The underlying pool (for LISTEN/NOTIFY and tests).
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Closes every connection.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// The database server's time, in milliseconds since the Unix epoch.
    pub async fn db_now_ms(&self) -> Result<Millis> {
        let sql = match self.backend {
            Backend::Postgres => {
                "SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)"
            }
            Backend::Sqlite => {
                "SELECT CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)"
            }
        };
        Ok(sqlx::query_scalar(sql).fetch_one(&self.pool).await?)
    }

    /// The strings of the JSON array bound as parameter `$n`, as a subquery for `IN`: one parameter
    /// carries a batch of thousands (no engine's parameter limit applies, and binding one text is cheap).
    pub(super) fn text_list(&self, n: usize) -> String {
        match self.backend {
            Backend::Postgres => format!("(SELECT jsonb_array_elements_text(${n}::jsonb))"),
            Backend::Sqlite => format!("(SELECT value FROM json_each(${n}))"),
        }
    }

    /// An aggregate joining `expr` of every row into one text, one per line: a batch lookup answers one
    /// row instead of thousands (each row costs more than its bytes on the way out of the driver).
    pub(super) fn lines_of(&self, expr: &str) -> String {
        match self.backend {
            Backend::Postgres => format!("string_agg({expr}, E'\\n')"),
            Backend::Sqlite => format!("group_concat({expr}, char(10))"),
        }
    }

    /// How many batch updates of one pass are worth having under way at once: two on PostgreSQL (100,000
    /// finishes in batches of 2,000 took 3.4 s one at a time, 1.5 s two at a time and 1.9 s three at a
    /// time on this project's 2-core machine), one on SQLite, which has a single writer.
    pub fn batch_writers(&self) -> usize {
        match self.backend {
            Backend::Postgres => 2,
            Backend::Sqlite => 1,
        }
    }

    pub(super) fn lock_clause(&self) -> &'static str {
        match self.backend {
            // Replicas skip rows another replica is claiming instead of waiting for it.
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            // SQLite serialises writers; the single UPDATE is atomic.
            Backend::Sqlite => "",
        }
    }
}
