//! Feature management (seeds 000, 001, 003): the catalog, the resolver, plans, the generated
//! NixOS files, and the state directory that records what was applied.

pub mod catalog;
pub mod resolver;
pub mod suggest;

pub use catalog::{Catalog, CatalogError, Feature, Risk};
pub use resolver::{resolve, resolve_change, Change, Resolution, ResolveError, Selection};
