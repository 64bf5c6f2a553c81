# Evaluates ../module.nix without nixpkgs (which cannot be fetched in CI), against a stub of the
# few `lib` functions it uses, and flattens its `config` into a list of option definitions:
#   [ { path = "services.prometheus.enable"; value = true; default = true; } ... ]
# Only definitions whose mkIf conditions hold are kept. This checks the module's own logic
# (feature -> option mapping, flags, assertions); the NixOS option types are not checked here.
{ enabledFeatures, settings ? { }, securityMode ? "setup", enable ? true, riskTolerance ? null }:
let
  inherit (builtins) attrNames concatLists concatStringsSep filter isAttrs isList isString split;

  lib = {
    mkIf = condition: content: { _type = "if"; inherit condition content; };
    mkMerge = contents: { _type = "merge"; inherit contents; };
    mkDefault = content: { _type = "override"; priority = 1000; inherit content; };
    mkOption = option: option;
    mkEnableOption = description: { inherit description; };
    types = {
      enum = values: { type = "enum"; inherit values; };
      listOf = t: { type = "listOf"; of = t; };
      attrsOf = t: { type = "attrsOf"; of = t; };
      nullOr = t: { type = "nullOr"; of = t; };
      anything = "anything";
      package = "package";
      str = "str";
    };
    optional = condition: x: if condition then [ x ] else [ ];
    findFirst = pred: default: list:
      let found = filter pred list; in if found == [ ] then default else builtins.head found;
    mapAttrsToList = f: attrs: map (name: f name attrs.${name}) (attrNames attrs);
    setAttrByPath = path: value:
      if path == [ ] then value
      else { ${builtins.head path} = lib.setAttrByPath (builtins.tail path) value; };
    splitString = separator: text: filter isString (split "\\${separator}" text);
  };

  config.hypervisor = {
    package = null;
    systemTier = "minimal";
    inherit securityMode;
    featureManager = {
      inherit enable enabledFeatures settings riskTolerance;
      stateDir = "/var/lib/hypervisor";
    };
  };

  module = import ../module.nix { inherit config lib; pkgs = { }; };

  flatten = prefix: default: x:
    if isAttrs x && x ? _type then
      (if x._type == "if" then (if x.condition then flatten prefix default x.content else [ ])
      else if x._type == "merge" then concatLists (map (flatten prefix default) x.contents)
      else flatten prefix true x.content)
    else if isAttrs x then
      concatLists (map (name: flatten (prefix ++ [ name ]) default x.${name}) (attrNames x))
    else [{ path = concatStringsSep "." prefix; value = x; inherit default; }];

  definitions = flatten [ ] false module.config;
in
{
  inherit definitions;
  failedAssertions = map (a: a.message)
    (filter (a: !a.assertion) (concatLists (map (d: d.value) (filter (d: d.path == "assertions") definitions))));
  optionNames = attrNames module.options.hypervisor;
}
