//! The whole conformance suite against the in-memory backend.

use std::sync::Arc;

use cqrs_core::Storage;
use cqrs_memory::InMemory;

cqrs_core::conformance_tests!(|| async { Arc::new(InMemory::new()) as Arc<dyn Storage> });
