//! Prompt-cache affinity: a conversation's next turn goes back to the host
//! that served its previous one.
//!
//! An agent's next turn repeats its whole conversation (tens of thousands
//! of tokens for Claude Code or Codex) and adds a little. The host that
//! served the previous turn holds that prefix in one of its model's
//! parallel slots and evaluates only what is new; any other host evaluates
//! all of it again. So with several hosts serving one model, a turn is
//! routed by its conversation first and by load second.
//!
//! A conversation is named by a hash of the key, the served model and the
//! native body's leading messages (up to the first user message, see
//! [`super::native::leading_messages`]), which every later turn repeats.
//! The table maps that name to the host that last served it and counts
//! the conversation's turns under way: only a next turn goes back, while a
//! request whose conversation has a turn under way (many clients sending
//! one prompt at once look like one conversation) is routed by load. It is shared
//! by the workers, bounded (`MAX_CONVERSATIONS`, the oldest half dropped
//! when full), and touched only when there are several hosts. What the
//! gateway controls is the host; the slot within it is Ollama's choice:
//! its API takes no slot hint, and its runner itself gives a request the
//! slot holding the longest prefix of its prompt (copying that prefix into
//! a free slot when that one is busy), so a turn that reaches the right
//! host finds its prefix unless the host's slots were all taken by other
//! conversations since.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use parking_lot::Mutex;

/// Conversations remembered at most (about 32 bytes each).
pub const MAX_CONVERSATIONS: usize = 65_536;

/// The conversation a native request continues, if it has one (a chat
/// with a user message): a hash of the key, the model and its leading messages.
pub fn conversation(key_id: &str, model: &str, native_body: &[u8]) -> Option<u64> {
    let lead = super::native::leading_messages(native_body)?;
    // A fixed-key hasher: the same conversation hashes alike on every
    // worker. A collision only routes a turn to another conversation's
    // host: the answer is the same, only its prompt cache is missed.
    let mut h = std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().build_hasher();
    h.write(key_id.as_bytes());
    h.write_u8(0xff);
    h.write(model.as_bytes());
    h.write_u8(0xff);
    h.write(lead);
    Some(h.finish())
}

/// A conversation: where it was last served, and its turns under way.
#[derive(Debug, Clone, Copy)]
struct Entry {
    host: Option<usize>,
    at: Instant,
    active: u32,
}

/// Where each conversation was last served.
pub struct Affinity {
    table: Mutex<HashMap<u64, Entry>>,
    cap: usize,
    /// Turns that went back to their conversation's host, and turns that
    /// left it (its queue full, or the wait past its bound).
    returned: AtomicU64,
    moved: AtomicU64,
}

/// A turn under way; its conversation counts it until it is dropped (with
/// the request's host slot).
pub struct Turn {
    table: Arc<Affinity>,
    conversation: u64,
}

impl Drop for Turn {
    fn drop(&mut self) {
        if let Some(e) = self.table.table.lock().get_mut(&self.conversation) {
            e.active = e.active.saturating_sub(1);
        }
    }
}

impl Default for Affinity {
    fn default() -> Self {
        Self::with_capacity(MAX_CONVERSATIONS)
    }
}

impl Affinity {
    pub fn with_capacity(cap: usize) -> Self {
        Self {
            table: Mutex::new(HashMap::new()),
            cap: cap.max(2),
            returned: AtomicU64::new(0),
            moved: AtomicU64::new(0),
        }
    }

    /// A turn of `conversation` begins: the host that served it last, unless
    /// another turn of it is under way (requests that share a prefix at
    /// once, as many users of one prompt do, are spread by load: only a
    /// conversation's next turn goes back).
    pub fn begin(self: &Arc<Self>, conversation: u64) -> (Option<usize>, Turn) {
        let now = Instant::now();
        let mut t = self.table.lock();
        if t.len() >= self.cap && !t.contains_key(&conversation) {
            // Full: keep the newer half (one sort per `cap / 2` new conversations).
            let mut ages: Vec<Instant> = t.values().map(|e| e.at).collect();
            ages.sort_unstable();
            let cut = ages[ages.len() / 2];
            t.retain(|_, e| e.at > cut);
        }
        let e = t.entry(conversation).or_insert(Entry { host: None, at: now, active: 0 });
        let back = if e.active == 0 { e.host } else { None };
        e.active += 1;
        e.at = now;
        (back, Turn { table: self.clone(), conversation })
    }

    /// `host` served `conversation` now.
    pub fn served(&self, conversation: u64, host: usize) {
        if let Some(e) = self.table.lock().get_mut(&conversation) {
            e.host = Some(host);
        }
    }

    /// A turn was sent to its conversation's host (`true`), or left it for another.
    pub fn count(&self, returned: bool) {
        if returned { &self.returned } else { &self.moved }.fetch_add(1, Relaxed);
    }

    /// (turns returned to their host, turns moved to another).
    pub fn counts(&self) -> (u64, u64) {
        (self.returned.load(Relaxed), self.moved.load(Relaxed))
    }

    /// Conversations remembered now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TURN1: &[u8] = br#"{"model":"m","messages":[{"role":"system","content":"s"},{"role":"user","content":"fix the bug"}],"stream":true}"#;
    const TURN2: &[u8] = br#"{"model":"m","messages":[{"role":"system","content":"s"},{"role":"user","content":"fix the bug"},{"role":"assistant","content":"done"},{"role":"user","content":"thanks"}],"stream":true}"#;
    const OTHER: &[u8] = br#"{"model":"m","messages":[{"role":"system","content":"s"},{"role":"user","content":"write tests"}],"stream":true}"#;

    #[test]
    fn a_conversation_is_its_key_model_and_leading_messages() {
        let c = conversation("k1", "m", TURN1).unwrap();
        assert_eq!(conversation("k1", "m", TURN2), Some(c), "the next turn is the same conversation");
        assert_ne!(conversation("k1", "m", OTHER), Some(c));
        assert_ne!(conversation("k2", "m", TURN1), Some(c), "another key's conversation");
        assert_ne!(conversation("k1", "m2", TURN1), Some(c), "another model");
        assert_eq!(conversation("k1", "m", br#"{"model":"m","prompt":"x"}"#), None);
    }

    #[test]
    fn the_table_is_bounded_and_keeps_the_newest() {
        let a = Arc::new(Affinity::with_capacity(100));
        for c in 0..1000u64 {
            let (_, turn) = a.begin(c);
            a.served(c, (c % 3) as usize);
            drop(turn);
            assert!(a.len() <= 100);
        }
        assert_eq!(a.begin(999).0, Some(0));
        assert_eq!(a.begin(0).0, None, "the oldest were dropped");
    }

    #[test]
    fn only_a_conversations_next_turn_goes_back_not_a_concurrent_one() {
        let a = Arc::new(Affinity::default());
        let (back, first) = a.begin(7);
        assert_eq!(back, None, "a new conversation");
        a.served(7, 1);
        let (back, concurrent) = a.begin(7);
        assert_eq!(back, None, "the same prefix at once is routed by load");
        a.served(7, 2);
        drop((first, concurrent));
        assert_eq!(a.begin(7).0, Some(2), "the next turn goes to the host that served it last");
    }
}
