//! A request's lane in the upstream queue: its key's `priority`, which the
//! request may lower with `x-priority` (a batch job run with an interactive
//! key can step aside) but never raise (a key cannot make itself urgent).

use crate::error::ApiError;
use crate::store::keys::Priority;

/// The lane of a request by `key_priority` that sent `x-priority: header`
/// (empty: none). A header naming a higher lane is read as the key's own; an
/// unknown value is a 400, so a typo does not go unnoticed.
pub fn lane(key_priority: Priority, header: &str) -> Result<Priority, ApiError> {
    if header.is_empty() {
        return Ok(key_priority);
    }
    match Priority::parse(header) {
        Some(asked) => Ok(asked.max(key_priority)),
        None => {
            let shown: String = header.chars().filter(|c| !c.is_control()).take(32).collect();
            Err(ApiError::invalid(
                "x-priority",
                format!(
                    "Unknown x-priority '{shown}': use 'interactive', 'standard' or 'batch' (a request may lower its key's lane, not raise it)."
                ),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Priority::*;

    #[test]
    fn a_request_may_lower_its_lane_but_never_raise_it() {
        assert_eq!(lane(Standard, "").unwrap(), Standard);
        assert_eq!(lane(Interactive, "batch").unwrap(), Batch);
        assert_eq!(lane(Interactive, "Standard").unwrap(), Standard);
        assert_eq!(lane(Batch, "interactive").unwrap(), Batch);
        assert_eq!(lane(Standard, "interactive").unwrap(), Standard);
        assert_eq!(lane(Standard, "urgent").unwrap_err().status, 400);
    }
}
