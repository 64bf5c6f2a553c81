//! Properties of the resolver over random selections of the real catalog.

use std::collections::BTreeSet;

use hv_orchestrator::features::{resolve, Catalog, Selection};
use proptest::prelude::*;

fn catalog() -> Catalog {
    Catalog::builtin().expect("the embedded catalog loads")
}

fn selection_strategy() -> impl Strategy<Value = Selection> {
    let catalog = catalog();
    let names: Vec<String> = catalog.features.iter().map(|f| f.name.clone()).collect();
    let tiers: Vec<String> = catalog.tiers.iter().map(|t| t.name.clone()).collect();
    let tolerances: Vec<String> = catalog
        .risk_tolerances
        .iter()
        .map(|t| t.name.clone())
        .collect();
    (
        proptest::option::of(proptest::sample::select(tiers)),
        proptest::collection::btree_set(proptest::sample::select(names), 0..8),
        proptest::option::of(proptest::sample::select(tolerances)),
    )
        .prop_map(|(tier, extra, risk_tolerance)| Selection {
            tier,
            extra,
            risk_tolerance,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn test_resolve_closure_is_closed_under_dependencies(selection in selection_strategy()) {
        let catalog = catalog();
        let resolution = resolve(&catalog, &selection, None).unwrap();
        let enabled: BTreeSet<&str> = resolution.enabled.iter().map(String::as_str).collect();
        prop_assert!(enabled.contains("core"));
        for name in &resolution.enabled {
            for dep in &catalog.feature(name).unwrap().depends {
                let satisfied = catalog.matching(dep).iter().any(|m| enabled.contains(m.name.as_str()));
                prop_assert!(satisfied, "{} needs {} but the closure lacks it", name, dep);
            }
        }
        for requested in &resolution.requested {
            prop_assert!(enabled.contains(requested.as_str()));
        }
    }

    #[test]
    fn test_resolve_valid_closure_never_contains_a_conflict(selection in selection_strategy()) {
        let catalog = catalog();
        let resolution = resolve(&catalog, &selection, None).unwrap();
        let conflicting_pairs: Vec<_> = resolution.enabled.iter().enumerate()
            .flat_map(|(i, a)| resolution.enabled[i + 1..].iter().map(move |b| (a, b)))
            .filter(|(a, b)| catalog.conflict_between(a, b).is_some())
            .collect();
        // A conflict only appears when the user asked for both sides, and then it is an error.
        // Without a risk tolerance or host, conflicts are the only possible errors.
        if selection.risk_tolerance.is_none() {
            prop_assert_eq!(conflicting_pairs.is_empty(), resolution.is_valid(), "{:?}", resolution.errors);
        }
        if resolution.is_valid() {
            prop_assert!(conflicting_pairs.is_empty());
        }
        for (a, b) in conflicting_pairs {
            prop_assert!(resolution.requested.contains(a) && resolution.requested.contains(b));
            let line = format!("{a} conflicts with {b}");
            prop_assert!(resolution.errors.iter().any(|e| e.starts_with(&line)));
        }
    }

    #[test]
    fn test_resolve_is_idempotent(selection in selection_strategy()) {
        let catalog = catalog();
        let first = resolve(&catalog, &selection, None).unwrap();
        let again = Selection { extra: first.enabled.iter().cloned().collect(), ..selection.clone() };
        let second = resolve(&catalog, &again, None).unwrap();
        prop_assert_eq!(&first.enabled, &second.enabled);
        prop_assert_eq!(first.ram_mb, second.ram_mb);
        prop_assert_eq!(&first.tier, &second.tier);
        prop_assert_eq!(&first.errors, &second.errors);
        prop_assert!(second.added.is_empty(), "{:?}", second.added);
    }

    #[test]
    fn test_resolve_is_deterministic(selection in selection_strategy()) {
        let catalog = catalog();
        prop_assert_eq!(resolve(&catalog, &selection, None).unwrap(), resolve(&catalog, &selection, None).unwrap());
    }
}
