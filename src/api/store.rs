//! The store from the request path: its work run off the worker, and its
//! errors turned into the client's, in one place for every endpoint that
//! reads or writes it (the admin API, usage reports, stored responses).

use crate::error::ApiError;
use crate::store::{Store, StoreError};

/// The client's error for a store error: a missing key is 404, a conflict or
/// an invalid name 400 on `name`; a failure of the store itself is logged
/// and is a 500 `internal_error` (never blamed on the upstream).
pub fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound(m) => ApiError::new(404, "invalid_request_error", "key_not_found", format!("{m}.")),
        StoreError::Conflict(m) | StoreError::Invalid(m) => ApiError::invalid("name", format!("{m}.")),
        StoreError::Unavailable(m) => {
            ApiError::new(503, "api_error", "cluster_unavailable", format!("{m}. Try again when it is back."))
        }
        StoreError::Io(m) => {
            crate::log::error(format_args!("store: {m}"));
            ApiError::new(500, "api_error", "internal_error", "The gateway could not use its store.")
        }
    }
}

/// Runs store work on the blocking pool, so the worker goes on serving
/// other requests meanwhile.
pub async fn off_worker<R: Send + 'static>(
    store: &'static Store,
    f: impl FnOnce(&'static Store) -> Result<R, StoreError> + Send + 'static,
) -> Result<R, ApiError> {
    match monoio::spawn_blocking(move || f(store)).await {
        Ok(r) => r.map_err(store_error),
        Err(_) => Err(store_error(StoreError::Io("the blocking pool stopped".into()))),
    }
}
