//! The admin API: `/admin/v1/keys…`, for keys with the admin role.
//!
//! Bodies mirror the CLI's `--json` (`KeyRecord::view`); `create` and
//! `rotate` add the new `secret`, shown this once. Writes commit to LMDB
//! with an fsync, so they run on the runtime's blocking pool, never on the
//! worker thread itself.

use std::borrow::Cow;

use crate::error::ApiError;
use crate::server::Worker;
use crate::server::conn::{After, Conn};
use crate::store::keys::{KeyRecord, KeyUpdate};
use crate::store::{Store, StoreError};

fn store_error(e: StoreError) -> ApiError {
    if e.0.starts_with("no key") {
        ApiError::new(404, "invalid_request_error", "key_not_found", format!("{}.", e.0))
    } else if e.0.contains("already exists") || e.0.starts_with("invalid key name") || e.0.contains("is revoked") {
        ApiError::invalid("name", format!("{}.", e.0))
    } else {
        crate::log::error(format_args!("admin API: {e}"));
        ApiError::new(500, "api_error", "internal_error", "The gateway could not update its key store.")
    }
}

/// Runs a store write on the blocking pool.
async fn write<R: Send + 'static>(
    store: &'static Store,
    f: impl FnOnce(&'static Store) -> Result<R, StoreError> + Send + 'static,
) -> Result<R, ApiError> {
    match monoio::spawn_blocking(move || f(store)).await {
        Ok(r) => r.map_err(store_error),
        Err(_) => Err(store_error(StoreError("the store writer stopped".into()))),
    }
}

fn settings(body: &[u8]) -> Result<KeyUpdate, ApiError> {
    let v: serde_json::Value = crate::json::parse_json(if body.is_empty() { b"{}" } else { body })?;
    KeyUpdate::from_json(&v, crate::clock::unix_now()).map_err(|(field, msg)| {
        if field.is_empty() { ApiError::bad_request(msg) } else { ApiError::invalid(field, Cow::Owned(msg)) }
    })
}

fn with_secret(record: &KeyRecord, secret: &str) -> Vec<u8> {
    record.view_with_secret(secret).to_string().into_bytes()
}

fn reply(conn: &mut Conn, result: Result<(u16, Vec<u8>), ApiError>) -> After {
    match result {
        Ok((status, body)) => conn.json(status, &body),
        Err(e) => conn.error(&e),
    }
    After::KeepAlive
}

/// `GET /admin/v1/keys`, `POST /admin/v1/keys`.
pub async fn keys(worker: &Worker, conn: &mut Conn) -> After {
    let store = worker.store;
    let result = if conn.req.method() == crate::http::request::Method::Post {
        match settings(&conn.req.body).and_then(|u| u.into_new_key().map_err(|(f, m)| ApiError::invalid(f, m))) {
            Ok(new) => {
                write(store, move |s| s.create_key(new)).await.map(|(r, secret)| (201, with_secret(&r, &secret)))
            }
            Err(e) => Err(e),
        }
    } else {
        // Reads every key and the usage table: on the blocking pool, not on this worker.
        off_worker(store, list_keys).await.map(|body| (200, body))
    };
    reply(conn, result)
}

/// The key list with each key's last day of use (from the committed rollups).
fn list_keys(store: &'static Store) -> Result<Vec<u8>, StoreError> {
    let list = store.list_keys()?;
    let mut last_used: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    for row in store.usage_rows(None, None, None)? {
        let day = last_used.entry(row.key_id).or_default();
        if *day < row.day {
            *day = row.day;
        }
    }
    let data: Vec<serde_json::Value> = list
        .iter()
        .map(|k| {
            let mut v = k.view();
            v["last_used"] = last_used.get(&k.id).cloned().into();
            v
        })
        .collect();
    Ok(serde_json::json!({"object": "list", "data": data}).to_string().into_bytes())
}

/// Runs a long store read (a listing, a report) on the blocking pool, so the
/// worker goes on serving other requests meanwhile.
pub async fn off_worker<R: Send + 'static>(
    store: &'static Store,
    f: impl FnOnce(&'static Store) -> Result<R, StoreError> + Send + 'static,
) -> Result<R, ApiError> {
    let read_failed = |e: StoreError| {
        crate::log::error(format_args!("store read failed: {e}"));
        ApiError::new(500, "api_error", "internal_error", "The gateway could not read its store.")
    };
    match monoio::spawn_blocking(move || f(store)).await {
        Ok(r) => r.map_err(read_failed),
        Err(_) => Err(read_failed(StoreError("the blocking pool stopped".into()))),
    }
}

/// `GET|PATCH|DELETE /admin/v1/keys/{id}`.
pub async fn key(worker: &Worker, conn: &mut Conn, id: &str) -> After {
    use crate::http::request::Method;
    let store = worker.store;
    let id = id.to_owned();
    let result = match conn.req.method() {
        Method::Patch => match settings(&conn.req.body) {
            Ok(update) => write(store, move |s| s.update_key(&id, &update)).await,
            Err(e) => Err(e),
        },
        Method::Delete => write(store, move |s| s.revoke_key(&id)).await,
        _ => store.find_key(&id).map(|(_, r)| r).map_err(store_error),
    };
    reply(conn, result.map(|r| (200, r.view().to_string().into_bytes())))
}

/// `POST /admin/v1/keys/{id}/rotate`.
pub async fn rotate(worker: &Worker, conn: &mut Conn, id: &str) -> After {
    let id = id.to_owned();
    let result = write(worker.store, move |s| s.rotate_key(&id)).await;
    reply(conn, result.map(|(r, secret)| (200, with_secret(&r, &secret))))
}
