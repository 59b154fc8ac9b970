//! Sequence counters in the reference framework's layout, shared with it.
//!
//! A counter row is pk `SEQ#{tenant}`, sk `{typeCode}[#codes]#{period}`, the
//! count in `seq`, and the fields the reference framework's
//! `SequencesService` writes beside it: `code` (the sort key), `name` (the
//! rotation), `type`, `tenantCode`, `requestId`, `createdAt|By|Ip` (kept
//! from the first draw) and `updatedAt|By|Ip`. Both frameworks add one to
//! the same `seq`, so they never hand out the same number.

use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use aws_sdk_dynamodb::Client;
use chrono::SecondsFormat;
use cqrs_core::{Counter, Result};

use crate::error::{sdk_error, shape_error};
use crate::item::{key, n, s, Item};

/// The attribute holding the count.
const SEQ: &str = "seq";
/// Where this framework kept the count before it shared the layout.
const LEGACY_COUNT: &str = "counter";

/// The count of a counter row: `seq`, or the legacy `counter`.
pub(crate) fn count(item: &Item) -> Option<u64> {
    [SEQ, LEGACY_COUNT].iter().find_map(|name| match item.get(*name) {
        Some(AttributeValue::N(value)) => value.parse().ok(),
        _ => None,
    })
}

/// Adds one to the count of `counter` and writes its descriptive fields.
///
/// With `start: None`, only a row that has a count is counted on: `None`
/// comes back when it has none. With `start: Some(count)`, a row without a
/// count starts from `count` (a row with one, because another draw got there
/// first, goes on from its own).
pub(crate) async fn draw(
    client: &Client,
    table: &str,
    counter: &Counter,
    start: Option<u64>,
) -> Result<Option<u64>> {
    // Timestamps as the reference framework writes them: whole seconds
    // with an offset.
    let at = counter.at.to_rfc3339_opts(SecondsFormat::Secs, false);
    let mut sets = vec![
        "#code = :code",
        "#name = :name",
        "#type = :type",
        "#tenantCode = :tenantCode",
        "#requestId = :requestId",
        "#updatedAt = :at",
        "#updatedBy = :user",
        "#createdAt = if_not_exists(#createdAt, :at)",
        "#createdBy = if_not_exists(#createdBy, :user)",
    ];
    let mut request = client
        .update_item()
        .table_name(table)
        .set_key(Some(key(&counter.pk, &counter.sk)))
        .expression_attribute_names("#seq", SEQ)
        .expression_attribute_values(":one", n(1))
        .expression_attribute_values(":code", s(&counter.sk))
        .expression_attribute_values(":name", s(counter.rotation))
        .expression_attribute_values(":type", s(&counter.type_code))
        .expression_attribute_values(":tenantCode", s(&counter.tenant_code))
        .expression_attribute_values(":requestId", s(&counter.request_id))
        .expression_attribute_values(":at", s(at))
        .expression_attribute_values(":user", s(&counter.user))
        .return_values(ReturnValue::UpdatedNew);
    for name in [
        "code",
        "name",
        "type",
        "tenantCode",
        "requestId",
        "updatedAt",
        "updatedBy",
        "createdAt",
        "createdBy",
    ] {
        request = request.expression_attribute_names(format!("#{name}"), name);
    }
    if let Some(ip) = &counter.source_ip {
        sets.extend(["#updatedIp = :ip", "#createdIp = if_not_exists(#createdIp, :ip)"]);
        request = request
            .expression_attribute_names("#updatedIp", "updatedIp")
            .expression_attribute_names("#createdIp", "createdIp")
            .expression_attribute_values(":ip", s(ip));
    }
    let increment = match start {
        None => {
            request = request.condition_expression("attribute_exists(#seq)");
            "#seq = #seq + :one".to_owned()
        }
        Some(start) => {
            request = request.expression_attribute_values(":start", n(start));
            "#seq = if_not_exists(#seq, :start) + :one".to_owned()
        }
    };
    let expression = format!("SET {increment}, {}", sets.join(", "));
    let out = match request.update_expression(expression).send().await {
        Ok(out) => out,
        Err(e)
            if start.is_none()
                && e.as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(sdk_error(e)),
    };
    match out.attributes.as_ref().and_then(|a| a.get(SEQ)) {
        Some(AttributeValue::N(value)) => value.parse().map(Some).map_err(|e| shape_error("counter", e)),
        _ => Err(shape_error("counter", "no count returned")),
    }
}
