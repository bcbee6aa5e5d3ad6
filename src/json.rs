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
