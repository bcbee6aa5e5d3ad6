//! Small JSON helpers every layer uses: writing a string literal or a
//! number straight into an output buffer (responses are written, not built
//! as values and serialized), and parsing a request body into borrowed types
//! with a 400 that names the field at fault.

use serde::Deserialize;

use crate::error::ApiError;

/// Appends a Rust string as a JSON string literal (with quotes).
pub fn json_string(out: &mut Vec<u8>, s: &str) {
    // serde_json's escaping writes into a Vec without failing.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Appends a Rust string as the body of a JSON string literal (escaped, without quotes).
pub fn json_string_body(out: &mut Vec<u8>, s: &str) {
    let start = out.len();
    json_string(out, s);
    // Drop the quotes serde_json wrote around it.
    out.copy_within(start + 1.., start);
    out.truncate(out.len() - 2);
}

/// Appends a decimal number.
pub fn number(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Parses JSON into `T`; on failure, parses again to name the field at fault.
pub fn parse_json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    match serde_json::from_slice(body) {
        Ok(v) => Ok(v),
        Err(first) => {
            if std::str::from_utf8(body).is_err() {
                return Err(ApiError::bad_request("The request body is not valid UTF-8."));
            }
            if first.is_syntax() || first.is_eof() {
                return Err(ApiError::bad_request(format!(
                    "The request body is not valid JSON ({first}). Send a JSON object."
                )));
            }
            let mut de = serde_json::Deserializer::from_slice(body);
            let err = match serde_path_to_error::deserialize::<_, T>(&mut de) {
                Ok(_) => {
                    return Err(ApiError::bad_request(format!("Invalid request body: {first}.")));
                }
                Err(e) => e,
            };
            let path = err.path().to_string();
            let inner = err.into_inner();
            if path == "." || path.is_empty() {
                Err(ApiError::bad_request(format!("Invalid request body: {inner}.")))
            } else {
                Err(ApiError::invalid(path.clone(), format!("Invalid value for '{path}': {inner}.")))
            }
        }
    }
}

/// Deepest nesting passed through to the upstream in raw fields (`tools`, a schema).
pub const MAX_PASSTHROUGH_DEPTH: usize = 64;

/// True when the JSON text nests no deeper than `limit` (serde_json skips raw
/// values without a depth limit, and the upstream should not get to choke on them).
pub fn nesting_within(json: &str, limit: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in json.as_bytes() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return false;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    true
}

/// Why a body failed [`distinct_members`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberError {
    /// Not JSON (the parser's message).
    Syntax(String),
    /// Nested deeper than the limit.
    TooDeep,
    /// An object names a member twice (as `fold` sees names): the second name, as sent.
    Duplicate(String),
}

/// Walks a whole JSON text and checks that it nests no deeper than `limit`
/// and that no object has two members whose names `fold` makes equal.
///
/// For a body that goes upstream as the client wrote it: JSON leaves a
/// repeated member to the reader (serde takes one, Go's decoder the last),
/// so a body the gateway forwards must have one reading only. `fold` is the
/// reader's notion of a name (Go matches struct fields without regard to
/// case).
pub fn distinct_members(json: &[u8], limit: usize, fold: fn(&str) -> String) -> Result<(), MemberError> {
    use serde::de::{DeserializeSeed, Error as _, MapAccess, SeqAccess, Visitor};
    use std::borrow::Cow;
    use std::cell::RefCell;

    #[derive(Clone, Copy)]
    struct Walk<'f> {
        depth: usize,
        limit: usize,
        fold: fn(&str) -> String,
        found: &'f RefCell<Option<MemberError>>,
    }

    impl Walk<'_> {
        fn deeper<E: serde::de::Error>(self) -> Result<Self, E> {
            if self.depth >= self.limit {
                *self.found.borrow_mut() = Some(MemberError::TooDeep);
                return Err(E::custom("too deep"));
            }
            Ok(Walk { depth: self.depth + 1, ..self })
        }
    }

    impl<'de> DeserializeSeed<'de> for Walk<'_> {
        type Value = ();
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Walk<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("JSON")
        }
        fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<(), M::Error> {
            let inner = self.deeper()?;
            let mut seen: Vec<String> = Vec::new();
            while let Some(name) = map.next_key::<Cow<'de, str>>()? {
                let folded = (self.fold)(&name);
                if seen.contains(&folded) {
                    *self.found.borrow_mut() = Some(MemberError::Duplicate(name.into_owned()));
                    return Err(M::Error::custom("duplicate member"));
                }
                seen.push(folded);
                map.next_value_seed(inner)?;
            }
            Ok(())
        }
        fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<(), S::Error> {
            let inner = self.deeper()?;
            while seq.next_element_seed(inner)?.is_some() {}
            Ok(())
        }
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
    }

    let found = RefCell::new(None);
    let walk = Walk { depth: 0, limit, fold, found: &found };
    let mut de = serde_json::Deserializer::from_slice(json);
    let result = walk.deserialize(&mut de).and_then(|()| de.end());
    match (result, found.into_inner()) {
        (Ok(()), _) => Ok(()),
        (Err(_), Some(e)) => Err(e),
        (Err(e), None) => Err(MemberError::Syntax(e.to_string())),
    }
}

/// A member name as the identity: names are compared exactly.
pub fn exact_name(name: &str) -> String {
    name.to_owned()
}
