//! API keys on the request path: the key a request presents, and the
//! per-request check.
//!
//! Only a secret's SHA-256 is stored (see `store::secret`); a request's key
//! is hashed and looked up by that hash, so there is no byte-by-byte
//! comparison of secrets to time. A revocation or change made anywhere —
//! another worker, the CLI in another process, another instance through
//! Redis — is a commit to the store, and applies to the very next request:
//! a record this core decoded is used as is while the store's last commit
//! (one load from LMDB's shared meta page) is the snapshot its bytes were
//! read from (the read transaction's own id); after any commit, the next
//! request reads the record again (a read transaction) and decodes it only
//! if its bytes changed.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use crate::error::ApiError;
use crate::store::keys::KeyRecord;
use crate::store::secret::{KeyHash, hash_secret};
use crate::store::{Store, StoreError};

/// The key a request carries: `Authorization: Bearer <key>` or `x-api-key: <key>`.
/// Strict, as RFC 6750 has it: the scheme, one or more spaces, then a token
/// of base64url-like characters (no tab, no other whitespace, nothing after).
pub fn presented_key(authorization: Option<&str>) -> Option<&str> {
    let v = authorization?.trim_matches(' ');
    let key = match v.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim_start_matches(' '),
        Some(_) => return None,
        None => v,
    };
    let token = |b: u8| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b);
    (!key.is_empty() && key.bytes().all(token) && !key.eq_ignore_ascii_case("bearer")).then_some(key)
}

pub fn missing_key() -> ApiError {
    ApiError::new(
        401,
        "invalid_request_error",
        "missing_api_key",
        "You didn't provide an API key. Send it in the Authorization header as 'Bearer <key>' (or in x-api-key).",
    )
}

/// One message for unknown, revoked and expired keys: a caller learns nothing.
pub fn invalid_key() -> ApiError {
    ApiError::new(
        401,
        "invalid_request_error",
        "invalid_api_key",
        "Incorrect API key provided. Check the key, or ask the gateway's administrator for a new one.",
    )
}

pub fn model_not_allowed(key: &KeyRecord, model: &str) -> ApiError {
    let message =
        format!("The key '{}' may not use the model '{model}'. Allowed models: {}.", key.name, key.models.join(", "));
    let mut e = ApiError::new(403, "invalid_request_error", "model_not_allowed", message);
    e.param = Some("model".into());
    e
}

pub fn admin_required() -> ApiError {
    ApiError::new(403, "invalid_request_error", "admin_required", "This endpoint needs a key with the admin role.")
}

/// A decoded record, the stored bytes it was decoded from, and the commit
/// (the read transaction's snapshot) those bytes were last read at.
struct CachedRecord {
    bytes: Vec<u8>,
    record: Rc<KeyRecord>,
    checked_at: usize,
}

/// This core's decoded records, by hash.
#[derive(Default)]
pub struct KeyCache {
    entries: RefCell<HashMap<KeyHash, CachedRecord>>,
}

/// Most records a core keeps decoded.
const CACHE_LIMIT: usize = 10_000;

impl KeyCache {
    /// Authenticates a presented secret: the live record, if the key exists,
    /// is not revoked and has not expired; otherwise the 401 to send.
    pub fn authenticate(&self, store: &Store, secret: &str, now: i64) -> Result<Rc<KeyRecord>, ApiError> {
        let hash = hash_secret(secret);
        let record = self.lookup(store, &hash).map_err(|e| {
            crate::log::error(format_args!("key lookup failed: {e}"));
            ApiError::new(500, "api_error", "internal_error", "The gateway could not read its key store.")
        })?;
        match record {
            Some(r) if r.is_active(now) => Ok(r),
            _ => Err(invalid_key()),
        }
    }

    /// The current record for `hash`: the one decoded before if no write has
    /// been committed since it was read, else read from LMDB now.
    ///
    /// A record is current while the store's last commit is the snapshot its
    /// bytes were read from. The snapshot is the read transaction's own id,
    /// not the last commit seen before it began: LMDB shows a commit's meta
    /// page (what `last_commit` reads) while it syncs it, before readers can
    /// see the commit, so a read in that window would take the old bytes for
    /// the new commit's and keep them until the next write.
    pub fn lookup(&self, store: &Store, hash: &KeyHash) -> Result<Option<Rc<KeyRecord>>, StoreError> {
        if let Some(entry) = self.entries.borrow().get(hash)
            && entry.checked_at == store.last_commit()
        {
            return Ok(Some(entry.record.clone()));
        }
        let rtxn = store.read()?;
        let snapshot = rtxn.id();
        let Some(raw) = store.keys.get(&rtxn, hash)? else {
            self.entries.borrow_mut().remove(hash);
            return Ok(None);
        };
        let mut entries = self.entries.borrow_mut();
        if let Some(entry) = entries.get_mut(hash)
            && entry.bytes.as_slice() == raw
        {
            entry.checked_at = snapshot;
            return Ok(Some(entry.record.clone()));
        }
        let record = Rc::new(KeyRecord::decode(raw)?);
        if entries.len() >= CACHE_LIMIT {
            entries.clear();
        }
        entries.insert(*hash, CachedRecord { bytes: raw.to_vec(), record: record.clone(), checked_at: snapshot });
        Ok(Some(record))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A user key with no limits, expiring at `expires`.
    fn user_key(name: &str, expires: Option<i64>) -> crate::store::keys::NewKey {
        crate::store::keys::NewKey {
            expires,
            name: name.into(),
            role: crate::store::keys::Role::User,
            models: vec![],
            limits: Default::default(),
            priority: Default::default(),
            grants: Default::default(),
            secret: None,
        }
    }

    #[test]
    fn presented_key_reads_bearer_and_bare_values() {
        assert_eq!(presented_key(Some("Bearer sk_x")), Some("sk_x"));
        assert_eq!(presented_key(Some("bearer   sk_x ")), Some("sk_x"));
        assert_eq!(presented_key(Some("sk_x")), Some("sk_x"));
        assert_eq!(presented_key(Some("Basic abc")), None);
        assert_eq!(presented_key(Some("Bearer ")), None);
        assert_eq!(presented_key(None), None);
        for bad in ["Bearer\tsk_x", "Bearer \tsk_x", "Bearer sk_x extra", "Bearer sk_\u{1b}x", "Bearer"] {
            assert_eq!(presented_key(Some(bad)), None, "{bad:?}");
        }
    }

    #[test]
    fn expired_keys_are_refused_with_the_same_error_as_unknown_ones() {
        let store = Store::open(&crate::store::temp_dir("expiry")).unwrap();
        let cache = KeyCache::default();
        let (_, secret) = store.create_key(user_key("temp", Some(crate::clock::unix_now() + 100))).unwrap();
        assert!(cache.authenticate(store, &secret, crate::clock::unix_now()).is_ok());
        let expired = cache.authenticate(store, &secret, crate::clock::unix_now() + 101).unwrap_err();
        let unknown = cache.authenticate(store, "sk_nope", crate::clock::unix_now()).unwrap_err();
        assert_eq!(expired, unknown);
    }

    #[test]
    fn a_commit_anywhere_applies_to_the_next_lookup() {
        // Every writer — a worker, the CLI in another process — commits to
        // the same meta page that `last_commit` reads.
        let dir = crate::store::temp_dir("commits");
        let store = Store::open(&dir).unwrap();
        let cache = KeyCache::default();
        let (created, secret) = store.create_key(user_key("k", None)).unwrap();
        let now = crate::clock::unix_now();
        let first = cache.authenticate(store, &secret, now).unwrap();
        let again = cache.authenticate(store, &secret, now).unwrap();
        assert!(Rc::ptr_eq(&first, &again), "no commit since: the decoded record is reused");

        // A commit that leaves this key alone re-reads it but keeps the decoding.
        let before = store.last_commit();
        store.set_schema_version(store.schema_version().unwrap()).unwrap();
        assert_ne!(store.last_commit(), before);
        let after_other = cache.authenticate(store, &secret, now).unwrap();
        assert!(Rc::ptr_eq(&first, &after_other), "same bytes: not decoded again");

        store.revoke_key(&created.id).unwrap();
        assert_eq!(cache.authenticate(store, &secret, now).unwrap_err(), invalid_key());
    }

    /// A reader that checks a key while its revocation is being committed
    /// (LMDB writes the new meta page, syncs it, and only then lets new
    /// readers see the commit) must not keep the old record as current: the
    /// first lookup that begins after `revoke_key` returns refuses the key.
    #[test]
    fn a_revocation_racing_a_lookup_holds_from_the_moment_it_returns() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let dir = crate::store::temp_dir("revoke-race");
        let store = Store::open(&dir).unwrap();
        for round in 0..20 {
            let (created, secret) = store.create_key(user_key(&format!("racer{round}"), None)).unwrap();
            let revoked = Arc::new(AtomicBool::new(false));
            let stop = Arc::new(AtomicBool::new(false));
            let served_after = Arc::new(AtomicUsize::new(0));
            let reader = {
                let (revoked, stop, served_after) = (revoked.clone(), stop.clone(), served_after.clone());
                std::thread::spawn(move || {
                    let cache = KeyCache::default();
                    let now = crate::clock::unix_now();
                    while !stop.load(Ordering::Acquire) {
                        let after = revoked.load(Ordering::Acquire);
                        if cache.authenticate(store, &secret, now).is_ok() && after {
                            served_after.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            };
            std::thread::sleep(std::time::Duration::from_millis(5));
            store.revoke_key(&created.id).unwrap();
            revoked.store(true, Ordering::Release);
            std::thread::sleep(std::time::Duration::from_millis(20));
            stop.store(true, Ordering::Release);
            reader.join().unwrap();
            assert_eq!(served_after.load(Ordering::Relaxed), 0, "round {round}: served after the revocation returned");
        }
    }
}
