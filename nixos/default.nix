# Non-flake entry point: `imports = [ ./path/to/nixos ];`
import ./module.nix
