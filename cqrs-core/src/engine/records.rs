//! Building stored rows from commands: versions, audit fields, the dirty check.

use chrono::{DateTime, Utc};

use crate::attributes::Attributes;
use crate::context::InvocationContext;
use crate::model::{CommandInput, CommandRecord, CommandStatus, DataItem};

/// The stored command of `input` at `version`.
pub(crate) fn command_record(
    input: CommandInput,
    version: u64,
    status: CommandStatus,
    ctx: &InvocationContext,
    now: DateTime<Utc>,
) -> CommandRecord {
    CommandRecord {
        pk: input.pk,
        sk: input.sk,
        code: input.code,
        name: input.name,
        version,
        entity_type: input.entity_type,
        attributes: input.attributes,
        is_deleted: input.is_deleted,
        ttl: input.ttl,
        seq: input.seq,
        status,
        foreign_status: None,
        source: ctx.source.clone(),
        request_id: ctx.request_id.clone(),
        created_at: now,
        created_by: ctx.user_id.clone(),
        created_ip: ctx.source_ip.clone(),
        publisher: None,
        traceparent: crate::trace::current_traceparent(),
    }
}

/// The data row `command` produces over `previous`: creation audit fields
/// carry over, update audit fields come from the command. Every field is
/// shared with the command's, the attributes included.
pub(crate) fn data_item(command: &CommandRecord, previous: Option<&DataItem>) -> DataItem {
    let (created_at, created_by, created_ip) = match previous {
        Some(p) => (p.created_at, p.created_by.clone(), p.created_ip.clone()),
        None => (
            command.created_at,
            command.created_by.clone(),
            command.created_ip.clone(),
        ),
    };
    DataItem {
        pk: command.pk.clone(),
        sk: command.sk.clone(),
        code: command.code.clone(),
        name: command.name.clone(),
        version: command.version,
        entity_type: command.entity_type.clone(),
        attributes: command.attributes.clone(),
        is_deleted: command.is_deleted,
        ttl: command.ttl,
        seq: command.seq,
        request_id: command.request_id.clone(),
        created_at,
        created_by,
        created_ip,
        updated_at: command.created_at,
        updated_by: command.created_by.clone(),
        updated_ip: command.created_ip.clone(),
    }
}

/// The fields the dirty check compares (the reference framework's set; key,
/// id and tenant are equal by construction). Numbers in the attributes
/// compare by value: a backend may give `6.0` back as `6`.
pub(crate) struct Content<'a> {
    code: &'a str,
    name: &'a str,
    entity_type: &'a str,
    attributes: &'a Attributes,
    is_deleted: bool,
    ttl: Option<i64>,
    seq: Option<u64>,
}

impl PartialEq for Content<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.code == other.code
            && self.name == other.name
            && self.entity_type == other.entity_type
            && self.is_deleted == other.is_deleted
            && self.ttl == other.ttl
            && self.seq == other.seq
            && self.attributes == other.attributes
    }
}

macro_rules! content_of {
    ($t:ty) => {
        impl $t {
            pub(crate) fn content(&self) -> Content<'_> {
                Content {
                    code: &self.code,
                    name: &self.name,
                    entity_type: &self.entity_type,
                    attributes: &self.attributes,
                    is_deleted: self.is_deleted,
                    ttl: self.ttl,
                    seq: self.seq,
                }
            }
        }
    };
}

content_of!(CommandInput);
content_of!(CommandRecord);
content_of!(DataItem);

/// The context a handler gets in the async pipeline, rebuilt from what the
/// command stored (roles are not stored).
pub(crate) fn context_of(command: &CommandRecord) -> InvocationContext {
    let mut ctx = InvocationContext::new(command.tenant_code(), command.created_by.clone())
        .with_request_id(command.request_id.clone());
    ctx.source_ip = command.created_ip.clone();
    ctx.source = command.source.clone();
    ctx
}
