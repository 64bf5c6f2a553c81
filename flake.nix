{
  description = "hyper-nixos: a Rust KVM virtualization platform (hv, hv-vmm) and its NixOS module";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-24.11";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      packages = forAllSystems (pkgs: rec {
        # The whole workspace: `hv`, `hv-compute` (orchestrator) and `hv-vmm`.
        hyper-nixos = pkgs.rustPlatform.buildRustPackage {
          pname = "hyper-nixos";
          version = "0.1.0";
          src = nixpkgs.lib.cleanSource ./.;
          cargoLock.lockFile = ./Cargo.lock;
          nativeBuildInputs = [ pkgs.pkg-config pkgs.rustPlatform.bindgenHook ];
          nativeCheckInputs = [ pkgs.nix ];
          # KVM and io_uring tests need /dev/kvm, which the build sandbox does not have.
          doCheck = false;
          meta.mainProgram = "hv";
        };
        default = hyper-nixos;
      });

      nixosModules.default = { pkgs, lib, ... }: {
        imports = [ ./nixos/module.nix ];
        hypervisor.package = lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.default;
      };
      nixosModules.hypervisor = self.nixosModules.default;

      # Same data as the NixOS module reads; `nix eval .#catalog --json` prints it.
      catalog = import ./nixos/catalog.nix;
      # featureErrors [ "desktop-kde" "desktop-gnome" ] null -> the lines `hv` would print.
      lib.featureErrors = (import ./nixos/rules.nix).errors (import ./nixos/catalog.nix);
    };
}
