//! The bounds the OpenAPI document states on request fields, set from the
//! constants the services check, so that the document and the server cannot
//! disagree. (utoipa's `minimum`/`maximum` attributes take literals only:
//! the bounds are set here instead.)

use utoipa::openapi::schema::{Object, Schema};
use utoipa::openapi::{OpenApi, RefOr};
use utoipa::Modify;

use crate::read_models::MAX_SEARCH_TEXT_BYTES;
use crate::services::{
    MAX_IMAGES, MAX_LINES, MAX_PAGE_SIZE, MAX_QUANTITY, MAX_STOCK, MIN_PAGE_SIZE, MIN_QUANTITY,
};

/// Sets every documented bound of a request field.
pub(crate) struct Bounds;

impl Modify for Bounds {
    fn modify(&self, openapi: &mut OpenApi) {
        for path in ["/orders", "/products", "/orders/search"] {
            if let Some(limit) = query_parameter(openapi, path, "limit") {
                limit.minimum = Some(MIN_PAGE_SIZE.into());
                limit.maximum = Some(MAX_PAGE_SIZE.into());
            }
        }
        for name in ["product", "q"] {
            if let Some(text) = query_parameter(openapi, "/orders/search", name) {
                text.min_length = Some(1);
                text.max_length = Some(MAX_SEARCH_TEXT_BYTES);
            }
        }
        if let Some(quantity) = property(openapi, "OrderItem", "quantity") {
            quantity.minimum = Some((MIN_QUANTITY as usize).into());
            quantity.maximum = Some((MAX_QUANTITY as usize).into());
        }
        if let Some(quantity) = property(openapi, "SetInventory", "quantity") {
            quantity.minimum = Some(0.into());
            quantity.maximum = Some((MAX_STOCK as usize).into());
        }
        if let Some(RefOr::T(Schema::Array(items))) = property_schema(openapi, "NewOrder", "items") {
            items.min_items = Some(1);
            items.max_items = Some(MAX_LINES);
        }
        if let Some(RefOr::T(Schema::Array(images))) = property_schema(openapi, "NewProduct", "images") {
            images.max_items = Some(MAX_IMAGES);
        }
    }
}

/// The schema of the property `name` of the component `component`.
fn property_schema<'a>(
    openapi: &'a mut OpenApi,
    component: &str,
    name: &str,
) -> Option<&'a mut RefOr<Schema>> {
    let components = openapi.components.as_mut()?;
    match components.schemas.get_mut(component)? {
        RefOr::T(Schema::Object(object)) => object.properties.get_mut(name),
        _ => None,
    }
}

/// The property `name` of the component `component`, when it is a plain schema.
fn property<'a>(openapi: &'a mut OpenApi, component: &str, name: &str) -> Option<&'a mut Object> {
    match property_schema(openapi, component, name)? {
        RefOr::T(Schema::Object(object)) => Some(object),
        _ => None,
    }
}

/// The schema of the query parameter `name` of `GET path`.
fn query_parameter<'a>(openapi: &'a mut OpenApi, path: &str, name: &str) -> Option<&'a mut Object> {
    let operation = openapi.paths.paths.get_mut(path)?.get.as_mut()?;
    let parameter = operation
        .parameters
        .as_mut()?
        .iter_mut()
        .find(|p| p.name == name)?;
    match parameter.schema.as_mut()? {
        RefOr::T(Schema::Object(object)) => Some(object),
        _ => None,
    }
}
