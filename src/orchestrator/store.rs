//! Instance metadata as JSON files under the data directory, one per instance, each written
//! atomically (temporary file, fsync, rename) so a crash never leaves a half-written record.
//!
//! Writes go one at a time, and the store remembers each instance's newest access token: a
//! record saved from a snapshot taken before a rotation keeps the rotated token, and a save
//! that comes after the instance was removed does not bring its file back.

use super::{OrchestratorError, Result};
use crate::instance::{AccessToken, InstanceId, InstanceRecord};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    /// The newest access token of each stored instance, with its generation; held while a
    /// record is written.
    tokens: Mutex<HashMap<InstanceId, (AccessToken, u64)>>,
}

impl Store {
    pub fn new(dir: PathBuf) -> Result<Self> {
        std::fs::create_dir_all(&dir)
            .map_err(OrchestratorError::io(format!("creating {}", dir.display())))?;
        Ok(Self {
            dir,
            tokens: Mutex::new(HashMap::new()),
        })
    }

    fn path(&self, id: &InstanceId) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    fn tokens(&self) -> MutexGuard<'_, HashMap<InstanceId, (AccessToken, u64)>> {
        // Entries are inserted and removed whole, so a poisoned map is still consistent.
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores a new instance's record.
    pub fn create(&self, rec: &InstanceRecord) -> Result<()> {
        let mut tokens = self.tokens();
        self.write(rec)?;
        tokens.insert(
            rec.instance_id.clone(),
            (rec.access_token.clone(), rec.token_generation),
        );
        Ok(())
    }

    /// Stores a stored instance's changed facts, with its newest access token whatever the
    /// record says; nothing for an instance no longer stored.
    pub fn update(&self, rec: &InstanceRecord) -> Result<()> {
        let mut tokens = self.tokens();
        let Some((token, generation)) = tokens.get_mut(&rec.instance_id) else {
            return Ok(());
        };
        if rec.token_generation < *generation {
            let mut newest = rec.clone();
            newest.access_token = token.clone();
            newest.token_generation = *generation;
            return self.write(&newest);
        }
        self.write(rec)?;
        (*token, *generation) = (rec.access_token.clone(), rec.token_generation);
        Ok(())
    }

    /// Stores `token` as the instance's access token, one generation above its newest, and
    /// returns that generation.
    pub fn rotate(&self, rec: &InstanceRecord, token: &AccessToken) -> Result<u64> {
        let mut tokens = self.tokens();
        let Some((current, generation)) = tokens.get_mut(&rec.instance_id) else {
            return Err(OrchestratorError::Gone(rec.instance_id.clone()));
        };
        let next = (*generation).max(rec.token_generation) + 1;
        let mut rotated = rec.clone();
        rotated.access_token = token.clone();
        rotated.token_generation = next;
        self.write(&rotated)?;
        (*current, *generation) = (token.clone(), next);
        Ok(next)
    }

    /// Writes the record atomically, readable only by this user (it holds the access token).
    /// Callers hold the token lock, so two writes never share the temporary file.
    fn write(&self, rec: &InstanceRecord) -> Result<()> {
        let path = self.path(&rec.instance_id);
        let tmp = self.dir.join(format!(".{}.json.tmp", rec.instance_id));
        let json = serde_json::to_vec_pretty(rec).map_err(|e| OrchestratorError::Corrupt {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        write_private(&tmp, &json)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(OrchestratorError::io(format!("writing {}", path.display())))?;
        // The rename is durable only once the directory entry is.
        if let Ok(d) = std::fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    pub fn remove(&self, id: &InstanceId) -> Result<()> {
        let mut tokens = self.tokens();
        match std::fs::remove_file(self.path(id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(OrchestratorError::io(
                format!("removing metadata of {id}"),
            )(e)),
            _ => {
                tokens.remove(id);
                Ok(())
            }
        }
    }

    /// Every stored record. A file that does not parse (torn by a crash before records were
    /// written atomically, edited by hand) is reported and set aside as `<name>.corrupt`, so
    /// the server still starts with every other instance and nothing is deleted.
    pub fn load_all(&self) -> Result<Vec<InstanceRecord>> {
        let entries = std::fs::read_dir(&self.dir).map_err(OrchestratorError::io(format!(
            "reading {}",
            self.dir.display()
        )))?;
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(OrchestratorError::io("listing instance metadata"))?;
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || !name.ends_with(".json") {
                continue;
            }
            let bytes = std::fs::read(&path)
                .map_err(OrchestratorError::io(format!("reading {}", path.display())))?;
            match serde_json::from_slice::<InstanceRecord>(&bytes) {
                Ok(rec) => {
                    self.tokens().insert(
                        rec.instance_id.clone(),
                        (rec.access_token.clone(), rec.token_generation),
                    );
                    out.push(rec);
                }
                Err(e) => {
                    let aside = path.with_extension("json.corrupt");
                    tracing::error!(
                        path = %path.display(),
                        error = %e,
                        kept_as = %aside.display(),
                        "instance metadata does not parse; skipped"
                    );
                    let _ = std::fs::rename(&path, &aside);
                }
            }
        }
        Ok(out)
    }
}

/// Creates (or truncates) `path` with mode 0600 and writes `data` durably.
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> InstanceRecord {
        InstanceRecord {
            last_activity_ms: 1,
            ..InstanceRecord::for_tests("alice")
        }
    }

    #[test]
    fn a_save_from_before_a_rotation_keeps_the_rotated_token() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().to_owned()).unwrap();
        let rec = record();
        store.create(&rec).unwrap();
        let first = AccessToken::generate();
        assert_eq!(store.rotate(&rec, &first).unwrap(), 1);
        let second = AccessToken::generate();
        assert_eq!(store.rotate(&rec, &second).unwrap(), 2, "each its own");

        // The reaper saves activity from a snapshot taken before both rotations.
        let mut stale = rec.clone();
        stale.last_activity_ms = 99;
        store.update(&stale).unwrap();
        let reloaded = Store::new(dir.path().to_owned())
            .unwrap()
            .load_all()
            .unwrap();
        assert_eq!(reloaded.len(), 1);
        let back = &reloaded[0];
        assert_eq!(back.last_activity_ms, 99);
        assert_eq!((&back.access_token, back.token_generation), (&second, 2));

        // Removed: a late save writes nothing, a rotation says it is gone.
        store.remove(&rec.instance_id).unwrap();
        store.update(&stale).unwrap();
        assert!(store.load_all().unwrap().is_empty());
        assert!(matches!(
            store.rotate(&rec, &first),
            Err(OrchestratorError::Gone(_))
        ));
    }
}
