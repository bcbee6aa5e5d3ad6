//! The choice a host's queue makes when a slot is free: which waiting
//! request goes next.
//!
//! Only the head of each key's queue in each lane is a candidate, so a
//! key's requests in one lane never overtake each other. Each candidate
//! stands in a lane — its own, or one it was lifted to ([`lifted_lane`]) —
//! and has a turn: keys take turns within a lane, a key going to the back
//! once served, the lifted ones among them by when they joined. The gate
//! hands the candidates in (lane, turn) order. Each is described by how long
//! it has waited and how its model stands on the host ([`Fit`]); the rules:
//!
//! 1. A candidate needs a slot it may use: requests of interactive keys any
//!    free slot, the others only slots not reserved for interactive requests
//!    (`--upstream-reserve-interactive`), whatever lane they were lifted to.
//! 2. A candidate whose model's parallel slots are all busy (or loading) is
//!    held: sent now, it would only wait in Ollama's own first-come queue,
//!    in front of requests the gateway would rather send first.
//! 3. Aging lifts, and never jumps the queue: a request that has waited
//!    `--queue-aging` in a lane that got no slot for as long is lifted to
//!    the lane above (batch to standard; after as long again, if that lane
//!    starves too, to interactive), and takes its turn there among the keys
//!    already in it. A lane that is being served keeps its requests (keys
//!    take turns in it), so an old backlog of one key is never put in front
//!    of another key's request in the lane it was lifted to.
//! 4. Interactive candidates first, in turn order, whatever their model.
//! 5. Then standard and batch candidates in lane and turn order, but one
//!    that would load a model goes only if it has waited `--swap-max-wait`
//!    ("urgent"): until then requests for resident models go first, so
//!    they run together instead of forcing a swap each.
//! 6. A load that needs no busy model unloaded goes at once when no
//!    candidate waits for a resident model (nothing is gained by waiting);
//!    one that would interrupt a busy model ([`Fit::Stuck`]) always waits
//!    for its bound (rules 3 to 5).
//!
//! The worst wait of a lone request behind other keys' backlogs follows:
//! in its lane it waits for at most one request of each key ahead of it in
//! turn (natives and lifted ones alike); while a lane above it keeps every
//! slot, at most the aging bound per lane to climb, then its turn there.
//!
//! A load that needs room the host does not have ([`Fit::Stuck`]: every
//! resident model busy) is answered with [`Choice::MakeRoom`]: the gate then
//! stops sending work to one resident model and unloads it once idle.
//!
//! [`choose`] is the version the gate runs (one pass, no allocation);
//! [`choose_plain`] states the same rules as a ranking over every candidate,
//! and the tests compare the two on random queues.

/// How a waiting request's model stands on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// Resident, with a free parallel slot: it would start at once.
    Ready,
    /// Resident but every parallel slot busy, or being loaded or unloaded:
    /// sent now it would only queue at the host.
    Hold,
    /// Not resident, and the host has room to load it (or an idle model to unload).
    Load,
    /// Not resident, and every resident model is busy: room must be made first.
    Stuck,
}

/// One candidate: the head of one key's queue in one lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// The lane it stands in now: 0 interactive, 1 standard, 2 batch (its
    /// own, or one aging lifted it to).
    pub lane: usize,
    /// Its key's own lane (which slots it may use).
    pub native: usize,
    /// Milliseconds it has waited.
    pub waited_ms: u64,
    pub fit: Fit,
}

/// Free slots of the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Room {
    /// Slots free for an interactive request.
    pub free: usize,
    /// Slots free for any request (not reserved for interactive ones).
    pub shared: usize,
}

/// The scheduling bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// After this wait in a starving lane a request is lifted one lane.
    pub aging_ms: u64,
    /// After this wait a request that loads a model is no longer held back for resident ones.
    pub swap_max_wait_ms: u64,
}

/// What the gate should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// Send this candidate (by index) now.
    Run(usize),
    /// This candidate should go next but its model needs room: make some.
    MakeRoom(usize),
    /// Nothing may go now.
    Wait,
}

impl Head {
    /// An interactive request, or one lifted to the interactive lane, may
    /// push out a model an interactive key uses (see `residency`).
    pub fn may_push_interactive(&self) -> bool {
        self.lane == 0
    }
}

/// The lane a request of lane `native` that has waited `waited_ms` stands
/// in (rule 3): lifted one lane for each `aging_ms` it has waited, out of
/// lanes that are starving (`starving[l]`: lane `l` has had no slot for
/// `aging_ms`) only.
pub fn lifted_lane(native: usize, waited_ms: u64, starving: [bool; 3], rules: Rules) -> usize {
    let mut lane = native.min(2);
    let mut lifts = 1;
    while lane > 0 && starving[lane] && waited_ms >= rules.aging_ms.saturating_mul(lifts) {
        lane -= 1;
        lifts += 1;
    }
    lane
}

fn may_use_a_slot(h: &Head, room: Room) -> bool {
    if h.native == 0 { room.free > 0 } else { room.shared > 0 }
}

fn decide(i: usize, h: &Head) -> Choice {
    if h.fit == Fit::Stuck { Choice::MakeRoom(i) } else { Choice::Run(i) }
}

/// The next request to send (see the module's rules). `heads` are in lane
/// order, then in each lane's turn order.
pub fn choose(heads: &[Head], room: Room, rules: Rules) -> Choice {
    let mut first_in_order: Option<usize> = None;
    let mut first_load: Option<usize> = None;
    let mut resident_work = false;
    for (i, h) in heads.iter().enumerate() {
        resident_work |= matches!(h.fit, Fit::Ready | Fit::Hold);
        if h.fit == Fit::Hold || !may_use_a_slot(h, room) {
            continue;
        }
        let urgent = h.lane == 0 || h.fit == Fit::Ready || h.waited_ms >= rules.swap_max_wait_ms;
        if urgent {
            first_in_order.get_or_insert(i);
        } else if h.fit == Fit::Load {
            first_load.get_or_insert(i);
        }
    }
    let pick = first_in_order.or(if resident_work { None } else { first_load });
    pick.map_or(Choice::Wait, |i| decide(i, &heads[i]))
}

/// The same rules as [`choose`], written as a ranking of every candidate
/// (the tests' reference).
pub fn choose_plain(heads: &[Head], room: Room, rules: Rules) -> Choice {
    let resident_work = heads.iter().any(|h| h.fit == Fit::Ready || h.fit == Fit::Hold);
    let usable: Vec<(usize, &Head)> =
        heads.iter().enumerate().filter(|(_, h)| h.fit != Fit::Hold && may_use_a_slot(h, room)).collect();
    // (tier, order within the tier): the smallest goes.
    let rank = |i: usize, h: &Head| -> Option<(u8, usize)> {
        let holds_back = h.lane > 0 && h.fit != Fit::Ready && h.waited_ms < rules.swap_max_wait_ms;
        if !holds_back {
            Some((1, i))
        } else if h.fit == Fit::Load && !resident_work {
            Some((2, i))
        } else {
            None
        }
    };
    usable
        .iter()
        .filter_map(|&(i, h)| rank(i, h).map(|r| (r, i)))
        .min()
        .map_or(Choice::Wait, |(_, i)| decide(i, &heads[i]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: Rules = Rules { aging_ms: 30_000, swap_max_wait_ms: 5_000 };
    const ROOM: Room = Room { free: 2, shared: 1 };

    fn h(lane: usize, waited_ms: u64, fit: Fit) -> Head {
        Head { lane, native: lane, waited_ms, fit }
    }

    fn both(heads: &[Head], room: Room) -> Choice {
        let fast = choose(heads, room, RULES);
        assert_eq!(fast, choose_plain(heads, room, RULES), "{heads:?} {room:?}");
        fast
    }

    #[test]
    fn lanes_go_in_order_interactive_first() {
        let heads = [h(0, 1, Fit::Ready), h(1, 900, Fit::Ready), h(2, 2_000, Fit::Ready)];
        assert_eq!(both(&heads, ROOM), Choice::Run(0));
        assert_eq!(both(&heads[1..], ROOM), Choice::Run(0), "standard before batch");
    }

    #[test]
    fn reserved_slots_are_for_interactive_requests_only() {
        let heads = [h(1, 10, Fit::Ready), h(2, 10, Fit::Ready)];
        assert_eq!(both(&heads, Room { free: 1, shared: 0 }), Choice::Wait);
        let heads = [h(0, 1, Fit::Ready), h(1, 10, Fit::Ready)];
        assert_eq!(both(&heads, Room { free: 1, shared: 0 }), Choice::Run(0));
    }

    #[test]
    fn aging_lifts_one_lane_at_a_time_and_only_out_of_a_starving_lane() {
        let starving = [true, true, true];
        assert_eq!(lifted_lane(2, 29_999, starving, RULES), 2);
        assert_eq!(lifted_lane(2, 30_000, starving, RULES), 1, "batch to standard after one bound");
        assert_eq!(lifted_lane(2, 60_000, starving, RULES), 0, "to interactive after two");
        assert_eq!(lifted_lane(1, 30_000, starving, RULES), 0);
        assert_eq!(lifted_lane(0, 90_000, starving, RULES), 0);
        // A lane that is being served keeps its requests, however old.
        assert_eq!(lifted_lane(2, 90_000, [true, true, false], RULES), 2);
        // Lifted out of a starving batch lane into a standard lane being served: it stays there.
        assert_eq!(lifted_lane(2, 90_000, [true, false, true], RULES), 1);
    }

    #[test]
    fn a_lifted_request_takes_its_turn_in_its_new_lane() {
        // The gate puts a lifted batch head in the standard lane by its turn:
        // here after a standard key's request, which goes first.
        let lifted = Head { lane: 1, native: 2, waited_ms: 40_000, fit: Fit::Ready };
        let heads = [h(1, 5, Fit::Ready), lifted];
        assert_eq!(both(&heads, ROOM), Choice::Run(0));
        assert_eq!(both(&[lifted, h(1, 5, Fit::Ready)], ROOM), Choice::Run(0), "or before, when it is its turn");
        // Lifted to interactive, it still may not take a slot kept for interactive keys.
        let lifted = Head { lane: 0, native: 2, waited_ms: 70_000, fit: Fit::Ready };
        assert_eq!(both(&[lifted], Room { free: 1, shared: 0 }), Choice::Wait);
    }

    #[test]
    fn a_resident_model_goes_before_a_load_until_the_load_waited_swap_max_wait() {
        let heads = [h(1, 4_000, Fit::Load), h(2, 10, Fit::Ready)];
        assert_eq!(both(&heads, ROOM), Choice::Run(1), "the batch request on the resident model");
        let heads = [h(1, 5_000, Fit::Load), h(2, 10, Fit::Ready)];
        assert_eq!(both(&heads, ROOM), Choice::Run(0), "the swap may wait no longer");
        // With nothing waiting for a resident model, a load goes at once...
        let heads = [h(1, 10, Fit::Load), h(2, 10, Fit::Load)];
        assert_eq!(both(&heads, ROOM), Choice::Run(0));
        // ...but not while a request waits for a busy resident model's slot,
        let heads = [h(1, 10, Fit::Load), h(2, 10, Fit::Hold)];
        assert_eq!(both(&heads, ROOM), Choice::Wait);
        // and a load that would interrupt a busy model waits its bound.
        assert_eq!(both(&[h(1, 10, Fit::Stuck)], ROOM), Choice::Wait);
        assert_eq!(both(&[h(1, 5_000, Fit::Stuck)], ROOM), Choice::MakeRoom(0));
    }

    #[test]
    fn interactive_loads_are_never_held_back() {
        let heads = [h(0, 0, Fit::Load), h(1, 10, Fit::Ready)];
        assert_eq!(both(&heads, ROOM), Choice::Run(0));
        let heads = [h(0, 0, Fit::Stuck), h(1, 10, Fit::Ready)];
        assert_eq!(both(&heads, ROOM), Choice::MakeRoom(0));
    }

    #[test]
    fn held_requests_never_go() {
        assert_eq!(both(&[h(0, 60_000, Fit::Hold), h(1, 60_000, Fit::Hold)], ROOM), Choice::Wait);
        assert_eq!(both(&[], ROOM), Choice::Wait);
        assert_eq!(both(&[h(0, 1, Fit::Ready)], Room { free: 0, shared: 0 }), Choice::Wait);
    }

    #[test]
    fn the_fast_choice_matches_the_plain_one_on_random_queues() {
        let mut rng = fastrand::Rng::with_seed(17);
        let fits = [Fit::Ready, Fit::Hold, Fit::Load, Fit::Stuck];
        for _ in 0..200_000 {
            let n = rng.usize(0..8);
            let mut heads: Vec<Head> = (0..n)
                .map(|_| {
                    let waited = *rng.choice(&[0, 10, 4_999, 5_000, 6_000, 29_999, 30_000, 45_000]).unwrap_or(&0);
                    let native = rng.usize(0..3);
                    let lane = rng.usize(0..=native);
                    Head { lane, native, waited_ms: waited + rng.u64(0..3), fit: fits[rng.usize(0..4)] }
                })
                .collect();
            heads.sort_by_key(|h| h.lane);
            let room = Room { free: rng.usize(0..3), shared: rng.usize(0..2) };
            let room = Room { shared: room.shared.min(room.free), ..room };
            both(&heads, room);
        }
    }
}
