//! Integration tests: the real app on a random port, a real database (SQLite and PostgreSQL), over HTTP.

mod api;
mod approvals;
mod auth;
mod bench;
mod callbacks;
mod client;
mod engine;
mod hostile;
mod import_jobs;
mod metrics;
mod openapi;
mod pacing;
mod response_schema;
mod secrets;
mod store;
mod support;
mod ui;
mod webhooks;
mod workflows;
