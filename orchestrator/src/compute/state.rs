//! The state directory: the store (`state.db`) and one folder per instance (API socket, logs).
//!
//! VM operations need no root: the directory is meant to belong to the `hypervisor` group with mode
//! 2770 (setgid, so everything created inside stays in the group). When the current user cannot use it,
//! the error says which user, which group and what to run.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::unistd::{access, AccessFlags, Gid, Group, Uid, User};

use crate::store::{SqliteStore, StoreError};

/// Where state lives when neither `--state-dir` nor `HV_STATE_DIR` is given.
/// The same default as `hv` (the feature manager), so both share one state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/hypervisor";
/// The group that grants VM operations without root.
pub const HYPERVISOR_GROUP: &str = "hypervisor";

/// Errors about the state directory and its permissions.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot create the state directory {}; as root run `install -d -m 2770 -g {HYPERVISOR_GROUP} {}`, or pass --state-dir / HV_STATE_DIR", path.display(), path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the state directory {} (owner {owner}, group {group}, mode {mode:o}) is not writable by user {user}{hint}", path.display())]
    NotWritable {
        path: PathBuf,
        owner: String,
        group: String,
        mode: u32,
        user: String,
        hint: String,
    },
    #[error("cannot inspect the state directory {}", path.display())]
    Inspect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the store")]
    Store(#[source] StoreError),
}

/// An opened state directory.
#[derive(Debug)]
pub struct State {
    pub dir: PathBuf,
    pub store: SqliteStore,
}

impl State {
    pub fn instance_dir(&self, id: &str) -> PathBuf {
        self.dir.join("instances").join(id)
    }
}

fn user_name(uid: Uid) -> String {
    User::from_uid(uid)
        .ok()
        .flatten()
        .map_or_else(|| uid.to_string(), |u| u.name)
}

fn group_name(gid: Gid) -> String {
    Group::from_gid(gid)
        .ok()
        .flatten()
        .map_or_else(|| gid.to_string(), |g| g.name)
}

/// Opens (creating if needed) the state directory and its store, checking permissions first.
pub fn open(dir: Option<&Path>) -> Result<State, StateError> {
    let dir = dir.map_or_else(|| PathBuf::from(DEFAULT_STATE_DIR), Path::to_owned);
    if !dir.exists() {
        std::fs::create_dir_all(&dir).map_err(|source| StateError::Create {
            path: dir.clone(),
            source,
        })?;
        // Group-shared by design: members of the directory's group may run VMs.
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o2770));
    }
    check_writable(&dir)?;
    let db = dir.join("state.db");
    let fresh = !db.exists();
    let store = SqliteStore::open(&db).map_err(StateError::Store)?;
    if fresh {
        let _ = std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o660));
    }
    Ok(State { dir, store })
}

/// Explains precisely why the current user cannot write `dir`, if it cannot.
fn check_writable(dir: &Path) -> Result<(), StateError> {
    if access(dir, AccessFlags::W_OK | AccessFlags::X_OK).is_ok() {
        return Ok(());
    }
    let meta = std::fs::metadata(dir).map_err(|source| StateError::Inspect {
        path: dir.to_owned(),
        source,
    })?;
    let uid = Uid::effective();
    let user = user_name(uid);
    let gid = Gid::from_raw(meta.gid());
    let group = group_name(gid);
    let in_group = nix::unistd::getgroups().is_ok_and(|groups| groups.contains(&gid))
        || Gid::effective() == gid;
    let mode = meta.mode() & 0o7777;
    let hint = if !in_group {
        format!(
            ", who is not in group {group}: run `sudo usermod -aG {group} {user}` and log in again, or pass --state-dir"
        )
    } else if mode & 0o070 != 0o070 {
        format!(
            ": the group lacks rwx; run `sudo chmod 2770 {}`",
            dir.display()
        )
    } else {
        ": check the parent directories' permissions".to_owned()
    };
    Err(StateError::NotWritable {
        path: dir.to_owned(),
        owner: user_name(Uid::from_raw(meta.uid())),
        group,
        mode,
        user,
        hint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_open_creates_group_shared_dir_and_store() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("state");
        let state = open(Some(&dir)).unwrap();
        assert!(state.dir.join("state.db").exists());
        let mode = std::fs::metadata(&dir).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o2770);
    }

    #[test]
    fn test_open_explains_unwritable_dir() {
        if Uid::effective().is_root() {
            // root passes every access check; the message path is exercised by non-root runs
            eprintln!("skipping: running as root, access(2) always succeeds");
            return;
        }
        let parent = tempfile::tempdir().unwrap();
        std::fs::set_permissions(parent.path(), std::fs::Permissions::from_mode(0o500)).unwrap();
        let message = open(Some(parent.path())).unwrap_err().to_string();
        std::fs::set_permissions(parent.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(message.contains("is not writable by user"), "{message}");
    }
}
