//! Answering a repeated request from the database alone.

use super::{JobRecord, Result, Store};

impl Store {
    /// The job an earlier request with this Idempotency-Key created, if its body hashed the same; an
    /// [`super::StoreError::IdempotencyMismatch`] if the key was used with another body; `None` if the key is new.
    ///
    /// The API asks this before any admission check, so a replay never calls Azure.
    pub async fn find_idempotent_replay(&self, key: &str, hash: &str) -> Result<Option<JobRecord>> {
        self.replay(key, hash).await
    }
}
