//! Identifiers the gateway hands out: completion ids and tool-call ids.
//!
//! Ollama numbers its completions `chatcmpl-0`..`chatcmpl-998`, which collide
//! across requests; ours carry 29 random alphanumerics (about 170 bits), so a
//! completion id is unique and can name the request in logs and usage
//! records. They come from a per-thread generator seeded from the OS: ids are
//! not secrets, so they need uniqueness, not cryptographic strength.

/// Length of the random part of a completion id.
const ID_CHARS: usize = 29;

fn push_random(id: &mut String, n: usize) {
    for _ in 0..n {
        id.push(fastrand::alphanumeric());
    }
}

/// A fresh id with the given prefix: `chatcmpl-`, `cmpl-`, `req-`.
pub fn request_id(prefix: &str) -> String {
    let mut id = String::with_capacity(prefix.len() + ID_CHARS);
    id.push_str(prefix);
    push_random(&mut id, ID_CHARS);
    id
}

/// A fresh id of `n` random alphanumerics after `prefix` (`msg_`, `toolu_`, `resp_`, `fc_`…).
pub fn prefixed(prefix: &str, n: usize) -> String {
    let mut id = String::with_capacity(prefix.len() + n);
    id.push_str(prefix);
    push_random(&mut id, n);
    id
}

/// A fresh tool-call id, for upstreams that send calls without one.
pub fn tool_call_id() -> String {
    let mut id = String::with_capacity(13);
    id.push_str("call_");
    push_random(&mut id, 8);
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_long_random_and_unique() {
        let a = request_id("chatcmpl-");
        let b = request_id("chatcmpl-");
        assert_ne!(a, b);
        assert_eq!(a.len(), 9 + 29);
        assert!(a["chatcmpl-".len()..].chars().all(|c| c.is_ascii_alphanumeric()));
        assert!(tool_call_id().starts_with("call_"));
    }
}
