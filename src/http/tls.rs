//! TLS on a client connection: the handshake, and the record layer between
//! the socket and the HTTP code, on rustls.
//!
//! This is a thin adapter of our own rather than a TLS stream type, because
//! the connection is taken apart while a request waits (the read half
//! parked in the client watch, the write half with the reply, see
//! `http::watch`): the watch reads raw bytes off the socket — ciphertext
//! here — and hands them back when the request is done, and they are given
//! to the session then ([`Tls::pending`]); the reply is sealed by the
//! session and written to the write half. One session, one owner at a
//! time, no locks: the worker's thread is the only one that touches it.
//!
//! The crypto is rustls' `ring` provider: already in the binary (the Redis
//! link's TLS uses it), small (the image has a size budget), and built from
//! crates.io without a C toolchain beyond the one `ring` brings. TLS 1.2 and
//! 1.3, ALPN `http/1.1`; with `--tls-client-ca`, a client without a
//! certificate that CA signed is refused during the handshake.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use std::ops::{Deref, DerefMut};

use rustls::{ClientConnection, ConnectionCommon, ServerConnection, SideData};

pub use crate::config::TlsFiles;

/// The protocol the gateway speaks over TLS.
const ALPN: &[u8] = b"http/1.1";

/// The crypto every TLS configuration of the gateway uses (see the module's
/// paragraph), AES-128-GCM with SHA-256 first: the key schedule of every
/// handshake (a resumed one too) runs on the hash, and SHA-256 runs on the
/// CPU's SHA extensions where SHA-384 has no such path in `ring` (a tenth
/// of a handshake's CPU here). Both are TLS 1.3's own suites; the others
/// stay for clients that want them.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::CipherSuite::*;
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.sort_by_key(|s| match s.suite() {
        TLS13_AES_128_GCM_SHA256 => 0,
        TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 | TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 1,
        _ => 2,
    });
    Arc::new(provider)
}

/// The certificate chain in a PEM file, read as `check-config` reads it.
pub use crate::config::check::certificates as read_certs;

/// The private key in a PEM file, read as `check-config` reads it.
pub use crate::config::check::private_key as read_key;

/// Builds the server's TLS configuration from its files: the certificate
/// must match the key, and the client CA (if any) must hold a certificate.
pub fn server_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, String> {
    let certs = read_certs(&files.cert)?;
    let key = read_key(&files.key)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in read_certs(ca)? {
                roots.add(c).map_err(|e| format!("the client CA {} is not usable: {e}", ca.display()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| format!("the client CA {} is not usable: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        format!("the certificate {} and the key {} do not go together: {e}", files.cert.display(), files.key.display())
    })?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    // Our order of the suites, not the client's (see `provider`).
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}

/// The TLS side of a connection: a rustls session (a server's, on the
/// listener; a client's, to an `https://` host) and its record buffers.
pub struct Records<C> {
    pub session: C,
    /// Ciphertext read off the socket but not yet given to the session (what
    /// the client watch read while the connection was split).
    pub pending: Vec<u8>,
    /// Sealed bytes on their way to the socket (reused).
    sealed: Vec<u8>,
}

/// The TLS side of a client connection.
pub type Tls = Records<ServerConnection>;

/// The TLS side of a connection to a host.
pub type HostTls = Records<ClientConnection>;

impl<C, S> Records<C>
where
    C: DerefMut + Deref<Target = ConnectionCommon<S>>,
    S: SideData,
{
    fn new(session: C) -> Box<Self> {
        Box::new(Self { session, pending: Vec::new(), sealed: Vec::new() })
    }

    /// Seals `plain` into records, appended to the bytes to write.
    pub fn seal(&mut self, plain: &[u8]) -> std::io::Result<&mut Vec<u8>> {
        let mut rest = plain;
        while !rest.is_empty() {
            let n = self.session.writer().write(rest)?;
            rest = &rest[n..];
            self.drain_records()?;
            if n == 0 && !rest.is_empty() {
                return Err(std::io::Error::new(std::io::ErrorKind::WriteZero, "the TLS session takes no more"));
            }
        }
        self.drain_records()?;
        Ok(&mut self.sealed)
    }

    /// Moves the session's outgoing records into `sealed`.
    fn drain_records(&mut self) -> std::io::Result<()> {
        while self.session.wants_write() {
            self.session.write_tls(&mut self.sealed)?;
        }
        Ok(())
    }

    /// Gives the session ciphertext (all of it, up to the peer's end: what
    /// follows its close_notify is not read); its records are decrypted and
    /// the bytes they hold stay in the session (at most 16 KiB, so `raw`
    /// must be small: a handshake's read; else [`Records::take_in_to`]).
    pub fn take_in(&mut self, raw: &[u8]) -> std::io::Result<()> {
        self.take(raw, None)
    }

    /// The same, with the bytes the records hold appended to `into` as they
    /// are decrypted, so a backlog of any size goes through the session's
    /// bounded buffer.
    pub fn take_in_to(&mut self, raw: &[u8], into: &mut Vec<u8>) -> std::io::Result<()> {
        self.take(raw, Some(into))
    }

    fn take(&mut self, mut raw: &[u8], mut into: Option<&mut Vec<u8>>) -> std::io::Result<()> {
        while !raw.is_empty() {
            let n = self.session.read_tls(&mut raw)?;
            self.session.process_new_packets().map_err(|e| {
                // The alert that says why goes out with the next write, if any.
                std::io::Error::new(std::io::ErrorKind::InvalidData, e)
            })?;
            if let Some(into) = into.as_deref_mut() {
                self.plain(into)?;
            }
            if n == 0 {
                // The session reads nothing more (the peer said close_notify):
                // the rest is not for it, and asking again would spin.
                break;
            }
        }
        Ok(())
    }

    /// Decrypted bytes the session holds, appended to `into`: `Some(n)` (0
    /// at the peer's orderly end), `None` when it holds none. Copied from
    /// the session's own buffers as they are (no zeroed room first: a
    /// request's few hundred bytes cost a few hundred bytes' copy).
    pub fn plain(&mut self, into: &mut Vec<u8>) -> std::io::Result<Option<usize>> {
        use std::io::BufRead;
        let mut reader = self.session.reader();
        let mut got = 0;
        loop {
            let n = match reader.fill_buf() {
                Ok(chunk) => {
                    into.extend_from_slice(chunk);
                    chunk.len()
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    return Ok((got > 0).then_some(got));
                }
                // The peer closed without close_notify: an end like any other here.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(Some(got)),
                Err(e) if got == 0 => return Err(e),
                Err(_) => return Ok(Some(got)),
            };
            if n == 0 {
                // The peer's orderly end, after what came before it.
                return Ok(Some(got));
            }
            reader.consume(n);
            got += n;
        }
    }

    /// Writes what the session has sealed (alerts, tickets, key updates).
    async fn flush_records(&mut self, stream: &mut TcpStream) -> std::io::Result<()> {
        self.drain_records()?;
        if self.sealed.is_empty() {
            return Ok(());
        }
        let (res, mut sealed) = stream.write_all(std::mem::take(&mut self.sealed)).await;
        sealed.clear();
        self.sealed = sealed;
        res.map(|_| ())
    }
}

/// Reads decrypted bytes into `inbuf`, within `timeout` for each read of the
/// socket: how many (0 at the peer's end).
pub async fn fill<C, S>(
    stream: &mut TcpStream,
    tls: &mut Records<C>,
    inbuf: &mut Vec<u8>,
    timeout: Duration,
) -> std::io::Result<usize>
where
    C: DerefMut + Deref<Target = ConnectionCommon<S>>,
    S: SideData,
{
    loop {
        if let Some(n) = tls.plain(inbuf)? {
            return Ok(n);
        }
        let before = inbuf.len();
        if !tls.pending.is_empty() {
            // What the client watch kept while a request was answered.
            let pending = std::mem::take(&mut tls.pending);
            tls.take_in_to(&pending, inbuf)?;
            if inbuf.len() > before {
                return Ok(inbuf.len() - before);
            }
            continue;
        }
        let raw = Vec::with_capacity(16 * 1024);
        let (res, raw) = match super::deadline::within(timeout, stream.read(raw.slice_mut(0..))).await {
            Ok((res, slice)) => (res, slice.into_inner()),
            Err(_) => return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "read timed out")),
        };
        if res? == 0 {
            // The socket's end: the session says whether it was orderly.
            tls.session.read_tls(&mut &[][..])?;
            let _ = tls.session.process_new_packets();
            return Ok(tls.plain(inbuf)?.unwrap_or(0));
        }
        let taken = tls.take_in_to(&raw, inbuf);
        // Alerts for a bad record, and what the session answers (a key update).
        tls.flush_records(stream).await?;
        taken?;
        if inbuf.len() > before {
            return Ok(inbuf.len() - before);
        }
    }
}

/// The server side of a TLS handshake on a new connection, all of it within
/// `timeout`. A client that fails it (no shared version or cipher, no
/// valid client certificate) gets the session's alert, and an error.
pub async fn accept(
    stream: TcpStream,
    config: Arc<rustls::ServerConfig>,
    timeout: Duration,
) -> std::io::Result<(TcpStream, Box<Tls>)> {
    let session = ServerConnection::new(config).map_err(std::io::Error::other)?;
    handshake(stream, Records::new(session), timeout).await
}

/// The client side of a TLS handshake with a host named `name`, within `timeout`.
pub async fn connect(
    stream: TcpStream,
    config: Arc<rustls::ClientConfig>,
    name: rustls::pki_types::ServerName<'static>,
    timeout: Duration,
) -> std::io::Result<(TcpStream, Box<HostTls>)> {
    let session = ClientConnection::new(config, name).map_err(std::io::Error::other)?;
    handshake(stream, Records::new(session), timeout).await
}

/// Either side's handshake: records back and forth until it is done.
async fn handshake<C, S>(
    mut stream: TcpStream,
    mut tls: Box<Records<C>>,
    timeout: Duration,
) -> std::io::Result<(TcpStream, Box<Records<C>>)>
where
    C: DerefMut + Deref<Target = ConnectionCommon<S>>,
    S: SideData,
{
    let deadline = Instant::now() + timeout;
    while tls.session.is_handshaking() {
        tls.flush_records(&mut stream).await?;
        if !tls.session.is_handshaking() {
            break;
        }
        let raw = Vec::with_capacity(4096);
        let (res, raw) = match super::deadline::until(deadline, stream.read(raw.slice_mut(0..))).await {
            Ok((res, slice)) => (res, slice.into_inner()),
            Err(_) => return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the TLS handshake took too long")),
        };
        if res? == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed during the TLS handshake"));
        }
        let taken = tls.take_in(&raw);
        tls.flush_records(&mut stream).await?;
        taken?;
    }
    tls.flush_records(&mut stream).await?;
    Ok((stream, tls))
}

/// Writes `plain` to the peer whole: sealed into records by the session
/// when there is one, as it is when there is none. The buffer comes back.
pub async fn write_all<W, C, S>(
    wr: &mut W,
    tls: Option<&mut Records<C>>,
    plain: Vec<u8>,
) -> (std::io::Result<()>, Vec<u8>)
where
    W: monoio::io::AsyncWriteRent,
    C: DerefMut + Deref<Target = ConnectionCommon<S>>,
    S: SideData,
{
    let Some(tls) = tls else {
        let (res, plain) = monoio::io::AsyncWriteRentExt::write_all(wr, plain).await;
        return (res.map(|_| ()), plain);
    };
    let sealed = match tls.seal(&plain) {
        Ok(s) => std::mem::take(s),
        Err(e) => return (Err(e), plain),
    };
    let (res, mut sealed) = monoio::io::AsyncWriteRentExt::write_all(wr, sealed).await;
    sealed.clear();
    tls.sealed = sealed;
    (res.map(|_| ()), plain)
}

/// The listener's TLS, shared by every worker: the configuration new
/// handshakes use (replaced whole by a reload; a handshake holds the one it
/// began with) and what happened to handshakes and reloads.
pub struct TlsState {
    pub files: TlsFiles,
    config: parking_lot::RwLock<Arc<rustls::ServerConfig>>,
    /// The files' modification times when they were last loaded.
    loaded: parking_lot::Mutex<Vec<Option<std::time::SystemTime>>>,
    pub reloads: std::sync::atomic::AtomicU64,
    pub reload_failures: std::sync::atomic::AtomicU64,
    pub handshake_failures: std::sync::atomic::AtomicU64,
    /// Connections closed because the worker had too many handshakes in progress.
    pub handshakes_refused: std::sync::atomic::AtomicU64,
}

impl TlsState {
    /// Loads the files; an error says what is wrong with them.
    pub fn load(files: TlsFiles) -> Result<Self, String> {
        let stamps = stamps(&files);
        let config = server_config(&files)?;
        Ok(Self {
            files,
            config: parking_lot::RwLock::new(config),
            loaded: parking_lot::Mutex::new(stamps),
            reloads: Default::default(),
            reload_failures: Default::default(),
            handshake_failures: Default::default(),
            handshakes_refused: Default::default(),
        })
    }

    /// The configuration a new handshake uses.
    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        self.config.read().clone()
    }

    /// Whether a file changed since it was loaded.
    pub fn changed(&self) -> bool {
        *self.loaded.lock() != stamps(&self.files)
    }

    /// Loads the files again: new handshakes use them. A pair that does not
    /// load changes nothing (the error says why, and is counted).
    pub fn reload(&self) -> Result<(), String> {
        use std::sync::atomic::Ordering::Relaxed;
        let now = stamps(&self.files);
        *self.loaded.lock() = now;
        match server_config(&self.files) {
            Ok(config) => {
                *self.config.write() = config;
                self.reloads.fetch_add(1, Relaxed);
                Ok(())
            }
            Err(e) => {
                self.reload_failures.fetch_add(1, Relaxed);
                Err(e)
            }
        }
    }
}

/// The modification times of the files (`None` for one that cannot be read).
fn stamps(files: &TlsFiles) -> Vec<Option<std::time::SystemTime>> {
    [Some(&files.cert), Some(&files.key), files.client_ca.as_ref()]
        .into_iter()
        .flatten()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server's records and a client's session, handshaken in memory.
    fn pair() -> (Box<Tls>, ClientConnection) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap().self_signed(&key).unwrap();
        let certs = vec![cert.der().clone()];
        let server = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs.clone(), rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()))
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(certs[0].clone()).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut server = Records::new(ServerConnection::new(Arc::new(server)).unwrap());
        let mut client = ClientConnection::new(Arc::new(client), "localhost".try_into().unwrap()).unwrap();
        while client.is_handshaking() || server.session.is_handshaking() {
            server.take_in(&wire(&mut client)).unwrap();
            let mut back = Vec::new();
            while server.session.wants_write() {
                server.session.write_tls(&mut back).unwrap();
            }
            let mut rest = &back[..];
            while !rest.is_empty() {
                client.read_tls(&mut rest).unwrap();
                client.process_new_packets().unwrap();
            }
        }
        (server, client)
    }

    /// What the client has to send.
    fn wire(client: &mut ClientConnection) -> Vec<u8> {
        let mut out = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut out).unwrap();
        }
        out
    }

    /// Runs `f` on a thread of its own: a call that spins fails the test
    /// instead of hanging it.
    fn within<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(f()));
        rx.recv_timeout(Duration::from_secs(10)).expect("the call did not return")
    }

    #[test]
    fn a_backlog_larger_than_the_sessions_buffer_comes_through_whole() {
        let (mut server, mut client) = pair();
        let sent: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
        client.writer().write_all(&sent).unwrap();
        let backlog = wire(&mut client);
        let got = within(move || {
            let mut got = Vec::new();
            server.take_in_to(&backlog, &mut got).map(|()| got)
        });
        assert_eq!(got.unwrap(), sent);
    }

    #[test]
    fn bytes_after_close_notify_end_the_session_without_a_spin() {
        let (mut server, mut client) = pair();
        client.writer().write_all(b"last words").unwrap();
        client.send_close_notify();
        let mut raw = wire(&mut client);
        // The start of a record longer than what follows, then many bytes:
        // more than the session reads at once.
        raw.extend_from_slice(&[0x17, 0x03, 0x03, 0x3f, 0xff]);
        raw.extend(std::iter::repeat_n(0u8, 12 * 1024));
        let (got, end) = within(move || {
            let mut got = Vec::new();
            let taken = server.take_in_to(&raw, &mut got);
            (taken.map(|()| got), server.plain(&mut Vec::new()).ok())
        });
        assert_eq!(got.unwrap(), b"last words");
        assert_eq!(end, Some(Some(0)), "the end is an orderly one");
    }
}
