//! The keys table: records, the JSON view scripts and the admin API see, and
//! every change an operator can make (create, update, revoke, rotate).
//!
//! Records are stored as JSON under the SHA-256 of the secret, with two
//! indexes (public id → hash, name → hash) kept in the same transaction.
//! The secret itself is never stored: `create` and `rotate` return it once.

use serde::{Deserialize, Serialize};

use super::{Store, StoreError};
use crate::clock::{parse_expiry, unix_now, unix_to_rfc3339};
use crate::store::secret::{KeyHash, display_prefix, hash_secret, is_valid_secret, new_secret};

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Admin,
}

/// A key's lane in the upstream queue: waiting requests are served
/// interactive first, then standard, then batch (with aging, see
/// `upstream::schedule`). A request may lower its own lane (`x-priority`),
/// never raise it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Interactive,
    #[default]
    Standard,
    Batch,
}

impl Priority {
    pub const ALL: [Priority; 3] = [Priority::Interactive, Priority::Standard, Priority::Batch];

    /// The lane's index: 0 interactive, 1 standard, 2 batch.
    pub fn lane(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            Priority::Interactive => "interactive",
            Priority::Standard => "standard",
            Priority::Batch => "batch",
        }
    }

    /// Reads `interactive`, `standard` or `batch` (any case).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name().eq_ignore_ascii_case(s.trim()))
    }
}

/// Per-key limits; `None` is unlimited. Enforced by the limits and usage code.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub max_concurrent: Option<u64>,
    pub daily_tokens: Option<u64>,
    pub monthly_tokens: Option<u64>,
}

/// What a key may do beyond using its models, each off unless granted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grants {
    /// Its requests' own load-time settings (`keep_alive`, the runner
    /// options such as `num_ctx`) reach the host; without it they are
    /// replaced by the operator's (`[models]` in the config file).
    #[serde(default, skip_serializing_if = "is_false")]
    pub load_options: bool,
    /// Ollama's web search and fetch (`/api/experimental/web_search`,
    /// `web_fetch`), which a host signed in to ollama.com runs on its
    /// owner's account.
    #[serde(default, skip_serializing_if = "is_false")]
    pub web_search: bool,
    /// Its requests' message contents are recorded in their traces
    /// (`gen_ai.input.messages`, `gen_ai.output.messages`); without it,
    /// never.
    #[serde(default, skip_serializing_if = "is_false")]
    pub trace_contents: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Grants {
    fn is_none(&self) -> bool {
        *self == Grants::default()
    }
}

/// A stored key (without its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// Public id: `key_` + 12 random characters.
    pub id: String,
    /// Unique, chosen by the operator.
    pub name: String,
    /// `sk_ab12…wxyz`, to recognise a key without revealing it.
    pub prefix: String,
    pub role: Role,
    /// Models the key may use; empty means all.
    #[serde(default)]
    pub models: Vec<String>,
    /// Unix seconds.
    pub created: i64,
    #[serde(default)]
    pub expires: Option<i64>,
    #[serde(default)]
    pub revoked_at: Option<i64>,
    #[serde(default)]
    pub limits: Limits,
    /// Its lane in the upstream queue.
    #[serde(default)]
    pub priority: Priority,
    #[serde(default, skip_serializing_if = "Grants::is_none")]
    pub grants: Grants,
    /// The cluster's version of this record (0 without `--redis`); a mirror
    /// applies a record only over an older one.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub version: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl KeyRecord {
    pub fn decode(raw: &[u8]) -> Result<Self, StoreError> {
        serde_json::from_slice(raw).map_err(|e| StoreError::Io(format!("a key record is unreadable: {e}")))
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Not revoked and not expired at `now`.
    pub fn is_active(&self, now: i64) -> bool {
        self.revoked_at.is_none() && self.expires.is_none_or(|e| now < e)
    }

    /// Whether the key may use `model`. `llama3` and `llama3:latest` are the same model.
    pub fn allows_model(&self, model: &str) -> bool {
        self.models.is_empty() || self.models.iter().any(|m| same_model(m, model))
    }

    /// Whether the key may use `model`, where `cloud` tells whether a model
    /// runs on ollama.com (on the host owner's account) and is asked only
    /// when it matters: "all" means the hosts' own models, and a cloud model
    /// is allowed only to a key that lists it by name.
    pub fn may_use(&self, model: &str, cloud: impl FnOnce() -> bool) -> bool {
        if self.models.is_empty() { !cloud() } else { self.allows_model(model) }
    }

    /// The stable JSON shape of the CLI's `--json` and the admin API.
    pub fn view(&self) -> serde_json::Value {
        let time = |t: Option<i64>| t.map(|t| unix_to_rfc3339(t, 0).replace(".000000000Z", "Z"));
        serde_json::json!({
            "id": self.id,
            "name": self.name,
            "prefix": self.prefix,
            "role": self.role,
            "models": self.models_view(),
            "created": time(Some(self.created)),
            "expires": time(self.expires),
            "revoked": self.revoked_at.is_some(),
            "revoked_at": time(self.revoked_at),
            "status": self.status(unix_now()),
            "limits": self.limits,
            "priority": self.priority,
            "load_options": self.grants.load_options,
            "web_search": self.grants.web_search,
            "trace_contents": self.grants.trace_contents,
        })
    }

    /// `"all"`, or the list of models the key may use.
    pub fn models_view(&self) -> serde_json::Value {
        if self.models.is_empty() { "all".into() } else { self.models.clone().into() }
    }

    /// The view with the secret added: the one time it is shown (create, rotate).
    pub fn view_with_secret(&self, secret: &str) -> serde_json::Value {
        let mut v = self.view();
        v["secret"] = serde_json::Value::String(secret.to_owned());
        v
    }

    pub fn status(&self, now: i64) -> &'static str {
        if self.revoked_at.is_some() {
            "revoked"
        } else if self.expires.is_some_and(|e| now >= e) {
            "expired"
        } else {
            "active"
        }
    }
}

/// Model names compare with `:latest` implied when no tag is given (on the
/// request path and in the upstream queue: compared without allocating).
pub fn same_model(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    let bare = |m: &str| !m.rsplit('/').next().unwrap_or(m).contains(':');
    (bare(a) && b.strip_suffix(":latest") == Some(a)) || (bare(b) && a.strip_suffix(":latest") == Some(b))
}

/// A key's models from the admin API: `"all"`, or a non-empty array of
/// names. An empty list is refused rather than read as "all": a list emptied
/// by mistake must not open every model.
fn models_from_json(v: &serde_json::Value) -> Result<Vec<String>, (String, String)> {
    let err = |m: &str| Err(("models".to_owned(), m.to_owned()));
    match v {
        serde_json::Value::String(s) if s == "all" => Ok(vec![]),
        serde_json::Value::Array(a) if a.is_empty() => {
            err("'models' is empty, which would allow no model: list the models, or send \"all\" for every model.")
        }
        serde_json::Value::Array(a) => match a.iter().map(|m| m.as_str().filter(|s| !s.trim().is_empty())).collect() {
            Some(list) => Ok(parse_model_list(list)),
            None => err("'models' must be an array of model names, or \"all\"."),
        },
        _ => err("'models' must be an array of model names, or \"all\" for every model."),
    }
}

/// Trimmed, de-duplicated model names (in the order given).
fn parse_model_list(names: Vec<&str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(names.len());
    for n in names.into_iter().map(str::trim) {
        if !out.iter().any(|m| m == n) {
            out.push(n.to_owned());
        }
    }
    out
}

/// A key's models from the command line: `all`, or names separated by
/// commas. An empty list is refused (see [`models_from_json`]).
pub fn models_from_arg(arg: &str) -> Result<Vec<String>, String> {
    if arg.trim() == "all" {
        return Ok(vec![]);
    }
    let names: Vec<&str> = arg.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    if names.is_empty() {
        return Err("--models is empty, which would allow no model: list the models, or give 'all'".into());
    }
    Ok(parse_model_list(names))
}

/// The settings of a new key.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub name: String,
    pub role: Role,
    pub models: Vec<String>,
    pub expires: Option<i64>,
    pub limits: Limits,
    pub priority: Priority,
    pub grants: Grants,
    /// Use this secret instead of a random one (bootstrap admin key).
    pub secret: Option<String>,
}

/// A change to a key; `None` leaves a field as it is, `Some(None)` clears it.
/// Also the settings of a key being created (absent fields take defaults).
#[derive(Debug, Clone, Default)]
pub struct KeyUpdate {
    pub name: Option<String>,
    pub role: Option<Role>,
    pub models: Option<Vec<String>>,
    pub expires: Option<Option<i64>>,
    pub rpm: Option<Option<u64>>,
    pub tpm: Option<Option<u64>>,
    pub max_concurrent: Option<Option<u64>>,
    pub daily_tokens: Option<Option<u64>>,
    pub monthly_tokens: Option<Option<u64>>,
    pub priority: Option<Priority>,
    pub load_options: Option<bool>,
    pub web_search: Option<bool>,
    pub trace_contents: Option<bool>,
}

impl KeyUpdate {
    /// Reads settings from the admin API's JSON (the shape of [`KeyRecord::view`]):
    /// `name`, `role`, `models` (`null` or `[]` = all), `expires` (duration,
    /// date or time; `null` = never) and `limits` (each `null` = unlimited;
    /// the limit fields are also accepted at the top level). On error, the
    /// field at fault and a message.
    pub fn from_json(v: &serde_json::Value, now: i64) -> Result<Self, (String, String)> {
        use serde_json::Value;
        let obj = v.as_object().ok_or_else(|| (String::new(), "The body must be a JSON object.".to_owned()))?;
        let mut u = KeyUpdate::default();
        let limit = |field: &str, v: &Value| -> Result<Option<u64>, (String, String)> {
            match v {
                Value::Null => Ok(None),
                v => v
                    .as_u64()
                    .map(Some)
                    .ok_or_else(|| (field.to_owned(), format!("'{field}' must be a whole number or null."))),
            }
        };
        let set_limit = |u: &mut KeyUpdate, field: &str, path: &str, v: &Value| -> Result<(), (String, String)> {
            let val = Some(limit(path, v)?);
            match field {
                "rpm" => u.rpm = val,
                "tpm" => u.tpm = val,
                "max_concurrent" => u.max_concurrent = val,
                "daily_tokens" => u.daily_tokens = val,
                "monthly_tokens" => u.monthly_tokens = val,
                _ => return Err((path.to_owned(), format!("Unknown limit '{field}'."))),
            }
            Ok(())
        };
        for (k, v) in obj {
            match k.as_str() {
                "name" => {
                    u.name =
                        Some(v.as_str().ok_or(("name".to_owned(), "'name' must be a string.".to_owned()))?.to_owned())
                }
                "role" => {
                    u.role = Some(match v.as_str() {
                        Some("user") => Role::User,
                        Some("admin") => Role::Admin,
                        _ => return Err(("role".into(), "'role' must be \"user\" or \"admin\".".into())),
                    })
                }
                "models" => u.models = Some(models_from_json(v)?),
                "priority" => {
                    u.priority = Some(v.as_str().and_then(Priority::parse).ok_or((
                        "priority".to_owned(),
                        "'priority' must be \"interactive\", \"standard\" or \"batch\".".to_owned(),
                    ))?)
                }
                "expires" => {
                    u.expires = Some(match v {
                        Value::Null => None,
                        Value::String(s) => Some(parse_expiry(s, now).map_err(|m| ("expires".to_owned(), m))?),
                        _ => return Err(("expires".into(), "'expires' must be a duration, a date or null.".into())),
                    })
                }
                "expires_at" => {
                    u.expires = Some(match v {
                        Value::Null => None,
                        v => Some(v.as_i64().ok_or((
                            "expires_at".to_owned(),
                            "'expires_at' must be Unix seconds or null.".to_owned(),
                        ))?),
                    })
                }
                "limits" => {
                    let limits =
                        v.as_object().ok_or(("limits".to_owned(), "'limits' must be an object.".to_owned()))?;
                    for (lk, lv) in limits {
                        set_limit(&mut u, lk, &format!("limits.{lk}"), lv)?;
                    }
                }
                "rpm" | "tpm" | "max_concurrent" | "daily_tokens" | "monthly_tokens" => set_limit(&mut u, k, k, v)?,
                "load_options" | "web_search" | "trace_contents" => {
                    let b = v.as_bool().ok_or_else(|| (k.clone(), format!("'{k}' must be true or false.")))?;
                    match k.as_str() {
                        "load_options" => u.load_options = Some(b),
                        "web_search" => u.web_search = Some(b),
                        _ => u.trace_contents = Some(b),
                    }
                }
                // Read-only fields of the view are accepted and ignored, so a
                // fetched key can be sent back with changes.
                "id" | "prefix" | "created" | "revoked" | "revoked_at" | "status" | "last_used" => {}
                other => return Err((other.to_owned(), format!("Unknown field '{other}'."))),
            }
        }
        Ok(u)
    }

    /// Applies the change to a record (the name checked, not its uniqueness).
    pub fn apply_to(&self, record: &mut KeyRecord) -> Result<(), StoreError> {
        if let Some(name) = &self.name {
            validate_name(name)?;
            record.name = name.clone();
        }
        if let Some(role) = self.role {
            record.role = role;
        }
        if let Some(models) = &self.models {
            record.models = models.clone();
        }
        if let Some(expires) = self.expires {
            record.expires = expires;
        }
        if let Some(priority) = self.priority {
            record.priority = priority;
        }
        if let Some(b) = self.load_options {
            record.grants.load_options = b;
        }
        if let Some(b) = self.web_search {
            record.grants.web_search = b;
        }
        if let Some(b) = self.trace_contents {
            record.grants.trace_contents = b;
        }
        let l = &mut record.limits;
        for (field, value) in [
            (&mut l.rpm, self.rpm),
            (&mut l.tpm, self.tpm),
            (&mut l.max_concurrent, self.max_concurrent),
            (&mut l.daily_tokens, self.daily_tokens),
            (&mut l.monthly_tokens, self.monthly_tokens),
        ] {
            if let Some(v) = value {
                *field = v;
            }
        }
        Ok(())
    }

    /// The change as the admin API's JSON, which [`Self::from_json`] reads
    /// back (expiry as a Unix time in seconds, `expires_at`).
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::Map::new();
        if let Some(n) = &self.name {
            v.insert("name".into(), n.clone().into());
        }
        if let Some(r) = self.role {
            v.insert("role".into(), serde_json::to_value(r).unwrap_or_default());
        }
        if let Some(m) = &self.models {
            v.insert("models".into(), if m.is_empty() { "all".into() } else { m.clone().into() });
        }
        if let Some(e) = self.expires {
            v.insert("expires_at".into(), e.into());
        }
        if let Some(p) = self.priority {
            v.insert("priority".into(), p.name().into());
        }
        for (name, grant) in [
            ("load_options", self.load_options),
            ("web_search", self.web_search),
            ("trace_contents", self.trace_contents),
        ] {
            if let Some(b) = grant {
                v.insert(name.into(), b.into());
            }
        }
        for (name, value) in [
            ("rpm", self.rpm),
            ("tpm", self.tpm),
            ("max_concurrent", self.max_concurrent),
            ("daily_tokens", self.daily_tokens),
            ("monthly_tokens", self.monthly_tokens),
        ] {
            if let Some(value) = value {
                v.insert(name.into(), value.into());
            }
        }
        serde_json::Value::Object(v)
    }

    /// The settings of a new key: `name` is required, the rest defaults.
    pub fn into_new_key(self) -> Result<NewKey, (String, String)> {
        let name = self.name.ok_or(("name".to_owned(), "A key needs a 'name'.".to_owned()))?;
        Ok(NewKey {
            name,
            role: self.role.unwrap_or(Role::User),
            models: self.models.unwrap_or_default(),
            expires: self.expires.flatten(),
            limits: Limits {
                rpm: self.rpm.flatten(),
                tpm: self.tpm.flatten(),
                max_concurrent: self.max_concurrent.flatten(),
                daily_tokens: self.daily_tokens.flatten(),
                monthly_tokens: self.monthly_tokens.flatten(),
            },
            priority: self.priority.unwrap_or_default(),
            grants: Grants {
                load_options: self.load_options.unwrap_or(false),
                web_search: self.web_search.unwrap_or(false),
                trace_contents: self.trace_contents.unwrap_or(false),
            },
            secret: None,
        })
    }
}

pub fn validate_name(name: &str) -> Result<(), StoreError> {
    if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c)) {
        return Err(StoreError::Invalid(format!(
            "invalid key name '{name}': use 1 to 64 letters, digits, '-', '_', '.' or '@'"
        )));
    }
    Ok(())
}

pub fn new_id() -> String {
    let mut id = String::from("key_");
    for _ in 0..12 {
        id.push(fastrand::alphanumeric().to_ascii_lowercase());
    }
    id
}

impl Store {
    /// Creates a key. Returns its record and its secret (shown once, never stored).
    pub fn create_key(&self, new: NewKey) -> Result<(KeyRecord, String), StoreError> {
        validate_name(&new.name)?;
        let secret = match new.secret {
            Some(s) if is_valid_secret(&s) => s,
            Some(_) => {
                return Err(StoreError::Invalid(
                    "a key secret must be 'sk_' followed by at least 43 URL-safe characters".into(),
                ));
            }
            None => new_secret()?,
        };
        let hash = hash_secret(&secret);
        let mut wtxn = self.env.write_txn()?;
        if self.key_names.get(&wtxn, &new.name)?.is_some() {
            return Err(StoreError::Conflict(format!("a key named '{}' already exists", new.name)));
        }
        if self.keys.get(&wtxn, &hash)?.is_some() {
            return Err(StoreError::Conflict("that secret is already in use".into()));
        }
        let mut id = new_id();
        while self.key_ids.get(&wtxn, &id)?.is_some() {
            id = new_id();
        }
        let record = KeyRecord {
            id,
            name: new.name,
            prefix: display_prefix(&secret),
            role: new.role,
            models: new.models,
            created: unix_now(),
            expires: new.expires,
            revoked_at: None,
            limits: new.limits,
            priority: new.priority,
            grants: new.grants,
            version: 0,
        };
        self.keys.put(&mut wtxn, &hash, &record.encode())?;
        self.key_ids.put(&mut wtxn, &record.id, &hash)?;
        self.key_names.put(&mut wtxn, &record.name, &hash)?;
        wtxn.commit()?;
        Ok((record, secret))
    }

    /// Finds a key by public id or by name.
    pub fn find_key(&self, id_or_name: &str) -> Result<(KeyHash, KeyRecord), StoreError> {
        let rtxn = self.read()?;
        self.find_in(&rtxn, id_or_name)
    }

    /// Finds a key inside a transaction (a write transaction reads its own view).
    fn find_in(&self, txn: &heed::RoTxn<'_>, id_or_name: &str) -> Result<(KeyHash, KeyRecord), StoreError> {
        let hash = match self.key_ids.get(txn, id_or_name)? {
            Some(h) => h,
            None => self
                .key_names
                .get(txn, id_or_name)?
                .ok_or_else(|| StoreError::NotFound(format!("no key with id or name '{id_or_name}'")))?,
        };
        let hash: KeyHash = hash.try_into().map_err(|_| StoreError::Io("a key index entry is unreadable".into()))?;
        let raw = self
            .keys
            .get(txn, &hash)?
            .ok_or_else(|| StoreError::Io(format!("key '{id_or_name}' is missing its record")))?;
        Ok((hash, KeyRecord::decode(raw)?))
    }

    /// All keys, oldest first.
    pub fn list_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let rtxn = self.read()?;
        let mut out = Vec::new();
        for item in self.keys.iter(&rtxn)? {
            let (_, raw) = item?;
            out.push(KeyRecord::decode(raw)?);
        }
        out.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
        Ok(out)
    }

    pub fn key_count(&self) -> Result<u64, StoreError> {
        let rtxn = self.read()?;
        Ok(self.keys.len(&rtxn)?)
    }

    /// Applies `update` to a key; takes effect on the next request everywhere.
    pub fn update_key(&self, id_or_name: &str, update: &KeyUpdate) -> Result<KeyRecord, StoreError> {
        let mut wtxn = self.env.write_txn()?;
        let (hash, mut record) = self.find_in(&wtxn, id_or_name)?;
        if let Some(name) = &update.name
            && *name != record.name
        {
            validate_name(name)?;
            if self.key_names.get(&wtxn, name)?.is_some() {
                return Err(StoreError::Conflict(format!("a key named '{name}' already exists")));
            }
            self.key_names.delete(&mut wtxn, &record.name)?;
            self.key_names.put(&mut wtxn, name, &hash)?;
        }
        update.apply_to(&mut record)?;
        self.keys.put(&mut wtxn, &hash, &record.encode())?;
        wtxn.commit()?;
        Ok(record)
    }

    /// Revokes a key: its secret stops working on the next request. The record stays.
    pub fn revoke_key(&self, id_or_name: &str) -> Result<KeyRecord, StoreError> {
        let mut wtxn = self.env.write_txn()?;
        let (hash, mut record) = self.find_in(&wtxn, id_or_name)?;
        if record.revoked_at.is_none() {
            record.revoked_at = Some(unix_now());
            self.keys.put(&mut wtxn, &hash, &record.encode())?;
            wtxn.commit()?;
        }
        Ok(record)
    }

    /// Gives a key a new secret (same id, name and settings); the old secret
    /// stops working at once. Returns the record and the new secret.
    pub fn rotate_key(&self, id_or_name: &str) -> Result<(KeyRecord, String), StoreError> {
        let mut wtxn = self.env.write_txn()?;
        let (old_hash, mut record) = self.find_in(&wtxn, id_or_name)?;
        if record.revoked_at.is_some() {
            return Err(StoreError::Conflict(format!("key '{}' is revoked; create a new key instead", record.name)));
        }
        let secret = new_secret()?;
        let hash = hash_secret(&secret);
        record.prefix = display_prefix(&secret);
        self.keys.delete(&mut wtxn, &old_hash)?;
        self.keys.put(&mut wtxn, &hash, &record.encode())?;
        self.key_ids.put(&mut wtxn, &record.id, &hash)?;
        self.key_names.put(&mut wtxn, &record.name, &hash)?;
        wtxn.commit()?;
        Ok((record, secret))
    }
}

/// A key as a cluster holds it: its secret's hash and its record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterKey {
    /// SHA-256 of the secret, hex.
    pub hash: String,
    pub record: KeyRecord,
}

impl ClusterKey {
    pub fn hash_bytes(&self) -> Option<KeyHash> {
        let b = self.hash.as_bytes();
        if b.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in b.chunks(2).enumerate() {
            let s = std::str::from_utf8(pair).ok()?;
            out[i] = u8::from_str_radix(s, 16).ok()?;
        }
        Some(out)
    }
}

/// A key hash as lower-case hex.
pub fn hash_hex(hash: &KeyHash) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

impl Store {
    /// Every key with its hash (what a cluster is seeded with).
    pub fn keys_with_hashes(&self) -> Result<Vec<ClusterKey>, StoreError> {
        let rtxn = self.read()?;
        let mut out = Vec::new();
        for item in self.keys.iter(&rtxn)? {
            let (hash, raw) = item?;
            let hash: KeyHash = hash.try_into().map_err(|_| StoreError::Io("a key hash is unreadable".into()))?;
            out.push(ClusterKey { hash: hash_hex(&hash), record: KeyRecord::decode(raw)? });
        }
        Ok(out)
    }

    /// Makes the local store hold the cluster's version of keys: each
    /// record replaces the one with its id (whatever its old secret) and any
    /// other holding its name, unless the local one is newer. `applied` is
    /// the cluster's change counter these bring the mirror up to.
    pub fn mirror_keys(&self, keys: &[ClusterKey], applied: Option<u64>) -> Result<usize, StoreError> {
        let mut wtxn = self.env.write_txn()?;
        let mut changed = 0;
        for k in keys {
            let Some(hash) = k.hash_bytes() else { continue };
            let r = &k.record;
            let mut revoked_here = None;
            if let Some(old_hash) = self.key_ids.get(&wtxn, &r.id)? {
                let old_hash = old_hash.to_vec();
                if let Some(raw) = self.keys.get(&wtxn, &old_hash)? {
                    let old = KeyRecord::decode(raw)?;
                    revoked_here = old.revoked_at;
                    if old.version > r.version || (old.version == r.version && old_hash == hash && old == *r) {
                        continue;
                    }
                    if old.name != r.name {
                        self.key_names.delete(&mut wtxn, &old.name)?;
                    }
                }
                if old_hash != hash {
                    self.keys.delete(&mut wtxn, &old_hash)?;
                }
            }
            // The name (or the secret) held locally by another key: the cluster's wins.
            for other in
                [self.key_names.get(&wtxn, &r.name)?.map(<[u8]>::to_vec), Some(hash.to_vec())].into_iter().flatten()
            {
                if let Some(raw) = self.keys.get(&wtxn, &other)?
                    && let Ok(o) = KeyRecord::decode(raw)
                    && o.id != r.id
                {
                    self.key_ids.delete(&mut wtxn, &o.id)?;
                    self.key_names.delete(&mut wtxn, &o.name)?;
                    self.keys.delete(&mut wtxn, &other)?;
                }
            }
            // A revocation known here is never undone by the mirror.
            let mut r = r.clone();
            if let Some(at) = revoked_here {
                r.revoked_at = Some(r.revoked_at.map_or(at, |x| x.min(at)));
            }
            self.keys.put(&mut wtxn, &hash, &r.encode())?;
            self.key_ids.put(&mut wtxn, &r.id, &hash)?;
            self.key_names.put(&mut wtxn, &r.name, &hash)?;
            changed += 1;
        }
        if let Some(v) = applied {
            self.meta.put(&mut wtxn, MIRRORED, &v.to_le_bytes())?;
        }
        wtxn.commit()?;
        Ok(changed)
    }

    /// The cluster's change counter the local keys were last brought up to.
    pub fn mirrored_version(&self) -> Result<u64, StoreError> {
        let rtxn = self.read()?;
        Ok(match self.meta.get(&rtxn, MIRRORED)? {
            Some(v) if v.len() == 8 => u64::from_le_bytes(v.try_into().unwrap_or_default()),
            _ => 0,
        })
    }

    /// How many instances this store's instance last saw alive (0: never saw the cluster).
    pub fn last_instances(&self) -> Result<u64, StoreError> {
        let rtxn = self.read()?;
        Ok(self.meta.get(&rtxn, INSTANCES)?.and_then(|v| v.try_into().ok()).map_or(0, u64::from_le_bytes))
    }

    /// Keeps the count of instances last seen alive (for a start while Redis is away).
    pub fn set_last_instances(&self, n: u64) -> Result<(), StoreError> {
        let mut wtxn = self.env.write_txn()?;
        self.meta.put(&mut wtxn, INSTANCES, &n.to_le_bytes())?;
        wtxn.commit()?;
        Ok(())
    }

    /// The cluster generation the mirror's versions belong to ("" before any).
    pub fn mirrored_epoch(&self) -> Result<String, StoreError> {
        let rtxn = self.read()?;
        Ok(self.meta.get(&rtxn, EPOCH)?.map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default())
    }

    /// Starts mirroring a new cluster generation (a new Redis, or one that
    /// lost its data): the local records' versions mean nothing there, so
    /// they go back to 0 and the whole key set is read again.
    pub fn reset_mirror(&self, epoch: &str) -> Result<(), StoreError> {
        let mut wtxn = self.env.write_txn()?;
        let mut records = Vec::new();
        for item in self.keys.iter(&wtxn)? {
            let (hash, raw) = item?;
            let mut r = KeyRecord::decode(raw)?;
            if r.version != 0 {
                r.version = 0;
                records.push((hash.to_vec(), r.encode()));
            }
        }
        for (hash, raw) in records {
            self.keys.put(&mut wtxn, &hash, &raw)?;
        }
        self.meta.put(&mut wtxn, MIRRORED, &0u64.to_le_bytes())?;
        self.meta.put(&mut wtxn, EPOCH, epoch.as_bytes())?;
        wtxn.commit()?;
        Ok(())
    }

    /// Queues a key change made while the cluster could not be reached.
    pub fn outbox_push(&self, change: &[u8]) -> Result<(), StoreError> {
        let mut wtxn = self.env.write_txn()?;
        let next = match self.meta.rev_prefix_iter(&wtxn, OUTBOX)?.next() {
            Some(item) => item?.0[OUTBOX.len()..].parse::<u64>().unwrap_or(0) + 1,
            None => 1,
        };
        self.meta.put(&mut wtxn, &format!("{OUTBOX}{next:020}"), change)?;
        wtxn.commit()?;
        Ok(())
    }

    /// The queued key changes, oldest first: (entry name, change).
    pub fn outbox(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let rtxn = self.read()?;
        let mut out = Vec::new();
        for item in self.meta.prefix_iter(&rtxn, OUTBOX)? {
            let (k, v) = item?;
            out.push((k.to_owned(), v.to_vec()));
        }
        Ok(out)
    }

    /// Drops a queued change once the cluster has it.
    pub fn outbox_done(&self, entry: &str) -> Result<(), StoreError> {
        let mut wtxn = self.env.write_txn()?;
        self.meta.delete(&mut wtxn, entry)?;
        wtxn.commit()?;
        Ok(())
    }
}

/// The `meta` entry holding the mirrored change counter.
const MIRRORED: &str = "cluster/keys_version";
/// The `meta` entry naming the cluster generation mirrored.
const EPOCH: &str = "cluster/epoch";
/// The instances of the cluster this store's instance last saw alive.
const INSTANCES: &str = "cluster/instances";
/// The prefix of queued key changes in `meta`.
const OUTBOX: &str = "cluster/outbox/";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::temp_dir;

    /// The active record the secret opens, read as the request path reads it.
    fn opens(store: &Store, secret: &str) -> Option<KeyRecord> {
        let rtxn = store.read().unwrap();
        let raw = store.keys.get(&rtxn, &hash_secret(secret)).unwrap()?;
        Some(KeyRecord::decode(raw).unwrap()).filter(|r| r.is_active(unix_now()))
    }

    fn new_key(name: &str) -> NewKey {
        NewKey {
            name: name.into(),
            role: Role::User,
            models: vec![],
            expires: None,
            limits: Limits::default(),
            priority: Default::default(),
            grants: Default::default(),
            secret: None,
        }
    }

    #[test]
    fn create_find_list_update_revoke_rotate() {
        let store = Store::open(&temp_dir("keys")).unwrap();
        let (rec, secret) = store.create_key(new_key("ci-bot")).unwrap();
        assert!(rec.id.starts_with("key_") && rec.id.len() == 16);
        assert_eq!(rec.prefix, display_prefix(&secret));
        assert!(!rec.encode().windows(10).any(|w| secret.as_bytes().windows(10).any(|s| s == w)), "secret not stored");
        assert_eq!(store.find_key("ci-bot").unwrap().1, rec);
        assert_eq!(store.find_key(&rec.id).unwrap().1, rec);
        assert!(store.create_key(new_key("ci-bot")).unwrap_err().message().contains("already exists"));
        assert!(opens(store, &secret).is_some());

        let up = KeyUpdate { models: Some(vec!["llama3".into()]), rpm: Some(Some(60)), ..Default::default() };
        let rec2 = store.update_key("ci-bot", &up).unwrap();
        assert_eq!(rec2.limits.rpm, Some(60));
        assert_eq!(opens(store, &secret).unwrap().limits.rpm, Some(60), "change seen at once");
        let rec3 = store.update_key(&rec.id, &KeyUpdate { rpm: Some(None), ..Default::default() }).unwrap();
        assert_eq!(rec3.limits.rpm, None);

        let (rotated, new_secret) = store.rotate_key("ci-bot").unwrap();
        assert_eq!(rotated.id, rec.id);
        assert!(opens(store, &secret).is_none(), "old secret stops working");
        assert!(opens(store, &new_secret).is_some());

        store.revoke_key(&rec.id).unwrap();
        assert!(opens(store, &new_secret).is_none());
        assert_eq!(store.list_keys().unwrap().len(), 1);
        assert_eq!(store.find_key("ci-bot").unwrap().1.status(unix_now()), "revoked");
        assert!(store.find_key("nope").unwrap_err().message().contains("no key"));
    }

    #[test]
    fn bad_names_and_bootstrap_secrets_are_refused() {
        let store = Store::open(&temp_dir("names")).unwrap();
        assert!(store.create_key(new_key("has space")).is_err());
        assert!(store.create_key(new_key("")).is_err());
        assert!(store.create_key(NewKey { secret: Some("sk_short".into()), ..new_key("boot") }).is_err());
        let good = format!("sk_{}", "a".repeat(43));
        let (rec, secret) = store.create_key(NewKey { secret: Some(good.clone()), ..new_key("boot") }).unwrap();
        assert_eq!(secret, good);
        assert_eq!(rec.prefix, "sk_aaaa…aaaa");
    }

    #[test]
    fn admin_json_settings_name_the_bad_field() {
        let now = 1000;
        let u = KeyUpdate::from_json(&serde_json::json!({"name":"a","role":"admin","models":["llama3"],"expires":"1h","limits":{"rpm":60,"tpm":null},"daily_tokens":5}), now).unwrap();
        assert_eq!(u.name.as_deref(), Some("a"));
        assert_eq!(u.role, Some(Role::Admin));
        assert_eq!(u.expires, Some(Some(now + 3600)));
        assert_eq!((u.rpm, u.tpm, u.daily_tokens, u.monthly_tokens), (Some(Some(60)), Some(None), Some(Some(5)), None));
        let k = u.into_new_key().unwrap();
        assert_eq!(k.limits.rpm, Some(60));
        for (body, field) in [
            (serde_json::json!({"name":5}), "name"),
            (serde_json::json!({"role":"root"}), "role"),
            (serde_json::json!({"models":"llama3"}), "models"),
            (serde_json::json!({"models":[]}), "models"),
            (serde_json::json!({"models":null}), "models"),
            (serde_json::json!({"models":[" "]}), "models"),
            (serde_json::json!({"expires":"soon"}), "expires"),
            (serde_json::json!({"limits":{"rpm":-1}}), "limits.rpm"),
            (serde_json::json!({"rpm":"x"}), "rpm"),
            (serde_json::json!({"colour":"red"}), "colour"),
        ] {
            assert_eq!(KeyUpdate::from_json(&body, now).unwrap_err().0, field, "{body}");
        }
        assert_eq!(KeyUpdate::from_json(&serde_json::json!({}), now).unwrap().into_new_key().unwrap_err().0, "name");
    }

    #[test]
    fn model_allowlists_imply_latest() {
        let mut r = KeyRecord {
            id: "key_x".into(),
            name: "x".into(),
            prefix: "p".into(),
            role: Role::User,
            models: vec![],
            created: 0,
            expires: None,
            revoked_at: None,
            limits: Limits::default(),
            priority: Priority::Standard,
            grants: Grants::default(),
            version: 0,
        };
        assert!(r.allows_model("anything"));
        r.models = vec!["llama3".into(), "qwen3:8b".into()];
        assert!(r.allows_model("llama3:latest"));
        assert!(r.allows_model("llama3"));
        assert!(r.allows_model("qwen3:8b"));
        assert!(!r.allows_model("qwen3"));
        assert!(!r.allows_model("mistral"));
    }
}
