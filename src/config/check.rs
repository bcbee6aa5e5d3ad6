//! Checking a configuration without starting anything: `ai-gateway
//! check-config [FILE]`, and `serve` before it starts — the same checks,
//! the same words, so a restart never finds what a check could have.
//!
//! Beyond what every setting must be (`Config::from_args`), the checks here
//! look at what the settings name, offline: the files (TLS certificate and
//! key, client and host CAs, the Redis CA) are readable PEM, the
//! certificate goes with its key and is valid now, the data directory can
//! be written, the hosts are well-formed URLs and none twice, and the two
//! listeners are not one address. Each problem says where the setting came
//! from: the config file's line, the environment variable, or the flag.

use std::path::Path;

use clap::ArgMatches;
use clap::parser::ValueSource;

use super::file::Origin;
use super::{Config, Problem, ServeArgs};

/// Every problem of a configuration, each as one line: `where: what`.
pub fn problems(
    a: &ServeArgs,
    config: Result<&Config, &[Problem]>,
    matches: &ArgMatches,
    origin: Option<&Origin>,
) -> Vec<String> {
    let mut found: Vec<Problem> = match config {
        Ok(_) => Vec::new(),
        Err(p) => p.to_vec(),
    };
    offline(a, &mut found);
    found.into_iter().map(|p| format!("{}: {}", place(p.setting, matches, origin), p.message)).collect()
}

/// Where a setting's value came from, as an operator finds it.
fn place(setting: &str, matches: &ArgMatches, origin: Option<&Origin>) -> String {
    let flag = format!("--{}", setting.replace('_', "-"));
    let env = format!("AI_GATEWAY_{}", setting.to_ascii_uppercase());
    match matches.value_source(setting) {
        Some(ValueSource::CommandLine) => flag,
        Some(ValueSource::EnvVariable) => env,
        _ => origin.and_then(|o| o.place(setting)).unwrap_or(flag),
    }
}

/// The checks of what the settings name.
fn offline(a: &ServeArgs, found: &mut Vec<Problem>) {
    let mut add = |setting: &'static str, message: String| found.push(Problem { setting, message });
    if let (Some(cert), Some(key)) = (&a.tls_cert, &a.tls_key)
        && let Err(e) = certificate_and_key(cert, key)
    {
        add("tls_cert", e);
    }
    for (setting, ca) in
        [("tls_client_ca", &a.tls_client_ca), ("upstream_ca", &a.upstream_ca), ("redis_ca", &a.cluster.redis_ca)]
    {
        if let Some(ca) = ca
            && let Err(e) = certificates(ca)
        {
            add(setting, e);
        }
    }
    let mut seen: Vec<String> = Vec::new();
    for url in a.upstream.iter().map(|u| u.trim()).filter(|u| !u.is_empty()) {
        if let Err(e) = host_url(url) {
            add("upstream", e);
        }
        let key = url.trim_end_matches('/').to_ascii_lowercase();
        if seen.contains(&key) {
            add("upstream", format!("upstream '{url}' is given twice"));
        }
        seen.push(key);
    }
    // Port 0 is a new port for each listener, never one twice.
    if a.metrics_listen == Some(a.listen) && a.listen.port() != 0 {
        add("metrics_listen", format!("--metrics-listen is --listen's address ({})", a.listen));
    }
    if let Err(e) = writable_dir(&a.data.data_dir) {
        add("data_dir", e);
    }
}

/// The certificates in a PEM file (a chain, leaf first, or a CA's).
pub fn certificates(path: &Path) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read the certificate {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the certificate {} is not valid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("the certificate {} holds no certificate", path.display()));
    }
    Ok(certs)
}

/// The private key in a PEM file.
pub fn private_key(path: &Path) -> Result<rustls::pki_types::PrivateKeyDer<'static>, String> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::PrivateKeyDer::from_pem_file(path)
        .map_err(|e| format!("cannot read a private key from {}: {e}", path.display()))
}

/// The leaf certificate goes with the key and is valid now.
fn certificate_and_key(cert: &Path, key: &Path) -> Result<(), String> {
    let certs = certificates(cert)?;
    let der = private_key(key)?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&der)
        .map_err(|e| format!("the key {} is not one TLS can use: {e}", key.display()))?;
    let certified = rustls::sign::CertifiedKey::new(certs.clone(), signer);
    certified
        .keys_match()
        .map_err(|_| format!("the certificate {} and the key {} do not go together", cert.display(), key.display()))?;
    let (_, leaf) = x509_parser::parse_x509_certificate(certs[0].as_ref())
        .map_err(|e| format!("the certificate {} cannot be read: {e}", cert.display()))?;
    let validity = leaf.validity();
    let now = x509_parser::time::ASN1Time::now();
    if now > validity.not_after {
        return Err(format!("the certificate {} expired on {}", cert.display(), validity.not_after));
    }
    if now < validity.not_before {
        return Err(format!("the certificate {} is not valid before {}", cert.display(), validity.not_before));
    }
    Ok(())
}

/// A host's URL (`--upstream`), taken apart: `http[s]://host[:port][/path]`.
/// `check-config` checks it and `UpstreamTarget::resolve` reaches it, so
/// both read it alike.
pub struct HostUrl<'a> {
    pub https: bool,
    /// `host:port` as written (the port the scheme's when none is).
    pub authority: &'a str,
    /// The host alone, without the port and an IPv6 address's brackets.
    pub host: &'a str,
    pub port: u16,
    /// The path prefix, without a trailing slash (`""` for none).
    pub path: &'a str,
}

/// Takes `url` apart (without resolving its name).
pub fn host_url(url: &str) -> Result<HostUrl<'_>, String> {
    let (rest, https) = if let Some(rest) = url.strip_prefix("http://") {
        (rest, false)
    } else if let Some(rest) = url.strip_prefix("https://") {
        (rest, true)
    } else {
        return Err(format!("upstream '{url}' must start with http:// or https://"));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    if authority.is_empty() || authority.contains(char::is_whitespace) {
        return Err(format!("upstream '{url}' has no host"));
    }
    let (host, port) = match authority.rsplit_once(':').filter(|_| !authority.ends_with(']')) {
        Some((host, port)) => {
            let port =
                port.parse::<u16>().map_err(|_| format!("upstream '{url}' has a port that is not one ('{port}')"))?;
            (host, port)
        }
        None => (authority, if https { 443 } else { 80 }),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok(HostUrl { https, authority, host, port, path })
}

/// The data directory exists and can be written, or can be made.
fn writable_dir(dir: &Path) -> Result<(), String> {
    let mut existing = dir;
    while !existing.exists() {
        match existing.parent() {
            Some(p) if !p.as_os_str().is_empty() => existing = p,
            _ => {
                existing = Path::new(".");
                break;
            }
        }
    }
    if !existing.is_dir() {
        return Err(format!("the data directory {}: {} is not a directory", dir.display(), existing.display()));
    }
    // SAFETY: access() reads the NUL-terminated path, which outlives the call.
    let path = std::ffi::CString::new(existing.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
    if unsafe { libc::access(path.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
        return Err(format!("the data directory {}: {} cannot be written", dir.display(), existing.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::host_url;

    #[test]
    fn a_host_url_is_taken_apart_as_serve_reaches_it() {
        let u = host_url("https://gpu-a:8443/ollama/").unwrap();
        assert_eq!((u.https, u.authority, u.host, u.port, u.path), (true, "gpu-a:8443", "gpu-a", 8443, "/ollama"));
        let u = host_url("http://[::1]").unwrap();
        assert_eq!((u.https, u.authority, u.host, u.port, u.path), (false, "[::1]", "::1", 80, ""));
        let u = host_url("https://[::1]:11434").unwrap();
        assert_eq!((u.host, u.port), ("::1", 11434));
        assert_eq!(host_url("https://ollama.lan").unwrap().port, 443);
        for (url, why) in [
            ("ftp://a", "must start with http:// or https://"),
            ("http:///path", "has no host"),
            ("http://a b:1", "has no host"),
            ("http://a:port", "has a port that is not one ('port')"),
            ("http://a:70000", "has a port that is not one"),
        ] {
            let err = host_url(url).err().unwrap_or_default();
            assert!(err.contains(why), "{url}: {err}");
        }
    }
}
