//! The orchestrator's embedded state: unit revisions and instance records, behind the [`Store`] trait
//! (a cluster backend such as etcd implements the same trait later).
//!
//! [`SqliteStore`] keeps everything in one file under the state dir (`state.db`), in WAL mode so the CLI
//! and the per-instance supervisors can use it concurrently; every write is one transaction.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};

/// Errors from the state store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the state store {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("state store query failed while {action}")]
    Query {
        action: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("instance record {id} is corrupt")]
    Corrupt {
        id: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("no instance named {id:?}")]
    NoSuchInstance { id: String },
}

/// One stored version of a unit spec. A new revision is written only when the text changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitRevision {
    pub unit: String,
    pub revision: u64,
    pub spec: String,
    pub created_unix_ms: u64,
}

/// What an instance is doing, as last seen by its supervisor or the CLI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    Starting,
    Running,
    Restarting,
    Stopping,
    Stopped,
    /// The guest ended on its own (exit code 0) and the restart policy did not bring it back.
    Exited,
    /// hv-vmm ended with an error and the restart policy did not (or could no longer) bring it back.
    Failed,
}

impl InstanceState {
    pub fn is_active(self) -> bool {
        matches!(
            self,
            Self::Starting | Self::Running | Self::Restarting | Self::Stopping
        )
    }
}

/// One launched instance of a unit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub id: String,
    pub unit: String,
    pub unit_revision: u64,
    pub state: InstanceState,
    /// Set by `stop`; the supervisor does not restart an instance whose desired state is stopped.
    pub stop_requested: bool,
    pub supervisor_pid: Option<u32>,
    pub vmm_pid: Option<u32>,
    pub api_socket: String,
    pub serial_log: String,
    pub vmm_log: String,
    /// hv-vmm's own exec-to-ready time of the latest start.
    pub boot_time_us: Option<u64>,
    pub restarts: u32,
    pub last_exit_code: Option<i32>,
    pub last_error: Option<String>,
    pub created_unix_ms: u64,
    pub updated_unix_ms: u64,
}

/// Persistence for units and instances. Implementations make every method atomic.
pub trait Store {
    /// Stores `spec` as the newest revision of `unit` unless it equals the newest; returns its number.
    fn put_unit_revision(&self, unit: &str, spec: &str) -> Result<u64, StoreError>;
    /// All revisions of `unit`, oldest first.
    fn unit_revisions(&self, unit: &str) -> Result<Vec<UnitRevision>, StoreError>;
    /// Inserts a new instance; fails if the id exists.
    fn insert_instance(&self, record: &InstanceRecord) -> Result<(), StoreError>;
    /// Takes the write lock, runs `make` and inserts the record it returns (none: nothing is written).
    /// Whatever `make` starts (a supervisor) cannot write the record before it exists, and the commit's
    /// I/O happens after `make`, off the caller's critical path.
    fn insert_instance_locked(
        &self,
        make: &mut dyn FnMut() -> Option<InstanceRecord>,
    ) -> Result<Option<InstanceRecord>, StoreError>;
    /// Reads, changes and writes back one record in one transaction.
    fn update_instance(
        &self,
        id: &str,
        change: &mut dyn FnMut(&mut InstanceRecord),
    ) -> Result<InstanceRecord, StoreError>;
    fn instance(&self, id: &str) -> Result<Option<InstanceRecord>, StoreError>;
    /// All instances, ordered by id.
    fn instances(&self) -> Result<Vec<InstanceRecord>, StoreError>;
    fn remove_instance(&self, id: &str) -> Result<bool, StoreError>;
}

pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The SQLite-backed store (one file, WAL journal).
#[derive(Debug)]
pub struct SqliteStore {
    conn: rusqlite::Connection,
}

fn query(action: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Query { action, source }
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let open_error = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        let conn = rusqlite::Connection::open(path).map_err(open_error)?;
        // Supervisors and the CLI write concurrently: wait for the lock instead of failing.
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(open_error)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             CREATE TABLE IF NOT EXISTS unit_revisions (
                 unit TEXT NOT NULL, revision INTEGER NOT NULL, spec TEXT NOT NULL,
                 created_unix_ms INTEGER NOT NULL, PRIMARY KEY (unit, revision));
             CREATE TABLE IF NOT EXISTS instances (id TEXT PRIMARY KEY, record TEXT NOT NULL);",
        )
        .map_err(open_error)?;
        Ok(SqliteStore { conn })
    }

    /// Runs `body` inside `BEGIN IMMEDIATE` (takes the write lock up front, so read-modify-write
    /// sequences from two processes cannot interleave).
    fn write_transaction<T>(
        &self,
        action: &'static str,
        body: impl FnOnce(&rusqlite::Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(query(action))?;
        match body(&self.conn) {
            Ok(value) => {
                self.conn.execute_batch("COMMIT").map_err(query(action))?;
                Ok(value)
            }
            Err(error) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(error)
            }
        }
    }
}

fn decode(id: &str, text: &str) -> Result<InstanceRecord, StoreError> {
    serde_json::from_str(text).map_err(|source| StoreError::Corrupt {
        id: id.to_owned(),
        source,
    })
}

fn encode(record: &InstanceRecord) -> String {
    // A record is plain data (strings, numbers, enums): serializing it cannot fail.
    serde_json::to_string(record).unwrap_or_default()
}

impl Store for SqliteStore {
    fn put_unit_revision(&self, unit: &str, spec: &str) -> Result<u64, StoreError> {
        self.write_transaction("storing a unit revision", |conn| {
            let latest: Option<(u64, String)> = conn
                .query_row(
                    "SELECT revision, spec FROM unit_revisions WHERE unit = ?1 ORDER BY revision DESC LIMIT 1",
                    params![unit],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()
                .map_err(query("reading the latest unit revision"))?;
            match latest {
                Some((revision, text)) if text == spec => Ok(revision),
                latest => {
                    let revision = latest.map_or(1, |(r, _)| r + 1);
                    conn.execute(
                        "INSERT INTO unit_revisions (unit, revision, spec, created_unix_ms) VALUES (?1, ?2, ?3, ?4)",
                        params![unit, revision, spec, now_unix_ms()],
                    )
                    .map_err(query("inserting a unit revision"))?;
                    Ok(revision)
                }
            }
        })
    }

    fn unit_revisions(&self, unit: &str) -> Result<Vec<UnitRevision>, StoreError> {
        let mut statement = self
            .conn
            .prepare("SELECT revision, spec, created_unix_ms FROM unit_revisions WHERE unit = ?1 ORDER BY revision")
            .map_err(query("listing unit revisions"))?;
        let rows = statement
            .query_map(params![unit], |row| {
                Ok(UnitRevision {
                    unit: unit.to_owned(),
                    revision: row.get(0)?,
                    spec: row.get(1)?,
                    created_unix_ms: row.get(2)?,
                })
            })
            .map_err(query("listing unit revisions"))?;
        rows.collect::<Result<_, _>>()
            .map_err(query("listing unit revisions"))
    }

    fn insert_instance(&self, record: &InstanceRecord) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO instances (id, record) VALUES (?1, ?2)",
                params![record.id, encode(record)],
            )
            .map_err(query("inserting an instance"))?;
        Ok(())
    }

    fn insert_instance_locked(
        &self,
        make: &mut dyn FnMut() -> Option<InstanceRecord>,
    ) -> Result<Option<InstanceRecord>, StoreError> {
        self.write_transaction("inserting an instance", |conn| {
            let Some(record) = make() else {
                return Ok(None);
            };
            conn.execute(
                "INSERT INTO instances (id, record) VALUES (?1, ?2)",
                params![record.id, encode(&record)],
            )
            .map_err(query("inserting an instance"))?;
            Ok(Some(record))
        })
    }

    fn update_instance(
        &self,
        id: &str,
        change: &mut dyn FnMut(&mut InstanceRecord),
    ) -> Result<InstanceRecord, StoreError> {
        self.write_transaction("updating an instance", |conn| {
            let text: Option<String> = conn
                .query_row(
                    "SELECT record FROM instances WHERE id = ?1",
                    params![id],
                    |row| row.get(0),
                )
                .optional()
                .map_err(query("reading an instance"))?;
            let text = text.ok_or_else(|| StoreError::NoSuchInstance { id: id.to_owned() })?;
            let mut record = decode(id, &text)?;
            change(&mut record);
            record.updated_unix_ms = now_unix_ms();
            conn.execute(
                "UPDATE instances SET record = ?2 WHERE id = ?1",
                params![id, encode(&record)],
            )
            .map_err(query("writing an instance"))?;
            Ok(record)
        })
    }

    fn instance(&self, id: &str) -> Result<Option<InstanceRecord>, StoreError> {
        let text: Option<String> = self
            .conn
            .query_row(
                "SELECT record FROM instances WHERE id = ?1",
                params![id],
                |row| row.get(0),
            )
            .optional()
            .map_err(query("reading an instance"))?;
        text.map(|t| decode(id, &t)).transpose()
    }

    fn instances(&self) -> Result<Vec<InstanceRecord>, StoreError> {
        let mut statement = self
            .conn
            .prepare("SELECT id, record FROM instances ORDER BY id")
            .map_err(query("listing instances"))?;
        let rows = statement
            .query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
            })
            .map_err(query("listing instances"))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, text) = row.map_err(query("listing instances"))?;
            out.push(decode(&id, &text)?);
        }
        Ok(out)
    }

    fn remove_instance(&self, id: &str) -> Result<bool, StoreError> {
        let removed = self
            .conn
            .execute("DELETE FROM instances WHERE id = ?1", params![id])
            .map_err(query("removing an instance"))?;
        Ok(removed > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> InstanceRecord {
        InstanceRecord {
            id: id.into(),
            unit: "u".into(),
            unit_revision: 1,
            state: InstanceState::Starting,
            stop_requested: false,
            supervisor_pid: None,
            vmm_pid: None,
            api_socket: "s".into(),
            serial_log: "l".into(),
            vmm_log: "v".into(),
            boot_time_us: None,
            restarts: 0,
            last_exit_code: None,
            last_error: None,
            created_unix_ms: 0,
            updated_unix_ms: 0,
        }
    }

    #[test]
    fn test_put_unit_revision_only_bumps_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("state.db")).unwrap();
        assert_eq!(store.put_unit_revision("web", "a").unwrap(), 1);
        assert_eq!(store.put_unit_revision("web", "a").unwrap(), 1);
        assert_eq!(store.put_unit_revision("web", "b").unwrap(), 2);
        assert_eq!(store.put_unit_revision("db", "a").unwrap(), 1);
        let revisions = store.unit_revisions("web").unwrap();
        assert_eq!(
            revisions
                .iter()
                .map(|r| r.spec.as_str())
                .collect::<Vec<_>>(),
            ["a", "b"]
        );
    }

    #[test]
    fn test_instances_survive_reopen_and_update_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let store = SqliteStore::open(&path).unwrap();
            store.insert_instance(&record("u.0")).unwrap();
            assert!(
                store.insert_instance(&record("u.0")).is_err(),
                "ids are unique"
            );
        }
        let store = SqliteStore::open(&path).unwrap();
        let updated = store
            .update_instance("u.0", &mut |r| {
                r.state = InstanceState::Running;
                r.restarts += 1;
            })
            .unwrap();
        assert_eq!(updated.state, InstanceState::Running);
        assert_eq!(store.instance("u.0").unwrap().unwrap().restarts, 1);
        assert!(matches!(
            store.update_instance("nope", &mut |_| {}),
            Err(StoreError::NoSuchInstance { .. })
        ));
        assert!(store.remove_instance("u.0").unwrap());
        assert!(store.instances().unwrap().is_empty());
    }

    #[test]
    fn test_insert_instance_locked_writes_only_what_make_returns() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("state.db")).unwrap();
        assert_eq!(store.insert_instance_locked(&mut || None).unwrap(), None);
        assert!(store.instances().unwrap().is_empty());
        let inserted = store
            .insert_instance_locked(&mut || Some(record("u.1")))
            .unwrap();
        assert_eq!(inserted.map(|r| r.id), Some("u.1".to_owned()));
        assert!(
            store
                .insert_instance_locked(&mut || Some(record("u.1")))
                .is_err(),
            "ids stay unique"
        );
        assert_eq!(store.instances().unwrap().len(), 1);
    }

    #[test]
    fn test_concurrent_updates_from_two_connections_do_not_lose_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        SqliteStore::open(&path)
            .unwrap()
            .insert_instance(&record("u.0"))
            .unwrap();
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let store = SqliteStore::open(&path).unwrap();
                    for _ in 0..50 {
                        store
                            .update_instance("u.0", &mut |r| r.restarts += 1)
                            .unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.instance("u.0").unwrap().unwrap().restarts, 100);
    }
}
