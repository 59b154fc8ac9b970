//! Who may do what: the roles of a storefront, from the token's
//! `custom:roles`, checked by the services themselves (not only by HTTP).
//!
//! | | `staff` | `customer` | neither |
//! |---|---|---|---|
//! | place an order | yes (recorded as theirs) | yes (recorded as theirs) | 403 |
//! | list orders | every order of the shop | their own only | 403 |
//! | read an order | any | their own (another's: 404) | 403 |
//! | change an order's status | any transition | cancel their own only (other statuses: 403, another's order: 404) | 403 |
//! | create a product, set stock | yes | 403 | 403 |
//! | read the catalogue and stock | yes | yes | 403 |

use cqrs_core::InvocationContext;

use crate::error::{ShopError, ShopResult};

/// The role that manages the catalogue, the stock and the orders' statuses.
pub const STAFF: &str = "staff";

/// The role that places orders and reads and cancels its own.
pub const CUSTOMER: &str = "customer";

/// Whether the caller has `role`.
pub fn has_role(ctx: &InvocationContext, role: &str) -> bool {
    ctx.roles.iter().any(|r| r == role)
}

/// Whether the caller is staff.
pub fn is_staff(ctx: &InvocationContext) -> bool {
    has_role(ctx, STAFF)
}

/// Staff only.
pub(crate) fn staff(ctx: &InvocationContext, what: &str) -> ShopResult<()> {
    if is_staff(ctx) {
        Ok(())
    } else {
        Err(ShopError::Forbidden(format!("{what} needs the role {STAFF}")))
    }
}

/// Staff or customer.
pub(crate) fn shopper(ctx: &InvocationContext, what: &str) -> ShopResult<()> {
    if is_staff(ctx) || has_role(ctx, CUSTOMER) {
        Ok(())
    } else {
        Err(ShopError::Forbidden(format!(
            "{what} needs the role {STAFF} or {CUSTOMER}"
        )))
    }
}
