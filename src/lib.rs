//! deprovisiond: deprovisions Azure IoT devices enrolled through the Device Provisioning Service.
//!
//! Layers: [`domain`] (pure types and state machines), [`store`] (database), [`worker`] (the job
//! engine), [`azure`] (clients and SAS), [`sim`] (simulator of both Azure APIs), [`http`] (the API),
//! [`app`] (wiring), [`cli`] (the command line).
pub mod app;
pub mod azure;
pub mod cli;
pub mod demo;
pub mod domain;
pub mod http;
pub mod sim;
pub mod store;
pub mod telemetry;
pub mod worker;
pub mod workflow;
