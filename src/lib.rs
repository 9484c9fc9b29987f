//! deprovisiond: deprovisions Azure IoT devices enrolled through the Device Provisioning Service.
//!
//! Layers: [`domain`] (pure types and state machines), [`store`] (database), [`worker`] (the job
//! engine), [`workflow`] (the steps against Azure), [`azure`] (clients and SAS), [`http`] (the API),
//! [`app`] (wiring), [`cli`] (the command line). The simulator of both Azure APIs is the `azure-iot-sim`
//! crate, used by [`demo`] (feature `demo`, on by default) and the tests.
pub mod app;
pub mod azure;
#[cfg(feature = "demo")]
pub mod bench;
pub mod callbacks;
pub mod cli;
pub mod client;
#[cfg(feature = "demo")]
pub mod demo;
pub mod domain;
pub mod http;
pub mod store;
pub mod telemetry;
pub mod worker;
pub mod workflow;
