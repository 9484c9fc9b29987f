//! Azure DPS and IoT Hub clients.
