//! Simulator of the DPS and IoT Hub APIs.
pub mod x509;
