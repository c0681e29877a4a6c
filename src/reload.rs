//! The live rule set and how it changes: load and validate fully, then swap atomically; a
//! file that fails validation leaves the old rules live and is reported.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;

use crate::config::DEFAULT_RULES_FILE;
use crate::rules::{RuleSet, RulesError};

/// The outcome of the last reload attempt, for the admin API and logs.
#[derive(Clone, Debug, Default)]
pub struct ReloadStatus {
    /// When the live rules were loaded.
    pub loaded_at: Option<SystemTime>,
    /// Where they came from (`built-in` or a path).
    pub source: String,
    /// The last failed attempt: when, and every diagnostic.
    pub last_error: Option<(SystemTime, String)>,
    /// Successful reloads since start.
    pub reloads: u64,
    /// Failed reloads since start.
    pub failures: u64,
}

/// Holds the live rule set; decisions load a snapshot, reloads swap it.
pub struct LiveRules {
    path: PathBuf,
    live: Arc<ArcSwap<RuleSet>>,
    status: Mutex<ReloadStatus>,
}

/// Loads the rules a config names: the file, or the built-in set when the default path is
/// absent (a fresh checkout run from elsewhere still starts).
pub fn load_rules(path: &Path) -> Result<(RuleSet, String), RulesError> {
    if !path.exists() && path == Path::new(DEFAULT_RULES_FILE) {
        return Ok((RuleSet::builtin(), "built-in (rules/default.toml)".into()));
    }
    Ok((RuleSet::load(path)?, path.display().to_string()))
}

impl LiveRules {
    /// Loads the initial rules; failure here stops start-up.
    pub fn load(path: &Path) -> Result<LiveRules, RulesError> {
        let (rules, source) = load_rules(path)?;
        for w in rules.warnings() {
            tracing::warn!(warning = %w, "rules warning");
        }
        Ok(LiveRules {
            path: path.to_path_buf(),
            live: Arc::new(ArcSwap::from_pointee(rules)),
            status: Mutex::new(ReloadStatus {
                loaded_at: Some(SystemTime::now()),
                source,
                ..Default::default()
            }),
        })
    }

    /// The shared handle decisions read.
    pub fn handle(&self) -> Arc<ArcSwap<RuleSet>> {
        self.live.clone()
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<RuleSet> {
        self.live.load_full()
    }

    /// Re-reads the file; on success swaps the live set, on failure keeps it and records why.
    pub fn reload(&self) -> Result<(), RulesError> {
        let result = load_rules(&self.path);
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok((rules, source)) => {
                tracing::info!(source = %source, hash = rules.source_hash(), "rules reloaded");
                self.live.store(Arc::new(rules));
                status.loaded_at = Some(SystemTime::now());
                status.source = source;
                status.reloads += 1;
                Ok(())
            }
            Err(err) => {
                tracing::error!(error = %err, "rules reload failed; the previous rules stay live");
                status.last_error = Some((SystemTime::now(), err.to_string()));
                status.failures += 1;
                Err(err)
            }
        }
    }

    /// The reload history.
    pub fn status(&self) -> ReloadStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
