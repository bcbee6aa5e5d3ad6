//! A host's slots across the cluster: with `--redis`, every instance in
//! front of one Ollama host shares its `--upstream-max-concurrent` slots
//! (and the `--upstream-reserve-interactive` ones among them), so three
//! instances never run three times the generations the operator allowed.
//!
//! Each instance's queue for a host (`upstream::gate`) runs within the
//! slots its instance holds (its *caps*); the cluster thread leases them
//! from Redis (`aigw_host_slots_v1`), in a round whenever the queue's
//! demand changes (a request waits, a slot frees: the queue nudges the
//! thread) and every [`super::POLL`] while anything waits. An instance
//! keeps the slots it uses and gives back the others at once; a freed slot
//! goes to the instance whose waiting request is most urgent (the better
//! lane, then the longest wait), so lanes hold across the cluster. The
//! instances also share their picture of the host's models: generations
//! in flight per model (a model busy through another instance is not
//! idle), the models interactive keys used lately, the swap or load under
//! way (one at a time on a host), the models just unloaded. The slots of an instance whose heartbeat
//! stops come back after [`super::INSTANCE_TIMEOUT`]. While Redis is away
//! each instance runs within its share: the slots divided by the instances
//! last seen (at least one).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};

use parking_lot::Mutex;

/// What an instance's queue for a host holds, uses and wants now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Demand {
    /// Slots held: (shared, reserved for interactive requests).
    pub held: Caps,
    /// Generations in flight.
    pub in_flight: usize,
    /// Requests waiting that could start with a slot, by lane.
    pub waiting: [usize; 3],
    /// When the longest-waiting of them began to wait, by lane (ms since the epoch; 0: none).
    pub since_ms: [u64; 3],
    /// Generations in flight by model.
    pub models: Vec<(String, usize)>,
    /// Models an interactive key used lately (never to be pushed out for other work).
    pub interactive: Vec<String>,
    /// The model this instance is making room by (draining or unloading
    /// it), or loading: the others start no load or swap of their own meanwhile.
    pub swap: Option<String>,
    /// The models it unloaded lately.
    pub unloaded: Vec<String>,
    /// It changes the host's models, or has a request waiting to: it asks
    /// for the change token (one instance at a time holds it).
    pub change: bool,
}

/// What the other instances do on a host, as of their last exchange.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
pub struct Others {
    /// Generations in flight by model.
    #[serde(default, rename = "f", deserialize_with = "map_or_empty")]
    pub in_flight: HashMap<String, usize>,
    /// Models an interactive key used lately through one of them.
    #[serde(default, rename = "i", deserialize_with = "map_or_empty")]
    pub interactive: HashMap<String, usize>,
    /// The models they are making room by.
    #[serde(default, rename = "x", deserialize_with = "map_or_empty")]
    pub swaps: HashMap<String, usize>,
    /// The models they unloaded lately.
    #[serde(default, rename = "u", deserialize_with = "map_or_empty")]
    pub unloaded: HashMap<String, usize>,
}

/// A JSON object of counts; anything else (Lua writes an empty table as `{}` or `[]`) is empty.
fn map_or_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<HashMap<String, usize>, D::Error> {
    let v = <serde_json::Value as serde::Deserialize>::deserialize(d)?;
    Ok(serde_json::from_value(v).unwrap_or_default())
}

/// The slots an instance may use: (shared, reserved for interactive requests).
pub type Caps = (usize, usize);

/// The side of a host's queue the cluster thread talks to.
pub trait SharedGate: Send + Sync {
    fn demand(&self) -> Demand;
    /// The slots this instance holds now, and the other instances' generations
    /// in flight by model; the queue hands out what became free. `leased`:
    /// from Redis, with `spare` slots it may keep beyond those in use (a
    /// slot freed past them goes back to Redis); else a share while Redis is away.
    /// `change_token`: this instance may change the host's models (make
    /// room, load) now; the others hold their changes meanwhile.
    fn grant(&self, caps: Caps, others: Others, leased: bool, spare: usize, change_token: bool);
}

/// Wakes the cluster thread for a host round (at most one wake pending).
pub struct Nudge {
    pending: AtomicBool,
    tx: std::sync::mpsc::Sender<super::Wake>,
}

impl Nudge {
    pub fn nudge(&self) {
        if !self.pending.swap(true, SeqCst) {
            let _ = self.tx.send(super::Wake::Hosts);
        }
    }

    /// The thread took the wake: later changes wake it again.
    pub(super) fn taken(&self) {
        self.pending.store(false, SeqCst);
    }
}

/// One host as the cluster shares it.
pub struct SharedHost {
    /// Its name in Redis (a digest of its URL, the same on every instance).
    pub id: String,
    pub max: usize,
    pub reserve: usize,
    pub gate: Arc<dyn SharedGate>,
    /// What was last said to Redis.
    last: Mutex<Option<Demand>>,
}

/// The hosts of this instance, for the cluster thread.
pub struct HostBook {
    hosts: Mutex<Vec<Arc<SharedHost>>>,
    pub nudge: Arc<Nudge>,
}

impl HostBook {
    pub(super) fn new(tx: std::sync::mpsc::Sender<super::Wake>) -> Self {
        Self { hosts: Mutex::new(Vec::new()), nudge: Arc::new(Nudge { pending: AtomicBool::new(false), tx }) }
    }

    /// Shares the host at `url` (`max` slots, `reserve` of them for interactive requests).
    pub fn add(&self, url: &str, max: usize, reserve: usize, gate: Arc<dyn SharedGate>) {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(url.as_bytes());
        let id: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
        self.hosts.lock().push(Arc::new(SharedHost { id, max, reserve, gate, last: Mutex::new(None) }));
    }

    pub(super) fn all(&self) -> Vec<Arc<SharedHost>> {
        self.hosts.lock().clone()
    }
}

/// Most models whose in-flight counts one instance shares per host.
const MAX_MODELS: usize = 64;

/// One host's round with Redis: says what this instance uses and wants,
/// and hands the queue what it holds. `force`: even if nothing changed.
pub(super) fn sync(
    con: &mut redis::Connection,
    prefix: &str,
    me: &str,
    host: &SharedHost,
    instances: usize,
    force: bool,
) -> redis::RedisResult<()> {
    let d = host.gate.demand();
    {
        let mut last = host.last.lock();
        let waiting = d.waiting.iter().any(|&n| n > 0);
        if !force && !waiting && last.as_ref() == Some(&d) {
            return Ok(());
        }
        *last = Some(d.clone());
    }
    let busy = d.in_flight + d.waiting.iter().sum::<usize>();
    let spare = spare(host.max, instances);
    let unloaded: serde_json::Map<String, serde_json::Value> =
        d.unloaded.iter().take(MAX_MODELS).map(|m| (m.clone(), 1.into())).collect();
    let recent: serde_json::Map<String, serde_json::Value> =
        d.interactive.iter().take(MAX_MODELS).map(|m| (m.clone(), 1.into())).collect();
    let models: serde_json::Map<String, serde_json::Value> =
        d.models.iter().take(MAX_MODELS).map(|(m, n)| (m.clone(), (*n).into())).collect();
    let (shared, reserved, others, token): (usize, usize, String, u8) = redis::cmd("FCALL")
        .arg("aigw_host_slots_v1")
        .arg(0)
        .arg(prefix)
        .arg(&host.id)
        .arg(me)
        .arg(host.max)
        .arg(host.reserve)
        .arg(super::INSTANCE_TIMEOUT.as_millis() as u64)
        .arg(d.held.0)
        .arg(d.held.1)
        .arg(d.waiting[0])
        .arg(d.waiting[1])
        .arg(d.waiting[2])
        .arg(d.since_ms[0])
        .arg(d.since_ms[1])
        .arg(d.since_ms[2])
        .arg(serde_json::Value::Object(models).to_string())
        .arg(busy + spare)
        .arg(serde_json::Value::Object(recent).to_string())
        .arg(d.swap.as_deref().unwrap_or(""))
        .arg(serde_json::Value::Object(unloaded).to_string())
        .arg(u8::from(d.change))
        .query(con)?;
    let mut others: Others = serde_json::from_str(&others).unwrap_or_default();
    // Bounded, whatever Redis holds.
    for map in [&mut others.in_flight, &mut others.interactive, &mut others.swaps, &mut others.unloaded] {
        if map.len() > MAX_MODELS {
            *map = std::mem::take(map).into_iter().take(MAX_MODELS).collect();
        }
    }
    host.gate.grant((shared, reserved), others, true, spare, token == 1);
    Ok(())
}

/// Slots an instance keeps beyond those it uses, so that a busy one does
/// not wait on Redis for every request: a quarter of its share of the
/// host; none for a host of few slots (a GPU host's handful: fewer than
/// four per instance), where every slot goes through Redis and lanes hold
/// exactly.
pub fn spare(max: usize, instances: usize) -> usize {
    max / (4 * instances.max(1))
}

/// While Redis is away: this instance's share of a host's slots, the slots
/// divided by `instances` (at least one), the reserved ones in proportion.
pub fn share(max: usize, reserve: usize, instances: usize) -> Caps {
    let instances = instances.max(1);
    let total = (max / instances).max(1);
    let reserved = (reserve / instances).min(total.saturating_sub(1));
    (total - reserved, reserved)
}

/// Every host in its share (Redis away).
pub(super) fn fall_back(book: &HostBook, instances: usize) {
    for h in book.all() {
        *h.last.lock() = None;
        h.gate.grant(share(h.max, h.reserve, instances), Others::default(), false, 0, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_is_at_least_one_slot_and_keeps_a_shared_one() {
        assert_eq!(share(4, 1, 1), (3, 1));
        assert_eq!(share(4, 1, 3), (1, 0));
        assert_eq!(share(12, 3, 3), (3, 1));
        assert_eq!(share(1, 0, 3), (1, 0), "a lone slot is everyone's share");
        assert_eq!(share(8, 0, 0), (8, 0));
    }

    #[test]
    fn spare_slots_only_for_hosts_of_many() {
        assert_eq!(spare(4, 1), 1);
        assert_eq!(spare(4, 3), 0, "a GPU host's few slots all go through Redis");
        assert_eq!(spare(8, 3), 0);
        assert_eq!(spare(4096, 1), 1024);
        assert_eq!(spare(4096, 3), 341);
    }

    #[test]
    fn the_others_work_reads_whatever_lua_made_of_empty_tables() {
        let o: Others = serde_json::from_str(r#"{"f":{"llama3":2},"i":[]}"#).unwrap();
        assert_eq!(o.in_flight.get("llama3"), Some(&2));
        assert!(o.interactive.is_empty());
        let o: Others = serde_json::from_str(r#"{"f":{},"i":{"phi3":1}}"#).unwrap();
        assert!(o.in_flight.is_empty() && o.interactive.contains_key("phi3"));
    }
}
