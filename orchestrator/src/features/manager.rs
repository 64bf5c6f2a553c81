//! Apply and roll back (seed 003): plan -> validate -> back up -> generate -> `nix-instantiate
//! --parse` -> apply command -> verify -> record state. A failed apply command or verification
//! restores the backup and re-runs the apply command, so the host ends where it started.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use super::catalog::Catalog;
use super::nixgen::{self, GeneratedConfig, NixCheckError};
use super::plan::{make_plan, Plan, PlanError, SettingChange};
use super::resolver::Change;
use super::state::{compact_timestamp, write_atomically, FeatureState, StateDir, StateError};
use crate::host::HostFacts;

pub const FEATURES_FILE: &str = "hypervisor-features.nix";
pub const TIER_FILE: &str = "hypervisor-tier.nix";
pub const DEFAULT_APPLY_COMMAND: &str = "nixos-rebuild switch";
pub const DEFAULT_TEST_COMMAND: &str = "nixos-rebuild dry-build";
/// Backups kept after a successful apply; older ones are deleted (NixOS generations keep the
/// longer history of the system itself).
pub const DEFAULT_KEEP_BACKUPS: usize = 50;

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("generated configuration was not applied")]
    NixCheck(#[source] NixCheckError),
    #[error("the plan has {} error(s); nothing was changed", errors.len())]
    Invalid { errors: Vec<String> },
    #[error("cannot access {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("`{command}` failed ({outcome}); {rollback}")]
    ApplyFailed {
        command: String,
        outcome: String,
        rollback: String,
    },
    #[error("`{command}` (the test before applying) failed ({outcome}); the previous files are restored, nothing was applied")]
    TestFailed { command: String, outcome: String },
    #[error("verification failed: {problem}; {rollback}")]
    VerifyFailed { problem: String, rollback: String },
    #[error("no backup to roll back to in {}", path.display())]
    NoBackup { path: PathBuf },
    #[error("restored backup {backup}, but `{command}` failed ({outcome}); the files are restored, the running system is not")]
    RollbackApplyFailed {
        backup: String,
        command: String,
        outcome: String,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> ManagerError + '_ {
    move |source| ManagerError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where things live and which commands to run.
#[derive(Debug, Clone)]
pub struct Manager {
    pub catalog: Catalog,
    pub states: StateDir,
    /// Directory holding the generated files (`/etc/nixos`).
    pub config_dir: PathBuf,
    /// Run through `sh -c` with `HV_CONFIG_DIR` set.
    pub apply_command: String,
    /// Seed 003's testing phase, run the same way before the apply command; empty = skipped.
    pub test_command: String,
    pub nix_instantiate: String,
    /// How many backups to keep (at least one).
    pub keep_backups: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApplyReport {
    pub applied: bool,
    pub backup: Option<String>,
    pub files: Vec<PathBuf>,
    pub plan: Plan,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RollbackReport {
    pub backup: String,
    pub tier: String,
    pub enabled: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    pub state: FeatureState,
    pub last_applied: Option<String>,
    pub security_mode: &'static str,
    pub backups: Vec<String>,
    /// Generated files on disk that differ from what the recorded state generates.
    pub drifted_files: Vec<PathBuf>,
    pub ram_mb: u64,
}

/// What a backup held, so a restore can also delete files that did not exist before.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct BackupManifest {
    /// `(name in backup, original path)` of files that existed.
    saved: Vec<(String, PathBuf)>,
    /// Original paths of files that did not exist.
    absent: Vec<PathBuf>,
}

impl Manager {
    pub fn plan(
        &self,
        change: &Change,
        sets: &[SettingChange],
        host: Option<&HostFacts>,
    ) -> Result<Plan, ManagerError> {
        let current = self.states.load(&self.catalog)?;
        Ok(make_plan(&self.catalog, &current, change, sets, host)?)
    }

    fn config_files(&self) -> [PathBuf; 2] {
        [
            self.config_dir.join(FEATURES_FILE),
            self.config_dir.join(TIER_FILE),
        ]
    }

    fn generate(&self, plan: &Plan) -> GeneratedConfig {
        let resolution = &plan.resolution;
        nixgen::generate(
            &self.catalog,
            &resolution.enabled,
            &resolution.tier,
            &plan.settings,
            resolution.selection.risk_tolerance.as_deref(),
        )
    }

    pub fn apply(
        &self,
        change: &Change,
        sets: &[SettingChange],
        host: Option<&HostFacts>,
    ) -> Result<ApplyReport, ManagerError> {
        let _lock = self.states.lock()?;
        self.states.refuse_if_hardened()?;
        let plan = self.plan(change, sets, host)?;
        if !plan.resolution.is_valid() {
            return Err(ManagerError::Invalid {
                errors: plan.resolution.errors.clone(),
            });
        }
        let generated = self.generate(&plan);
        let files = self.config_files();
        if !plan.has_changes && self.files_match(&generated)? {
            return Ok(ApplyReport {
                applied: false,
                backup: None,
                files: files.to_vec(),
                plan,
            });
        }
        self.check_staged(&generated)?;
        let backup = self.backup()?;
        if let Err(err) = self.write_config(&generated) {
            // Nothing was activated yet: putting the old files back is the whole rollback.
            if self.restore(&backup).is_ok() {
                let _ = fs::remove_dir_all(self.states.backups_dir().join(&backup));
            }
            self.states
                .log(&format!("writing the generated files FAILED: {err}"));
            return Err(err);
        }
        if let Err(outcome) = self.run_test_command() {
            if self.restore(&backup).is_ok() {
                let _ = fs::remove_dir_all(self.states.backups_dir().join(&backup));
            }
            self.states
                .log(&format!("test FAILED ({outcome}); previous files restored"));
            return Err(ManagerError::TestFailed {
                command: self.test_command.clone(),
                outcome,
            });
        }
        if let Err(outcome) = self.run_apply_command() {
            let rollback = self.restore_after_failure(&backup);
            self.states
                .log(&format!("apply FAILED ({outcome}); {rollback}"));
            return Err(ManagerError::ApplyFailed {
                command: self.apply_command.clone(),
                outcome,
                rollback,
            });
        }
        if let Err(problem) = self.verify(&generated) {
            let rollback = self.restore_after_failure(&backup);
            self.states
                .log(&format!("verify FAILED ({problem}); {rollback}"));
            return Err(ManagerError::VerifyFailed { problem, rollback });
        }
        self.states.record(&plan.target_state())?;
        self.prune_backups();
        self.states.log(&format!(
            "applied tier {} features [{}] (backup {backup})",
            plan.resolution.tier,
            plan.resolution.enabled.join(" ")
        ));
        Ok(ApplyReport {
            applied: true,
            backup: Some(backup),
            files: files.to_vec(),
            plan,
        })
    }

    /// Restores the newest backup and re-runs the apply command.
    pub fn rollback(&self) -> Result<RollbackReport, ManagerError> {
        let _lock = self.states.lock()?;
        self.states.refuse_if_hardened()?;
        let backup = self
            .backups()?
            .pop()
            .ok_or_else(|| ManagerError::NoBackup {
                path: self.states.backups_dir(),
            })?;
        self.restore(&backup)?;
        if let Err(outcome) = self.run_apply_command() {
            self.states.log(&format!(
                "rollback to {backup}: apply command FAILED ({outcome})"
            ));
            return Err(ManagerError::RollbackApplyFailed {
                backup,
                command: self.apply_command.clone(),
                outcome,
            });
        }
        let dir = self.states.backups_dir().join(&backup);
        fs::remove_dir_all(&dir).map_err(io_error(&dir))?;
        let state = self.states.load(&self.catalog)?;
        self.states.log(&format!("rolled back to {backup}"));
        Ok(RollbackReport {
            backup,
            tier: state.tier,
            enabled: state.enabled,
        })
    }

    pub fn status(&self) -> Result<Status, ManagerError> {
        let state = self.states.load(&self.catalog)?;
        let generated = nixgen::generate(
            &self.catalog,
            &state.enabled,
            &state.tier,
            &state.settings,
            state.selection.risk_tolerance.as_deref(),
        );
        let mut drifted_files = Vec::new();
        if self.states.features_file().exists() {
            for (path, text) in self
                .config_files()
                .iter()
                .zip([&generated.features_nix, &generated.tier_nix])
            {
                if fs::read_to_string(path).ok().as_ref() != Some(text) {
                    drifted_files.push(path.clone());
                }
            }
        }
        let ram_mb = state
            .enabled
            .iter()
            .filter_map(|n| self.catalog.feature(n))
            .map(|f| f.ram_mb)
            .sum();
        Ok(Status {
            last_applied: self.states.last_applied()?,
            security_mode: if self.states.is_hardened()? {
                "hardened"
            } else {
                "setup"
            },
            backups: self.backups()?,
            drifted_files,
            ram_mb,
            state,
        })
    }

    fn files_match(&self, generated: &GeneratedConfig) -> Result<bool, ManagerError> {
        let [features, tier] = self.config_files();
        let read = |path: &Path| fs::read_to_string(path).ok();
        Ok(
            read(&features).as_deref() == Some(generated.features_nix.as_str())
                && read(&tier).as_deref() == Some(generated.tier_nix.as_str()),
        )
    }

    /// Writes the files to the staging directory and parses them there, so a file that does
    /// not parse never reaches the configuration directory.
    fn check_staged(&self, generated: &GeneratedConfig) -> Result<(), ManagerError> {
        let staging = self.states.staging_dir();
        for (name, text) in [
            (FEATURES_FILE, &generated.features_nix),
            (TIER_FILE, &generated.tier_nix),
        ] {
            let path = staging.join(name);
            write_atomically(&path, text.as_bytes())?;
            nixgen::check_parses(&self.nix_instantiate, &path).map_err(ManagerError::NixCheck)?;
        }
        Ok(())
    }

    fn write_config(&self, generated: &GeneratedConfig) -> Result<(), ManagerError> {
        let [features, tier] = self.config_files();
        write_atomically(&features, generated.features_nix.as_bytes())?;
        write_atomically(&tier, generated.tier_nix.as_bytes())?;
        Ok(())
    }

    /// The generated files are on disk as written and parse in place.
    fn verify(&self, generated: &GeneratedConfig) -> Result<(), String> {
        if !self.files_match(generated).unwrap_or(false) {
            return Err("the generated files changed on disk during apply".into());
        }
        for path in self.config_files() {
            nixgen::check_parses(&self.nix_instantiate, &path).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn run_apply_command(&self) -> Result<(), String> {
        self.run_shell(&self.apply_command)
    }

    fn run_test_command(&self) -> Result<(), String> {
        match self.test_command.trim().is_empty() {
            true => Ok(()),
            false => self.run_shell(&self.test_command),
        }
    }

    /// Runs `command` with `sh -c`; `Err` carries the exit status and the last lines of its
    /// error output.
    fn run_shell(&self, command: &str) -> Result<(), String> {
        let output = Command::new("sh")
            .arg("-c")
            .arg(command)
            .env("HV_CONFIG_DIR", &self.config_dir)
            .output()
            .map_err(|err| format!("cannot start sh: {err}"))?;
        if output.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        let mut tail: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .rev()
            .take(3)
            .collect();
        tail.reverse();
        match tail.is_empty() {
            true => Err(output.status.to_string()),
            false => Err(format!("{}: {}", output.status, tail.join(" / "))),
        }
    }

    fn restore_after_failure(&self, backup: &str) -> String {
        if let Err(err) = self.restore(backup) {
            return format!("restoring backup {backup} FAILED too: {err}");
        }
        let dir = self.states.backups_dir().join(backup);
        let _ = fs::remove_dir_all(&dir);
        match self.run_apply_command() {
            Ok(()) => format!("rolled back automatically to the previous configuration (backup {backup})"),
            Err(outcome) => format!(
                "restored the previous files from backup {backup}, but re-applying them failed too ({outcome})"
            ),
        }
    }

    /// Deletes the oldest backups beyond `keep_backups`; failing to prune never fails an apply.
    fn prune_backups(&self) {
        let Ok(names) = self.backups() else { return };
        let excess = names.len().saturating_sub(self.keep_backups.max(1));
        for name in &names[..excess] {
            let _ = fs::remove_dir_all(self.states.backups_dir().join(name));
        }
    }

    /// Names of the backups, oldest first.
    fn backups(&self) -> Result<Vec<String>, ManagerError> {
        let dir = self.states.backups_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(ManagerError::Io { path: dir, source }),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_error(&dir))?;
            if entry.path().join("manifest.json").exists() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        // `YYYYmmdd-HHMMSS-NNN` sorts chronologically.
        names.sort();
        Ok(names)
    }

    /// Copies the generated files and the state files into a new backup directory.
    fn backup(&self) -> Result<String, ManagerError> {
        let root = self.states.backups_dir();
        let stamp = compact_timestamp();
        // Names must sort in creation order: within one second, count on from the highest
        // existing suffix (a pruned lower suffix must not be reused).
        let mut names = fs::read_dir(&root)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        names.retain(|n| n.starts_with(&stamp));
        let next = names
            .iter()
            .filter_map(|n| n.rsplit('-').next()?.parse::<u32>().ok())
            .max()
            .map_or(0, |n| n + 1);
        let name = format!("{stamp}-{next:03}");
        let dir = root.join(&name);
        fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        let mut manifest = BackupManifest {
            saved: Vec::new(),
            absent: Vec::new(),
        };
        let originals = self
            .config_files()
            .into_iter()
            .chain(self.states.state_files());
        for (index, original) in originals.enumerate() {
            match fs::read(&original) {
                Ok(bytes) => {
                    let file_name = original
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    let saved = format!("{index}-{file_name}");
                    write_atomically(&dir.join(&saved), &bytes)?;
                    manifest.saved.push((saved, original));
                }
                Err(err) if err.kind() == io::ErrorKind::NotFound => manifest.absent.push(original),
                Err(source) => {
                    return Err(ManagerError::Io {
                        path: original,
                        source,
                    })
                }
            }
        }
        let json = serde_json::to_string_pretty(&manifest).unwrap_or_default();
        // The manifest is written last: a backup without one is incomplete and ignored.
        write_atomically(&dir.join("manifest.json"), json.as_bytes())?;
        Ok(name)
    }

    fn restore(&self, backup: &str) -> Result<(), ManagerError> {
        let dir = self.states.backups_dir().join(backup);
        let manifest_path = dir.join("manifest.json");
        let text = fs::read_to_string(&manifest_path).map_err(io_error(&manifest_path))?;
        let manifest: BackupManifest =
            serde_json::from_str(&text).map_err(|err| ManagerError::Io {
                path: manifest_path.clone(),
                source: io::Error::new(io::ErrorKind::InvalidData, err),
            })?;
        for (saved, original) in &manifest.saved {
            let source = dir.join(saved);
            let bytes = fs::read(&source).map_err(io_error(&source))?;
            write_atomically(original, &bytes)?;
        }
        for original in &manifest.absent {
            match fs::remove_file(original) {
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(ManagerError::Io {
                        path: original.clone(),
                        source,
                    })
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manager(dir: &Path) -> Manager {
        Manager {
            catalog: Catalog::builtin().unwrap(),
            states: StateDir::new(dir.join("state")),
            config_dir: dir.join("etc"),
            apply_command: "true".into(),
            test_command: String::new(),
            keep_backups: DEFAULT_KEEP_BACKUPS,
            // The parse check is covered by tests/features_nix.rs; here it must not matter.
            nix_instantiate: "true".into(),
        }
    }

    fn add(name: &str) -> Change {
        Change {
            add: vec![name.into()],
            ..Change::default()
        }
    }

    #[test]
    fn test_apply_failed_write_restores_previous_files() {
        let dir = tempfile::tempdir().unwrap();
        let manager = manager(dir.path());
        manager.apply(&add("monitoring"), &[], None).unwrap();
        let [features, _] = manager.config_files();
        let before = fs::read_to_string(&features).unwrap();
        // The tier file's temporary name is taken by a directory: the features file is
        // replaced first, then the tier write fails.
        let blocker = manager
            .config_dir
            .join(format!(".{TIER_FILE}.tmp-{}", std::process::id()));
        fs::create_dir_all(&blocker).unwrap();
        let err = manager.apply(&add("web-dashboard"), &[], None).unwrap_err();
        assert!(
            matches!(err, ManagerError::State(StateError::Io { .. })),
            "{err}"
        );
        assert_eq!(fs::read_to_string(&features).unwrap(), before);
        // The blocker also stops the tier file's restore, so that backup is kept for `rollback`.
        assert_eq!(manager.backups().unwrap().len(), 2);
        let state = manager.states.load(&manager.catalog).unwrap();
        assert_eq!(state.enabled, ["core", "monitoring"]);
    }

    #[test]
    fn test_apply_failed_test_command_restores_and_never_applies() {
        let dir = tempfile::tempdir().unwrap();
        let mut manager = manager(dir.path());
        manager.apply(&add("monitoring"), &[], None).unwrap();
        let [features, _] = manager.config_files();
        let before = fs::read_to_string(&features).unwrap();
        let applied = dir.path().join("applied");
        manager.apply_command = format!("touch {}", applied.display());
        manager.test_command = "echo 'error: undefined variable hypervisor' >&2; exit 1".into();
        let err = manager.apply(&add("web-dashboard"), &[], None).unwrap_err();
        assert!(
            err.to_string()
                .contains("error: undefined variable hypervisor"),
            "{err}"
        );
        assert!(!applied.exists());
        assert_eq!(fs::read_to_string(&features).unwrap(), before);
        assert_eq!(manager.backups().unwrap().len(), 1);
    }

    #[test]
    fn test_apply_prunes_oldest_backups() {
        let dir = tempfile::tempdir().unwrap();
        let mut manager = manager(dir.path());
        manager.keep_backups = 2;
        for feature in ["monitoring", "logging", "alerting", "tracing"] {
            manager.apply(&add(feature), &[], None).unwrap();
        }
        let backups = manager.backups().unwrap();
        assert_eq!(backups.len(), 2);
        // The newest backup holds the state from before the last apply.
        manager.rollback().unwrap();
        let state = manager.states.load(&manager.catalog).unwrap();
        assert_eq!(state.enabled, ["core", "monitoring", "logging", "alerting"]);
    }

    #[test]
    fn test_apply_without_changes_is_a_no_op() {
        let dir = tempfile::tempdir().unwrap();
        let manager = manager(dir.path());
        assert!(
            manager
                .apply(&add("monitoring"), &[], None)
                .unwrap()
                .applied
        );
        let again = manager.apply(&Change::default(), &[], None).unwrap();
        assert!(!again.applied);
        assert_eq!(manager.backups().unwrap().len(), 1);
    }
}
