# NixOS module for hyper-nixos: `hypervisor.*` options.
#
# `hv features apply` writes /etc/nixos/hypervisor-features.nix and hypervisor-tier.nix, which
# only set options declared here. This module turns the enabled features into NixOS services
# (the `nixos` field of each catalog entry: prometheus/grafana, podman, zfs, libvirt, firewall,
# ...) and asserts the resolver's rules (dependencies present, no conflicts) with the same
# messages `hv` prints. The catalog is read from orchestrator/catalog/features.json.
{ config, lib, pkgs, ... }:

let
  catalog = import ./catalog.nix;
  rules = import ./rules.nix;
  cfg = config.hypervisor;
  fm = cfg.featureManager;

  featureNames = map (f: f.name) catalog.features;
  tierNames = map (t: t.name) catalog.tiers;
  enabled = name: fm.enable && builtins.elem name fm.enabledFeatures;

  # Catalog defaults overridden by `settings`, per feature.
  flagValue = feature: flag:
    let
      entry = lib.findFirst (f: f.name == feature) null catalog.features;
      default = (lib.findFirst (f: f.name == flag) { default = null; } entry.flags).default;
    in
    (fm.settings.${feature} or { }).${flag} or default;

  # `{ "services.prometheus.enable" = true; }` -> option definitions, active when the feature is.
  # The attribute paths come from the catalog, not from `config`, so this cannot recurse.
  # Scalars are defaults the user's configuration can override; lists (e.g.
  # boot.supportedFilesystems) are merged at normal priority, because a mkDefault list would be
  # dropped entirely as soon as the user defines that option too.
  featureConfig = feature:
    lib.mkIf (enabled feature.name) (lib.mkMerge (lib.mapAttrsToList
      (path: value: lib.setAttrByPath (lib.splitString "." path)
        (if builtins.isList value then value else lib.mkDefault value))
      feature.nixos));
in
{
  options.hypervisor = {
    package = lib.mkOption {
      type = lib.types.nullOr lib.types.package;
      default = null;
      description = "The hyper-nixos package providing `hv` (the flake sets it).";
    };

    systemTier = lib.mkOption {
      type = lib.types.enum tierNames;
      default = "minimal";
      description = "System tier (written by `hv features apply` to hypervisor-tier.nix).";
    };

    securityMode = lib.mkOption {
      type = lib.types.enum [ "setup" "hardened" ];
      default = "setup";
      description = ''
        Setup phase allows configuration changes; hardened phase makes `hv features apply`
        and `rollback` refuse them (seed 001 "Security Mode Compatibility").
      '';
    };

    featureManager = {
      enable = lib.mkEnableOption "the hyper-nixos feature manager";

      enabledFeatures = lib.mkOption {
        type = lib.types.listOf (lib.types.enum featureNames);
        default = [ ];
        description = "Enabled features: the closure `hv features apply` resolved (dependencies included).";
      };

      riskTolerance = lib.mkOption {
        type = lib.types.nullOr (lib.types.enum (map (t: t.name) catalog.risk_tolerances));
        default = null;
        example = "cautious";
        description = ''
          Seed 001's risk tolerance: paranoid (low-risk features only), cautious and balanced
          (no high-risk features), accepting (everything). null: no limit.
        '';
      };

      settings = lib.mkOption {
        type = lib.types.attrsOf (lib.types.attrsOf lib.types.anything);
        default = { };
        example = { monitoring.retention = 90; ai-security.sensitivity = "high"; };
        description = "Per-feature flags (catalog defaults apply to flags not set here).";
      };

      stateDir = lib.mkOption {
        type = lib.types.str;
        default = "/var/lib/hypervisor";
        description = "State directory of `hv` (enabled-features.json, backups, lock).";
      };
    };
  };

  config = lib.mkMerge ([
    (lib.mkIf fm.enable {
      assertions = map (message: { assertion = false; inherit message; })
        (rules.errors catalog fm.enabledFeatures fm.riskTolerance
          ++ rules.flagErrors catalog fm.enabledFeatures fm.settings fm.riskTolerance);

      environment.systemPackages = lib.optional (cfg.package != null) cfg.package;
      environment.variables.HV_STATE_DIR = fm.stateDir;

      # Hardened is forced at every boot; setup leaves the file alone, so `hv features harden`
      # on a running host is not undone by a reboot.
      systemd.tmpfiles.rules = [
        "d ${fm.stateDir} 0750 root root -"
        "d ${fm.stateDir}/state 0750 root root -"
      ] ++ lib.optional (cfg.securityMode == "hardened")
        "F ${fm.stateDir}/state/security-mode 0640 root root - hardened";
    })

    # Feature flags that map onto NixOS options.
    (lib.mkIf (enabled "monitoring") {
      services.prometheus.retentionTime = "${toString (flagValue "monitoring" "retention")}d";
    })
    (lib.mkIf (enabled "web-dashboard" && flagValue "web-dashboard" "ssl") {
      networking.firewall.allowedTCPPorts = [ 443 ];
    })
    (lib.mkIf (enabled "web-dashboard" && !(flagValue "web-dashboard" "ssl")) {
      networking.firewall.allowedTCPPorts = [ 80 ];
    })
  ] ++ map featureConfig catalog.features);
}
