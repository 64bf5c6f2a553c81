# The resolver's checks on a finished feature list, in plain Nix (builtins only, no nixpkgs),
# so the NixOS module can assert them. Each message is the exact line the Rust function
# `hv_orchestrator::features::validate_enabled` prints; orchestrator/tests/features_nix.rs
# compares the two on many lists.
#
#   errors :: catalog -> [ string ] -> (string or null: risk tolerance) -> [ string ]
let
  inherit (builtins) any elem elemAt filter genList length stringLength substring concatLists;

  isWildcard = dep: stringLength dep > 0 && substring (stringLength dep - 1) 1 dep == "*";
  prefixOf = dep: substring 0 (stringLength dep - 1) dep;
  hasPrefix = prefix: s: substring 0 (stringLength prefix) s == prefix;

  # Catalog features matching a dependency entry (`desktop-*` matches every `desktop-...`).
  matching = catalog: dep:
    filter (f: if isWildcard dep then hasPrefix (prefixOf dep) f.name else f.name == dep) catalog.features;

  # Enabled names in catalog order (the order every message uses).
  ordered = catalog: enabled: map (f: f.name) (filter (f: elem f.name enabled) catalog.features);

  missing = catalog: enabled:
    concatLists (map
      (f: map (dep: "${f.name} needs ${dep}")
        (filter (dep: !(any (m: elem m.name enabled) (matching catalog dep))) f.depends))
      (filter (f: elem f.name enabled) catalog.features));

  conflictReason = catalog: a: b:
    let found = filter (c: a != b && elem a c.features && elem b c.features) catalog.conflicts;
    in if found == [ ] then null else (elemAt found 0).reason;

  conflicts = catalog: enabled:
    let
      names = ordered catalog enabled;
      n = length names;
      pairs = concatLists (genList (i: genList (j: { a = elemAt names i; b = elemAt names (i + j + 1); }) (n - i - 1)) n);
      withReason = map (p: p // { reason = conflictReason catalog p.a p.b; }) pairs;
    in
    map (p: "${p.a} conflicts with ${p.b} (${p.reason})") (filter (p: p.reason != null) withReason);
  riskRank = { low = 0; moderate = 1; high = 2; };

  riskErrors = catalog: enabled: tolerance:
    if tolerance == null then [ ] else
    let
      found = filter (t: t.name == tolerance) catalog.risk_tolerances;
      limit = if found == [ ] then throw "unknown risk tolerance ${tolerance}" else elemAt found 0;
      tooRisky = filter (f: elem f.name enabled && riskRank.${f.risk} > riskRank.${limit.max_risk}) catalog.features;
    in
    map (f: "${f.name} is ${f.risk} risk; risk tolerance ${limit.name} allows up to ${limit.max_risk}") tooRisky;
  # Flags that raise their feature's risk when true (threat-detection.automated-response).
  flagErrors = catalog: enabled: settings: tolerance:
    if tolerance == null then [ ] else
    let
      limit = elemAt (filter (t: t.name == tolerance) catalog.risk_tolerances) 0;
      risky = f: flag: (flag.risk_when_true or null) != null
        && ((settings.${f.name} or { }).${flag.name} or flag.default) == true
        && riskRank.${flag.risk_when_true} > riskRank.${limit.max_risk};
    in
    concatLists (map
      (f: map (flag: "${f.name}.${flag.name} = true is ${flag.risk_when_true} risk; risk tolerance ${limit.name} allows up to ${limit.max_risk}")
        (filter (risky f) f.flags))
      (filter (f: elem f.name enabled) catalog.features));
in
{
  inherit flagErrors;

  errors = catalog: enabled: tolerance:
    missing catalog enabled ++ conflicts catalog enabled ++ riskErrors catalog enabled tolerance;
}
