//! What the gateway knows of the models on one host: which are resident
//! (loaded in GPU memory), how many of its generations each is running,
//! which is being loaded, what a load of each costs, and the swap under way.
//!
//! Ollama runs `OLLAMA_NUM_PARALLEL` generations per loaded model and keeps
//! at most `OLLAMA_MAX_LOADED_MODELS` models; a request for a model that is
//! not resident waits for a load (seconds), and while it waits it blocks
//! every request behind it in Ollama's queue. The gateway therefore sends a
//! request only when it can start at once, and decides itself which model
//! leaves: when a load needs room it unloads the least valuable idle model
//! (not one an interactive key used lately, else the least recently used)
//! with Ollama's own `keep_alive: 0`, instead of letting the host evict
//! whichever it likes — often the model an interactive user is about to use.
//!
//! The picture is kept from the gateway's own traffic (what it sends, when
//! the answer to a load arrives) and corrected by `/api/ps` with each health
//! check (another client may have loaded or unloaded a model). Until the
//! host has answered `/api/ps` once nothing is known, and every request is
//! sent as if its model were resident (the queue is then lanes and keys
//! only); so it is with `--upstream-num-parallel 0`, which turns the model
//! of the host off.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::schedule::Fit;
use crate::store::keys::same_model;

/// Models an interactive key used within this long are unloaded last.
const INTERACTIVE_RECENT: Duration = Duration::from_secs(300);
/// How long an instance tells the others it unloaded a model.
const RECENT_UNLOAD: Duration = Duration::from_secs(3);
/// Learned load costs kept (real models only; a bound all the same).
const MAX_LEARNED: usize = 256;
/// How long a load is assumed to take before one was learned.
const FIRST_LOAD: Duration = Duration::from_secs(3);

impl ModelState {
    /// Loading now (a load was sent, its answer has not begun, and it has
    /// not taken longer than a load takes).
    pub fn is_loading(&self) -> bool {
        self.loading.is_some_and(|until| Instant::now() < until)
    }
}

/// One model on the host.
#[derive(Debug, Clone)]
pub struct ModelState {
    /// Its name as the gateway sends it (shared with the requests in flight).
    pub name: Arc<str>,
    /// Loaded (per `/api/ps`, or since the gateway sent it a request).
    pub resident: bool,
    /// Generations the gateway has in flight on it.
    pub in_flight: usize,
    /// Generations the cluster's other instances have in flight on it (as
    /// of their last exchange through Redis; 0 alone).
    pub remote: usize,
    /// An interactive key used it lately through another instance.
    pub remote_interactive: bool,
    /// A request that loads it was sent and its answer has not begun: until
    /// then, or until this deadline (its learned load time), it is loading.
    pub loading: Option<Instant>,
    /// When the gateway last sent it a request.
    pub last_sent: Option<Instant>,
    /// When an interactive request last went to it.
    pub last_interactive: Option<Instant>,
    /// Bytes in GPU memory (`/api/ps`'s `size_vram`).
    pub size_vram: u64,
    /// When the host will unload it if unused (`/api/ps`'s `expires_at`).
    pub expires_at: String,
}

impl ModelState {
    /// An interactive key used it through this instance lately.
    pub fn interactive_lately(&self, now: Instant) -> bool {
        self.last_interactive.is_some_and(|t| now.duration_since(t) < INTERACTIVE_RECENT)
    }

    /// Generations run on it, through this instance or another.
    pub fn busy(&self) -> bool {
        self.in_flight + self.remote > 0
    }

    fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            resident: false,
            in_flight: 0,
            remote: 0,
            remote_interactive: false,
            loading: None,
            last_sent: None,
            last_interactive: None,
            size_vram: 0,
            expires_at: String::new(),
        }
    }
}

/// A swap making room for a load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Swap {
    /// No more requests go to this model; it is unloaded when idle.
    Draining(String),
    /// Its unload was asked for (by the host's checker thread).
    Unloading(String),
}

/// A loaded model as `/api/ps` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PsModel {
    pub name: String,
    pub size_vram: u64,
    pub expires_at: String,
}

/// The gateway's picture of one host's models.
#[derive(Debug)]
pub struct HostModels {
    /// `/api/ps` has answered at least once.
    pub known: bool,
    /// Generations per model at once (`--upstream-num-parallel`; 0: the host is not modelled).
    pub num_parallel: usize,
    /// Models resident at once (`--upstream-max-loaded-models`).
    pub max_loaded: usize,
    pub models: HashMap<String, ModelState>,
    /// Learned load time per model, milliseconds (a moving average).
    pub load_ms: HashMap<String, f64>,
    pub swap: Option<Swap>,
    /// The models other instances of the cluster are making room by (their swaps).
    pub remote_swaps: Vec<String>,
    /// The models this instance unloaded lately, and when.
    unloads: Vec<(String, Instant)>,
}

impl HostModels {
    pub fn new(num_parallel: usize, max_loaded: usize) -> Self {
        Self {
            known: false,
            num_parallel,
            max_loaded: max_loaded.max(1),
            models: HashMap::new(),
            load_ms: HashMap::new(),
            swap: None,
            remote_swaps: Vec::new(),
            unloads: Vec::new(),
        }
    }

    /// The entry's name for `model`, if there is one.
    fn key_of(&self, model: &str) -> Option<&str> {
        if let Some((k, _)) = self.models.get_key_value(model) {
            return Some(k);
        }
        self.models.keys().find(|k| same_model(k, model)).map(String::as_str)
    }

    pub fn get(&self, model: &str) -> Option<&ModelState> {
        self.key_of(model).and_then(|k| self.models.get(k))
    }

    /// [`Self::get`] for changing it; the name as the table has it copies nothing.
    fn get_mut(&mut self, model: &str) -> Option<&mut ModelState> {
        if self.models.contains_key(model) {
            return self.models.get_mut(model);
        }
        let key = self.key_of(model)?.to_owned();
        self.models.get_mut(&key)
    }

    fn entry(&mut self, model: &str) -> &mut ModelState {
        // The common case, the name as the table has it, copies nothing.
        if !self.models.contains_key(model) {
            let key = self.key_of(model).unwrap_or(model).to_owned();
            return self.models.entry(key).or_insert_with_key(|k| ModelState::new(k));
        }
        self.models.get_mut(model).expect("the key was found just above")
    }

    fn resident_count(&self) -> usize {
        self.models.values().filter(|m| m.resident).count()
    }

    fn swapping(&self, model: &str) -> bool {
        match &self.swap {
            Some(Swap::Draining(m) | Swap::Unloading(m)) if same_model(m, model) => true,
            _ => self.remote_swaps.iter().any(|m| same_model(m, model)),
        }
    }

    /// A swap is under way on the host, made by this instance or another.
    pub fn any_swap(&self) -> bool {
        self.swap.is_some() || !self.remote_swaps.is_empty()
    }

    /// What this instance is changing on the host, for the cluster's other
    /// instances to wait for: the model it makes room by (draining or
    /// unloading), else a model it is loading.
    pub fn changing(&self) -> Option<&str> {
        match &self.swap {
            Some(Swap::Draining(m) | Swap::Unloading(m)) => Some(m),
            None => self.models.iter().find(|(_, m)| m.is_loading()).map(|(n, _)| n.as_str()),
        }
    }

    /// How a request for `model` would fare if sent now; `interactive`: it
    /// may push out a model an interactive key uses.
    pub fn fit(&self, model: &str, interactive: bool) -> Fit {
        // `""`: a request not scheduled around the host's models.
        if !self.known || model.is_empty() {
            return Fit::Ready;
        }
        if let Some(m) = self.get(model).filter(|m| m.resident) {
            let full = self.num_parallel > 0 && m.in_flight + m.remote >= self.num_parallel;
            return if m.is_loading() || full || self.swapping(model) { Fit::Hold } else { Fit::Ready };
        }
        if self.resident_count() < self.max_loaded {
            Fit::Load
        } else if self.any_swap() {
            // Room is being made (here or by another instance): wait for it.
            Fit::Hold
        } else if self.victim(model, !interactive).is_some_and(|(_, idle)| idle) {
            Fit::Load
        } else {
            Fit::Stuck
        }
    }

    /// Whether a load of `model` needs another model unloaded first.
    pub fn needs_room(&self, model: &str) -> bool {
        self.known && !self.get(model).is_some_and(|m| m.resident) && self.resident_count() >= self.max_loaded
    }

    /// The model to unload for a load of `model`, and whether it is idle:
    /// an idle one before a busy one, then the least recently used. A model
    /// an interactive key used lately is only a victim if `spare_interactive`
    /// is false (the load is for an interactive request, or one aging lifted
    /// to the interactive lane), so batch work never pushes out the model a
    /// person is waiting on.
    fn victim(&self, model: &str, spare_interactive: bool) -> Option<(&str, bool)> {
        let now = Instant::now();
        self.models
            .iter()
            .filter(|(name, m)| m.resident && !m.is_loading() && !same_model(name, model))
            .map(|(name, m)| {
                let interactive = m.remote_interactive || m.interactive_lately(now);
                (name, m, interactive)
            })
            .filter(|&(_, _, interactive)| !(spare_interactive && interactive))
            .min_by_key(|&(name, m, interactive)| (interactive, m.busy(), m.last_sent, name.as_str()))
            .map(|(name, m, _)| (name.as_str(), !m.busy()))
    }

    /// Starts making room for `model` (see [`Self::victim`]): the victim is
    /// unloaded at once when idle, else it drains first. Returns the model
    /// to unload now, if any. No-op while a swap is under way.
    pub fn make_room(&mut self, model: &str, spare_interactive: bool) -> Option<String> {
        // One swap at a time on a host, whichever instance makes it.
        if self.any_swap() {
            return None;
        }
        let (v, idle) = self.victim(model, spare_interactive).map(|(v, idle)| (v.to_owned(), idle))?;
        if idle {
            self.swap = Some(Swap::Unloading(v.clone()));
            Some(v)
        } else {
            self.swap = Some(Swap::Draining(v));
            None
        }
    }

    /// A request for `model` was sent (`lane` 0 is interactive). Returns
    /// whether it loads the model.
    pub fn sent(&mut self, model: &str, lane: usize) -> bool {
        if !self.known || model.is_empty() {
            // Nothing is tracked until the host lists its models (client
            // names alone must not grow the table).
            return false;
        }
        let now = Instant::now();
        let expected = self.load_cost(model).map_or(FIRST_LOAD, |ms| Duration::from_secs_f64(ms * 1.5 / 1e3));
        let m = self.entry(model);
        let loads = !m.resident;
        if loads {
            m.resident = true;
            m.loading = Some(now + expected.max(Duration::from_millis(100)));
        }
        m.in_flight += 1;
        m.last_sent = Some(now);
        if lane == 0 {
            m.last_interactive = Some(now);
        }
        loads
    }

    /// The answer to a request that loaded `model` has begun: it is loaded
    /// if the answer is a success (an error, say an unknown model, loaded nothing).
    pub fn answered(&mut self, model: &str, ok: bool) {
        if let Some(m) = self.get_mut(model) {
            m.loading = None;
            m.resident = ok || m.in_flight > 1;
        }
    }

    /// The shared name for a request of `model`, while the host is modelled.
    pub fn name_of(&self, model: &str) -> Option<Arc<str>> {
        if model.is_empty() {
            return None;
        }
        self.get(model).map(|m| m.name.clone())
    }

    /// A request for `model` ended. Returns a model to unload now (a drained victim).
    pub fn ended(&mut self, model: &str, loaded: bool) -> Option<String> {
        if let Some(m) = self.get_mut(model) {
            m.in_flight = m.in_flight.saturating_sub(1);
            if loaded && m.loading.is_some() {
                // It ended before its answer began: whether the host loaded
                // the model is not known (the next listing tells).
                m.loading = None;
                m.resident = false;
            }
        }
        self.drained()
    }

    /// A draining victim with nothing left in flight is unloaded now: returns it.
    pub fn drained(&mut self) -> Option<String> {
        match &self.swap {
            Some(Swap::Draining(v)) if self.get(v).is_none_or(|m| !m.busy()) => {
                let v = v.clone();
                self.swap = Some(Swap::Unloading(v.clone()));
                Some(v)
            }
            _ => None,
        }
    }

    /// The host unloaded `model` (or the attempt ended): the swap is over.
    pub fn unloaded(&mut self, model: &str) {
        if let Some(m) = self.get_mut(model) {
            m.resident = false;
            m.loading = None;
        }
        self.swap = None;
        // Said to the cluster's other instances for a while, so that none
        // sends it work on a picture from before (its next listing is up
        // to a health interval away).
        let now = Instant::now();
        self.unloads.retain(|(m, at)| !same_model(m, model) && now.duration_since(*at) < RECENT_UNLOAD);
        self.unloads.push((model.to_owned(), now));
    }

    /// The models this instance unloaded lately (for the cluster).
    pub fn recent_unloads(&self) -> Vec<String> {
        let now = Instant::now();
        self.unloads.iter().filter(|(_, at)| now.duration_since(*at) < RECENT_UNLOAD).map(|(m, _)| m.clone()).collect()
    }

    /// The other instances of the cluster have `in_flight` (by model): a
    /// model they run is resident and busy here too; one `interactive` keys
    /// used through them lately is spared like one used here; the models
    /// they make room by (`swaps`) drain here too, and no other swap starts
    /// meanwhile.
    pub fn set_remote(
        &mut self,
        in_flight: &std::collections::HashMap<String, usize>,
        interactive: &std::collections::HashMap<String, usize>,
        swaps: &std::collections::HashMap<String, usize>,
        unloaded: &std::collections::HashMap<String, usize>,
    ) {
        self.remote_swaps = swaps.keys().cloned().collect();
        // A model another instance just unloaded is gone, unless it runs again.
        let now = Instant::now();
        for name in unloaded.keys() {
            if in_flight.get(name).is_some_and(|&n| n > 0) {
                continue;
            }
            if let Some(m) = self.get_mut(name)
                && m.in_flight == 0
                && m.loading.is_none()
                && m.last_sent.is_none_or(|t| now.duration_since(t) > RECENT_UNLOAD)
            {
                m.resident = false;
            }
        }
        for m in self.models.values_mut() {
            m.remote = 0;
            m.remote_interactive = false;
        }
        if !self.known {
            return;
        }
        for (name, &n) in in_flight {
            if n > 0 {
                let m = self.entry(name);
                m.remote = n;
                m.resident = true;
            }
        }
        for name in interactive.keys() {
            if let Some(m) = self.get_mut(name) {
                m.remote_interactive = true;
            }
        }
    }

    /// The host's `/api/ps` answered `list`: correct the picture.
    pub fn observe(&mut self, list: &[PsModel]) {
        // Without a per-model bound the host is not modelled at all.
        self.known = self.num_parallel > 0;
        if !self.known {
            return;
        }
        for p in list {
            let m = self.entry(&p.name);
            m.resident = true;
            m.size_vram = p.size_vram;
            m.expires_at.clone_from(&p.expires_at);
        }
        let unloading = match &self.swap {
            Some(Swap::Unloading(v)) => Some(v.clone()),
            _ => None,
        };
        self.models.retain(|name, m| {
            let listed = list.iter().any(|p| same_model(&p.name, name));
            // A model the gateway is using or loading stays, whatever a
            // listing taken a moment ago says.
            m.resident = listed || m.loading.is_some() || m.busy();
            m.resident || m.busy()
        });
        if let Some(v) = unloading
            && !self.models.get(&v).is_some_and(|m| m.resident)
        {
            self.swap = None;
        }
        if let Some(Swap::Draining(v)) = &self.swap
            && !self.models.contains_key(v)
        {
            self.swap = None;
        }
    }

    /// A final line reported `load_ms` for `model`: learn it (a moving average).
    pub fn learn_load(&mut self, model: &str, load_ms: f64) {
        if let Some(v) = self.load_ms.iter_mut().find(|(k, _)| same_model(k, model)).map(|(_, v)| v) {
            *v = 0.7 * *v + 0.3 * load_ms;
        } else if self.load_ms.len() < MAX_LEARNED {
            self.load_ms.insert(model.to_owned(), load_ms);
        }
    }

    /// The learned load time of `model`, if any.
    pub fn load_cost(&self, model: &str) -> Option<f64> {
        self.load_ms.iter().find(|(k, _)| same_model(k, model)).map(|(_, v)| *v)
    }

    /// Whether `model` is resident.
    pub fn resident(&self, model: &str) -> bool {
        self.get(model).is_some_and(|m| m.resident)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ps(names: &[&str]) -> Vec<PsModel> {
        names.iter().map(|n| PsModel { name: (*n).into(), size_vram: 1, expires_at: String::new() }).collect()
    }

    #[test]
    fn names_with_and_without_latest_are_one_model() {
        assert!(same_model("llama3", "llama3:latest") && same_model("llama3:latest", "llama3"));
        assert!(!same_model("llama3", "llama3:8b") && !same_model("llama3", "llama"));
        assert!(same_model("hf.co/x/y", "hf.co/x/y:latest") && !same_model("a:b", "a:b:latest"));
    }

    #[test]
    fn nothing_is_held_until_the_host_lists_its_models() {
        let mut h = HostModels::new(1, 1);
        assert_eq!(h.fit("a", false), Fit::Ready);
        assert!(!h.sent("a", 1), "not known: no load is assumed");
        assert_eq!(h.fit("a", false), Fit::Ready);
    }

    #[test]
    fn fits_follow_parallel_slots_loads_and_room() {
        let mut h = HostModels::new(2, 2);
        h.observe(&ps(&["a:latest"]));
        assert_eq!(h.fit("a", false), Fit::Ready);
        h.sent("a", 1);
        h.sent("a", 1);
        assert_eq!(h.fit("a", false), Fit::Hold, "both parallel slots busy");
        assert_eq!(h.fit("b", false), Fit::Load, "room for a second model");
        assert!(h.sent("b", 1));
        assert_eq!(h.fit("b", false), Fit::Hold, "loading");
        h.answered("b", true);
        assert_eq!(h.fit("b", false), Fit::Ready);
        assert_eq!(h.fit("c", false), Fit::Stuck, "full, and both busy");
        h.ended("b", true);
        assert_eq!(h.fit("c", false), Fit::Load, "b is idle and can be unloaded");
        assert_eq!(h.make_room("c", true), Some("b".into()));
        assert_eq!(h.fit("c", false), Fit::Hold, "wait for the unload");
        assert_eq!(h.fit("b", false), Fit::Hold);
        h.unloaded("b");
        assert_eq!(h.fit("c", false), Fit::Load);
    }

    #[test]
    fn a_busy_victim_drains_then_is_unloaded_and_interactive_models_go_last() {
        let mut h = HostModels::new(1, 2);
        h.observe(&ps(&["a", "c"]));
        h.sent("c", 0);
        h.ended("c", false);
        h.sent("a", 2);
        h.ended("a", false);
        // Both idle; c was used by an interactive key, a later by a batch one.
        assert_eq!(h.make_room("b", true), Some("a".into()), "the interactive key's model stays");
        h.unloaded("a");
        h.observe(&ps(&["a", "c"]));
        h.sent("a", 2);
        // a is busy, c idle but an interactive key's: a drains rather than c going.
        assert_eq!(h.fit("b", false), Fit::Stuck);
        assert_eq!(h.make_room("b", true), None, "a drains");
        assert_eq!(h.swap, Some(Swap::Draining("a".into())));
        assert_eq!(h.fit("a", false), Fit::Hold, "no more work for a draining model");
        assert_eq!(h.ended("a", false), Some("a".into()), "drained: unload it now");
        h.unloaded("a");
        assert_eq!(h.fit("b", false), Fit::Load);
        // Without interactive use, an idle model goes before a busy one.
        let mut h = HostModels::new(1, 2);
        h.observe(&ps(&["a", "c"]));
        h.sent("a", 2);
        assert_eq!(h.make_room("b", true), Some("c".into()));
    }

    #[test]
    fn a_listing_corrects_the_picture_but_keeps_what_is_in_use() {
        let mut h = HostModels::new(1, 3);
        h.observe(&ps(&["a", "b"]));
        h.sent("b", 1);
        h.observe(&ps(&["c"]));
        assert!(!h.resident("a") && h.resident("b") && h.resident("c"));
        h.ended("b", false);
        h.observe(&ps(&["c"]));
        assert!(!h.resident("b"));
        assert_eq!(h.models.len(), 1, "models neither resident nor in use are forgotten");
    }

    #[test]
    fn load_costs_are_learned_and_bounded() {
        let mut h = HostModels::new(1, 3);
        h.learn_load("a", 1000.0);
        h.learn_load("a:latest", 2000.0);
        assert_eq!(h.load_cost("a"), Some(1300.0));
        for i in 0..1000 {
            h.learn_load(&format!("m{i}"), 1.0);
        }
        assert_eq!(h.load_ms.len(), MAX_LEARNED);
    }

    #[test]
    fn the_other_instances_work_is_part_of_the_picture() {
        use std::collections::HashMap;
        let map = |pairs: &[(&str, usize)]| pairs.iter().map(|(m, n)| ((*m).to_owned(), *n)).collect::<HashMap<_, _>>();
        let mut h = HostModels::new(1, 2);
        h.observe(&ps(&["a", "b"]));
        // b busy through another instance: its one parallel slot is taken, and it is not idle.
        h.set_remote(&map(&[("b", 1)]), &map(&[]), &map(&[]), &map(&[]));
        assert_eq!(h.fit("b", false), Fit::Hold);
        assert_eq!(h.victim("c", false), Some(("a", true)), "the idle one goes first");
        // a used by an interactive key through another instance: batch work does not push it out.
        h.set_remote(&map(&[("b", 1)]), &map(&[("a", 1)]), &map(&[]), &map(&[]));
        assert_eq!(h.victim("c", true), Some(("b", false)));
        // Another instance is making room by b: b drains here too, and no second swap starts.
        h.set_remote(&map(&[]), &map(&[]), &map(&[("b", 1)]), &map(&[]));
        assert_eq!(h.fit("b", false), Fit::Hold);
        assert_eq!(h.fit("c", true), Fit::Hold, "room is being made: wait for it");
        assert_eq!(h.make_room("c", false), None);
        assert!(h.swap.is_none());
        // Its swap over (it unloaded b), b is gone here too, and this instance may load c.
        h.set_remote(&map(&[]), &map(&[]), &map(&[]), &map(&[("b", 1)]));
        assert!(!h.resident("b"));
        assert_eq!(h.fit("c", false), Fit::Load);
    }
}
