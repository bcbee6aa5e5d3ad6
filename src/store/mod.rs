//! The LMDB store (through heed): one environment per process in the data
//! directory, shared by the server and the CLI at the same time.
//!
//! LMDB readers take no lock and see every transaction committed before they
//! began, from any process, so a key revoked by the CLI is refused by a
//! running server on its next request. Writers serialize on LMDB's own lock
//! and fsync on commit; the server runs them off its worker threads. The
//! `meta` table holds the schema version: a newer store is refused, an older
//! one is migrated forward in one transaction.

pub mod keys;
pub mod lock;
pub mod responses;
pub mod secret;
pub mod usage;

use std::path::{Path, PathBuf};

use heed::types::{Bytes, Str};
use heed::{CommitOrAbort, Database, Env, EnvFlags, EnvOpenOptions, RoTxn, WithoutTls};

/// The schema this build writes (2: stored responses' shares per key).
pub const SCHEMA_VERSION: u32 = 2;

/// The environment and its tables. Opened once per process and never
/// closed (`&'static`), so workers and threads can share it freely.
pub struct Store {
    pub env: &'static Env<WithoutTls>,
    pub meta: Database<'static, Str, Bytes>,
    /// SHA-256 of the secret → key record (JSON).
    pub keys: Database<'static, Bytes, Bytes>,
    /// Public id → SHA-256 of the secret.
    pub key_ids: Database<'static, Str, Bytes>,
    /// Unique name → SHA-256 of the secret.
    pub key_names: Database<'static, Str, Bytes>,
    /// `key_id \0 YYYY-MM-DD \0 model` → usage rollup (see `usage`).
    pub usage: Database<'static, Bytes, Bytes>,
    /// `key_id \0 YYYY-MM-DD \0 session` → usage rollup of an agent
    /// session (see `usage`); `None` only when a read-only open finds a
    /// store written before sessions were kept.
    pub sessions: Option<Database<'static, Bytes, Bytes>>,
    /// Stored Responses API responses, and their expiry index (see
    /// `responses`); `None` only when a read-only open finds a store
    /// written before they existed.
    pub responses: Option<responses::Tables>,
    pub dir: PathBuf,
    /// In a cluster: every usage commit also queues its deltas for Redis
    /// (see `usage::Store::usage_outbox`), in the same transaction.
    pub queue_usage: std::sync::atomic::AtomicBool,
}

/// Why a store operation failed, by kind, each with a message for a person.
/// The API turns the kind into the client's error in one place
/// (`api::store_error`); the CLI prints the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// No key has that id or name.
    NotFound(String),
    /// The change conflicts with what is stored: a name or secret in use, a revoked key.
    Conflict(String),
    /// What was asked for is not valid: a name or secret of the wrong shape.
    Invalid(String),
    /// The store itself failed: LMDB, the disk, an unreadable record.
    Io(String),
    /// The cluster's shared store (Redis) cannot be reached, and the change needs it.
    Unavailable(String),
}

impl StoreError {
    pub fn message(&self) -> &str {
        match self {
            StoreError::NotFound(m)
            | StoreError::Conflict(m)
            | StoreError::Invalid(m)
            | StoreError::Io(m)
            | StoreError::Unavailable(m) => m,
        }
    }
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

impl From<heed::Error> for StoreError {
    fn from(e: heed::Error) -> Self {
        StoreError::Io(format!("store error: {e}"))
    }
}

impl Store {
    /// Opens (creating if needed) the store in `dir`, checks and migrates the schema.
    pub fn open(dir: &Path) -> Result<&'static Store, StoreError> {
        if !dir.exists() {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Io(format!("cannot create the data directory {}: {e}", dir.display())))?;
            // Only the gateway's user may read the store (key hashes, usage).
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        }
        let mut opts = EnvOpenOptions::new().read_txn_without_tls();
        // Address space, not disk: the file grows as data is written.
        opts.map_size(16 << 30).max_dbs(16).max_readers(1024);
        // SAFETY: heed requires that the same environment is not opened twice in
        // one process; every caller goes through `Store::open` once per directory
        // (the server at startup, each CLI command once), and the env is leaked
        // so it lives as long as the process.
        let env = unsafe { opts.open(dir) }
            .map_err(|e| StoreError::Io(format!("cannot open the store in {}: {e}", dir.display())))?;
        let env: &'static Env<WithoutTls> = Box::leak(Box::new(env));
        let (meta, keys, key_ids, key_names, (usage, sessions), (records, index, shares, share_order)) = env
            .create_databases_and_commit(env.write_txn()?, |wdo, wtxn| -> Result<_, heed::Error> {
                let meta = wdo.create_database::<Str, Bytes>(wtxn, Some("meta"))?;
                let keys = wdo.create_database::<Bytes, Bytes>(wtxn, Some("keys"))?;
                let key_ids = wdo.create_database::<Str, Bytes>(wtxn, Some("key_ids"))?;
                let key_names = wdo.create_database::<Str, Bytes>(wtxn, Some("key_names"))?;
                let usage = wdo.create_database::<Bytes, Bytes>(wtxn, Some("usage"))?;
                let sessions = wdo.create_database::<Bytes, Bytes>(wtxn, Some("sessions"))?;
                let records = wdo.create_database::<Bytes, Bytes>(wtxn, Some("responses"))?;
                let index = wdo.create_database::<Bytes, Bytes>(wtxn, Some("response_index"))?;
                let shares = wdo.create_database::<Bytes, Bytes>(wtxn, Some("response_shares"))?;
                let share_order = wdo.create_database::<Bytes, Bytes>(wtxn, Some("response_share_order"))?;
                Ok(CommitOrAbort::<_, ()>::Commit((
                    meta,
                    keys,
                    key_ids,
                    key_names,
                    (usage, sessions),
                    (records, index, shares, share_order),
                )))
            })?
            .unwrap_commit();
        let responses = responses::Tables { records, index, shares, share_order };
        let store: &'static Store = Box::leak(Box::new(Store {
            env,
            meta,
            keys,
            key_ids,
            key_names,
            usage,
            sessions: Some(sessions),
            responses: Some(responses),
            dir: dir.to_owned(),
            queue_usage: Default::default(),
        }));
        let mut wtxn = env.write_txn()?;
        let found = match meta.get(&wtxn, "schema_version")? {
            Some(v) if v.len() == 4 => u32::from_le_bytes([v[0], v[1], v[2], v[3]]),
            Some(_) => return Err(StoreError::Io("the store's schema version is unreadable".into())),
            None => 0,
        };
        if check_schema(found, dir)? {
            // Migrations from older schemas run here, oldest first, in this
            // transaction. Schema 0 is an empty store (or one made before
            // versioning): nothing to convert. Schema 1 had no shares of the
            // stored responses: they are counted from the index.
            if found >= 1 {
                store.rebuild_response_shares(&mut wtxn)?;
            }
            meta.put(&mut wtxn, "schema_version", &SCHEMA_VERSION.to_le_bytes())?;
        }
        wtxn.commit()?;
        Ok(store)
    }

    /// Opens an existing store for reading only (`keys list`, `keys show`,
    /// `usage`): nothing is created, migrated or written, so it works beside
    /// a running server and on a store the user may only read. When LMDB's
    /// lock file cannot be written either, the store is read without it
    /// (LMDB's reader table), which is safe while nothing writes to it.
    pub fn open_read_only(dir: &Path) -> Result<&'static Store, StoreError> {
        if !dir.join("data.mdb").exists() {
            return Err(StoreError::Io(format!(
                "there is no store in {} (start the gateway once, or give --data-dir)",
                dir.display()
            )));
        }
        let open = |flags: EnvFlags| {
            let mut opts = EnvOpenOptions::new().read_txn_without_tls();
            opts.map_size(16 << 30).max_dbs(16).max_readers(1024);
            // SAFETY: READ_ONLY never writes; NO_LOCK is used only when the lock
            // file is not writable, for a store nothing else writes (see above).
            // Each directory is opened once per process, as in `open`.
            unsafe {
                opts.flags(flags);
                opts.open(dir)
            }
        };
        let env = match open(EnvFlags::READ_ONLY) {
            Err(heed::Error::Io(e)) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                open(EnvFlags::READ_ONLY | EnvFlags::NO_LOCK)
            }
            other => other,
        }
        .map_err(|e| StoreError::Io(format!("cannot open the store in {}: {e}", dir.display())))?;
        let env: &'static Env<WithoutTls> = Box::leak(Box::new(env));
        let tables = env
            .open_databases_and_commit(env.read_txn()?, |dbo, rtxn| -> Result<_, heed::Error> {
                Ok(CommitOrAbort::<_, ()>::Commit((
                    dbo.open_database::<Str, Bytes>(rtxn, Some("meta"))?,
                    dbo.open_database::<Bytes, Bytes>(rtxn, Some("keys"))?,
                    dbo.open_database::<Str, Bytes>(rtxn, Some("key_ids"))?,
                    dbo.open_database::<Str, Bytes>(rtxn, Some("key_names"))?,
                    (
                        dbo.open_database::<Bytes, Bytes>(rtxn, Some("usage"))?,
                        dbo.open_database::<Bytes, Bytes>(rtxn, Some("sessions"))?,
                    ),
                    dbo.open_database::<Bytes, Bytes>(rtxn, Some("responses"))?,
                    (
                        dbo.open_database::<Bytes, Bytes>(rtxn, Some("response_index"))?,
                        dbo.open_database::<Bytes, Bytes>(rtxn, Some("response_shares"))?,
                        dbo.open_database::<Bytes, Bytes>(rtxn, Some("response_share_order"))?,
                    ),
                )))
            })?
            .unwrap_commit();
        let (
            Some(meta),
            Some(keys),
            Some(key_ids),
            Some(key_names),
            (Some(usage), sessions),
            records,
            (index, shares, order),
        ) = tables
        else {
            return Err(StoreError::Io(format!("the store in {} is not initialized yet", dir.display())));
        };
        let responses = match (records, index, shares, order) {
            (Some(records), Some(index), Some(shares), Some(share_order)) => {
                Some(responses::Tables { records, index, shares, share_order })
            }
            _ => None,
        };
        let store = Store {
            env,
            meta,
            keys,
            key_ids,
            key_names,
            usage,
            sessions,
            responses,
            dir: dir.to_owned(),
            queue_usage: Default::default(),
        };
        check_schema(store.schema_version()?, dir)?;
        Ok(Box::leak(Box::new(store)))
    }

    /// Sets the recorded schema version (for tests of upgrades and refusals).
    pub fn set_schema_version(&self, version: u32) -> Result<(), StoreError> {
        let mut wtxn = self.env.write_txn()?;
        self.meta.put(&mut wtxn, "schema_version", &version.to_le_bytes())?;
        wtxn.commit()?;
        Ok(())
    }

    /// The id of the last write transaction committed to the store by any
    /// process: read from LMDB's shared meta page, without a transaction. It
    /// changes with every commit, so whatever was read while it stood is
    /// still current while it stands.
    pub fn last_commit(&self) -> usize {
        self.env.info().last_txn_id
    }

    /// A read transaction: lock-free, cheap, to be dropped before any `.await`.
    pub fn read(&self) -> Result<RoTxn<'static, WithoutTls>, StoreError> {
        Ok(self.env.read_txn()?)
    }

    /// The schema version recorded in the store.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        let rtxn = self.read()?;
        Ok(match self.meta.get(&rtxn, "schema_version")? {
            Some(v) if v.len() == 4 => u32::from_le_bytes([v[0], v[1], v[2], v[3]]),
            _ => 0,
        })
    }
}

/// Whether a store at schema `found` needs migrating; an error if it is newer than this build.
fn check_schema(found: u32, dir: &Path) -> Result<bool, StoreError> {
    if found > SCHEMA_VERSION {
        return Err(StoreError::Io(format!(
            "the store in {} was written by a newer ai-gateway (schema {found}, this build knows {SCHEMA_VERSION}); upgrade ai-gateway or use another --data-dir",
            dir.display()
        )));
    }
    Ok(found < SCHEMA_VERSION)
}

#[cfg(test)]
pub(crate) fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ai-gateway-test-{name}-{}-{}", std::process::id(), fastrand::u64(..)));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_store_records_the_schema_version() {
        let dir = temp_dir("schema");
        let store = Store::open(&dir).unwrap();
        assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    }

    #[test]
    fn newer_schemas_are_refused_and_older_ones_migrated() {
        let dir = Path::new("/data");
        assert!(check_schema(SCHEMA_VERSION + 1, dir).unwrap_err().message().contains("newer ai-gateway"));
        assert_eq!(check_schema(0, dir), Ok(true));
        assert_eq!(check_schema(SCHEMA_VERSION, dir), Ok(false));
    }
}
