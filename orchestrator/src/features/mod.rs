//! Feature management (seeds 000, 001, 003): the catalog, the resolver, plans, the generated
//! NixOS files, and the state directory that records what was applied.

pub mod catalog;
pub mod cli;
pub mod manager;
pub mod nixgen;
pub mod plan;
pub mod resolver;
pub mod state;
pub mod suggest;

pub use catalog::{Catalog, CatalogError, Feature, Risk};
pub use manager::{Manager, ManagerError};
pub use plan::{make_plan, Plan, PlanError, SettingChange};
pub use resolver::{
    resolve, resolve_change, validate_enabled, Change, Resolution, ResolveError, Selection,
};
pub use state::{FeatureState, StateDir, StateError};
