//! Publisher heartbeats on DynamoDB: one row per engine in the sequences
//! table (pk [`HEARTBEAT_PK`], sk the publisher id), its expiry in
//! milliseconds since the epoch, renewed with a conditional update.

use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;
use chrono::{DateTime, TimeZone, Utc};
use cqrs_core::{Heartbeat, HeartbeatRenewal, Result};

use crate::error::sdk_error;
use crate::item::{key, n};
use crate::tables::TTL_ATTRIBUTE;

/// Partition key of the heartbeat rows in the sequences table.
pub const HEARTBEAT_PK: &str = "PUBLISHER#HEARTBEAT";

/// How long after its expiry a heartbeat row is removed (time to live): a
/// row stamped with its publisher finds it expired, not missing, for this long.
const KEPT_AFTER_EXPIRY_SECS: i64 = 7 * 24 * 60 * 60;

/// [`Storage::renew_heartbeat`](cqrs_core::Storage::renew_heartbeat) in `table`.
pub(crate) async fn renew(
    client: &Client,
    table: &str,
    publisher: &str,
    expires_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<HeartbeatRenewal> {
    let sent = client
        .update_item()
        .table_name(table)
        .set_key(Some(key(HEARTBEAT_PK, publisher)))
        .update_expression("SET expiresAt = :expires, #ttl = :ttl")
        // An expired heartbeat is never brought back: its publisher was
        // declared gone, and recovery may have taken its work over.
        .condition_expression("attribute_not_exists(pk) OR expiresAt >= :now")
        .expression_attribute_names("#ttl", TTL_ATTRIBUTE)
        .expression_attribute_values(":expires", n(expires_at.timestamp_millis()))
        .expression_attribute_values(":now", n(now.timestamp_millis()))
        .expression_attribute_values(
            ":ttl",
            n(expires_at.timestamp().saturating_add(KEPT_AFTER_EXPIRY_SECS)),
        )
        .send()
        .await;
    match sent {
        Ok(_) => Ok(HeartbeatRenewal::Renewed),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
        {
            Ok(HeartbeatRenewal::Expired)
        }
        Err(e) => Err(sdk_error(e)),
    }
}

/// [`Storage::get_heartbeat`](cqrs_core::Storage::get_heartbeat) in `table`.
pub(crate) async fn get(client: &Client, table: &str, publisher: &str) -> Result<Heartbeat> {
    let out = client
        .get_item()
        .table_name(table)
        .set_key(Some(key(HEARTBEAT_PK, publisher)))
        .consistent_read(true)
        .send()
        .await
        .map_err(sdk_error)?;
    let Some(item) = out.item else {
        return Ok(Heartbeat::Missing);
    };
    let until = match item.get("expiresAt") {
        Some(AttributeValue::N(millis)) => millis
            .parse::<i64>()
            .ok()
            .and_then(|millis| Utc.timestamp_millis_opt(millis).single()),
        _ => None,
    };
    Ok(match until {
        Some(until) => Heartbeat::Until(until),
        None => {
            // Not written by a publisher: no publisher is known to be alive.
            tracing::warn!(
                publisher,
                table,
                "heartbeat row without a readable expiresAt; its publisher counts as gone"
            );
            Heartbeat::Missing
        }
    })
}
