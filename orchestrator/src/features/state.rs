//! The state directory (seed 003 "State Files"):
//!
//! ```text
//! <state-dir>/state/enabled-features.json   what was last applied (selection + closure + settings)
//! <state-dir>/state/current-tier            the tier of that closure
//! <state-dir>/state/last-applied.timestamp  RFC 3339 UTC
//! <state-dir>/state/security-mode           `hardened` refuses configuration changes (seed 001)
//! <state-dir>/backups/<YYYYmmdd-HHMMSS>[-n]/ one backup per apply, newest = last in name order
//! <state-dir>/lock                          held (flock) during apply and rollback
//! <state-dir>/logs/feature-manager.log      one line per apply / rollback
//! ```
//!
//! Writes go to a temporary file that is renamed over the target, so a crash never leaves a
//! half-written state file.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::catalog::Catalog;
use super::resolver::Selection;

pub const STATE_SCHEMA_VERSION: u32 = 1;

/// How long `lock` waits for another holder before giving up.
pub const LOCK_WAIT: Duration = Duration::from_secs(2);

/// Per-feature flag values (`feature -> flag -> value`); defaults are not stored.
pub type Settings = BTreeMap<String, BTreeMap<String, serde_json::Value>>;

/// Contents of `enabled-features.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureState {
    pub schema_version: u32,
    pub selection: Selection,
    pub enabled: Vec<String>,
    pub tier: String,
    pub settings: Settings,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot access {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("state file {} is malformed; refusing to continue (the file is left as it is)", path.display())]
    Malformed {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("state file {} is malformed: {problem}; refusing to continue (the file is left as it is)", path.display())]
    Invalid { path: PathBuf, problem: String },
    #[error("another `hv features` change is running (lock {} is held); try again when it finishes", path.display())]
    Locked { path: PathBuf },
    #[error("the host is in hardened mode ({} says `hardened`): configuration changes and feature additions are refused; leave hardened mode first (see docs/features.md)", path.display())]
    Hardened { path: PathBuf },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Paths below one state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> StateDir {
        StateDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn features_file(&self) -> PathBuf {
        self.root.join("state/enabled-features.json")
    }

    pub fn tier_file(&self) -> PathBuf {
        self.root.join("state/current-tier")
    }

    pub fn last_applied_file(&self) -> PathBuf {
        self.root.join("state/last-applied.timestamp")
    }

    pub fn security_mode_file(&self) -> PathBuf {
        self.root.join("state/security-mode")
    }

    pub fn backups_dir(&self) -> PathBuf {
        self.root.join("backups")
    }

    pub fn staging_dir(&self) -> PathBuf {
        self.root.join("staging")
    }

    pub fn log_file(&self) -> PathBuf {
        self.root.join("logs/feature-manager.log")
    }

    /// The state files a backup saves and a rollback restores.
    pub fn state_files(&self) -> [PathBuf; 3] {
        [
            self.features_file(),
            self.tier_file(),
            self.last_applied_file(),
        ]
    }

    /// The recorded state; the empty state when nothing was applied yet. A file that does not
    /// parse, or names features the catalog lacks, is refused and left untouched.
    pub fn load(&self, catalog: &Catalog) -> Result<FeatureState, StateError> {
        let path = self.features_file();
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                return Ok(FeatureState {
                    schema_version: STATE_SCHEMA_VERSION,
                    tier: catalog.tiers[0].name.clone(),
                    ..FeatureState::default()
                })
            }
            Err(source) => return Err(StateError::Io { path, source }),
        };
        let state: FeatureState =
            serde_json::from_str(&text).map_err(|source| StateError::Malformed {
                path: path.clone(),
                source,
            })?;
        validate(&state, catalog).map_err(|problem| StateError::Invalid { path, problem })?;
        Ok(state)
    }

    /// Records an applied state (all three state files).
    pub fn record(&self, state: &FeatureState) -> Result<(), StateError> {
        // Serialising plain data with string keys cannot fail.
        let json = serde_json::to_string_pretty(state).unwrap_or_default();
        write_atomically(&self.features_file(), format!("{json}\n").as_bytes())?;
        write_atomically(&self.tier_file(), format!("{}\n", state.tier).as_bytes())?;
        write_atomically(
            &self.last_applied_file(),
            format!("{}\n", rfc3339_now()).as_bytes(),
        )
    }

    pub fn last_applied(&self) -> Result<Option<String>, StateError> {
        let path = self.last_applied_file();
        match fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text.trim().to_string())),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateError::Io { path, source }),
        }
    }

    pub fn is_hardened(&self) -> Result<bool, StateError> {
        let path = self.security_mode_file();
        match fs::read_to_string(&path) {
            Ok(text) => Ok(text.trim() == "hardened"),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(StateError::Io { path, source }),
        }
    }

    /// Fails when the host is in hardened mode.
    pub fn refuse_if_hardened(&self) -> Result<(), StateError> {
        if self.is_hardened()? {
            return Err(StateError::Hardened {
                path: self.security_mode_file(),
            });
        }
        Ok(())
    }

    pub fn harden(&self) -> Result<(), StateError> {
        write_atomically(&self.security_mode_file(), b"hardened\n")
    }

    /// Takes the apply lock, waiting at most `LOCK_WAIT`: a concurrent apply (which runs
    /// `nixos-rebuild` for minutes) makes this fail, while a brief hold is waited out. Brief
    /// holds happen because a flock belongs to the open file, and a child process forked by
    /// another thread keeps a copy of every descriptor until its `exec` closes it.
    pub fn lock(&self) -> Result<StateLock, StateError> {
        fs::create_dir_all(&self.root).map_err(io_error(&self.root))?;
        let path = self.root.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_error(&path))?;
        let deadline = Instant::now() + LOCK_WAIT;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(StateLock { _file: file }),
                Err(fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(fs::TryLockError::WouldBlock) => return Err(StateError::Locked { path }),
                Err(fs::TryLockError::Error(source)) => {
                    return Err(StateError::Io { path, source })
                }
            }
        }
    }

    /// Appends one line to the feature-manager log; logging must never fail an apply.
    pub fn log(&self, line: &str) {
        let path = self.log_file();
        if let Some(parent) = path.parent() {
            let _ = fs::create_dir_all(parent);
        }
        if let Ok(mut file) = OpenOptions::new().create(true).append(true).open(&path) {
            let _ = writeln!(file, "{} {line}", rfc3339_now());
        }
    }
}

/// Held while an apply or rollback runs; the OS releases the lock when the file closes, also
/// when the process dies.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

fn validate(state: &FeatureState, catalog: &Catalog) -> Result<(), String> {
    if state.schema_version != STATE_SCHEMA_VERSION {
        return Err(format!(
            "schema_version {} is not {STATE_SCHEMA_VERSION}",
            state.schema_version
        ));
    }
    let names = state
        .enabled
        .iter()
        .chain(&state.selection.extra)
        .chain(state.settings.keys());
    for name in names {
        if catalog.feature(name).is_none() {
            return Err(format!("unknown feature `{name}`"));
        }
    }
    for tier in state
        .selection
        .tier
        .iter()
        .chain(std::iter::once(&state.tier))
    {
        if catalog.tier(tier).is_none() {
            return Err(format!("unknown tier `{tier}`"));
        }
    }
    Ok(())
}

/// Writes `contents` to `path` through a temporary file in the same directory and a rename.
pub fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), StateError> {
    let parent = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(io_error(parent))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let write = || -> io::Result<()> {
        let mut file = File::create(&temporary)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&temporary, path)
    };
    write().map_err(io_error(path))
}

/// Now as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn rfc3339_now() -> String {
    let (y, mo, d, h, mi, s) = utc_now();
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// Now as `YYYYmmdd-HHMMSS`, the seed's backup timestamp.
pub fn compact_timestamp() -> String {
    let (y, mo, d, h, mi, s) = utc_now();
    format!("{y:04}{mo:02}{d:02}-{h:02}{mi:02}{s:02}")
}

fn utc_now() -> (i64, u32, u32, u64, u64, u64) {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (y, mo, d) = civil_from_days((secs / 86_400) as i64);
    let day = secs % 86_400;
    (y, mo, d, day / 3600, day % 3600 / 60, day % 60)
}

/// Days since 1970-01-01 -> (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_civil_from_days_known_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_779), (2026, 11, 22));
    }

    #[test]
    fn test_state_load_missing_is_empty_minimal() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path())
            .load(&Catalog::builtin().unwrap())
            .unwrap();
        assert!(state.enabled.is_empty());
        assert_eq!(state.tier, "minimal");
    }

    #[test]
    fn test_state_malformed_is_refused_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let states = StateDir::new(dir.path());
        fs::create_dir_all(dir.path().join("state")).unwrap();
        fs::write(states.features_file(), "{ not json").unwrap();
        let err = states.load(&Catalog::builtin().unwrap()).unwrap_err();
        assert!(matches!(err, StateError::Malformed { .. }), "{err}");
        assert_eq!(
            fs::read_to_string(states.features_file()).unwrap(),
            "{ not json"
        );
    }

    #[test]
    fn test_state_unknown_feature_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let states = StateDir::new(dir.path());
        let state = FeatureState {
            schema_version: 1,
            enabled: vec!["core".into(), "warp-drive".into()],
            tier: "minimal".into(),
            ..FeatureState::default()
        };
        states.record(&state).unwrap();
        let err = states.load(&Catalog::builtin().unwrap()).unwrap_err();
        assert!(
            err.to_string().contains("unknown feature `warp-drive`"),
            "{err}"
        );
    }

    #[test]
    fn test_state_record_then_load_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let states = StateDir::new(dir.path());
        let state = FeatureState {
            schema_version: 1,
            enabled: vec!["core".into()],
            tier: "minimal".into(),
            ..FeatureState::default()
        };
        states.record(&state).unwrap();
        assert_eq!(states.load(&Catalog::builtin().unwrap()).unwrap(), state);
        assert_eq!(fs::read_to_string(states.tier_file()).unwrap(), "minimal\n");
        assert!(states.last_applied().unwrap().unwrap().ends_with('Z'));
    }

    #[test]
    fn test_state_lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let states = StateDir::new(dir.path());
        let held = states.lock().unwrap();
        assert!(matches!(
            states.lock().unwrap_err(),
            StateError::Locked { .. }
        ));
        drop(held);
        states.lock().unwrap();
    }

    #[test]
    fn test_state_hardened_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let states = StateDir::new(dir.path());
        states.refuse_if_hardened().unwrap();
        states.harden().unwrap();
        assert!(matches!(
            states.refuse_if_hardened().unwrap_err(),
            StateError::Hardened { .. }
        ));
    }
}
