//! Stored responses shared by a cluster: in Redis, so that any instance can
//! continue, read or delete a response whichever instance made it. Each
//! record is the bytes the local store would keep (`store::responses`),
//! under `P resp:<id>`, expiring with the response; Redis keeps each key's
//! records by expiry and each key's share, and bounds the whole like the
//! local store (`aigw_resp_put_v1`): past `--responses-max-bytes`, the key
//! holding the most loses its records closest to expiry, a batch per call.
//! While Redis is away an instance keeps what it makes in its own store,
//! where only it finds it.

use redis::{Connection, RedisResult};

use crate::store::responses::{EVICT_BATCH, StoredResponse};

/// Keeps `r`, then evicts past `max_bytes` in calls of one batch each.
pub fn put(con: &mut Connection, prefix: &str, r: &StoredResponse, max_bytes: u64) -> RedisResult<()> {
    let expires_ms = r.expires_at.saturating_mul(1000);
    let (mut evicted, mut total): (u64, u64) = redis::cmd("FCALL")
        .arg("aigw_resp_put_v1")
        .arg(0)
        .arg(prefix)
        .arg(&r.id)
        .arg(&r.key_id)
        .arg(expires_ms)
        .arg(r.encode())
        .arg(max_bytes)
        .arg(EVICT_BATCH)
        .query(con)?;
    while total > max_bytes && evicted > 0 {
        (evicted, total) = redis::cmd("FCALL")
            .arg("aigw_resp_evict_v1")
            .arg(0)
            .arg(prefix)
            .arg(max_bytes)
            .arg(EVICT_BATCH)
            .query(con)?;
    }
    Ok(())
}

/// The record `id`, as stored (the caller checks its key and expiry).
pub fn get(con: &mut Connection, prefix: &str, id: &str) -> RedisResult<Option<Vec<u8>>> {
    redis::cmd("GET").arg(format!("{prefix}resp:{id}")).query(con)
}

/// Deletes the record `id` if key `key_id` made it; whether it did.
pub fn delete(con: &mut Connection, prefix: &str, id: &str, key_id: &str) -> RedisResult<bool> {
    let n: i64 = redis::cmd("FCALL").arg("aigw_resp_delete_v1").arg(0).arg(prefix).arg(id).arg(key_id).query(con)?;
    Ok(n == 1)
}

/// Forgets the records expired at `now_ms` (Redis dropped their bytes
/// already; their place in the bound is given back here). How many.
pub fn prune(con: &mut Connection, prefix: &str, now_ms: u64) -> RedisResult<u64> {
    let mut total = 0;
    loop {
        let n: u64 =
            redis::cmd("FCALL").arg("aigw_resp_prune_v1").arg(0).arg(prefix).arg(now_ms).arg(EVICT_BATCH).query(con)?;
        total += n;
        if n < EVICT_BATCH as u64 {
            return Ok(total);
        }
    }
}
