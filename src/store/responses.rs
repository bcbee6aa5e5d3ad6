//! Stored responses of the Responses API, so that `previous_response_id`,
//! `GET` and `DELETE /v1/responses/{id}` work although Ollama keeps nothing.
//!
//! A response created with `store: true` is kept under its id with the key
//! that made it (no other key can read or delete it), its expiry, the
//! conversation so far as native `/api/chat` messages (what a follow-up
//! request is continued from) and the response object (what `GET` returns).
//! An index orders each key's responses by expiry, with their sizes, so that
//! expired records are found without reading the others and each key's
//! share is known. The whole is bounded: past the configured number of
//! bytes, the key holding the most loses its responses closest to expiry
//! first (so a key that floods the store evicts its own records, not other
//! keys'), and a record larger than a tenth of the bound (or 32 MiB) is not
//! kept at all.
//!
//! Record layout: `expires_at (u64 LE) · key id length (u32 LE) · key id ·
//! history length (u32 LE) · history · response`. Index key:
//! `key id · 0 · expires_at (u64 BE) · id`, value the record's size (u64 LE).

use heed::Database;
use heed::types::Bytes;

use super::{Store, StoreError};

/// The two tables.
#[derive(Clone, Copy)]
pub struct Tables {
    /// Response id → record.
    pub records: Database<'static, Bytes, Bytes>,
    /// `key id · 0 · expires_at (BE) · id` → the record's size: each key's
    /// responses in expiry order.
    pub index: Database<'static, Bytes, Bytes>,
}

/// The `meta` entry holding the stored records' total size.
const TOTAL_BYTES: &str = "responses_bytes";

/// Largest record kept, whatever the bound.
const MAX_RECORD: u64 = 32 * 1024 * 1024;

/// A stored response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    pub id: String,
    pub key_id: String,
    /// Unix seconds after which the record is gone.
    pub expires_at: u64,
    /// The conversation as native messages: JSON objects joined by commas,
    /// without the brackets (the instructions are not part of it).
    pub history: Vec<u8>,
    /// The response object, as `GET /v1/responses/{id}` returns it.
    pub response: Vec<u8>,
}

impl StoredResponse {
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(16 + self.key_id.len() + self.history.len() + self.response.len());
        v.extend_from_slice(&self.expires_at.to_le_bytes());
        v.extend_from_slice(&(self.key_id.len() as u32).to_le_bytes());
        v.extend_from_slice(self.key_id.as_bytes());
        v.extend_from_slice(&(self.history.len() as u32).to_le_bytes());
        v.extend_from_slice(&self.history);
        v.extend_from_slice(&self.response);
        v
    }

    fn decode(id: &str, b: &[u8]) -> Option<Self> {
        let expires_at = u64::from_le_bytes(b.get(..8)?.try_into().ok()?);
        let key_len = u32::from_le_bytes(b.get(8..12)?.try_into().ok()?) as usize;
        let key_id = std::str::from_utf8(b.get(12..12 + key_len)?).ok()?.to_owned();
        let at = 12 + key_len;
        let hist_len = u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?) as usize;
        let history = b.get(at + 4..at + 4 + hist_len)?.to_vec();
        let response = b.get(at + 4 + hist_len..)?.to_vec();
        Some(Self { id: id.to_owned(), key_id, expires_at, history, response })
    }

    /// The bytes this record takes in the bound.
    pub fn size(&self) -> u64 {
        (16 + self.id.len() + self.key_id.len() + self.history.len() + self.response.len()) as u64
    }
}

fn index_key(key_id: &str, expires_at: u64, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(key_id.len() + 9 + id.len());
    k.extend_from_slice(key_id.as_bytes());
    k.push(0);
    k.extend_from_slice(&expires_at.to_be_bytes());
    k.extend_from_slice(id.as_bytes());
    k
}

/// An index entry read back: (key id, expires_at, id, size).
fn index_entry(k: &[u8], v: &[u8]) -> Option<(String, u64, String, u64)> {
    let zero = k.iter().position(|&b| b == 0)?;
    let expires_at = u64::from_be_bytes(k.get(zero + 1..zero + 9)?.try_into().ok()?);
    let id = String::from_utf8_lossy(k.get(zero + 9..)?).into_owned();
    let size = u64::from_le_bytes(v.get(..8)?.try_into().ok()?);
    Some((String::from_utf8_lossy(&k[..zero]).into_owned(), expires_at, id, size))
}

/// Longest response id kept (ours are far shorter; LMDB keys stop at 511 bytes).
const MAX_ID: usize = 128;

impl Store {
    fn response_tables(&self) -> Result<Tables, StoreError> {
        self.responses
            .ok_or_else(|| StoreError::Io("this store has no responses table (open it with the server)".into()))
    }

    fn total_bytes(&self, txn: &heed::RoTxn<'_, heed::WithoutTls>) -> Result<u64, StoreError> {
        Ok(self.meta.get(txn, TOTAL_BYTES)?.and_then(|v| v.try_into().ok()).map(u64::from_le_bytes).unwrap_or(0))
    }

    /// The response `id` as key `key_id` may see it: `None` when there is no
    /// such record, it has expired, or another key made it.
    pub fn get_response(&self, id: &str, key_id: &str, now: u64) -> Result<Option<StoredResponse>, StoreError> {
        if id.len() > MAX_ID {
            return Ok(None);
        }
        let t = self.response_tables()?;
        let rtxn = self.read()?;
        let Some(raw) = t.records.get(&rtxn, id.as_bytes())? else { return Ok(None) };
        let record = StoredResponse::decode(id, raw)
            .ok_or_else(|| StoreError::Io(format!("stored response {id} is unreadable")))?;
        Ok((record.key_id == key_id && record.expires_at > now).then_some(record))
    }

    /// Keeps `r` (replacing a record with its id); while the total is over
    /// `max_bytes`, the key holding the most loses its responses closest to
    /// expiry. Returns false when the record alone is too large to keep.
    pub fn put_response(&self, r: &StoredResponse, max_bytes: u64) -> Result<bool, StoreError> {
        if r.id.len() > MAX_ID || r.key_id.len() > MAX_ID || r.size() > (max_bytes / 10).min(MAX_RECORD) {
            return Ok(false);
        }
        let t = self.response_tables()?;
        let mut wtxn = self.env.write_txn()?;
        let mut total = self.total_bytes(&wtxn)?;
        if let Some(old) = t.records.get(&wtxn, r.id.as_bytes())?.and_then(|b| StoredResponse::decode(&r.id, b)) {
            t.index.delete(&mut wtxn, &index_key(&old.key_id, old.expires_at, &old.id))?;
            total = total.saturating_sub(old.size());
        }
        t.records.put(&mut wtxn, r.id.as_bytes(), &r.encode())?;
        t.index.put(&mut wtxn, &index_key(&r.key_id, r.expires_at, &r.id), &r.size().to_le_bytes())?;
        total += r.size();
        while total > max_bytes {
            // The key holding the most, and its response closest to expiry.
            let mut shares: std::collections::HashMap<String, (u64, Vec<u8>)> = std::collections::HashMap::new();
            for item in t.index.iter(&wtxn)? {
                let (k, v) = item?;
                let Some((key, _, _, size)) = index_entry(k, v) else { continue };
                let share = shares.entry(key).or_insert_with(|| (0, k.to_vec()));
                share.0 += size;
            }
            let Some((_, (_, first))) = shares.into_iter().max_by_key(|(_, (bytes, _))| *bytes) else { break };
            let Some((_, _, id, size)) = t.index.get(&wtxn, &first)?.and_then(|v| index_entry(&first, v)) else {
                break;
            };
            t.records.delete(&mut wtxn, id.as_bytes())?;
            t.index.delete(&mut wtxn, &first)?;
            total = total.saturating_sub(size);
        }
        self.meta.put(&mut wtxn, TOTAL_BYTES, &total.to_le_bytes())?;
        wtxn.commit()?;
        Ok(true)
    }

    /// Deletes the response `id` if key `key_id` made it. Returns whether it did.
    pub fn delete_response(&self, id: &str, key_id: &str, now: u64) -> Result<bool, StoreError> {
        let Some(record) = self.get_response(id, key_id, now)? else { return Ok(false) };
        let t = self.response_tables()?;
        let mut wtxn = self.env.write_txn()?;
        t.records.delete(&mut wtxn, id.as_bytes())?;
        t.index.delete(&mut wtxn, &index_key(key_id, record.expires_at, id))?;
        let total = self.total_bytes(&wtxn)?.saturating_sub(record.size());
        self.meta.put(&mut wtxn, TOTAL_BYTES, &total.to_le_bytes())?;
        wtxn.commit()?;
        Ok(true)
    }

    /// Deletes the records expired at `now`, in batches. Returns how many.
    pub fn prune_responses(&self, now: u64) -> Result<u64, StoreError> {
        let Ok(t) = self.response_tables() else { return Ok(0) };
        let mut deleted = 0;
        loop {
            let mut wtxn = self.env.write_txn()?;
            let mut doomed = Vec::new();
            for item in t.index.iter(&wtxn)? {
                let (k, v) = item?;
                if let Some((_, expires_at, id, size)) = index_entry(k, v)
                    && expires_at <= now
                {
                    doomed.push((k.to_vec(), id, size));
                    if doomed.len() == 10_000 {
                        break;
                    }
                }
            }
            let mut total = self.total_bytes(&wtxn)?;
            for (k, id, size) in &doomed {
                t.records.delete(&mut wtxn, id.as_bytes())?;
                t.index.delete(&mut wtxn, k)?;
                total = total.saturating_sub(*size);
            }
            self.meta.put(&mut wtxn, TOTAL_BYTES, &total.to_le_bytes())?;
            wtxn.commit()?;
            deleted += doomed.len() as u64;
            if doomed.len() < 10_000 {
                return Ok(deleted);
            }
        }
    }

    /// The stored records' total size in bytes.
    pub fn responses_bytes(&self) -> Result<u64, StoreError> {
        let rtxn = self.read()?;
        self.total_bytes(&rtxn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, key: &str, expires_at: u64, size: usize) -> StoredResponse {
        StoredResponse {
            id: id.into(),
            key_id: key.into(),
            expires_at,
            history: br#"{"role":"user","content":"hi"}"#.to_vec(),
            response: vec![b'x'; size],
        }
    }

    #[test]
    fn a_record_is_seen_only_by_its_key_and_until_it_expires() {
        let store = Store::open(&crate::store::temp_dir("responses")).unwrap();
        let r = record("resp_a", "key_1", 1000, 10);
        assert!(store.put_response(&r, 1 << 20).unwrap());
        assert_eq!(store.get_response("resp_a", "key_1", 999).unwrap(), Some(r.clone()));
        assert_eq!(store.get_response("resp_a", "key_2", 999).unwrap(), None, "another key sees nothing");
        assert_eq!(store.get_response("resp_a", "key_1", 1000).unwrap(), None, "expired");
        assert!(!store.delete_response("resp_a", "key_2", 999).unwrap());
        assert!(store.delete_response("resp_a", "key_1", 999).unwrap());
        assert_eq!(store.get_response("resp_a", "key_1", 999).unwrap(), None);
        assert_eq!(store.responses_bytes().unwrap(), 0);
    }

    #[test]
    fn a_key_that_floods_the_store_evicts_its_own_records() {
        let store = Store::open(&crate::store::temp_dir("responses-fair")).unwrap();
        let max = 20_000;
        assert!(store.put_response(&record("resp_calm", "calm", 100, 1500), max).unwrap());
        for i in 0..50u64 {
            assert!(store.put_response(&record(&format!("resp_f{i:02}"), "flood", 200 + i, 1500), max).unwrap());
            assert!(store.responses_bytes().unwrap() <= max);
        }
        assert!(store.get_response("resp_calm", "calm", 0).unwrap().is_some(), "the calm key keeps its response");
        assert!(store.get_response("resp_f00", "flood", 0).unwrap().is_none());
        assert!(store.get_response("resp_f49", "flood", 0).unwrap().is_some());
    }

    #[test]
    fn the_bound_evicts_the_records_closest_to_expiry_and_prune_removes_the_expired() {
        let store = Store::open(&crate::store::temp_dir("responses-bound")).unwrap();
        let max = 20_000;
        for i in 0..20u64 {
            assert!(store.put_response(&record(&format!("resp_{i:02}"), "k", 100 + i, 1500), max).unwrap());
            assert!(store.responses_bytes().unwrap() <= max);
        }
        assert_eq!(store.get_response("resp_00", "k", 0).unwrap(), None, "the oldest went first");
        assert!(store.get_response("resp_19", "k", 0).unwrap().is_some());
        assert!(!store.put_response(&record("resp_big", "k", 500, 5000), max).unwrap(), "over a tenth of the bound");
        let before = store.responses_bytes().unwrap();
        let pruned = store.prune_responses(115).unwrap();
        assert!(pruned > 0);
        assert!(store.get_response("resp_15", "k", 0).unwrap().is_none());
        assert!(store.get_response("resp_16", "k", 0).unwrap().is_some());
        assert!(store.responses_bytes().unwrap() < before);
    }
}
