//! The admin API: `/admin/v1/keys…`, for keys with the admin role.
//!
//! Bodies mirror the CLI's `--json` (`KeyRecord::view`); `create` and
//! `rotate` add the new `secret`, shown this once. Store work (writes that
//! fsync, listings that read every key and the usage table) runs on the
//! runtime's blocking pool, never on the worker thread itself. Store errors
//! become client errors in one place, `api::store::store_error`. With
//! `--redis`, changes are made in the cluster's Redis first (see
//! `cluster::keys`): a 503 says when Redis is needed and cannot be reached.

use std::borrow::Cow;
use std::sync::Arc;

use super::reply::Reply;
use super::store::{off_worker, store_error};
use super::worker::Worker;
use crate::cluster::keys::KeyAdmin;
use crate::cluster::link::Link;
use crate::error::ApiError;
use crate::http::request::{Method, Request};
use crate::store::keys::{KeyRecord, KeyUpdate};
use crate::store::{Store, StoreError};

fn settings(body: &[u8]) -> Result<KeyUpdate, ApiError> {
    let v: serde_json::Value = crate::json::parse_json(if body.is_empty() { b"{}" } else { body })?;
    KeyUpdate::from_json(&v, crate::clock::unix_now()).map_err(|(field, msg)| {
        if field.is_empty() { ApiError::bad_request(msg) } else { ApiError::invalid(field, Cow::Owned(msg)) }
    })
}

/// Key changes through the cluster when there is one (see `cluster::keys`).
fn admin<'l>(store: &'static Store, link: &'l Option<Arc<Link>>) -> KeyAdmin<'l> {
    KeyAdmin { store: Some(store), link: link.as_deref() }
}

fn with_secret(record: &KeyRecord, secret: &str) -> Vec<u8> {
    record.view_with_secret(secret).to_string().into_bytes()
}

fn reply<'w>(result: Result<(u16, Vec<u8>), ApiError>) -> Reply<'w> {
    match result {
        Ok((status, body)) => Reply::json(status, body),
        Err(e) => Reply::error(e),
    }
}

/// `GET /admin/v1/keys`, `POST /admin/v1/keys`.
pub async fn keys<'w>(worker: &Worker, req: &Request) -> Reply<'w> {
    let store = worker.store;
    let result = if req.method() == Method::Post {
        match settings(&req.body).and_then(|u| u.into_new_key().map_err(|(f, m)| ApiError::invalid(f, m))) {
            Ok(new) => {
                let link = worker.cluster.clone();
                off_worker(store, move |s| admin(s, &link).create(new))
                    .await
                    .map(|(r, secret)| (201, with_secret(&r, &secret)))
            }
            Err(e) => Err(e),
        }
    } else {
        off_worker(store, list_keys).await.map(|body| (200, body))
    };
    reply(result)
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

/// `GET|PATCH|DELETE /admin/v1/keys/{id}`.
pub async fn key<'w>(worker: &Worker, req: &Request, id: &str) -> Reply<'w> {
    let store = worker.store;
    let id = id.to_owned();
    let link = worker.cluster.clone();
    let result = match req.method() {
        Method::Patch => match settings(&req.body) {
            Ok(update) => off_worker(store, move |s| admin(s, &link).update(&id, &update)).await,
            Err(e) => Err(e),
        },
        Method::Delete => off_worker(store, move |s| admin(s, &link).revoke(&id)).await,
        _ => store.find_key(&id).map(|(_, r)| r).map_err(store_error),
    };
    reply(result.map(|r| (200, r.view().to_string().into_bytes())))
}

/// `POST /admin/v1/keys/{id}/rotate`.
pub async fn rotate<'w>(worker: &Worker, id: &str) -> Reply<'w> {
    let id = id.to_owned();
    let link = worker.cluster.clone();
    let result = off_worker(worker.store, move |s| admin(s, &link).rotate(&id)).await;
    reply(result.map(|(r, secret)| (200, with_secret(&r, &secret))))
}
