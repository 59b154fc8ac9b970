//! Who is calling: the invocation context and the tenancy policy that
//! enforces isolation between tenants.

use serde::{Deserialize, Serialize};
use smol_str::SmolStr;

use crate::error::{Error, Result};
use crate::keys::tenant_of_pk;

/// The caller of an operation: fills the audit fields of what it writes and
/// decides which tenants' keys it may touch.
///
/// Build it from *verified* credentials only (a JWT whose signature was
/// checked, a trusted upstream); the framework trusts it.
///
/// ```
/// use cqrs_core::InvocationContext;
/// let ctx = InvocationContext::new("shop-a", "user-1")
///     .with_roles(["admin"])
///     .with_source_ip("203.0.113.7");
/// assert_eq!(ctx.tenant_code, "shop-a");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct InvocationContext {
    /// The caller's tenant.
    pub tenant_code: SmolStr,
    /// The caller's user id (`sub` of a JWT).
    pub user_id: SmolStr,
    /// The caller's roles in its tenant.
    pub roles: Vec<String>,
    /// Id of the request, recorded on every command it publishes.
    pub request_id: SmolStr,
    /// The caller's IP address, if known.
    pub source_ip: Option<SmolStr>,
    /// What produced the request (e.g. `POST /orders`), recorded on commands.
    pub source: Option<SmolStr>,
}

impl InvocationContext {
    /// A context for `user_id` in `tenant_code`, with a fresh request id.
    pub fn new(tenant_code: impl AsRef<str>, user_id: impl AsRef<str>) -> Self {
        Self {
            tenant_code: SmolStr::new(tenant_code),
            user_id: SmolStr::new(user_id),
            roles: Vec::new(),
            request_id: SmolStr::new(
                uuid::Uuid::new_v4()
                    .hyphenated()
                    .encode_lower(&mut uuid::Uuid::encode_buffer()),
            ),
            source_ip: None,
            source: None,
        }
    }

    /// Sets the roles.
    pub fn with_roles<I, S>(mut self, roles: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.roles = roles.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the request id.
    pub fn with_request_id(mut self, request_id: impl AsRef<str>) -> Self {
        self.request_id = SmolStr::new(request_id);
        self
    }

    /// Sets the source IP address.
    pub fn with_source_ip(mut self, ip: impl AsRef<str>) -> Self {
        self.source_ip = Some(SmolStr::new(ip));
        self
    }

    /// Sets the source (what produced the request).
    pub fn with_source(mut self, source: impl AsRef<str>) -> Self {
        self.source = Some(SmolStr::new(source));
        self
    }

    /// Whether the caller has `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

/// Which keys a caller may touch besides those of its own tenant.
///
/// By default keys of the tenant `common` are shared by everyone and the role
/// `system_admin` may act in every tenant, as in the reference framework.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenancyPolicy {
    /// A tenant whose keys every caller may read and write (`None`: no such tenant).
    pub common_tenant: Option<String>,
    /// Roles that may act in every tenant.
    pub cross_tenant_roles: Vec<String>,
}

impl Default for TenancyPolicy {
    fn default() -> Self {
        Self {
            common_tenant: Some("common".to_owned()),
            cross_tenant_roles: vec!["system_admin".to_owned()],
        }
    }
}

impl TenancyPolicy {
    /// A policy with no common tenant and no cross-tenant role: every caller
    /// is confined to its own tenant.
    pub fn strict() -> Self {
        Self {
            common_tenant: None,
            cross_tenant_roles: Vec::new(),
        }
    }

    /// Checks that `ctx` may access a key of tenant `key_tenant`.
    pub fn check_tenant(&self, ctx: &InvocationContext, key_tenant: &str) -> Result<()> {
        let allowed = key_tenant == ctx.tenant_code
            || self.common_tenant.as_deref() == Some(key_tenant)
            || self.cross_tenant_roles.iter().any(|r| ctx.has_role(r));
        if allowed {
            Ok(())
        } else {
            Err(Error::TenantViolation {
                caller_tenant: ctx.tenant_code.to_string(),
                key_tenant: key_tenant.to_owned(),
            })
        }
    }

    /// Checks that `ctx` may access partition key `pk`.
    pub fn check_pk(&self, ctx: &InvocationContext, pk: &str) -> Result<()> {
        let tenant = tenant_of_pk(pk).ok_or_else(|| {
            Error::invalid(
                "pk",
                format!("'{pk}' names no tenant; expected '{{TYPE}}#{{tenant}}'"),
            )
        })?;
        self.check_tenant(ctx, tenant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_common_and_admin_access() {
        let policy = TenancyPolicy::default();
        let a = InvocationContext::new("shop-a", "u");
        policy.check_pk(&a, "TENANT#shop-a").unwrap();
        policy.check_pk(&a, "TENANT#common").unwrap();
        assert!(matches!(
            policy.check_pk(&a, "TENANT#shop-b"),
            Err(Error::TenantViolation { .. })
        ));
        let admin = InvocationContext::new("shop-a", "u").with_roles(["system_admin"]);
        policy.check_pk(&admin, "TENANT#shop-b").unwrap();
        assert!(TenancyPolicy::strict().check_pk(&admin, "TENANT#common").is_err());
    }
}
