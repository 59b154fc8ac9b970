//! Numbering: [`SequenceService`] over the storage's atomic counter.

use async_trait::async_trait;

use super::Engine;
use crate::context::InvocationContext;
use crate::error::Result;
use crate::sequence::{counter_key, format_number, Counter, SequenceRequest, SequenceValue};
use crate::services::SequenceService;

#[async_trait]
impl SequenceService for Engine {
    async fn next(&self, request: &SequenceRequest, ctx: &InvocationContext) -> Result<SequenceValue> {
        let tenant = request.tenant_code.as_deref().unwrap_or(&ctx.tenant_code);
        self.tenancy().check_tenant(ctx, tenant)?;
        let issued_at = crate::clock::now();
        let date = request.date.unwrap_or_else(|| issued_at.date_naive());
        // Validates codes and format before the counter moves.
        let key = counter_key(request, tenant, date)?;
        let counter = Counter {
            pk: key.pk,
            sk: key.sk,
            legacy_sk: key.legacy_sk,
            type_code: request.type_code.clone(),
            rotation: request.rotation.name(),
            tenant_code: tenant.to_owned(),
            user: ctx.user_id.to_string(),
            source_ip: ctx.source_ip.as_ref().map(ToString::to_string),
            request_id: ctx.request_id.to_string(),
            at: issued_at,
        };
        let no = self.storage_ref().next_counter(&counter).await?;
        let formatted = format_number(request, tenant, date, no)?;
        tracing::debug!(tenant, sequence = %counter.sk, no, "number issued");
        Ok(SequenceValue {
            no,
            formatted,
            issued_at,
        })
    }
}
