//! Runtime tenant tags: "keep every trace of tenant X (for the next 2 h)", set through the
//! admin API, above the rules file in precedence.
//!
//! ```text
//! PUT/DELETE /api/v1/tenants/{id}/tag ─> TagTable::set/remove ─> write state file (tmp + rename)
//!                                              │ ArcSwap<TagMap> (immutable map, swapped whole)
//! buffer shard, once per batch: tags.snapshot() ─> TagMap::keeps_all(tenant, now) per decision
//! ```
//! Readers never lock: they load the current immutable map. Writers (rare, admin API) serialise
//! on a mutex, build a new map, persist it, then swap it in. Expiry is checked against the
//! `now` the caller passes, so tests need no clock; expired entries are pruned on the next write.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

/// Name recorded as the deciding rule for traces kept because their tenant is tagged.
pub const TAG_RULE: &str = "tenant-tag";

/// The state file format version written today.
const STATE_VERSION: u32 = 1;

/// Why the tag state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum TagsError {
    /// The state file exists but could not be read, or could not be written.
    #[error("tags file {}: {source}", path.display())]
    Io {
        /// The state file.
        path: PathBuf,
        /// The I/O failure.
        source: std::io::Error,
    },
    /// The state file is not valid tag state.
    #[error("tags file {} is invalid: {source} (fix it, or delete it to start with no tags)", path.display())]
    Invalid {
        /// The state file.
        path: PathBuf,
        /// What the JSON parser said.
        source: serde_json::Error,
    },
    /// A tenant id that cannot be tagged.
    #[error("tenant id must be 1 to 256 characters, got {0:?}")]
    BadTenant(String),
}

/// One tenant's tag.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantTag {
    /// Keep 100% of the tenant's traces (the only tag kind today; always true when stored).
    pub keep_all: bool,
    /// When the tag was set, milliseconds since the Unix epoch.
    pub set_at_unix_ms: u64,
    /// When the tag stops applying (milliseconds since the Unix epoch); `None` = never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_unix_ms: Option<u64>,
}

impl TenantTag {
    /// Whether the tag applies at `now_ms`.
    pub fn active(&self, now_ms: u64) -> bool {
        self.keep_all && self.expires_at_unix_ms.is_none_or(|e| now_ms < e)
    }
}

/// An immutable tenant → tag map; the unit that is swapped.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagMap {
    tags: BTreeMap<String, TenantTag>,
}

impl TagMap {
    /// Whether the tenant's traces are to be kept entirely at `now_ms` (the per-decision check).
    pub fn keeps_all(&self, tenant: &str, now_ms: u64) -> bool {
        // An empty table (the usual case) costs one branch.
        !self.tags.is_empty() && self.tags.get(tenant).is_some_and(|t| t.active(now_ms))
    }

    /// Every tag still active at `now_ms`, by tenant id.
    pub fn active(&self, now_ms: u64) -> impl Iterator<Item = (&str, &TenantTag)> + '_ {
        self.tags
            .iter()
            .filter(move |(_, t)| t.active(now_ms))
            .map(|(k, v)| (k.as_str(), v))
    }

    /// Number of tags stored (expired ones included until the next write prunes them).
    pub fn len(&self) -> usize {
        self.tags.len()
    }

    /// Whether no tag is stored.
    pub fn is_empty(&self) -> bool {
        self.tags.is_empty()
    }
}

/// The on-disk form: versioned so the format can grow.
#[derive(Serialize, Deserialize)]
struct StateFile {
    version: u32,
    #[serde(flatten)]
    map: TagMap,
}

/// The live tag table: lock-free reads, serialised and persisted writes.
pub struct TagTable {
    path: Option<PathBuf>,
    live: ArcSwap<TagMap>,
    write: Mutex<()>,
}

/// Milliseconds since the Unix epoch (0 before it, which never happens in practice).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl TagTable {
    /// A table that is not persisted (tests, tools).
    pub fn in_memory() -> TagTable {
        TagTable {
            path: None,
            live: ArcSwap::from_pointee(TagMap::default()),
            write: Mutex::new(()),
        }
    }

    /// Loads the state file (a missing file is an empty table); writes go back to it.
    pub fn load(path: &Path) -> Result<TagTable, TagsError> {
        let map = match std::fs::read(path) {
            Ok(bytes) => {
                let state: StateFile =
                    serde_json::from_slice(&bytes).map_err(|source| TagsError::Invalid {
                        path: path.to_path_buf(),
                        source,
                    })?;
                state.map
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => TagMap::default(),
            Err(source) => {
                return Err(TagsError::Io {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        tracing::info!(path = %path.display(), tags = map.len(), "tenant tags loaded");
        Ok(TagTable {
            path: Some(path.to_path_buf()),
            live: ArcSwap::from_pointee(map),
            write: Mutex::new(()),
        })
    }

    /// The current map; load it once per batch of decisions.
    pub fn snapshot(&self) -> Arc<TagMap> {
        self.live.load_full()
    }

    /// Tags `tenant` for 100% retention from `now` for `duration` (`None` = until removed).
    pub fn set(
        &self,
        tenant: &str,
        duration: Option<Duration>,
        now: SystemTime,
    ) -> Result<TenantTag, TagsError> {
        if tenant.is_empty() || tenant.len() > 256 {
            return Err(TagsError::BadTenant(tenant.to_string()));
        }
        let now_ms = unix_ms(now);
        let tag = TenantTag {
            keep_all: true,
            set_at_unix_ms: now_ms,
            expires_at_unix_ms: duration
                .map(|d| now_ms.saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))),
        };
        self.update(now_ms, |tags| {
            tags.insert(tenant.to_string(), tag.clone());
        })?;
        tracing::info!(tenant, expires_at_unix_ms = ?tag.expires_at_unix_ms, "tenant tagged: keeping all traces");
        Ok(tag)
    }

    /// Removes the tag of `tenant`; returns whether an active tag was removed.
    pub fn remove(&self, tenant: &str, now: SystemTime) -> Result<bool, TagsError> {
        let now_ms = unix_ms(now);
        let mut removed = false;
        self.update(now_ms, |tags| {
            removed = tags.remove(tenant).is_some_and(|t| t.active(now_ms));
        })?;
        if removed {
            tracing::info!(tenant, "tenant tag removed");
        }
        Ok(removed)
    }

    /// Takes every tag of `theirs` (another node's list) that this table lacks or holds with an
    /// older `set_at_unix_ms` (last writer wins); returns how many tags changed. Tags only this
    /// table holds stay.
    pub fn merge(
        &self,
        theirs: impl IntoIterator<Item = (String, TenantTag)>,
        now: SystemTime,
    ) -> Result<usize, TagsError> {
        let now_ms = unix_ms(now);
        let mut changed = 0;
        let theirs: Vec<(String, TenantTag)> = theirs
            .into_iter()
            .filter(|(tenant, tag)| !tenant.is_empty() && tenant.len() <= 256 && tag.active(now_ms))
            .collect();
        let current = self.snapshot();
        let newer = |tenant: &String, tag: &TenantTag| {
            current
                .tags
                .get(tenant)
                .is_none_or(|mine| mine.set_at_unix_ms < tag.set_at_unix_ms)
        };
        if !theirs.iter().any(|(t, tag)| newer(t, tag)) {
            return Ok(0);
        }
        self.update(now_ms, |tags| {
            for (tenant, tag) in theirs {
                let take = tags
                    .get(&tenant)
                    .is_none_or(|mine| mine.set_at_unix_ms < tag.set_at_unix_ms);
                if take {
                    tags.insert(tenant, tag);
                    changed += 1;
                }
            }
        })?;
        tracing::info!(changed, "tenant tags merged from a peer");
        Ok(changed)
    }

    /// Copy, change, prune expired entries, persist, swap; concurrent writers take turns.
    fn update(
        &self,
        now_ms: u64,
        change: impl FnOnce(&mut BTreeMap<String, TenantTag>),
    ) -> Result<(), TagsError> {
        let _turn = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let mut map = TagMap::clone(&self.live.load());
        change(&mut map.tags);
        map.tags.retain(|_, t| t.active(now_ms));
        if let Some(path) = &self.path {
            write_atomically(path, &map)?;
        }
        self.live.store(Arc::new(map));
        Ok(())
    }
}

/// Writes the state to a temporary file beside `path`, syncs it, then renames it over `path`,
/// so a crash leaves either the old file or the new one, never half of one.
fn write_atomically(path: &Path, map: &TagMap) -> Result<(), TagsError> {
    let io = |source| TagsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let state = StateFile {
        version: STATE_VERSION,
        map: map.clone(),
    };
    let mut bytes = serde_json::to_vec_pretty(&state).map_err(|e| io(std::io::Error::other(e)))?;
    bytes.push(b'\n');
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn tag_takes_effect_at_once_and_expires_on_time() {
        let table = TagTable::in_memory();
        let now = at(1_000_000);
        assert!(!table.snapshot().keeps_all("acme", unix_ms(now)));
        table
            .set("acme", Some(Duration::from_secs(7200)), now)
            .unwrap();
        let tags = table.snapshot();
        assert!(tags.keeps_all("acme", unix_ms(now)));
        assert!(!tags.keeps_all("globex", unix_ms(now)));
        assert!(tags.keeps_all("acme", unix_ms(at(1_000_000 + 7199))));
        assert!(!tags.keeps_all("acme", unix_ms(at(1_000_000 + 7200))));
        assert_eq!(tags.active(unix_ms(at(1_000_000 + 7200))).count(), 0);
    }

    #[test]
    fn tag_without_expiry_lasts_until_removed() {
        let table = TagTable::in_memory();
        table.set("acme", None, at(10)).unwrap();
        assert!(table.snapshot().keeps_all("acme", u64::MAX - 1));
        assert!(table.remove("acme", at(20)).unwrap());
        assert!(!table.snapshot().keeps_all("acme", unix_ms(at(20))));
        assert!(!table.remove("acme", at(20)).unwrap());
    }

    #[test]
    fn readers_keep_their_snapshot_while_a_writer_swaps() {
        let table = TagTable::in_memory();
        let before = table.snapshot();
        table.set("acme", None, at(10)).unwrap();
        assert!(!before.keeps_all("acme", unix_ms(at(10))));
        assert!(table.snapshot().keeps_all("acme", unix_ms(at(10))));
    }

    #[test]
    fn tags_survive_a_restart_through_the_state_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state").join("tags.json");
        {
            let table = TagTable::load(&path).unwrap();
            table.set("acme", None, at(100)).unwrap();
            table
                .set("globex", Some(Duration::from_secs(60)), at(100))
                .unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"version\": 1"), "{text}");
        assert!(!path.with_file_name("tags.json.tmp").exists());
        let reloaded = TagTable::load(&path).unwrap();
        let tags = reloaded.snapshot();
        assert!(tags.keeps_all("acme", unix_ms(at(200))));
        assert!(!tags.keeps_all("globex", unix_ms(at(200))));
        assert!(tags.keeps_all("globex", unix_ms(at(159))));
    }

    #[test]
    fn expired_tags_are_pruned_on_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tags.json");
        let table = TagTable::load(&path).unwrap();
        table
            .set("old", Some(Duration::from_secs(1)), at(100))
            .unwrap();
        table.set("new", None, at(200)).unwrap();
        assert_eq!(table.snapshot().len(), 1);
        assert!(!std::fs::read_to_string(&path).unwrap().contains("old"));
    }

    #[test]
    fn missing_state_file_starts_empty_and_invalid_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tags.json");
        assert!(TagTable::load(&path).unwrap().snapshot().is_empty());
        std::fs::write(&path, "{not json").unwrap();
        let err = TagTable::load(&path).err().unwrap();
        assert!(matches!(err, TagsError::Invalid { .. }), "{err}");
        assert!(err.to_string().contains("delete it"), "{err}");
    }

    #[test]
    fn merging_a_peers_tags_takes_the_newer_tag_and_keeps_our_own() {
        let table = TagTable::in_memory();
        table.set("ours", None, at(100)).unwrap();
        table.set("both", None, at(100)).unwrap();
        let newer = TenantTag {
            keep_all: true,
            set_at_unix_ms: unix_ms(at(200)),
            expires_at_unix_ms: Some(unix_ms(at(900))),
        };
        let older = TenantTag {
            keep_all: true,
            set_at_unix_ms: unix_ms(at(50)),
            expires_at_unix_ms: Some(unix_ms(at(60))),
        };
        let theirs = vec![
            ("both".to_string(), newer.clone()),
            ("theirs".to_string(), newer.clone()),
            ("ours".to_string(), older),
        ];
        assert_eq!(table.merge(theirs.clone(), at(300)).unwrap(), 2);
        let tags = table.snapshot();
        assert!(
            tags.keeps_all("ours", unix_ms(at(1000))),
            "ours has no expiry"
        );
        assert!(
            !tags.keeps_all("both", unix_ms(at(1000))),
            "the newer tag expires"
        );
        assert!(tags.keeps_all("theirs", unix_ms(at(300))));
        assert_eq!(
            table.merge(theirs, at(300)).unwrap(),
            0,
            "nothing newer the second time"
        );
    }

    #[test]
    fn empty_tenant_id_is_refused() {
        let table = TagTable::in_memory();
        assert!(matches!(
            table.set("", None, at(1)),
            Err(TagsError::BadTenant(_))
        ));
    }
}
