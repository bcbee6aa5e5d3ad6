//! What the benches that drive a key's request share: the limits they give
//! the key. Every limit and quota is set, so each is checked on every
//! request as it would be in production, and none is ever reached.

use ai_gateway::store::keys::Limits;

/// Every limit and quota set, too high to be reached by a bench.
pub fn every_limit_set() -> Limits {
    Limits {
        rpm: Some(u64::MAX / 4),
        tpm: Some(u64::MAX / 4),
        max_concurrent: Some(1_000_000),
        daily_tokens: Some(u64::MAX / 4),
        monthly_tokens: Some(u64::MAX / 4),
    }
}
