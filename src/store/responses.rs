//! Stored responses of the Responses API, so that `previous_response_id`,
//! `GET` and `DELETE /v1/responses/{id}` work although Ollama keeps nothing.
//!
//! A response created with `store: true` is kept under its id with the key
//! that made it (no other key can read or delete it), its expiry, the
//! conversation so far as native `/api/chat` messages (what a follow-up
//! request is continued from) and the response object (what `GET` returns).
//! An index orders each key's responses by expiry, with their sizes, so that
//! expired records are found without reading the others; each key's share
//! of the whole is kept beside it, and ordered by size. The whole is
//! bounded: past the configured number of bytes, the key holding the most
//! loses its responses closest to expiry first (so a key that floods the
//! store evicts its own records, not other keys'), and a record larger than
//! a tenth of the bound (or 32 MiB) is not kept at all.
//!
//! Eviction and expiry never hold the store's only writer for long: the
//! largest share and its oldest record are the first entries of their
//! tables (no scan), and records go in small transactions of their own
//! ([`EVICT_BATCH`] records or [`EVICT_BATCH_BYTES`] at most), so a key
//! change waiting for the writer waits for one of those at most.
//!
//! Record layout: `expires_at (u64 LE) · key id length (u32 LE) · key id ·
//! history length (u32 LE) · history · response`; a record of a
//! conversation that has a session sets the high bit of the key id's length
//! and has `session length (u32 LE) · session` after the key id (the
//! session of the chain's first response: its agent's, or that response's
//! id). Index key:
//! `key id · 0 · expires_at (u64 BE) · id`, value the record's size (u64 LE).
//! Shares: `key id` → its records' bytes (u64 LE); share order:
//! `bytes (u64 BE) · key id` → nothing.

use heed::types::Bytes;
use heed::{Database, RoTxn, RwTxn, WithoutTls};

use super::{Store, StoreError};

/// The tables.
#[derive(Clone, Copy)]
pub struct Tables {
    /// Response id → record.
    pub records: Database<'static, Bytes, Bytes>,
    /// `key id · 0 · expires_at (BE) · id` → the record's size: each key's
    /// responses in expiry order.
    pub index: Database<'static, Bytes, Bytes>,
    /// Key id → the bytes its records take.
    pub shares: Database<'static, Bytes, Bytes>,
    /// `bytes (BE) · key id` → nothing: the keys by their share, largest last.
    pub share_order: Database<'static, Bytes, Bytes>,
}

/// The `meta` entry holding the stored records' total size.
const TOTAL_BYTES: &str = "responses_bytes";

/// Largest record kept, whatever the bound.
const MAX_RECORD: u64 = 32 * 1024 * 1024;

/// Most records one eviction or expiry transaction deletes.
pub const EVICT_BATCH: usize = 32;

/// Most bytes of records one eviction or expiry transaction deletes (one
/// record more if the first alone is larger).
pub const EVICT_BATCH_BYTES: u64 = 8 * 1024 * 1024;

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
    /// The conversation's session (`""`: none).
    pub session: String,
}

/// What a follow-up continues: a stored conversation and its session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    pub history: Vec<u8>,
    pub session: String,
}

/// A record's parts, read in place.
#[derive(Debug, Clone, Copy)]
pub struct RecordView<'a> {
    pub expires_at: u64,
    pub key_id: &'a str,
    pub session: &'a str,
    pub history: &'a [u8],
    pub response: &'a [u8],
}

impl RecordView<'_> {
    /// The conversation and its session, copied.
    pub fn conversation(&self) -> Conversation {
        Conversation { history: self.history.to_vec(), session: self.session.to_owned() }
    }
}

/// The high bit of the key id's length: a session follows the key id.
const HAS_SESSION: u32 = 1 << 31;

/// A record's parts, read in place (`None`: not a record).
pub fn view(b: &[u8]) -> Option<RecordView<'_>> {
    let expires_at = u64::from_le_bytes(b.get(..8)?.try_into().ok()?);
    let key_len = u32::from_le_bytes(b.get(8..12)?.try_into().ok()?);
    let (has_session, key_len) = (key_len & HAS_SESSION != 0, (key_len & !HAS_SESSION) as usize);
    let key_id = std::str::from_utf8(b.get(12..12 + key_len)?).ok()?;
    let mut at = 12 + key_len;
    let mut session = "";
    if has_session {
        let len = u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?) as usize;
        session = std::str::from_utf8(b.get(at + 4..at + 4 + len)?).ok()?;
        at += 4 + len;
    }
    let hist_len = u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?) as usize;
    let history = b.get(at + 4..at + 4 + hist_len)?;
    let response = b.get(at + 4 + hist_len..)?;
    Some(RecordView { expires_at, key_id, session, history, response })
}

impl StoredResponse {
    /// The record's bytes (the layout above).
    pub fn encode(&self) -> Vec<u8> {
        let mut v =
            Vec::with_capacity(20 + self.key_id.len() + self.session.len() + self.history.len() + self.response.len());
        v.extend_from_slice(&self.expires_at.to_le_bytes());
        if self.session.is_empty() {
            v.extend_from_slice(&(self.key_id.len() as u32).to_le_bytes());
            v.extend_from_slice(self.key_id.as_bytes());
        } else {
            v.extend_from_slice(&(self.key_id.len() as u32 | HAS_SESSION).to_le_bytes());
            v.extend_from_slice(self.key_id.as_bytes());
            v.extend_from_slice(&(self.session.len() as u32).to_le_bytes());
            v.extend_from_slice(self.session.as_bytes());
        }
        v.extend_from_slice(&(self.history.len() as u32).to_le_bytes());
        v.extend_from_slice(&self.history);
        v.extend_from_slice(&self.response);
        v
    }

    fn decode(id: &str, b: &[u8]) -> Option<Self> {
        let r = view(b)?;
        Some(Self {
            id: id.to_owned(),
            key_id: r.key_id.to_owned(),
            expires_at: r.expires_at,
            history: r.history.to_vec(),
            response: r.response.to_vec(),
            session: r.session.to_owned(),
        })
    }

    /// Whether the record may be kept under a bound of `max_bytes` (a tenth
    /// of it, 32 MiB at most, with a usable id).
    pub fn fits(&self, max_bytes: u64) -> bool {
        usable_id(&self.id) && self.key_id.len() <= MAX_ID && self.size() <= (max_bytes / 10).min(MAX_RECORD)
    }

    /// The bytes this record takes in the bound.
    pub fn size(&self) -> u64 {
        size_of(&self.id, &self.key_id, self.session.len() + self.history.len() + self.response.len())
    }
}

fn size_of(id: &str, key_id: &str, body: usize) -> u64 {
    (16 + id.len() + key_id.len() + body) as u64
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

fn order_key(bytes: u64, key_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + key_id.len());
    k.extend_from_slice(&bytes.to_be_bytes());
    k.extend_from_slice(key_id.as_bytes());
    k
}

fn le_u64(v: &[u8]) -> u64 {
    v.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes).unwrap_or(0)
}

/// Longest response id kept (ours are far shorter; LMDB keys stop at 511 bytes).
const MAX_ID: usize = 128;

/// Whether `id` can name a stored response (LMDB refuses an empty key).
fn usable_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_ID
}

/// A record to evict: (its index key, key id, response id, size).
type Victim = (Vec<u8>, String, String, u64);

impl Tables {
    /// Moves a key's share by `delta` bytes, in both share tables.
    fn add_share(&self, wtxn: &mut RwTxn<'_>, key_id: &str, delta: i128) -> Result<(), StoreError> {
        let old = self.shares.get(wtxn, key_id.as_bytes())?.map(le_u64).unwrap_or(0);
        let new = (i128::from(old) + delta).max(0) as u64;
        if old > 0 {
            self.share_order.delete(wtxn, &order_key(old, key_id))?;
        }
        if new > 0 {
            self.shares.put(wtxn, key_id.as_bytes(), &new.to_le_bytes())?;
            self.share_order.put(wtxn, &order_key(new, key_id), &[])?;
        } else {
            self.shares.delete(wtxn, key_id.as_bytes())?;
        }
        Ok(())
    }

    /// Deletes one record by its index entry; returns its size.
    fn remove(
        &self,
        wtxn: &mut RwTxn<'_>,
        index_key: &[u8],
        key_id: &str,
        id: &str,
        size: u64,
    ) -> Result<u64, StoreError> {
        self.records.delete(wtxn, id.as_bytes())?;
        self.index.delete(wtxn, index_key)?;
        self.add_share(wtxn, key_id, -i128::from(size))?;
        Ok(size)
    }

    /// The oldest index entry of the key holding the most.
    fn largest_share_oldest(&self, txn: &RoTxn<'_, WithoutTls>) -> Result<Option<Victim>, StoreError> {
        let Some((top, _)) = self.share_order.last(txn)? else { return Ok(None) };
        let key_id = String::from_utf8_lossy(top.get(8..).unwrap_or_default()).into_owned();
        let mut prefix = key_id.as_bytes().to_vec();
        prefix.push(0);
        let Some(entry) = self.index.prefix_iter(txn, &prefix)?.next() else { return Ok(None) };
        let (k, v) = entry?;
        Ok(index_entry(k, v).map(|(key, _, id, size)| (k.to_vec(), key, id, size)))
    }
}

impl Store {
    fn response_tables(&self) -> Result<Tables, StoreError> {
        self.responses
            .ok_or_else(|| StoreError::Io("this store has no responses table (open it with the server)".into()))
    }

    fn total_bytes(&self, txn: &RoTxn<'_, WithoutTls>) -> Result<u64, StoreError> {
        Ok(self.meta.get(txn, TOTAL_BYTES)?.map(le_u64).unwrap_or(0))
    }

    fn add_total(&self, wtxn: &mut RwTxn<'_>, delta: i128) -> Result<u64, StoreError> {
        let total = (i128::from(self.total_bytes(wtxn)?) + delta).max(0) as u64;
        self.meta.put(wtxn, TOTAL_BYTES, &total.to_le_bytes())?;
        Ok(total)
    }

    /// Reads the record `id` as key `key_id` may see it (mine, not expired)
    /// and hands its parts to `read`, in place.
    fn read_response<T>(
        &self,
        id: &str,
        key_id: &str,
        now: u64,
        read: impl FnOnce(RecordView<'_>) -> T,
    ) -> Result<Option<T>, StoreError> {
        if !usable_id(id) {
            return Ok(None);
        }
        let t = self.response_tables()?;
        let rtxn = self.read()?;
        let Some(raw) = t.records.get(&rtxn, id.as_bytes())? else { return Ok(None) };
        let r = view(raw).ok_or_else(|| StoreError::Io(format!("stored response {id} is unreadable")))?;
        Ok((r.key_id == key_id && r.expires_at > now).then(|| read(r)))
    }

    /// The response `id` as key `key_id` may see it: `None` when there is no
    /// such record, it has expired, or another key made it.
    pub fn get_response(&self, id: &str, key_id: &str, now: u64) -> Result<Option<StoredResponse>, StoreError> {
        self.read_response(id, key_id, now, |r| StoredResponse {
            id: id.to_owned(),
            key_id: key_id.to_owned(),
            expires_at: r.expires_at,
            history: r.history.to_vec(),
            response: r.response.to_vec(),
            session: r.session.to_owned(),
        })
    }

    /// Only the conversation of a response (what a follow-up continues) and
    /// its session, with the conversation's size first given to `admit`,
    /// which may refuse it (`false`: not copied, and the size is returned as
    /// the error's payload).
    pub fn response_history(
        &self,
        id: &str,
        key_id: &str,
        now: u64,
        admit: impl FnOnce(usize) -> bool,
    ) -> Result<Option<Result<Conversation, usize>>, StoreError> {
        self.read_response(id, key_id, now, |r| {
            if admit(r.history.len()) { Ok(r.conversation()) } else { Err(r.history.len()) }
        })
    }

    /// Only the response object (what `GET` returns), under the same terms.
    pub fn response_object(
        &self,
        id: &str,
        key_id: &str,
        now: u64,
        admit: impl FnOnce(usize) -> bool,
    ) -> Result<Option<Result<Vec<u8>, usize>>, StoreError> {
        self.read_response(id, key_id, now, |r| {
            if admit(r.response.len()) { Ok(r.response.to_vec()) } else { Err(r.response.len()) }
        })
    }

    /// Keeps `r` (replacing a record with its id); while the total is over
    /// `max_bytes`, the key holding the most loses its responses closest to
    /// expiry, in transactions of their own. Returns false when the record
    /// alone is too large to keep.
    pub fn put_response(&self, r: &StoredResponse, max_bytes: u64) -> Result<bool, StoreError> {
        if !r.fits(max_bytes) {
            return Ok(false);
        }
        let t = self.response_tables()?;
        let mut wtxn = self.env.write_txn()?;
        let mut delta = i128::from(r.size());
        let old = t.records.get(&wtxn, r.id.as_bytes())?.and_then(|b| StoredResponse::decode(&r.id, b));
        if let Some(old) = old {
            let freed = t.remove(
                &mut wtxn,
                &index_key(&old.key_id, old.expires_at, &old.id),
                &old.key_id,
                &old.id,
                old.size(),
            )?;
            delta -= i128::from(freed);
        }
        t.records.put(&mut wtxn, r.id.as_bytes(), &r.encode())?;
        t.index.put(&mut wtxn, &index_key(&r.key_id, r.expires_at, &r.id), &r.size().to_le_bytes())?;
        t.add_share(&mut wtxn, &r.key_id, i128::from(r.size()))?;
        let total = self.add_total(&mut wtxn, delta)?;
        wtxn.commit()?;
        if total > max_bytes {
            self.evict_responses(max_bytes)?;
        }
        Ok(true)
    }

    /// Brings the total down to `max_bytes`: the key holding the most loses
    /// its record closest to expiry, again and again, a batch per transaction.
    /// Returns how many records went.
    pub fn evict_responses(&self, max_bytes: u64) -> Result<u64, StoreError> {
        let t = self.response_tables()?;
        let mut evicted = 0;
        loop {
            let mut wtxn = self.env.write_txn()?;
            let mut total = self.total_bytes(&wtxn)?;
            let (mut count, mut bytes) = (0usize, 0u64);
            while total > max_bytes && count < EVICT_BATCH && (count == 0 || bytes < EVICT_BATCH_BYTES) {
                let Some((k, key_id, id, size)) = t.largest_share_oldest(&wtxn)? else { break };
                let freed = t.remove(&mut wtxn, &k, &key_id, &id, size)?;
                total = total.saturating_sub(freed);
                bytes += freed;
                count += 1;
            }
            if count == 0 {
                return Ok(evicted);
            }
            self.meta.put(&mut wtxn, TOTAL_BYTES, &total.to_le_bytes())?;
            wtxn.commit()?;
            evicted += count as u64;
            if total <= max_bytes {
                return Ok(evicted);
            }
        }
    }

    /// Deletes the response `id` if key `key_id` made it. Returns whether it did.
    pub fn delete_response(&self, id: &str, key_id: &str, now: u64) -> Result<bool, StoreError> {
        if !usable_id(id) {
            return Ok(false);
        }
        let t = self.response_tables()?;
        let mut wtxn = self.env.write_txn()?;
        let Some(record) = t.records.get(&wtxn, id.as_bytes())?.and_then(|b| StoredResponse::decode(id, b)) else {
            return Ok(false);
        };
        if record.key_id != key_id || record.expires_at <= now {
            return Ok(false);
        }
        let freed = t.remove(&mut wtxn, &index_key(key_id, record.expires_at, id), key_id, id, record.size())?;
        self.add_total(&mut wtxn, -i128::from(freed))?;
        wtxn.commit()?;
        Ok(true)
    }

    /// Deletes the records expired at `now`, in small transactions: each
    /// key's records in expiry order, up to the first that has not expired.
    /// Returns how many.
    pub fn prune_responses(&self, now: u64) -> Result<u64, StoreError> {
        let Ok(t) = self.response_tables() else { return Ok(0) };
        let keys: Vec<String> = {
            let rtxn = self.read()?;
            let mut keys = Vec::new();
            for item in t.shares.iter(&rtxn)? {
                keys.push(String::from_utf8_lossy(item?.0).into_owned());
            }
            keys
        };
        let mut deleted = 0;
        for key_id in keys {
            let mut prefix = key_id.as_bytes().to_vec();
            prefix.push(0);
            loop {
                let mut wtxn = self.env.write_txn()?;
                let mut doomed = Vec::new();
                let mut bytes = 0;
                for item in t.index.prefix_iter(&wtxn, &prefix)? {
                    let (k, v) = item?;
                    let Some((_, expires_at, id, size)) = index_entry(k, v) else { continue };
                    if expires_at > now
                        || doomed.len() == EVICT_BATCH
                        || (bytes >= EVICT_BATCH_BYTES && !doomed.is_empty())
                    {
                        break;
                    }
                    bytes += size;
                    doomed.push((k.to_vec(), id, size));
                }
                if doomed.is_empty() {
                    break;
                }
                let mut freed = 0;
                for (k, id, size) in &doomed {
                    freed += t.remove(&mut wtxn, k, &key_id, id, *size)?;
                }
                self.add_total(&mut wtxn, -i128::from(freed))?;
                wtxn.commit()?;
                deleted += doomed.len() as u64;
            }
        }
        Ok(deleted)
    }

    /// The stored records' total size in bytes.
    pub fn responses_bytes(&self) -> Result<u64, StoreError> {
        let rtxn = self.read()?;
        self.total_bytes(&rtxn)
    }

    /// Builds the share tables from the index (a store written before they existed).
    pub(super) fn rebuild_response_shares(&self, wtxn: &mut RwTxn<'_>) -> Result<(), StoreError> {
        let t = self.response_tables()?;
        t.shares.clear(wtxn)?;
        t.share_order.clear(wtxn)?;
        let mut shares: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
        for item in t.index.iter(wtxn)? {
            let (k, v) = item?;
            if let Some((key, _, _, size)) = index_entry(k, v) {
                *shares.entry(key).or_default() += size;
            }
        }
        for (key, bytes) in shares {
            t.shares.put(wtxn, key.as_bytes(), &bytes.to_le_bytes())?;
            t.share_order.put(wtxn, &order_key(bytes, &key), &[])?;
        }
        Ok(())
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
            session: String::new(),
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
    fn shares_follow_every_change_and_eviction_takes_small_transactions() {
        let store = Store::open(&crate::store::temp_dir("responses-shares")).unwrap();
        let t = store.responses.unwrap();
        let share = |key: &str| {
            let rtxn = store.read().unwrap();
            t.shares.get(&rtxn, key.as_bytes()).unwrap().map(le_u64).unwrap_or(0)
        };
        let max = 1 << 30;
        let a = record("resp_a", "k1", 100, 1000);
        assert!(store.put_response(&a, max).unwrap());
        assert!(store.put_response(&record("resp_b", "k2", 100, 3000), max).unwrap());
        assert_eq!((share("k1"), share("k2")), (a.size(), record("resp_b", "k2", 100, 3000).size()));
        // Replacing a record moves its share; deleting one takes it back.
        assert!(store.put_response(&record("resp_a", "k1", 100, 10), max).unwrap());
        assert_eq!(share("k1"), record("resp_a", "k1", 100, 10).size());
        assert!(store.delete_response("resp_a", "k1", 0).unwrap());
        assert_eq!(share("k1"), 0);
        // 200 records of one key over a bound that holds 50: the oldest go,
        // EVICT_BATCH per transaction (each a commit of its own).
        let store = Store::open(&crate::store::temp_dir("responses-batches")).unwrap();
        let one = record("resp_x000", "flood", 0, 1000).size();
        for i in 0..200u64 {
            assert!(store.put_response(&record(&format!("resp_x{i:03}"), "flood", 1000 + i, 1000), u64::MAX).unwrap());
        }
        let before = store.last_commit();
        let evicted = store.evict_responses(50 * one).unwrap();
        assert_eq!(evicted, 150);
        assert_eq!(store.last_commit() - before, 150usize.div_ceil(EVICT_BATCH), "one commit per batch");
        assert!(store.get_response("resp_x149", "flood", 0).unwrap().is_none());
        assert!(store.get_response("resp_x150", "flood", 0).unwrap().is_some());
        assert_eq!(store.responses_bytes().unwrap(), 50 * one);
    }

    #[test]
    fn empty_and_overlong_ids_are_no_response() {
        let store = Store::open(&crate::store::temp_dir("responses-ids")).unwrap();
        assert_eq!(store.get_response("", "k", 0).unwrap(), None);
        assert!(!store.delete_response("", "k", 0).unwrap());
        assert_eq!(store.get_response(&"x".repeat(200), "k", 0).unwrap(), None);
        assert!(!store.put_response(&record("", "k", 1, 1), 1 << 20).unwrap());
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

    #[test]
    fn a_records_session_round_trips_and_a_record_without_one_reads_as_before() {
        let mut r = record("resp_1", "key_a", 100, 10);
        let plain = r.encode();
        // The layout without a session is the one records had before sessions.
        assert_eq!(u32::from_le_bytes(plain[8..12].try_into().unwrap()), 5);
        assert_eq!(view(&plain).map(|v| (v.key_id, v.session, v.response.len())), Some(("key_a", "", 10)));
        r.session = "cc-1".into();
        let with = r.encode();
        let v = view(&with).unwrap();
        assert_eq!((v.key_id, v.session, v.history, v.response), ("key_a", "cc-1", &r.history[..], &r.response[..]));
        assert_eq!(StoredResponse::decode("resp_1", &with), Some(r));
        // A cut record is no record.
        assert!(view(&with[..14]).is_none());
    }
}
