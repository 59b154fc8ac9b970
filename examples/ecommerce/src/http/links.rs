//! The document's links: which operation can follow an answer, with which
//! value of it. Clients and tools that walk an API (Schemathesis' stateful
//! phase, for one) read them to chain requests: create a product, then read
//! it and set its stock; place an order, then read it and move it.

use utoipa::openapi::link::LinkBuilder;
use utoipa::openapi::{OpenApi, RefOr};
use utoipa::Modify;

/// (path, method, status) of an answer, and the operations that can follow
/// it: (link name, operation id, parameter, where in the answer's body).
type Follows = (
    &'static str,
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str, &'static str, &'static str)],
);

const LINKS: &[Follows] = &[
    (
        "/orders",
        "post",
        "201",
        &[
            ("GetOrder", "get_order", "code", "$response.body#/code"),
            ("MoveOrder", "update_order_status", "code", "$response.body#/code"),
        ],
    ),
    (
        "/orders/{code}/status",
        "patch",
        "200",
        &[("GetOrder", "get_order", "code", "$response.body#/code")],
    ),
    (
        "/products",
        "post",
        "201",
        &[
            ("GetProduct", "get_product", "code", "$response.body#/code"),
            (
                "SetInventory",
                "set_inventory",
                "productCode",
                "$response.body#/code",
            ),
            (
                "GetInventory",
                "get_inventory",
                "productCode",
                "$response.body#/code",
            ),
        ],
    ),
    (
        "/inventory/{productCode}",
        "patch",
        "200",
        &[(
            "GetInventory",
            "get_inventory",
            "productCode",
            "$response.body#/attributes/productCode",
        )],
    ),
];

/// Adds [`LINKS`] to their answers.
pub(crate) struct Links;

impl Modify for Links {
    fn modify(&self, openapi: &mut OpenApi) {
        for (path, method, status, follows) in LINKS {
            let Some(item) = openapi.paths.paths.get_mut(*path) else {
                continue;
            };
            let operation = match *method {
                "post" => item.post.as_mut(),
                "patch" => item.patch.as_mut(),
                _ => None,
            };
            let Some(RefOr::T(response)) = operation.and_then(|o| o.responses.responses.get_mut(*status))
            else {
                continue;
            };
            for (name, operation_id, parameter, value) in follows.iter() {
                let link = LinkBuilder::new()
                    .operation_id(*operation_id)
                    .parameter(*parameter, *value)
                    .build();
                response.links.insert((*name).to_owned(), RefOr::T(link));
            }
        }
    }
}

/// `document` (the API's, as JSON) with its links' fields spelled as
/// OpenAPI spells them: utoipa 5.5 writes the Rust names (`operation_id`,
/// `operation_ref`, `request_body`), which readers of the document ignore.
pub(crate) fn spell_links(document: &mut serde_json::Value) {
    let Some(paths) = document.get_mut("paths").and_then(|p| p.as_object_mut()) else {
        return;
    };
    let operations = paths
        .values_mut()
        .filter_map(|item| item.as_object_mut())
        .flat_map(|item| item.values_mut());
    let responses = operations
        .filter_map(|operation| operation.get_mut("responses")?.as_object_mut())
        .flat_map(|responses| responses.values_mut());
    let links = responses
        .filter_map(|response| response.get_mut("links")?.as_object_mut())
        .flat_map(|links| links.values_mut())
        .filter_map(|link| link.as_object_mut());
    for link in links {
        for (rust, openapi) in [
            ("operation_id", "operationId"),
            ("operation_ref", "operationRef"),
            ("request_body", "requestBody"),
        ] {
            if let Some(value) = link.remove(rust) {
                link.insert(openapi.to_owned(), value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::LINKS;

    /// Every link is in the document and names an operation it has.
    #[test]
    fn every_link_leads_to_an_operation_of_the_document() {
        let doc = crate::http::document();
        let mut ids = Vec::new();
        for item in doc["paths"].as_object().unwrap().values() {
            for operation in item.as_object().unwrap().values() {
                ids.extend(operation["operationId"].as_str());
            }
        }
        for (path, method, status, follows) in LINKS {
            for (name, operation_id, parameter, _) in follows.iter() {
                let link = &doc["paths"][path][method]["responses"][status]["links"][name];
                assert_eq!(link["operationId"], *operation_id, "{path} {method} {name}");
                assert!(link["parameters"][parameter].is_string(), "{link}");
                assert!(ids.contains(operation_id), "{operation_id}");
            }
        }
    }
}
