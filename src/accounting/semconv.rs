//! The OpenTelemetry names the gateway speaks, in one versioned table: the
//! attributes, spans and events of its traces and the names and bucket
//! advice of its GenAI metrics. The GenAI conventions are still marked
//! Development and move (they left the main semantic-conventions repository
//! for `semantic-conventions-genai` in 2026): when one is renamed, the
//! change is one edit here and one in docs/PROTOCOL.md, and
//! `SEMCONV_VERSION` / `SCHEMA_URL` say which version the names follow.

/// The semantic conventions version these names follow.
pub const SEMCONV_VERSION: &str = "1.37.0";
pub const SCHEMA_URL: &str = "https://opentelemetry.io/schemas/1.37.0";

// GenAI (gen_ai.*), the conventions' own.
pub const OPERATION: &str = "gen_ai.operation.name";
pub const PROVIDER: &str = "gen_ai.provider.name";
pub const REQUEST_MODEL: &str = "gen_ai.request.model";
pub const RESPONSE_MODEL: &str = "gen_ai.response.model";
pub const REQUEST_MAX_TOKENS: &str = "gen_ai.request.max_tokens";
pub const REQUEST_TEMPERATURE: &str = "gen_ai.request.temperature";
pub const REQUEST_TOP_P: &str = "gen_ai.request.top_p";
pub const REQUEST_TOP_K: &str = "gen_ai.request.top_k";
pub const REQUEST_SEED: &str = "gen_ai.request.seed";
pub const REQUEST_FREQUENCY_PENALTY: &str = "gen_ai.request.frequency_penalty";
pub const REQUEST_PRESENCE_PENALTY: &str = "gen_ai.request.presence_penalty";
pub const REQUEST_STREAM: &str = "gen_ai.request.stream";
pub const USAGE_INPUT_TOKENS: &str = "gen_ai.usage.input_tokens";
pub const USAGE_OUTPUT_TOKENS: &str = "gen_ai.usage.output_tokens";
pub const USAGE_CACHE_READ_INPUT_TOKENS: &str = "gen_ai.usage.cache_read.input_tokens";
pub const RESPONSE_FINISH_REASONS: &str = "gen_ai.response.finish_reasons";
pub const RESPONSE_ID: &str = "gen_ai.response.id";
pub const CONVERSATION_ID: &str = "gen_ai.conversation.id";
/// Message contents, only for a key opted in (JSON, the conventions' shape).
pub const INPUT_MESSAGES: &str = "gen_ai.input.messages";
pub const OUTPUT_MESSAGES: &str = "gen_ai.output.messages";
/// `gen_ai.provider.name`'s value: every host is Ollama.
pub const PROVIDER_OLLAMA: &str = "ollama";

// HTTP, server and errors (stable conventions).
pub const SERVER_ADDRESS: &str = "server.address";
pub const SERVER_PORT: &str = "server.port";
pub const HTTP_METHOD: &str = "http.request.method";
pub const HTTP_ROUTE: &str = "http.route";
pub const HTTP_STATUS: &str = "http.response.status_code";
pub const ERROR_TYPE: &str = "error.type";

// The gateway's own, in one namespace.
pub const REQUEST_ID: &str = "ai_gateway.request.id";
pub const KEY_ID: &str = "ai_gateway.key.id";
pub const LANE: &str = "ai_gateway.lane";
pub const FRONT: &str = "ai_gateway.front";
pub const SESSION_ID: &str = "ai_gateway.session.id";
pub const QUEUE_WAIT: &str = "ai_gateway.queue.wait";
pub const MODEL_LOAD_FORCED: &str = "ai_gateway.model_load.forced";
pub const MODEL_LOAD_DURATION: &str = "ai_gateway.model_load.duration";
pub const TIME_TO_FIRST_TOKEN: &str = "ai_gateway.time_to_first_token";
pub const INPUT_TOKENS_ESTIMATE: &str = "ai_gateway.usage.input_tokens.estimate";
pub const USAGE_ESTIMATED: &str = "ai_gateway.usage.estimated";
pub const CANCELLED: &str = "ai_gateway.cancelled";

// Spans and events.
pub const SPAN_QUEUE: &str = "ai_gateway.queue";
pub const EVENT_ADMITTED: &str = "ai_gateway.admitted";
pub const EVENT_FIRST_TOKEN: &str = "ai_gateway.first_token";

// Metrics (histograms, with the conventions' bucket advice), as Prometheus
// names them: dots become underscores, a unit of seconds a `_seconds`
// suffix, and the attributes labels.
pub const METRIC_TOKEN_USAGE: &str = "gen_ai_client_token_usage";
pub const METRIC_REQUEST_DURATION: &str = "gen_ai_server_request_duration_seconds";
pub const METRIC_TIME_TO_FIRST_TOKEN: &str = "gen_ai_server_time_to_first_token_seconds";
// The same metrics over OTLP, by their own names and units.
pub const OTLP_TOKEN_USAGE: &str = "gen_ai.client.token.usage";
pub const OTLP_REQUEST_DURATION: &str = "gen_ai.server.request.duration";
pub const OTLP_TIME_TO_FIRST_TOKEN: &str = "gen_ai.server.time_to_first_token";
pub const UNIT_TOKEN: &str = "{token}";
pub const UNIT_SECONDS: &str = "s";
/// `gen_ai.token.type`: which side of the usage a token count is.
pub const TOKEN_TYPE: &str = "gen_ai.token.type";
pub const TOKEN_INPUT: &str = "input";
pub const TOKEN_OUTPUT: &str = "output";
/// Bucket advice of `gen_ai.client.token.usage` (tokens).
pub const TOKEN_BUCKETS: [f64; 14] = [
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0,
    67108864.0,
];
/// Bucket advice of `gen_ai.server.request.duration` (seconds).
pub const DURATION_BUCKETS: [f64; 14] =
    [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92];
/// Bucket advice of `gen_ai.server.time_to_first_token` (seconds).
pub const TIME_TO_FIRST_TOKEN_BUCKETS: [f64; 16] =
    [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0];

/// A name as a Prometheus label (`gen_ai.request.model` → `gen_ai_request_model`).
pub fn label(name: &str) -> String {
    name.replace('.', "_")
}

#[cfg(test)]
mod tests {
    /// Every name of this table is in docs/PROTOCOL.md (so a rename is
    /// made in both, or this fails), and the version too.
    #[test]
    fn the_protocol_document_names_every_name_of_the_table() {
        let doc = include_str!("../../docs/PROTOCOL.md");
        let code = include_str!("semconv.rs");
        let mut names = 0;
        for line in code.lines().filter(|l| l.starts_with("pub const ") && l.contains(": &str = \"")) {
            let value = line.split('"').nth(1).unwrap_or_default();
            if value.starts_with("https://") || value == super::SEMCONV_VERSION {
                continue;
            }
            assert!(doc.contains(&format!("`{value}`")), "docs/PROTOCOL.md lacks `{value}`");
            names += 1;
        }
        assert!(names > 40, "the table was read ({names} names)");
        assert!(doc.contains(&format!("**{}**", super::SEMCONV_VERSION)));
    }
}
