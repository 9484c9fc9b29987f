//! Integration tests: the real app on a random port, a real database (SQLite and PostgreSQL), over HTTP.

mod api;
mod client;
mod engine;
mod hostile;
mod metrics;
mod openapi;
mod pacing;
mod store;
mod support;
mod workflows;
