//! The e-commerce example of the `cqrs` framework: the storefront of the
//! seed page (orders, products, inventory, multi-tenant shops, event-driven
//! processing) as a library, served over HTTP by the `ecommerce` example.

#![deny(missing_docs)]

pub mod auth;
pub mod demo;
pub mod domain;
pub mod error;
pub mod http;
mod json_integer;
pub mod money;
pub mod notify;
pub mod observe;
pub mod read_models;
pub mod services;
pub mod shop;
pub mod sync;
pub mod telemetry;

pub use error::{ErrorKind, ShopError, ShopResult};
pub use shop::{HandlerWrapper, Shop, ShopParts};

/// Every Rust code block of the guide (`docs/`) and of the crates' READMEs,
/// compiled (and run, unless marked `no_run`) as doctests, so that what the
/// documentation shows builds as written. This crate depends on every
/// crate of the workspace with the features the guide uses. The services
/// guide and the repository's README are compiled by `cqrs-memory`, each
/// crate's README by the crate itself.
#[cfg(doctest)]
mod guide {
    macro_rules! pages {
        ($($name:ident => $path:literal),* $(,)?) => {
            $(
                #[doc = include_str!($path)]
                struct $name;
            )*
        };
    }

    pages! {
        CommandService => "../../../docs/command-service.md",
        Concepts => "../../../docs/concepts.md",
        DataService => "../../../docs/data-service.md",
        DataSyncHandlers => "../../../docs/data-sync-handlers.md",
        Delivery => "../../../docs/delivery.md",
        Deploy => "../../../docs/deploy.md",
        DynamoDb => "../../../docs/dynamodb.md",
        Ecommerce => "../../../docs/ecommerce.md",
        Errors => "../../../docs/errors.md",
        HotEntities => "../../../docs/hot-entities.md",
        Operations => "../../../docs/operations.md",
        Performance => "../../../docs/performance.md",
        Projections => "../../../docs/projections.md",
        SequenceService => "../../../docs/sequence-service.md",
        StorageBackends => "../../../docs/storage-backends.md",
        Testing => "../../../docs/testing.md",
        ExampleReadme => "../README.md",
    }
}
