//! Keys: partition key (`pk`), sort key (`sk`), ids, tenants and validation.
//!
//! Keys follow the reference framework's conventions so that tables can be
//! shared with it: parts are joined with `#`, a command's version is appended
//! to its sort key after `@`, and the tenant is the last `#`-separated part of
//! the partition key (`TENANT#shop-a` belongs to tenant `shop-a`).

use std::fmt;

use serde::{Deserialize, Serialize};
use smol_str::SmolStr;

use crate::error::{Error, Result};

/// Separator between the parts of a key.
pub const KEY_SEPARATOR: char = '#';
/// Separator between a sort key and a command version (`ORDER#1@3`).
pub const VERSION_SEPARATOR: char = '@';
/// DynamoDB's limit on the size of a partition key, in bytes.
pub const MAX_PK_BYTES: usize = 2048;
/// DynamoDB's limit on the size of a sort key, in bytes.
pub const MAX_SK_BYTES: usize = 1024;
/// Prefix of [`tenant_pk`].
pub const TENANT_PK_PREFIX: &str = "TENANT";

/// The partition key of a tenant's entities: `TENANT#{tenant}`.
///
/// ```
/// assert_eq!(cqrs_core::tenant_pk("shop-a"), "TENANT#shop-a");
/// ```
pub fn tenant_pk(tenant_code: &str) -> String {
    format!("{TENANT_PK_PREFIX}{KEY_SEPARATOR}{tenant_code}")
}

/// The tenant a partition key belongs to: the text after its last `#`.
///
/// Returns `None` for a pk without `#` or with nothing after it.
///
/// ```
/// assert_eq!(cqrs_core::tenant_of_pk("TENANT#shop-a"), Some("shop-a"));
/// assert_eq!(cqrs_core::tenant_of_pk("MASTER"), None);
/// ```
pub fn tenant_of_pk(pk: &str) -> Option<&str> {
    // The separator is ASCII: a byte search finds it, on a char boundary.
    let after = pk.as_bytes().iter().rposition(|&b| b == KEY_SEPARATOR as u8)? + 1;
    Some(&pk[after..]).filter(|tenant| !tenant.is_empty())
}

/// The sort key of version `version` of a command: `{sk}@{version}`.
pub fn command_sk(sk: &str, version: u64) -> String {
    format!("{sk}{VERSION_SEPARATOR}{version}")
}

/// Splits a command sort key `{sk}@{version}` into its parts.
pub fn parse_command_sk(command_sk: &str) -> Option<(&str, u64)> {
    let (sk, version) = command_sk.rsplit_once(VERSION_SEPARATOR)?;
    Some((sk, version.parse().ok()?))
}

/// The key of one entity: partition key and sort key (without version).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EntityKey {
    /// Partition key, e.g. `TENANT#shop-a`.
    pub pk: SmolStr,
    /// Sort key, e.g. `ORDER#ORD-000001`.
    pub sk: SmolStr,
}

impl EntityKey {
    /// Builds a key from its parts.
    pub fn new(pk: impl AsRef<str>, sk: impl AsRef<str>) -> Self {
        Self {
            pk: SmolStr::new(pk),
            sk: SmolStr::new(sk),
        }
    }

    /// The entity id: `pk#sk`.
    pub fn id(&self) -> String {
        format!("{}{KEY_SEPARATOR}{}", self.pk, self.sk)
    }

    /// The tenant the key belongs to (see [`tenant_of_pk`]).
    pub fn tenant(&self) -> Option<&str> {
        tenant_of_pk(&self.pk)
    }

    /// Checks the key against the framework's and DynamoDB's rules.
    ///
    /// * pk and sk are non-empty and have no empty `#`-separated part,
    /// * the pk names a tenant (`{TYPE}#{tenant}`),
    /// * the sk contains no `@` (reserved for command versions),
    /// * pk ≤ 2048 bytes, sk ≤ 1024 bytes once a command version is appended.
    pub fn validate(&self) -> Result<()> {
        validate_pk(&self.pk)?;
        validate_sk(&self.sk)
    }
}

impl fmt::Display for EntityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{KEY_SEPARATOR}{}", self.pk, self.sk)
    }
}

/// Validates a partition key (see [`EntityKey::validate`]).
pub fn validate_pk(pk: &str) -> Result<()> {
    validate_parts("pk", pk)?;
    if pk.len() > MAX_PK_BYTES {
        return Err(Error::TooLarge {
            what: "pk".into(),
            size: pk.len(),
            limit: MAX_PK_BYTES,
        });
    }
    if tenant_of_pk(pk).is_none() {
        return Err(Error::invalid(
            "pk",
            format!("'{pk}' names no tenant; expected '{{TYPE}}#{{tenant}}'"),
        ));
    }
    Ok(())
}

/// Digits of `u64::MAX`, the longest version.
const U64_DIGITS: usize = 20;

/// Validates a sort key (see [`EntityKey::validate`]).
pub fn validate_sk(sk: &str) -> Result<()> {
    validate_parts("sk", sk)?;
    if sk.as_bytes().contains(&(VERSION_SEPARATOR as u8)) {
        return Err(Error::invalid(
            "sk",
            format!("'{sk}' contains '{VERSION_SEPARATOR}', which is reserved for versions"),
        ));
    }
    // Room for the longest "@{version}" suffix of the command row.
    const LIMIT: usize = MAX_SK_BYTES - 1 - U64_DIGITS;
    if sk.len() > LIMIT {
        return Err(Error::TooLarge {
            what: "sk".into(),
            size: sk.len(),
            limit: LIMIT,
        });
    }
    Ok(())
}

fn validate_parts(what: &str, key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::invalid(what, "must not be empty"));
    }
    // An empty part: a separator first, last, or twice in a row.
    let separator = KEY_SEPARATOR as u8;
    let bytes = key.as_bytes();
    let empty_part = bytes.first() == Some(&separator)
        || bytes.last() == Some(&separator)
        || bytes.windows(2).any(|pair| pair == [separator, separator]);
    if empty_part {
        return Err(Error::invalid(
            what,
            format!("'{key}' has an empty '{KEY_SEPARATOR}'-separated part"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_and_tenant() {
        let key = EntityKey::new(tenant_pk("shop-a"), "ORDER#ORD-000001");
        assert_eq!(key.id(), "TENANT#shop-a#ORDER#ORD-000001");
        assert_eq!(key.tenant(), Some("shop-a"));
        assert_eq!(tenant_of_pk("A#B#c"), Some("c"));
        assert_eq!(tenant_of_pk("TENANT#"), None);
    }

    #[test]
    fn command_sk_round_trips() {
        let sk = command_sk("ORDER#1", 42);
        assert_eq!(sk, "ORDER#1@42");
        assert_eq!(parse_command_sk(&sk), Some(("ORDER#1", 42)));
        assert_eq!(parse_command_sk("ORDER#1"), None);
        assert_eq!(parse_command_sk("ORDER#1@x"), None);
    }

    #[test]
    fn validation_rejects_bad_keys() {
        let bad = [
            ("", "X"),
            ("TENANT#a", ""),
            ("TENANT", "X"),
            ("TENANT#a", "X@1"),
            ("TENANT##a", "X"),
            ("TENANT#a", "X#"),
        ];
        for (pk, sk) in bad {
            let err = EntityKey::new(pk, sk).validate().unwrap_err();
            assert!(matches!(err, Error::InvalidInput { .. }), "{pk}/{sk}: {err}");
        }
        let long_pk = format!("TENANT#{}", "a".repeat(MAX_PK_BYTES));
        assert!(matches!(
            EntityKey::new(long_pk, "X").validate(),
            Err(Error::TooLarge { .. })
        ));
        let long_sk = "s".repeat(MAX_SK_BYTES);
        assert!(matches!(
            EntityKey::new("TENANT#a", long_sk).validate(),
            Err(Error::TooLarge { .. })
        ));
        EntityKey::new("TENANT#a", "ORDER#1").validate().unwrap();
    }
}
