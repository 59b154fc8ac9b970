//! The rules on request fields, stated in the OpenAPI document from the
//! definitions the services check them with ([`crate::services::validate`]
//! and the bounds' constants), so that the document and the server cannot
//! disagree. (utoipa's attributes take literals only: the rules are set
//! here instead.)
//!
//! A test walks the document's request schemas and parameters and fails on
//! a text or number this module leaves unbounded, unless its test lists it as
//! free: a new field cannot slip in without its rule.

use utoipa::openapi::path::{Operation, Parameter, PathItem};
use utoipa::openapi::schema::{ArrayItems, Object, Schema};
use utoipa::openapi::{OpenApi, RefOr};
use utoipa::Modify;

use crate::money::MAX_PRICE;
use crate::services::validate::{TextRule, CODE, IDEMPOTENCY_KEY, LONG_TEXT, MAX_VERSION, SEARCH_TEXT, TEXT};
use crate::services::{
    MAX_IMAGES, MAX_LINES, MAX_PAGE_SIZE, MAX_QUANTITY, MAX_STOCK, MIN_PAGE_SIZE, MIN_QUANTITY,
};

/// The text properties of the request bodies, and their rules.
const TEXT_PROPERTIES: &[(&str, &str, &TextRule)] = &[
    ("NewOrder", "customerId", &TEXT),
    ("NewOrder", "paymentMethod", &TEXT),
    ("OrderItem", "productCode", &CODE),
    ("Address", "street", &TEXT),
    ("Address", "city", &TEXT),
    ("Address", "postalCode", &TEXT),
    ("Address", "country", &TEXT),
    ("NewProduct", "code", &CODE),
    ("NewProduct", "name", &TEXT),
    ("NewProduct", "categoryCode", &TEXT),
    ("NewProduct", "sku", &TEXT),
    ("NewProduct", "currency", &TEXT),
    ("NewProduct", "description", &LONG_TEXT),
    ("SetInventory", "warehouseCode", &TEXT),
];

/// The path parameters, all codes, and the query parameters that are
/// searched texts.
const TEXT_PARAMETERS: &[(&str, &str, &TextRule)] = &[
    ("/orders/{code}", "code", &CODE),
    ("/orders/{code}/status", "code", &CODE),
    ("/products/{code}", "code", &CODE),
    ("/inventory/{productCode}", "productCode", &CODE),
    ("/orders/search", "product", &SEARCH_TEXT),
    ("/orders/search", "q", &SEARCH_TEXT),
];

/// Sets every rule of a request field.
pub(crate) struct Bounds;

impl Modify for Bounds {
    fn modify(&self, openapi: &mut OpenApi) {
        for (component, name, rule) in TEXT_PROPERTIES {
            if let Some(field) = property(openapi, component, name) {
                text(field, rule);
            }
        }
        if let Some(RefOr::T(Schema::Array(images))) = property_schema(openapi, "NewProduct", "images") {
            images.max_items = Some(MAX_IMAGES);
            if let ArrayItems::RefOrSchema(image) = &mut images.items {
                if let RefOr::T(Schema::Object(image)) = image.as_mut() {
                    text(image, &TEXT);
                }
            }
        }
        for (path, name, rule) in TEXT_PARAMETERS {
            for parameter in parameters(openapi, path, name) {
                if let Some(RefOr::T(Schema::Object(field))) = parameter.schema.as_mut() {
                    text(field, rule);
                }
            }
        }
        for operation in operations(openapi) {
            for parameter in operation.parameters.iter_mut().flatten() {
                let Some(RefOr::T(Schema::Object(field))) = parameter.schema.as_mut() else {
                    continue;
                };
                match parameter.name.as_str() {
                    "Idempotency-Key" => text(field, &IDEMPOTENCY_KEY),
                    "limit" => range(field, MIN_PAGE_SIZE as i64, MAX_PAGE_SIZE as i64),
                    _ => {}
                }
            }
        }
        if let Some(quantity) = property(openapi, "OrderItem", "quantity") {
            range(quantity, MIN_QUANTITY.into(), MAX_QUANTITY.into());
        }
        if let Some(quantity) = property(openapi, "SetInventory", "quantity") {
            range(quantity, 0, MAX_STOCK);
        }
        for component in ["StatusChange", "SetInventory"] {
            if let Some(version) = property(openapi, component, "version") {
                range(version, 0, MAX_VERSION as i64);
            }
        }
        for component in ["NewProduct", "OrderItem"] {
            if let Some(price) = property(openapi, component, "price") {
                self::price(price);
            }
        }
        if let Some(RefOr::T(Schema::Array(items))) = property_schema(openapi, "NewOrder", "items") {
            items.min_items = Some(1);
            items.max_items = Some(MAX_LINES);
        }
    }
}

/// States `rule` on a string schema.
fn text(field: &mut Object, rule: &TextRule) {
    field.min_length = Some(rule.min_chars);
    field.max_length = Some(rule.max_chars);
    field.pattern = Some(rule.pattern.to_owned());
}

/// States `min..=max` on an integer schema, replacing the bounds of its
/// Rust type (`format: int32` and the like say less).
fn range(field: &mut Object, min: i64, max: i64) {
    field.minimum = Some(min.into());
    field.maximum = Some(max.into());
}

/// A price: above 0, at most [`MAX_PRICE`], in cents
/// ([`crate::money::check_price`]).
fn price(field: &mut Object) {
    use rust_decimal::prelude::ToPrimitive;
    field.minimum = None;
    field.exclusive_minimum = Some(0.into());
    field.maximum = MAX_PRICE.to_f64().map(Into::into);
    field.multiple_of = Some(0.01.into());
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

/// Every operation of the document.
pub(crate) fn operations(openapi: &mut OpenApi) -> impl Iterator<Item = &mut Operation> {
    openapi.paths.paths.values_mut().flat_map(item_operations)
}

/// The operations of one path.
fn item_operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.patch,
    ]
    .into_iter()
    .flatten()
}

/// The parameters `name` of every operation of `path`.
fn parameters<'a>(openapi: &'a mut OpenApi, path: &str, name: &'a str) -> Vec<&'a mut Parameter> {
    let Some(item) = openapi.paths.paths.get_mut(path) else {
        return Vec::new();
    };
    item_operations(item)
        .flat_map(|operation| operation.parameters.iter_mut().flatten())
        .filter(|parameter| parameter.name == name)
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::Value;
    use utoipa::OpenApi as _;

    use crate::http::ApiDoc;

    /// Request fields any value of whose type the server takes, by
    /// `component.property` or `path parameter`: the rule test skips them.
    const FREE: &[&str] = &[
        // Replaced by the catalogue's name: what a client sends is ignored.
        "OrderItem.name",
        // Opaque: which strings the server issued, no schema can say; another
        // one is a 422 `invalid_cursor`.
        "/orders cursor",
        "/products cursor",
        "/orders/search cursor",
    ];

    /// What a request field of this schema leaves unbounded, if anything.
    fn unbounded(schema: &Value) -> Option<&'static str> {
        let has = |key: &str| schema.get(key).is_some();
        let types: Vec<&str> = match &schema["type"] {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if has("enum") || has("format") && schema["format"] == "date" {
            return None;
        }
        if types.contains(&"string") && !(has("pattern") && has("maxLength")) {
            return Some("a string without pattern and maxLength");
        }
        if types.contains(&"integer") && !(has("minimum") && has("maximum")) {
            return Some("an integer without minimum and maximum");
        }
        if types.contains(&"number") && !((has("minimum") || has("exclusiveMinimum")) && has("maximum")) {
            return Some("a number without its bounds");
        }
        if types.contains(&"array") && !has("maxItems") {
            return Some("an array without maxItems");
        }
        None
    }

    /// Every field of `schema` (resolving references into `components`),
    /// with its path.
    fn fields<'a>(doc: &'a Value, name: String, schema: &'a Value, out: &mut Vec<(String, &'a Value)>) {
        if let Some(reference) = schema["$ref"].as_str() {
            let component = reference.trim_start_matches("#/components/schemas/");
            return fields(
                doc,
                component.to_owned(),
                &doc["components"]["schemas"][component],
                out,
            );
        }
        for alternative in schema["oneOf"].as_array().into_iter().flatten() {
            fields(doc, name.clone(), alternative, out);
        }
        if let Some(properties) = schema["properties"].as_object() {
            let component = name.split('.').next_back().unwrap_or_default().to_owned();
            for (property, field) in properties {
                fields(doc, format!("{component}.{property}"), field, out);
            }
            return;
        }
        if schema.get("items").is_some() {
            fields(doc, format!("{name}[]"), &schema["items"], out);
        }
        out.push((name, schema));
    }

    #[test]
    fn every_request_field_states_its_bounds() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let mut loose = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                for parameter in operation["parameters"].as_array().into_iter().flatten() {
                    let name = format!("{path} {}", parameter["name"].as_str().unwrap());
                    if let Some(why) =
                        unbounded(&parameter["schema"]).filter(|_| !FREE.contains(&name.as_str()))
                    {
                        loose.push(format!("{method} {name}: {why}"));
                    }
                }
                let body = &operation["requestBody"]["content"]["application/json"]["schema"];
                let mut found = Vec::new();
                fields(&doc, String::new(), body, &mut found);
                for (name, schema) in found {
                    if let Some(why) = unbounded(schema).filter(|_| !FREE.contains(&name.as_str())) {
                        loose.push(format!("{method} {path} body {name}: {why}"));
                    }
                }
            }
        }
        assert!(
            loose.is_empty(),
            "request fields without their rules:\n{}",
            loose.join("\n")
        );
    }
}
