//! The one error type of the API boundary (docs/PROTOCOL.md, "Errors").
//!
//! Errors are values: wherever a request goes wrong (parsing, validation, the
//! upstream) an [`ApiError`] is made with its status, OpenAI's `type` and
//! `code`, a `param` and a message written for a person, and carried back to
//! the single place that writes responses. There it is written in the
//! [`Shape`] of the protocol the request came in on: OpenAI's (the default,
//! also the Responses API's), Anthropic's, or Ollama's own. Messages never
//! contain a key's secret.

use std::borrow::Cow;

/// The error shape of the protocol a request came in on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Shape {
    /// `{"error":{"message","type","param","code"}}`: chat, completions,
    /// embeddings, models, the Responses API, the gateway's own routes.
    #[default]
    OpenAi,
    /// `{"type":"error","error":{"type","message"}}`: the Messages API.
    Anthropic,
    /// `{"error":"message"}`: Ollama's own API.
    Ollama,
}

/// An error response: `{"error":{"message","type","param","code"}}` (in OpenAI's shape).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    /// OpenAI's `type`: `invalid_request_error`, `api_error`, `requests`, …
    pub kind: &'static str,
    pub code: Option<&'static str>,
    pub param: Option<Cow<'static, str>>,
    pub message: Cow<'static, str>,
}

impl ApiError {
    /// An error with its status, `type`, `code` and message (and no `param`).
    pub fn new(status: u16, kind: &'static str, code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self { status, kind, code: Some(code), param: None, message: message.into() }
    }

    /// 400 `invalid_request` naming the offending field.
    pub fn invalid(param: impl Into<Cow<'static, str>>, message: impl Into<Cow<'static, str>>) -> Self {
        let mut e = Self::new(400, "invalid_request_error", "invalid_request", message);
        e.param = Some(param.into());
        e
    }

    /// 400 `invalid_request` about the request as a whole.
    pub fn bad_request(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(400, "invalid_request_error", "invalid_request", message)
    }

    pub fn request_too_large(limit: usize) -> Self {
        Self::new(
            413,
            "invalid_request_error",
            "request_too_large",
            format!("The request body is larger than the limit of {limit} bytes. Send a smaller request."),
        )
    }

    pub fn model_not_found(model: &str) -> Self {
        let mut e = Self::new(
            404,
            "invalid_request_error",
            "model_not_found",
            format!("The model '{model}' does not exist. List the available models with GET /v1/models."),
        );
        e.param = Some("model".into());
        e
    }

    pub fn unknown_url(method: &str, path: &str) -> Self {
        let path: String = path.chars().take(200).collect();
        Self::new(
            404,
            "invalid_request_error",
            "unknown_url",
            format!("Unknown request URL: {method} {path}. The API is served under /api/v1 and /v1."),
        )
    }

    pub fn method_not_allowed(method: &str, path: &str, allow: &str) -> Self {
        let path: String = path.chars().take(200).collect();
        Self::new(
            405,
            "invalid_request_error",
            "method_not_allowed",
            format!("{method} is not allowed on {path}; use {allow}."),
        )
    }

    pub fn upstream_unavailable(detail: &str) -> Self {
        Self::new(
            502,
            "api_error",
            "upstream_unavailable",
            format!("The model server could not be reached ({detail}). Try again shortly."),
        )
    }

    pub fn upstream_timeout(what: &str) -> Self {
        Self::new(504, "api_error", "upstream_timeout", format!("The model server did not answer in time ({what})."))
    }

    /// The gateway is stopping and its grace period for requests in flight ran out.
    pub fn shutting_down() -> Self {
        Self::new(
            503,
            "api_error",
            "gateway_shutting_down",
            "The gateway is shutting down and could not finish this request in time. Try again.",
        )
    }

    /// An upstream error passed on with the upstream's status and message.
    pub fn upstream(status: u16, message: String) -> Self {
        Self::new(status, "api_error", "upstream_error", message)
    }

    /// The status this error is sent with in `shape`: Anthropic's clients
    /// know a full upstream queue as 529 `overloaded_error`.
    pub fn status_in(&self, shape: Shape) -> u16 {
        match (shape, self.code) {
            (Shape::Anthropic, Some("upstream_overloaded" | "gateway_overloaded")) => 529,
            _ => self.status,
        }
    }

    /// Anthropic's error `type` for this error.
    pub fn anthropic_type(&self) -> &'static str {
        match self.status_in(Shape::Anthropic) {
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            529 => "overloaded_error",
            s if s < 500 => "invalid_request_error",
            _ => "api_error",
        }
    }

    /// The JSON body of this error in `shape`.
    pub fn body_in(&self, shape: Shape) -> Vec<u8> {
        match shape {
            Shape::OpenAi => self.body(),
            Shape::Anthropic => {
                let mut out = Vec::with_capacity(80 + self.message.len());
                out.extend_from_slice(b"{\"type\":\"error\",\"error\":{\"type\":\"");
                out.extend_from_slice(self.anthropic_type().as_bytes());
                out.extend_from_slice(b"\",\"message\":");
                string(&mut out, &self.message);
                out.extend_from_slice(b"}}");
                out
            }
            Shape::Ollama => {
                let mut out = Vec::with_capacity(16 + self.message.len());
                out.extend_from_slice(b"{\"error\":");
                string(&mut out, &self.message);
                out.push(b'}');
                out
            }
        }
    }

    /// The JSON body of this error (OpenAI's shape, the gateway's own).
    pub fn body(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(160 + self.message.len());
        out.extend_from_slice(b"{\"error\":{\"message\":");
        string(&mut out, &self.message);
        out.extend_from_slice(b",\"type\":");
        string(&mut out, self.kind);
        out.extend_from_slice(b",\"param\":");
        match &self.param {
            Some(p) => string(&mut out, p),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"code\":");
        match self.code {
            Some(c) => string(&mut out, c),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b"}}");
        out
    }
}

/// Appends a string as a JSON string literal.
fn string(out: &mut Vec<u8>, s: &str) {
    // serde_json's escaping writes into a Vec without failing.
    let _ = serde_json::to_writer(&mut *out, s);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_the_openai_shape() {
        let e = ApiError::invalid("messages", "'messages' must not be empty.");
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error":{"message":"'messages' must not be empty.","type":"invalid_request_error","param":"messages","code":"invalid_request"}})
        );
        let v: serde_json::Value = serde_json::from_slice(&ApiError::upstream_timeout("x").body()).unwrap();
        assert_eq!(v["error"]["param"], serde_json::Value::Null);
        assert_eq!(v["error"]["code"], "upstream_timeout");
    }

    #[test]
    fn anthropic_and_ollama_shapes() {
        let e = ApiError::invalid("max_tokens", "'max_tokens' is required.");
        let v: serde_json::Value = serde_json::from_slice(&e.body_in(Shape::Anthropic)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"error","error":{"type":"invalid_request_error","message":"'max_tokens' is required."}})
        );
        let v: serde_json::Value = serde_json::from_slice(&e.body_in(Shape::Ollama)).unwrap();
        assert_eq!(v, serde_json::json!({"error":"'max_tokens' is required."}));
        let full = ApiError::new(503, "api_error", "upstream_overloaded", "busy");
        assert_eq!((full.status_in(Shape::Anthropic), full.anthropic_type()), (529, "overloaded_error"));
        assert_eq!(full.status_in(Shape::OpenAi), 503);
        for (status, kind) in [
            (401, "authentication_error"),
            (403, "permission_error"),
            (404, "not_found_error"),
            (413, "request_too_large"),
            (429, "rate_limit_error"),
            (408, "invalid_request_error"),
            (500, "api_error"),
            (502, "api_error"),
        ] {
            assert_eq!(ApiError::new(status, "x", "y", "m").anthropic_type(), kind, "{status}");
        }
    }
}
