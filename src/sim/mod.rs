//! Simulator of the DPS and IoT Hub APIs.
pub mod tls;
pub mod x509;
