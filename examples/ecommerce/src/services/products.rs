//! The catalogue.

use cqrs_core::{
    tenant_pk, CommandInput, CommandServiceExt, Cursor, DataItem, EntityKey, InvocationContext, ListQuery,
    Page, Services, SkCondition,
};
use rust_decimal::Decimal;
use serde::Deserialize;
use utoipa::ToSchema;

use super::{access, typed, validate};
use crate::domain::{product_sk, ProductAttributes};
use crate::error::{ShopError, ShopResult};
use crate::money;

/// Images a product may have.
pub const MAX_IMAGES: usize = 20;

/// A product to create.
#[derive(Debug, Clone, PartialEq, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({
    "code": "PRD-100",
    "name": "Laptop Stand",
    "categoryCode": "ACCESSORIES",
    "sku": "SKU-PRD-100",
    "price": 45.5,
    "currency": "USD",
    "description": "Aluminium, adjustable",
    "images": [],
    "isActive": true
}))]
pub struct NewProduct {
    /// Code (`PRD-001`).
    pub code: String,
    /// Name.
    pub name: String,
    /// Category.
    pub category_code: String,
    /// Stock keeping unit.
    pub sku: String,
    /// Unit price.
    #[serde(with = "money::json")]
    #[schema(value_type = f64)]
    pub price: Decimal,
    /// Currency code.
    pub currency: String,
    /// Description.
    #[serde(default)]
    pub description: String,
    /// Image URLs.
    #[serde(default)]
    pub images: Vec<String>,
    /// Whether it can be ordered.
    pub is_active: bool,
}

/// Creates and reads products.
#[derive(Clone)]
pub struct ProductService {
    services: Services,
}

impl ProductService {
    /// Over the given framework services.
    pub fn new(services: Services) -> Self {
        Self { services }
    }

    /// Creates a product (staff only); a product with that code already is a
    /// conflict.
    pub async fn create(&self, product: NewProduct, ctx: &InvocationContext) -> ShopResult<DataItem> {
        access::staff(ctx, "creating a product")?;
        validate::code("product code", &product.code)?;
        validate::text("name", &product.name)?;
        validate::text("categoryCode", &product.category_code)?;
        validate::text("sku", &product.sku)?;
        validate::text("currency", &product.currency)?;
        validate::LONG_TEXT.check("description", &product.description)?;
        if product.images.len() > MAX_IMAGES {
            return Err(ShopError::InvalidInput(format!(
                "a product has at most {MAX_IMAGES} images"
            )));
        }
        for image in &product.images {
            validate::text("images", image)?;
        }
        money::check_price(product.price)?;
        let attributes = ProductAttributes {
            category_code: product.category_code,
            sku: product.sku,
            price: product.price,
            currency: product.currency,
            description: product.description,
            images: product.images,
            is_active: product.is_active,
        };
        let command =
            CommandInput::new(tenant_pk(&ctx.tenant_code), product_sk(&product.code)).name(product.name);
        match self
            .services
            .commands
            .publish_sync_typed(command, attributes, ctx)
            .await
        {
            Ok(published) => Ok(published.into_item().item),
            Err(cqrs_core::Error::Conflict { .. }) => Err(ShopError::Conflict(format!(
                "product {} exists already",
                product.code
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// A product (staff or customer); a deleted one is not found, one whose
    /// attributes are not a product's is [`ShopError::Unreadable`].
    pub async fn get(&self, code: &str, ctx: &InvocationContext) -> ShopResult<DataItem> {
        access::shopper(ctx, "reading the catalogue")?;
        validate::code("product code", code)?;
        let item = self
            .live(code, ctx)
            .await?
            .ok_or_else(|| ShopError::NotFound(format!("product {code} not found")))?;
        typed::checked::<ProductAttributes>(item, "product")
    }

    /// The data row of a product, `None` when it does not exist or was
    /// deleted (by another program sharing the table: `isDeleted`).
    async fn live(&self, code: &str, ctx: &InvocationContext) -> ShopResult<Option<DataItem>> {
        let key = EntityKey::new(tenant_pk(&ctx.tenant_code), product_sk(code));
        let item = self.services.data.get_item(&key, ctx).await?;
        Ok(item.filter(|item| !item.is_deleted))
    }

    /// A product's name and attributes, to order it: `None` when it does not
    /// exist, [`ShopError::InvalidInput`] when it was deleted.
    pub async fn find(
        &self,
        code: &str,
        ctx: &InvocationContext,
    ) -> ShopResult<Option<(String, ProductAttributes)>> {
        let key = EntityKey::new(tenant_pk(&ctx.tenant_code), product_sk(code));
        match self.services.data.get_item(&key, ctx).await? {
            Some(item) if item.is_deleted => Err(ShopError::Unprocessable(format!(
                "product {code} was deleted: it cannot be ordered"
            ))),
            Some(item) => {
                let attributes = typed::attributes(&item, "product")?;
                Ok(Some((item.name.to_string(), attributes)))
            }
            None => Ok(None),
        }
    }

    /// A product's attributes, `None` when it does not exist or was deleted.
    pub async fn attributes(
        &self,
        code: &str,
        ctx: &InvocationContext,
    ) -> ShopResult<Option<ProductAttributes>> {
        match self.live(code, ctx).await? {
            Some(item) => Ok(Some(typed::attributes(&item, "product")?)),
            None => Ok(None),
        }
    }

    /// A page of the catalogue (staff or customer): deleted products left
    /// out, rows that are not products among its `unreadable` rows.
    pub async fn list(
        &self,
        limit: Option<usize>,
        cursor: Option<String>,
        ctx: &InvocationContext,
    ) -> ShopResult<Page<DataItem>> {
        access::shopper(ctx, "reading the catalogue")?;
        let query = ListQuery::new()
            .sk(SkCondition::BeginsWith("PRODUCT#".into()))
            .filter(typed::not_deleted())
            .limit(validate::limit(limit)?)
            .after(cursor.map(Cursor::from));
        let page = self
            .services
            .data
            .list_items(&tenant_pk(&ctx.tenant_code), query, ctx)
            .await?;
        Ok(typed::page::<ProductAttributes>(page))
    }
}
