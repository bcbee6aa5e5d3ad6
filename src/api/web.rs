//! The gateway's web face: the docs page at `/`, the admin dashboard at
//! `/dashboard`, and their stylesheet and scripts under `/assets/`.
//!
//! Everything is compiled into the binary (`web/` in the repository, read
//! with `include_str!`): no CDN, no build step, nothing fetched at run time.
//! The docs page is rendered per request with this gateway's base URL
//! (`--public-url`, else the request's `Host`) and the models its hosts
//! serve (from the health checker's lists, no upstream call); every value put
//! into the HTML is escaped. The dashboard is a static shell whose script
//! talks to the admin API with the admin key the user signs in with. Every
//! page goes out with a strict Content-Security-Policy (scripts and styles
//! only from this origin, no inline code, no framing).

use super::reply::Reply;
use super::worker::Worker;
use crate::http::request::Request;

const DOCS: &str = include_str!("../../web/docs.html");
const DASHBOARD: &str = include_str!("../../web/dashboard.html");
/// `(name, content type, body)` of every asset.
const ASSETS: [(&str, &str, &str); 3] = [
    ("style.css", "text/css; charset=utf-8", include_str!("../../web/style.css")),
    ("docs.js", "text/javascript; charset=utf-8", include_str!("../../web/docs.js")),
    ("dashboard.js", "text/javascript; charset=utf-8", include_str!("../../web/dashboard.js")),
];

/// The policy of every page: this origin only, nothing inline, never framed.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Bytes of every page and asset together (the budget is 200 KB).
pub fn embedded_size() -> usize {
    DOCS.len() + DASHBOARD.len() + ASSETS.iter().map(|(_, _, b)| b.len()).sum::<usize>()
}

/// A page or asset, with the security headers every one carries (and no
/// CORS: they are for this origin only).
fn page<'w>(
    status: u16,
    content_type: &'static str,
    body: impl Into<std::borrow::Cow<'static, [u8]>>,
    cache: &'static str,
) -> Reply<'w> {
    Reply::full(status, content_type, body)
        .header("Content-Security-Policy", CSP)
        .header("X-Content-Type-Options", "nosniff")
        .header("Referrer-Policy", "no-referrer")
        .header("X-Frame-Options", "DENY")
        .header("Cache-Control", cache)
        .no_cors()
}

/// `GET /`: the docs page for this gateway.
pub fn docs<'w>(worker: &Worker, req: &Request) -> Reply<'w> {
    let base = base_url(worker.config.public_url.as_deref(), &req.host);
    let models = served_models(worker);
    let chat_model = models.iter().find(|m| !m.contains("embed")).or(models.first()).cloned();
    let embed_model = models.iter().find(|m| m.contains("embed")).cloned();
    let list = if models.is_empty() {
        "<li class=\"muted\">No model is known yet: the gateway learns them from its Ollama hosts.</li>".to_owned()
    } else {
        models.iter().map(|m| format!("<li><code>{}</code></li>", escape(m))).collect()
    };
    let text = DOCS
        .replace("{{BASE}}", &escape(&base))
        .replace("{{MODEL}}", &escape(chat_model.as_deref().unwrap_or("llama3:latest")))
        .replace("{{EMBED_MODEL}}", &escape(embed_model.as_deref().unwrap_or("nomic-embed-text")))
        .replace("{{MODELS}}", &list);
    page(200, "text/html; charset=utf-8", text.into_bytes(), "no-cache")
}

/// `GET /dashboard`: the dashboard's shell (no data in it; that needs the admin key).
pub fn dashboard<'w>() -> Reply<'w> {
    page(200, "text/html; charset=utf-8", DASHBOARD.as_bytes(), "no-cache")
}

/// `GET /assets/{name}`.
pub fn asset<'w>(name: &str) -> Reply<'w> {
    match ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, content_type, body)) => page(200, content_type, body.as_bytes(), "public, max-age=300"),
        None => page(404, "text/plain; charset=utf-8", &b"not found"[..], "no-cache"),
    }
}

/// The base URL clients use: `--public-url`, else `http://` and the request's
/// `Host` when it looks like a host name (it is the client's to set, so
/// anything odd falls back to a placeholder rather than into the page).
pub fn base_url(public_url: Option<&str>, host: &str) -> String {
    if let Some(u) = public_url {
        return u.to_owned();
    }
    let plausible = !host.is_empty()
        && host.len() <= 255
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']' | b'_'));
    if plausible { format!("http://{host}") } else { "http://localhost:3000".to_owned() }
}

/// The models the healthy hosts serve (as last listed), each once, then the aliases.
fn served_models(worker: &Worker) -> Vec<String> {
    let mut models: Vec<String> = Vec::new();
    for h in worker.upstreams.hosts.iter().filter(|h| h.healthy()) {
        for m in h.models() {
            if !models.contains(&m) {
                models.push(m);
            }
        }
    }
    for (alias, _) in worker.config.models.aliases.iter() {
        if !models.iter().any(|m| m == alias) {
            models.push(alias.to_owned());
        }
    }
    models
}

/// Escapes text for HTML (element content and quoted attributes).
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_prefers_the_public_url_and_distrusts_odd_hosts() {
        assert_eq!(base_url(Some("https://ai.example.com"), "evil"), "https://ai.example.com");
        assert_eq!(base_url(None, "gpu-box:3000"), "http://gpu-box:3000");
        assert_eq!(base_url(None, "[::1]:3000"), "http://[::1]:3000");
        assert_eq!(base_url(None, "a\"><script>"), "http://localhost:3000");
        assert_eq!(base_url(None, ""), "http://localhost:3000");
    }

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape("<img src=x onerror=alert(1)> & 'q' \"d\""),
            "&lt;img src=x onerror=alert(1)&gt; &amp; &#39;q&#39; &quot;d&quot;"
        );
    }

    #[test]
    fn pages_and_assets_fit_the_budget_and_have_no_inline_code() {
        assert!(embedded_size() <= 200 * 1024, "{} bytes", embedded_size());
        for page in [DOCS, DASHBOARD] {
            assert!(!page.contains("<script>") && !page.contains("style="), "inline code");
            for handler in ["onclick=", "onload=", "onerror=", "onsubmit=", "javascript:"] {
                assert!(!page.contains(handler), "{handler}");
            }
            assert!(!page.contains("src=\"http") && !page.contains("href=\"http"), "nothing from elsewhere");
        }
    }
}
