//! Numbering: [`SequenceService`] over the storage's atomic counter.

use async_trait::async_trait;
use chrono::Utc;

use super::Engine;
use crate::context::InvocationContext;
use crate::error::Result;
use crate::sequence::{counter_key, format_number, SequenceRequest, SequenceValue};
use crate::services::SequenceService;

#[async_trait]
impl SequenceService for Engine {
    async fn next(&self, request: &SequenceRequest, ctx: &InvocationContext) -> Result<SequenceValue> {
        let tenant = request.tenant_code.as_deref().unwrap_or(&ctx.tenant_code);
        self.tenancy().check_tenant(ctx, tenant)?;
        let issued_at = Utc::now();
        let date = request.date.unwrap_or_else(|| issued_at.date_naive());
        // Validates codes and format before the counter moves.
        let key = counter_key(request, tenant, date)?;
        let no = self.storage_ref().next_counter(&key.pk, &key.sk).await?;
        let formatted = format_number(request, tenant, date, no)?;
        tracing::debug!(tenant, sequence = %key.sk, no, "number issued");
        Ok(SequenceValue {
            no,
            formatted,
            issued_at,
        })
    }
}
