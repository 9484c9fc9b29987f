//! Simulator of the DPS and IoT Hub APIs.
