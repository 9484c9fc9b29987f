//! Azure DPS and IoT Hub clients.
pub mod sas;
pub mod secret;
