//! The route table: method + path → endpoint. The only place that knows URLs.
//!
//! The API is served under `/api/v1` (as in the product docs) and the same
//! routes under `/v1` (where OpenAI clients look by default). A trailing
//! slash is tolerated. `OPTIONS` on any known route is a CORS preflight.

use crate::error::Shape;
use crate::http::request::{Method, percent_decode};

/// An endpoint of the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Health,
    /// `GET /readyz`: ready when some upstream host is healthy.
    Ready,
    ChatCompletions,
    /// Legacy text completions (`/completions`, autocomplete and fill-in-the-middle).
    Completions,
    Embeddings,
    /// Anthropic's Messages API (`/v1/messages`).
    Messages,
    /// `messages/count_tokens`: a prompt's tokens, estimated without the GPU.
    CountTokens,
    /// OpenAI's Responses API (`/v1/responses`).
    Responses,
    /// `GET|DELETE responses/{id}`: a stored response.
    Response(String),
    /// Ollama's own API under `/api/` (see [`Native`]).
    Ollama(Native),
    Models,
    /// `models/{id}`; the id is percent-decoded and may contain `/`.
    Model(String),
    /// `GET usage`: the key's own usage and limits.
    Usage,
    /// `GET /metrics`: Prometheus text (admin key; keyless only on `--metrics-listen`).
    Metrics,
    /// `GET /admin/v1/usage?key=&model=&from=&to=&by=`
    AdminUsage,
    /// `GET|POST /admin/v1/keys`
    AdminKeys,
    /// `GET|PATCH|DELETE /admin/v1/keys/{id}`
    AdminKey(String),
    /// `POST /admin/v1/keys/{id}/rotate`
    AdminKeyRotate(String),
    /// `GET /admin/v1/live`: in flight, recent totals, upstream hosts (the dashboard's live view).
    AdminLive,
    /// `GET /`: the docs page.
    Docs,
    /// `GET /dashboard`: the admin dashboard (its data comes from the admin API).
    Dashboard,
    /// `GET /assets/{name}`: the pages' stylesheet and scripts.
    Asset(String),
}

impl Route {
    /// The route's name in metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Route::Health => "health",
            Route::Ready => "ready",
            Route::ChatCompletions => "chat_completions",
            Route::Completions => "completions",
            Route::Embeddings => "embeddings",
            Route::Messages => "messages",
            Route::CountTokens => "count_tokens",
            Route::Responses => "responses",
            Route::Response(_) => "response",
            Route::Ollama(n) => match n {
                Native::Chat => "ollama_chat",
                Native::Generate => "ollama_generate",
                Native::Embed | Native::Embeddings => "ollama_embed",
                Native::Tags => "ollama_tags",
                Native::Show => "ollama_show",
                Native::Version => "ollama_version",
                Native::Ps => "ollama_ps",
                Native::Manage { .. } => "ollama_manage",
                Native::WebSearch | Native::WebFetch => "ollama_web",
            },
            Route::Models => "models",
            Route::Model(_) => "model",
            Route::Usage => "usage",
            Route::Metrics => "metrics",
            Route::AdminUsage => "admin_usage",
            Route::AdminKeys | Route::AdminKey(_) | Route::AdminKeyRotate(_) => "admin_keys",
            Route::AdminLive => "admin_live",
            Route::Docs | Route::Dashboard | Route::Asset(_) => "web",
        }
    }

    /// The protocol the route belongs to, as usage records it.
    pub fn api(&self) -> &'static str {
        match self {
            Route::Messages | Route::CountTokens => "anthropic",
            Route::Responses | Route::Response(_) => "responses",
            Route::Ollama(_) => "ollama",
            _ => crate::accounting::usage::OPENAI_API,
        }
    }

    /// The error shape of the route's protocol.
    pub fn shape(&self) -> Shape {
        match self {
            Route::Messages | Route::CountTokens => Shape::Anthropic,
            Route::Ollama(_) => Shape::Ollama,
            _ => Shape::OpenAi,
        }
    }

    /// Whether the route needs an API key (everything but the health checks).
    pub fn needs_key(&self) -> bool {
        !matches!(self, Route::Health | Route::Ready | Route::Docs | Route::Dashboard | Route::Asset(_))
    }

    /// Whether the route needs a key with the admin role.
    pub fn needs_admin(&self) -> bool {
        matches!(
            self,
            Route::AdminKeys
                | Route::AdminKey(_)
                | Route::AdminKeyRotate(_)
                | Route::AdminUsage
                | Route::AdminLive
                | Route::Metrics
                | Route::Ollama(Native::Manage { .. })
        )
    }
}

/// A route of Ollama's own API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Native {
    Chat,
    Generate,
    Embed,
    /// The older `/api/embeddings`.
    Embeddings,
    Tags,
    Show,
    Version,
    Ps,
    /// Model management (admin keys): `pull`, `push`, `create`, `copy`, `delete`.
    Manage {
        method: &'static str,
        path: &'static str,
    },
    /// Web search and fetch, run by a host signed in to ollama.com on its
    /// owner's account (keys granted `web_search`).
    WebSearch,
    WebFetch,
}

impl Native {
    /// The upstream path.
    pub fn path(&self) -> &'static str {
        match self {
            Native::Chat => "/api/chat",
            Native::Generate => "/api/generate",
            Native::Embed => "/api/embed",
            Native::Embeddings => "/api/embeddings",
            Native::Tags => "/api/tags",
            Native::Show => "/api/show",
            Native::Version => "/api/version",
            Native::Ps => "/api/ps",
            Native::Manage { path, .. } => path,
            Native::WebSearch => "/api/experimental/web_search",
            Native::WebFetch => "/api/experimental/web_fetch",
        }
    }
}

/// The error shape of the protocol a path belongs to, for a request that is
/// not routed to an endpoint (a wrong method, an unknown path): Ollama's
/// under `/api/` (but `/api/v1/`), Anthropic's for `messages`, else OpenAI's.
pub fn shape_of_path(path: &str) -> Shape {
    if path.starts_with("/api/") && !path.starts_with("/api/v1/") {
        return Shape::Ollama;
    }
    let rest = path.strip_prefix("/api/v1/").or_else(|| path.strip_prefix("/v1/")).unwrap_or("");
    if rest == "messages" || rest.starts_with("messages/") { Shape::Anthropic } else { Shape::OpenAi }
}

/// Ollama's own routes: path → route and allowed methods.
fn native_route(path: &str) -> Option<(Route, &'static str)> {
    let path = path.strip_suffix('/').unwrap_or(path);
    let (native, allow) = match path {
        "/api/chat" => (Native::Chat, POST),
        "/api/generate" => (Native::Generate, POST),
        "/api/embed" => (Native::Embed, POST),
        "/api/embeddings" => (Native::Embeddings, POST),
        "/api/tags" => (Native::Tags, GET),
        "/api/show" => (Native::Show, POST),
        "/api/version" => (Native::Version, GET),
        "/api/ps" => (Native::Ps, GET),
        "/api/pull" | "/api/push" | "/api/create" | "/api/copy" => {
            let path = match path {
                "/api/pull" => "/api/pull",
                "/api/push" => "/api/push",
                "/api/create" => "/api/create",
                _ => "/api/copy",
            };
            (Native::Manage { method: "POST", path }, POST)
        }
        "/api/delete" => (Native::Manage { method: "DELETE", path: "/api/delete" }, DELETE),
        "/api/experimental/web_search" | "/api/web_search" => (Native::WebSearch, POST),
        "/api/experimental/web_fetch" | "/api/web_fetch" => (Native::WebFetch, POST),
        _ => return None,
    };
    Some((Route::Ollama(native), allow))
}

/// The result of routing a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Routed {
    Endpoint(Route),
    /// `OPTIONS` on a known route.
    Preflight {
        allow: &'static str,
    },
    /// Known path, wrong method.
    MethodNotAllowed {
        allow: &'static str,
    },
    NotFound,
}

const GET: &str = "GET, HEAD, OPTIONS";
const POST: &str = "POST, OPTIONS";
const GET_POST: &str = "GET, HEAD, POST, OPTIONS";
const GET_PATCH_DELETE: &str = "GET, HEAD, PATCH, DELETE, OPTIONS";
const GET_DELETE: &str = "GET, HEAD, DELETE, OPTIONS";
const DELETE: &str = "DELETE, OPTIONS";

pub fn route(method: Method, path: &str) -> Routed {
    let (route, allow) = match path {
        "/healthz" => (Route::Health, GET),
        "/readyz" => (Route::Ready, GET),
        "/" => (Route::Docs, GET),
        "/dashboard" | "/dashboard/" => (Route::Dashboard, GET),
        _ if path.starts_with("/assets/") => (Route::Asset(path["/assets/".len()..].to_owned()), GET),
        "/metrics" => (Route::Metrics, GET),
        _ if path.starts_with("/admin/v1/") => match admin_route(&path["/admin/v1/".len()..]) {
            Some(r) => r,
            None => return Routed::NotFound,
        },
        _ if path.starts_with("/api/") && !path.starts_with("/api/v1/") => match native_route(path) {
            Some(r) => r,
            None => return Routed::NotFound,
        },
        _ => {
            let Some(rest) = path.strip_prefix("/api/v1/").or_else(|| path.strip_prefix("/v1/")) else {
                return Routed::NotFound;
            };
            let rest = rest.strip_suffix('/').unwrap_or(rest);
            match rest {
                "chat/completions" => (Route::ChatCompletions, POST),
                "completions" => (Route::Completions, POST),
                "embeddings" => (Route::Embeddings, POST),
                "messages" => (Route::Messages, POST),
                "messages/count_tokens" => (Route::CountTokens, POST),
                "responses" => (Route::Responses, POST),
                "models" => (Route::Models, GET),
                "usage" => (Route::Usage, GET),
                _ => match (rest.strip_prefix("models/"), rest.strip_prefix("responses/")) {
                    (Some(id), _) if !id.is_empty() => (Route::Model(percent_decode(id)), GET),
                    (_, Some(id)) if !id.is_empty() && !id.contains('/') => {
                        (Route::Response(percent_decode(id)), GET_DELETE)
                    }
                    _ => return Routed::NotFound,
                },
            }
        }
    };
    let allowed = match method {
        Method::Options => return Routed::Preflight { allow },
        Method::Get | Method::Head => allow.starts_with("GET"),
        Method::Post => allow.contains("POST"),
        Method::Patch => allow.contains("PATCH"),
        Method::Delete => allow.contains("DELETE"),
        Method::Other => false,
    };
    if allowed { Routed::Endpoint(route) } else { Routed::MethodNotAllowed { allow } }
}

fn admin_route(rest: &str) -> Option<(Route, &'static str)> {
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest == "usage" {
        return Some((Route::AdminUsage, GET));
    }
    if rest == "live" {
        return Some((Route::AdminLive, GET));
    }
    if rest == "keys" {
        return Some((Route::AdminKeys, GET_POST));
    }
    let id = rest.strip_prefix("keys/")?;
    match id.strip_suffix("/rotate") {
        Some(id) if !id.is_empty() && !id.contains('/') => Some((Route::AdminKeyRotate(percent_decode(id)), POST)),
        _ if !id.is_empty() && !id.contains('/') => Some((Route::AdminKey(percent_decode(id)), GET_PATCH_DELETE)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_prefixes_route_the_same() {
        for p in ["/api/v1/chat/completions", "/v1/chat/completions", "/v1/chat/completions/"] {
            assert_eq!(route(Method::Post, p), Routed::Endpoint(Route::ChatCompletions), "{p}");
        }
        assert_eq!(route(Method::Get, "/api/v1/models"), Routed::Endpoint(Route::Models));
        assert_eq!(route(Method::Head, "/v1/models"), Routed::Endpoint(Route::Models));
        assert_eq!(route(Method::Get, "/healthz"), Routed::Endpoint(Route::Health));
    }

    #[test]
    fn model_ids_are_decoded_and_may_hold_slashes() {
        assert_eq!(
            route(Method::Get, "/v1/models/llama3%3Alatest"),
            Routed::Endpoint(Route::Model("llama3:latest".into()))
        );
        assert_eq!(
            route(Method::Get, "/v1/models/hf.co/x/y:q4"),
            Routed::Endpoint(Route::Model("hf.co/x/y:q4".into()))
        );
        assert_eq!(route(Method::Get, "/v1/models/bad%zz"), Routed::Endpoint(Route::Model("bad%zz".into())));
        assert_eq!(route(Method::Get, "/v1/models/a%2"), Routed::Endpoint(Route::Model("a%2".into())));
    }

    #[test]
    fn wrong_methods_unknown_paths_and_preflight() {
        assert_eq!(route(Method::Get, "/v1/chat/completions"), Routed::MethodNotAllowed { allow: POST });
        assert_eq!(route(Method::Post, "/v1/models"), Routed::MethodNotAllowed { allow: GET });
        assert_eq!(route(Method::Options, "/v1/chat/completions"), Routed::Preflight { allow: POST });
        assert_eq!(route(Method::Get, "/v2/models"), Routed::NotFound);
        assert_eq!(route(Method::Get, "/v1/models/"), Routed::Endpoint(Route::Models));
        assert_eq!(route(Method::Get, "/"), Routed::Endpoint(Route::Docs));
        assert_eq!(route(Method::Get, "/dashboard"), Routed::Endpoint(Route::Dashboard));
        assert_eq!(route(Method::Get, "/assets/style.css"), Routed::Endpoint(Route::Asset("style.css".into())));
        assert_eq!(route(Method::Post, "/"), Routed::MethodNotAllowed { allow: GET });
        assert_eq!(route(Method::Get, "/nothing"), Routed::NotFound);
        assert!(!Route::Docs.needs_key() && Route::AdminLive.needs_admin());
    }

    #[test]
    fn admin_routes() {
        assert_eq!(route(Method::Post, "/admin/v1/keys"), Routed::Endpoint(Route::AdminKeys));
        assert_eq!(route(Method::Get, "/admin/v1/keys/"), Routed::Endpoint(Route::AdminKeys));
        assert_eq!(route(Method::Patch, "/admin/v1/keys/key_1"), Routed::Endpoint(Route::AdminKey("key_1".into())));
        assert_eq!(route(Method::Delete, "/admin/v1/keys/key_1"), Routed::Endpoint(Route::AdminKey("key_1".into())));
        assert_eq!(
            route(Method::Post, "/admin/v1/keys/key_1/rotate"),
            Routed::Endpoint(Route::AdminKeyRotate("key_1".into()))
        );
        assert_eq!(route(Method::Get, "/admin/v1/keys/key_1/rotate"), Routed::MethodNotAllowed { allow: POST });
        assert_eq!(route(Method::Post, "/admin/v1/keys/key_1"), Routed::MethodNotAllowed { allow: GET_PATCH_DELETE });
        assert_eq!(route(Method::Get, "/admin/v1/nope"), Routed::NotFound);
        assert!(Route::AdminKeys.needs_admin() && Route::Models.needs_key() && !Route::Health.needs_key());
    }
}
