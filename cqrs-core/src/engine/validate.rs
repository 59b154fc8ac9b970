//! Input checks shared by every write: keys, tenancy, ids and sizes.

use std::io;

use serde::Serialize;

use crate::context::{InvocationContext, TenancyPolicy};
use crate::error::{Error, Result};
use crate::keys::EntityKey;
use crate::model::CommandInput;
use crate::storage::StorageLimits;

/// Checks a key and that `ctx` may touch it.
pub(crate) fn check_key(tenancy: &TenancyPolicy, key: &EntityKey, ctx: &InvocationContext) -> Result<()> {
    key.validate()?;
    tenancy.check_pk(ctx, &key.pk)
}

/// Checks everything about a command that can be checked without reading.
pub(crate) fn check_command(
    tenancy: &TenancyPolicy,
    command: &CommandInput,
    ctx: &InvocationContext,
) -> Result<EntityKey> {
    let key = command.key();
    check_key(tenancy, &key, ctx)?;
    if let Some(id) = &command.id {
        if *id != key.id() {
            return Err(Error::invalid("id", format!("'{id}' is not '{}'", key.id())));
        }
    }
    if let Some(tenant) = &command.tenant_code {
        if Some(tenant.as_str()) != key.tenant() {
            return Err(Error::invalid(
                "tenantCode",
                format!("'{tenant}' is not the tenant of pk '{}'", key.pk),
            ));
        }
    }
    if command.code.is_empty() {
        return Err(Error::invalid("code", "must not be empty"));
    }
    Ok(key)
}

/// Checks that the stored form of `item` fits the backend.
pub(crate) fn check_size<T: Serialize>(limits: &StorageLimits, item: &T) -> Result<()> {
    let mut counter = ByteCounter(0);
    serde_json::to_writer(&mut counter, item).map_err(|e| Error::invalid("attributes", e.to_string()))?;
    if counter.0 > limits.max_item_bytes {
        return Err(Error::TooLarge {
            what: "item".into(),
            size: counter.0,
            limit: limits.max_item_bytes,
        });
    }
    Ok(())
}

/// Counts serialized bytes without keeping them.
struct ByteCounter(usize);

impl io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
