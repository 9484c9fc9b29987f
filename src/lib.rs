//! deprovisiond: deprovisions Azure IoT devices enrolled through DPS.
pub mod azure;
pub mod sim;
