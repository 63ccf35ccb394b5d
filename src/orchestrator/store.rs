//! Instance metadata as JSON files under the data directory, one per instance, each written
//! atomically (temporary file, fsync, rename) so a crash never leaves a half-written record.

use super::{OrchestratorError, Result};
use crate::instance::{InstanceId, InstanceRecord};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn new(dir: PathBuf) -> Result<Self> {
        std::fs::create_dir_all(&dir)
            .map_err(OrchestratorError::io(format!("creating {}", dir.display())))?;
        Ok(Self { dir })
    }

    fn path(&self, id: &InstanceId) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Writes the record atomically, readable only by this user (it holds the access token).
    pub fn write(&self, rec: &InstanceRecord) -> Result<()> {
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
        match std::fs::remove_file(self.path(id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(OrchestratorError::io(
                format!("removing metadata of {id}"),
            )(e)),
            _ => Ok(()),
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
                Ok(rec) => out.push(rec),
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
