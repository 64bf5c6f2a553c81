//! The spec directory: `units/`, `tags/`, `policies/`, `blueprints/` and `components/`, one TOML file
//! per document. Units, tags and policies are named after their file; blueprints and components name
//! themselves (with a version) so that several versions can sit side by side.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::spec::{self, BlueprintDoc, ComponentDoc, ProfileDoc, SpecError, UnitDoc};

/// Errors from loading the spec directory.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("cannot list {}", path.display())]
    List {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid spec document")]
    Spec(#[source] SpecError),
    #[error("{kind} {name} is defined twice: {} and {}", first.display(), second.display())]
    Duplicate {
        kind: &'static str,
        name: String,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("no unit named {name:?} in {} (known: {known})", dir.display())]
    UnknownUnit {
        name: String,
        dir: PathBuf,
        known: String,
    },
}

/// A loaded document with the file it came from.
#[derive(Debug, Clone)]
pub struct Sourced<T> {
    pub doc: T,
    pub path: PathBuf,
}

/// Everything under one spec directory, loaded eagerly (a few hundred small files at most).
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub root: PathBuf,
    pub units: BTreeMap<String, Sourced<UnitDoc>>,
    pub tags: BTreeMap<String, Sourced<ProfileDoc>>,
    pub policies: BTreeMap<String, Sourced<ProfileDoc>>,
    /// Keyed by (name, version).
    pub blueprints: BTreeMap<(String, String), Sourced<BlueprintDoc>>,
    pub components: BTreeMap<(String, String), Sourced<ComponentDoc>>,
}

impl Catalog {
    /// Loads every document under `root`. Missing sub-folders are simply empty.
    pub fn load(root: &Path) -> Result<Self, CatalogError> {
        let mut catalog = Catalog {
            root: root.to_owned(),
            ..Default::default()
        };
        for path in toml_files(&root.join("units"))? {
            let text = std::fs::read_to_string(&path).map_err(|source| {
                CatalogError::Spec(SpecError::Read {
                    path: path.clone(),
                    source,
                })
            })?;
            let mut doc = spec::parse_unit(&text, &path).map_err(CatalogError::Spec)?;
            let name = doc.name.clone().unwrap_or_else(|| file_stem(&path));
            doc.name = Some(name.clone());
            insert_unique(&mut catalog.units, "unit", name, Sourced { doc, path })?;
        }
        for (folder, kind) in [("tags", "tag"), ("policies", "policy")] {
            for path in toml_files(&root.join(folder))? {
                let doc: ProfileDoc = spec::read_doc(&path, kind).map_err(CatalogError::Spec)?;
                let map = if kind == "tag" {
                    &mut catalog.tags
                } else {
                    &mut catalog.policies
                };
                insert_unique(map, kind, file_stem(&path), Sourced { doc, path })?;
            }
        }
        for path in toml_files(&root.join("blueprints"))? {
            let doc: BlueprintDoc =
                spec::read_doc(&path, "blueprint").map_err(CatalogError::Spec)?;
            let key = (doc.name.clone(), doc.version.clone());
            insert_unique(
                &mut catalog.blueprints,
                "blueprint",
                key,
                Sourced { doc, path },
            )?;
        }
        for path in toml_files(&root.join("components"))? {
            let doc: ComponentDoc =
                spec::read_doc(&path, "component").map_err(CatalogError::Spec)?;
            let key = (doc.name.clone(), doc.version.clone());
            insert_unique(
                &mut catalog.components,
                "component",
                key,
                Sourced { doc, path },
            )?;
        }
        Ok(catalog)
    }

    pub fn unit(&self, name: &str) -> Result<&Sourced<UnitDoc>, CatalogError> {
        self.units
            .get(name)
            .ok_or_else(|| CatalogError::UnknownUnit {
                name: name.to_owned(),
                dir: self.root.join("units"),
                known: join_or_none(self.units.keys()),
            })
    }
}

pub(crate) fn join_or_none<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let list: Vec<&str> = names.map(String::as_str).collect();
    if list.is_empty() {
        "none".to_owned()
    } else {
        list.join(", ")
    }
}

trait Describe {
    fn describe(&self) -> String;
}
impl Describe for String {
    fn describe(&self) -> String {
        self.clone()
    }
}
impl Describe for (String, String) {
    fn describe(&self) -> String {
        format!("{}@{}", self.0, self.1)
    }
}

fn insert_unique<K: Ord + Describe, T>(
    map: &mut BTreeMap<K, Sourced<T>>,
    kind: &'static str,
    key: K,
    value: Sourced<T>,
) -> Result<(), CatalogError> {
    if let Some(existing) = map.get(&key) {
        return Err(CatalogError::Duplicate {
            kind,
            name: key.describe(),
            first: existing.path.clone(),
            second: value.path,
        });
    }
    map.insert(key, value);
    Ok(())
}

fn file_stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The `*.toml` files in `dir`, sorted so loading order (and thus error order) is deterministic.
fn toml_files(dir: &Path) -> Result<Vec<PathBuf>, CatalogError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(CatalogError::List {
                path: dir.to_owned(),
                source,
            })
        }
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| CatalogError::List {
            path: dir.to_owned(),
            source,
        })?;
        let path = entry.path();
        if path.extension().is_some_and(|ext| ext == "toml") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}
