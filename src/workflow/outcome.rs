//! How Azure's answers become step outcomes.

use crate::azure::AzureError;
use crate::domain::lane::{Outcome, StepError};

/// The audit-trail form of an Azure failure: message, Azure code, tracking id, HTTP status.
pub fn step_error(context: &str, e: &AzureError) -> StepError {
    StepError {
        message: format!("{context}: {}", e.message()),
        code: e.code(),
        tracking_id: e.tracking_id().map(str::to_string),
        http_status: e.status(),
    }
}

/// Transient failures (network, timeouts, 408, 429, 5xx, a 412 that only needs a re-read) are retried;
/// everything else stops the lane with the reason.
pub fn from_azure(context: &str, e: &AzureError) -> Outcome {
    let error = step_error(context, e);
    if e.is_retryable() || e.is_precondition_failed() {
        Outcome::Retry {
            error,
            retry_after: e.retry_after(),
        }
    } else {
        Outcome::Fail(error)
    }
}
