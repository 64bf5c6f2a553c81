# The feature catalog, read from the same JSON file the Rust resolver embeds
# (orchestrator/catalog/features.json): one source of truth, nothing copied by hand.
# orchestrator/tests/features_nix.rs checks `nix-instantiate --eval --strict --json` of this
# file against the catalog the `hv` binary carries.
builtins.fromJSON (builtins.readFile ../orchestrator/catalog/features.json)
