//! Idempotency keys: a client's name for one request, so that a retry of it
//! (after a timeout, a dropped connection, a lost response) does its work
//! once and gets the first answer back.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::keys::EntityKey;

/// Longest idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 255;

/// Default [`EngineConfig::idempotency_retention`](crate::EngineConfig::idempotency_retention):
/// 24 hours, as payment APIs keep theirs.
pub const DEFAULT_IDEMPOTENCY_RETENTION: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// An idempotency key, with the fingerprint of the request it names.
///
/// Put it on a command ([`CommandInput::idempotency_key`](crate::CommandInput::idempotency_key)),
/// a partial update, a read-modify-write ([`Update::idempotency_key`](crate::Update::idempotency_key)),
/// or a commit ([`CommandService::commit_idempotent`](crate::CommandService::commit_idempotent),
/// [`UpdateAll::idempotency_key`](crate::UpdateAll::idempotency_key)).
/// The key is stored with the command, in the same atomic write, for the
/// engine's [retention](crate::EngineConfig::idempotency_retention). A
/// publish whose key is stored returns the first publish's result and
/// writes nothing; one whose key is stored for another request (another
/// fingerprint) fails with [`Error::IdempotencyKeyReused`]. Keys are per
/// tenant. Duplicates that race the first publish get its result too: a
/// keyed run that conflicts, or whose closure refuses or skips, looks the
/// key up again before answering.
///
/// Without an explicit fingerprint, a command's is derived from its content
/// (key, expected version, name, attributes, ...), a partial update's from
/// its patch, and a read-modify-write's from the entity's key alone (the
/// closure's output may differ between tries: timestamps, say). When the
/// request is what should match — an HTTP body, whose command carries a
/// fresh order number on each try — give its fingerprint with
/// [`IdempotencyKey::fingerprint_of`].
///
/// ```
/// use cqrs_core::{CommandInput, IdempotencyKey};
/// #[derive(serde::Serialize)]
/// struct PlaceOrder { product: String, quantity: u32 }
///
/// let request = PlaceOrder { product: "PRD-001".into(), quantity: 2 };
/// let key = IdempotencyKey::new("8e03978e-40d5-43e8-bc93-6894a57f9324").fingerprint_of(&request)?;
/// let command = CommandInput::new("TENANT#shop-a", "ORDER#ORD-000001").idempotency_key(key);
/// # Ok::<(), cqrs_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdempotencyKey {
    /// The key the client sent: 1 to [`MAX_IDEMPOTENCY_KEY_BYTES`] bytes of
    /// visible ASCII.
    pub key: String,
    /// What the request was; `None`: derived from what is published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

impl IdempotencyKey {
    /// A key whose fingerprint is derived from what is published.
    pub fn new(key: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            fingerprint: None,
        }
    }

    /// Sets the fingerprint of the request.
    pub fn fingerprint(mut self, fingerprint: impl Into<String>) -> Self {
        self.fingerprint = Some(fingerprint.into());
        self
    }

    /// Sets the fingerprint to the SHA-256 of `request`'s JSON, object keys
    /// sorted, numbers as DynamoDB keeps them (`6.0` and `6` are one number).
    pub fn fingerprint_of<T: Serialize + ?Sized>(self, request: &T) -> Result<Self> {
        let value = serde_json::to_value(request)
            .map_err(|e| Error::invalid("idempotency fingerprint", e.to_string()))?;
        Ok(self.fingerprint(fingerprint(&value)))
    }

    /// Checks the key: 1 to 255 bytes of visible ASCII (no spaces). A
    /// publish checks it too; this lets a caller refuse a bad key (an HTTP
    /// header, say) before doing any work.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming `idempotencyKey`.
    pub fn validate(&self) -> Result<()> {
        let key = &self.key;
        if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_BYTES {
            return Err(Error::invalid(
                "idempotencyKey",
                format!(
                    "must be 1 to {MAX_IDEMPOTENCY_KEY_BYTES} bytes, got {}",
                    key.len()
                ),
            ));
        }
        if !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::invalid(
                "idempotencyKey",
                "must be visible ASCII, without spaces",
            ));
        }
        Ok(())
    }

    /// The fingerprint, or `derived` when none was given.
    pub(crate) fn fingerprint_or(&self, derived: impl FnOnce() -> String) -> String {
        self.fingerprint.clone().unwrap_or_else(derived)
    }
}

impl From<&str> for IdempotencyKey {
    fn from(key: &str) -> Self {
        Self::new(key)
    }
}

impl From<String> for IdempotencyKey {
    fn from(key: String) -> Self {
        Self::new(key)
    }
}

/// A stored idempotency key: the command its first publish wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdempotencyRecord {
    /// Tenant the key belongs to.
    pub tenant_code: String,
    /// The key.
    pub key: String,
    /// Fingerprint of the request that used it first.
    pub fingerprint: String,
    /// Partition key of the entity the command was published on.
    pub pk: String,
    /// Sort key of the entity.
    pub sk: String,
    /// Version the command produced.
    pub version: u64,
    /// When the key was stored.
    pub created_at: DateTime<Utc>,
    /// When the key may be used again, in seconds since the Unix epoch. A
    /// backend treats the row as absent from then on (and may delete it: on
    /// DynamoDB it is the item's time to live).
    pub expires_at: i64,
    /// For a keyed [commit](crate::CommandService::commit_idempotent): every
    /// command of it, in order (`pk`/`sk`/`version` above are its first
    /// written one). Empty for a single publish.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub commit: Vec<CommitMember>,
}

/// One command of a keyed commit, as its [`IdempotencyRecord`] keeps it: a
/// retry answers with the state each entity had after the commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommitMember {
    /// Partition key of the entity.
    pub pk: String,
    /// Sort key of the entity.
    pub sk: String,
    /// The version the commit wrote, or found (when unchanged).
    pub version: u64,
    /// Whether the commit wrote it (`false`: equal to its state, left out).
    pub written: bool,
}

impl CommitMember {
    /// The member's entity.
    pub fn entity(&self) -> EntityKey {
        EntityKey::new(self.pk.clone(), self.sk.clone())
    }
}

impl IdempotencyRecord {
    /// The entity the key's command was published on.
    pub fn entity(&self) -> EntityKey {
        EntityKey::new(self.pk.clone(), self.sk.clone())
    }

    /// Whether the key is still held at `now`.
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        now.timestamp() < self.expires_at
    }
}

/// The SHA-256 of `value`'s canonical JSON, in hex.
pub(crate) fn fingerprint(value: &Value) -> String {
    let mut hasher = Fingerprint::default();
    hasher.value(value);
    hasher.finish()
}

/// A SHA-256 fed with JSON in canonical form — object keys sorted whatever
/// the map's order (serde_json's `preserve_order` keeps insertion order),
/// numbers as DynamoDB keeps them — without building the canonical text.
#[derive(Default)]
pub(crate) struct Fingerprint(Sha256);

impl Fingerprint {
    /// Feeds a string, quoted and escaped as JSON.
    pub(crate) fn str(&mut self, text: &str) -> &mut Self {
        // Writing to a hasher cannot fail.
        let _ = serde_json::to_writer(HashWriter(&mut self.0), text);
        self
    }

    /// Feeds any JSON value.
    pub(crate) fn value(&mut self, value: &Value) -> &mut Self {
        match value {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort_unstable();
                self.0.update(b"{");
                for key in keys {
                    self.str(key);
                    self.0.update(b":");
                    self.value(&map[key]);
                    self.0.update(b",");
                }
                self.0.update(b"}");
            }
            Value::Array(items) => {
                self.0.update(b"[");
                for item in items {
                    self.value(item);
                    self.0.update(b",");
                }
                self.0.update(b"]");
            }
            Value::String(text) => {
                self.str(text);
            }
            Value::Number(n) => match n
                .as_f64()
                .filter(|f| n.is_f64() && f.fract() == 0.0 && f.abs() < 9.0e15)
            {
                // A float with no fraction is the integer DynamoDB gives back: 6.0 is 6.
                Some(integral) => self.0.update((integral as i64).to_string().as_bytes()),
                None => {
                    let _ = serde_json::to_writer(HashWriter(&mut self.0), n);
                }
            },
            Value::Bool(true) => self.0.update(b"true"),
            Value::Bool(false) => self.0.update(b"false"),
            Value::Null => self.0.update(b"null"),
        }
        self
    }

    /// The digest, in hex.
    pub(crate) fn finish(self) -> String {
        self.0
            .finalize()
            .iter()
            .fold(String::with_capacity(64), |mut hex, byte| {
                let _ = write!(hex, "{byte:02x}");
                hex
            })
    }
}

/// Lets serde_json write straight into the hasher.
struct HashWriter<'a>(&'a mut Sha256);

impl std::io::Write for HashWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.update(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fingerprints_ignore_key_order_and_number_spelling() {
        let a = fingerprint(&json!({ "a": 1, "b": { "x": [1.0, "y"] } }));
        let b = fingerprint(&json!({ "b": { "x": [1, "y"] }, "a": 1.0 }));
        assert_eq!(a, b);
        assert_eq!(a.len(), 64);
        assert_ne!(a, fingerprint(&json!({ "a": 2, "b": { "x": [1, "y"] } })));
        // A string is not the number it spells.
        assert_ne!(fingerprint(&json!({ "a": "1" })), fingerprint(&json!({ "a": 1 })));
    }

    #[test]
    fn keys_are_short_visible_ascii() {
        assert!(IdempotencyKey::new("abc-123_XYZ").validate().is_ok());
        for bad in ["", "has space", "é", &"k".repeat(256)] {
            let error = IdempotencyKey::new(bad).validate().unwrap_err();
            assert!(
                matches!(error, Error::InvalidInput { ref what, .. } if what == "idempotencyKey"),
                "{bad:?}"
            );
        }
    }
}
