//! The connection to the cluster's Redis (or Valkey): its address, the key
//! prefix, connecting with timeouts, and loading the gateway's functions
//! (`functions.lua`) into it. Every exchange is a blocking call with a
//! deadline, made from the cluster thread or the blocking pool, never from
//! a worker core.

use std::time::Duration;

use redis::{Connection, RedisResult};

/// The gateway's library of Redis functions.
pub const FUNCTIONS: &str = include_str!("functions.lua");

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// How long one call may wait for its reply.
const CALL_TIMEOUT: Duration = Duration::from_millis(500);

/// Where the cluster's Redis is, and the prefix of every key the gateway uses there.
pub struct Link {
    client: redis::Client,
    /// Connections the blocking pool's calls reuse (see [`Link::with`]).
    idle: parking_lot::Mutex<Vec<Connection>>,
    /// `--redis-prefix`, e.g. `aigw:`.
    pub prefix: String,
    /// The address without its password, for logs.
    pub shown: String,
}

impl Link {
    /// Checks the URL (`redis://[user:password@]host:port[/db]`, `rediss://`
    /// for TLS, verified against the system's roots or `ca`, a PEM file).
    pub fn new(url: &str, prefix: &str, ca: Option<&std::path::Path>) -> Result<Self, String> {
        let shown = without_password(url);
        let tls = url.starts_with("rediss://");
        if !(url.starts_with("redis://") || tls) {
            return Err(format!("--redis must be a redis:// or rediss:// URL, got '{shown}'"));
        }
        if prefix.is_empty() || prefix.len() > 64 || prefix.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("--redis-prefix must be 1 to 64 visible characters, got '{prefix}'"));
        }
        let client = match ca {
            Some(ca) if tls => {
                let root = std::fs::read(ca).map_err(|e| format!("--redis-ca {}: {e}", ca.display()))?;
                // The process's TLS crypto (installing it twice is harmless).
                let _ = rustls::crypto::ring::default_provider().install_default();
                let certs = redis::TlsCertificates { client_tls: None, root_cert: Some(root) };
                redis::Client::build_with_tls(url, certs)
            }
            Some(_) => return Err("--redis-ca is for rediss:// (TLS) URLs".into()),
            None => {
                if tls {
                    let _ = rustls::crypto::ring::default_provider().install_default();
                }
                redis::Client::open(url)
            }
        }
        .map_err(|e| format!("--redis '{shown}': {e}"))?;
        Ok(Self { client, idle: Default::default(), prefix: prefix.to_owned(), shown })
    }

    /// A new connection, with the functions loaded.
    pub fn connect(&self) -> RedisResult<Connection> {
        let mut con = self.client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
        con.set_read_timeout(Some(CALL_TIMEOUT))?;
        con.set_write_timeout(Some(CALL_TIMEOUT))?;
        redis::cmd("FUNCTION").arg("LOAD").arg("REPLACE").arg(FUNCTIONS).query::<String>(&mut con)?;
        Ok(con)
    }
}

/// Most idle connections kept for the blocking pool's calls.
const MAX_IDLE: usize = 8;

impl Link {
    /// Runs `f` on a connection kept from an earlier call (or a new one); a
    /// connection that failed is dropped. For calls made on the blocking pool.
    pub fn with<R>(&self, f: impl FnOnce(&mut Connection) -> RedisResult<R>) -> RedisResult<R> {
        let kept = self.idle.lock().pop();
        let mut con = match kept {
            Some(c) => c,
            None => self.connect()?,
        };
        let r = f(&mut con);
        if r.is_ok() {
            let mut idle = self.idle.lock();
            if idle.len() < MAX_IDLE {
                idle.push(con);
            }
        }
        r
    }
}

/// A URL with any password replaced by `***`.
pub fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    let shown = match authority.rsplit_once('@') {
        Some((user, host)) => {
            let user = user.split_once(':').map_or(user, |(u, _)| u);
            format!("{user}:***@{host}")
        }
        None => authority.to_owned(),
    };
    if path.is_empty() { format!("{scheme}://{shown}") } else { format!("{scheme}://{shown}/{path}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        assert_eq!(without_password("redis://:s3cret@10.0.0.1:6379/2"), "redis://:***@10.0.0.1:6379/2");
        assert_eq!(without_password("redis://gw:s3cret@h:6379"), "redis://gw:***@h:6379");
        assert_eq!(without_password("redis://h:6379"), "redis://h:6379");
        let err = Link::new("http://:pw@h", "aigw:", None).err().unwrap();
        assert!(!err.contains("pw@"), "{err}");
        assert!(Link::new("redis://127.0.0.1:6379", "", None).is_err());
        assert!(Link::new("redis://127.0.0.1:6379", "aigw:", None).is_ok());
        assert!(Link::new("rediss://127.0.0.1:6379", "aigw:", None).is_ok());
        assert!(Link::new("redis://127.0.0.1:6379", "aigw:", Some(std::path::Path::new("/nope"))).is_err());
    }
}
