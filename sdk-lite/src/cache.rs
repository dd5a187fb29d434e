//! The on-disk failover cache: the last [`EndpointSet`] of each target,
//! one JSON file per ClusterLoadAssignment name, written atomically
//! (temporary file, then rename). Read when no registry node answers.
//!
//! File: `<dir>/<escaped name>.json`, where every byte of the name outside
//! `[A-Za-z0-9._-]` is written `%XX`. Content:
//! `{"written_at_ms": <unix ms>, "set": <EndpointSet>}`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::endpoints::{EndpointSet, Origin};

/// One cache file's content.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CacheEntry {
    /// When it was written, Unix time in milliseconds.
    pub written_at_ms: u64,
    /// The set as last received from the registry.
    pub set: EndpointSet,
}

/// A cache directory.
#[derive(Debug, Clone)]
pub struct DiskCache {
    dir: PathBuf,
}

impl DiskCache {
    /// A cache in `dir` (created on the first write).
    pub fn new(dir: impl Into<PathBuf>) -> DiskCache {
        DiskCache { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file that holds resource `name`.
    pub fn path_of(&self, name: &str) -> PathBuf {
        let mut file = String::with_capacity(name.len() + 5);
        for b in name.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
                file.push(char::from(b));
            } else {
                file.push_str(&format!("%{b:02X}"));
            }
        }
        file.push_str(".json");
        self.dir.join(file)
    }

    /// Writes `set` (blocking I/O: call from `spawn_blocking`).
    pub fn store(&self, set: &EndpointSet) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let entry = CacheEntry {
            written_at_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            set: set.clone(),
        };
        let path = self.path_of(&set.name);
        let tmp = path.with_extension(format!("json.tmp{}", std::process::id()));
        let mut f = std::fs::File::create(&tmp)?;
        serde_json::to_writer(&mut f, &entry)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    }

    /// Reads resource `name`, marked [`Origin::Cache`] (blocking I/O).
    /// `Ok(None)` when there is no entry; an error for an unreadable or
    /// corrupt file.
    pub fn load(&self, name: &str) -> std::io::Result<Option<CacheEntry>> {
        let path = self.path_of(name);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut entry: CacheEntry = serde_json::from_str(&text)?;
        if entry.set.name != name {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{} holds {:?}, not {name:?}",
                    path.display(),
                    entry.set.name
                ),
            ));
        }
        entry.set.origin = Origin::Cache;
        Ok(Some(entry))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoints::{Endpoint, Health, Locality};

    #[test]
    fn round_trips_and_escapes_names() {
        let dir = tempfile::tempdir().unwrap();
        let c = DiskCache::new(dir.path().join("sub"));
        let name = "outbound|9090||pay.default";
        assert!(c.load(name).unwrap().is_none());
        let set = EndpointSet {
            name: name.into(),
            version: "abc".into(),
            origin: Origin::Registry,
            endpoints: vec![Endpoint {
                address: "10.0.0.1".into(),
                port: 9090,
                weight: 100,
                health: Health::Serving,
                labels: [("v".to_string(), "1".to_string())].into(),
                locality: Locality::default(),
                instance_id: "10.0.0.1:9090".into(),
            }],
        };
        c.store(&set).unwrap();
        assert!(c
            .path_of(name)
            .ends_with("outbound%7C9090%7C%7Cpay.default.json"));
        let got = c.load(name).unwrap().unwrap();
        assert_eq!(got.set.origin, Origin::Cache);
        assert_eq!(got.set.endpoints, set.endpoints);
        std::fs::write(c.path_of(name), "{not json").unwrap();
        assert!(c.load(name).is_err());
    }
}
