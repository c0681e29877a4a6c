//! The live rule set and how it changes: load and validate fully, then swap atomically; a
//! file that fails validation leaves the old rules live and is reported.
//!
//! ```text
//! file watch (debounced) ─┐
//! SIGHUP ─────────────────┼─> LiveRules::reload(trigger) ─ok─> ArcSwap::store(new RuleSet)
//! POST /api/v1/rules/reload┘                             └err─> keep old, record ReloadFailure
//! ```
//! An optional shadow rule set (`[rules] shadow_file`) is reloaded on the same path; it is
//! evaluated beside the live one but never decides.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption};

use crate::config::DEFAULT_RULES_FILE;
use crate::rules::{Diagnostic, RuleSet, RulesError};

/// How long the watcher waits for a burst of file events to settle before reloading.
pub const WATCH_DEBOUNCE: Duration = Duration::from_millis(200);

/// What asked for a reload (logged and reported; every trigger takes the same path).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// The rules file changed on disk.
    FileWatch,
    /// SIGHUP.
    Signal,
    /// `POST /api/v1/rules/reload`.
    Api,
}

impl Trigger {
    /// Stable lower-case name for logs and the admin API.
    pub fn as_str(&self) -> &'static str {
        match self {
            Trigger::FileWatch => "file_watch",
            Trigger::Signal => "signal",
            Trigger::Api => "api",
        }
    }
}

/// A failed reload: when, what triggered it, and where the file is wrong.
#[derive(Clone, Debug)]
pub struct ReloadFailure {
    /// When the attempt failed.
    pub at: SystemTime,
    /// What triggered it.
    pub trigger: Trigger,
    /// The file that failed (the rules file or the shadow file).
    pub file: String,
    /// The first problem's line, when the file was read but is invalid.
    pub line: Option<usize>,
    /// Every diagnostic (or the I/O error), one per line.
    pub message: String,
    /// The located problems, when the file was read but is invalid.
    pub diagnostics: Vec<Diagnostic>,
}

impl ReloadFailure {
    fn new(err: &RulesError, file: &Path, trigger: Trigger) -> ReloadFailure {
        let diagnostics = match err {
            RulesError::Invalid(d) => d.clone(),
            RulesError::Io { .. } => Vec::new(),
        };
        ReloadFailure {
            at: SystemTime::now(),
            trigger,
            file: file.display().to_string(),
            line: diagnostics.first().map(|d| d.line),
            message: err.to_string(),
            diagnostics,
        }
    }
}

/// The outcome of the last reload attempt, for the admin API and logs.
#[derive(Clone, Debug, Default)]
pub struct ReloadStatus {
    /// When the live rules were loaded.
    pub loaded_at: Option<SystemTime>,
    /// Where they came from (`built-in` or a path).
    pub source: String,
    /// What triggered the last successful reload (`None`: loaded at start).
    pub last_trigger: Option<Trigger>,
    /// The last failed attempt on the rules file (kept after later successes; compare `at`
    /// with `loaded_at`).
    pub last_error: Option<ReloadFailure>,
    /// Successful reloads since start.
    pub reloads: u64,
    /// Failed reloads since start.
    pub failures: u64,
    /// Whether the most recent attempt failed (the live rules are older than the file).
    pub failing: bool,
    /// The shadow file, when one is configured.
    pub shadow_source: Option<String>,
    /// When the shadow rules were loaded.
    pub shadow_loaded_at: Option<SystemTime>,
    /// The last failed attempt on the shadow file.
    pub shadow_last_error: Option<ReloadFailure>,
}

/// Holds the live rule set (and the optional shadow set); decisions load a snapshot, reloads
/// swap it.
pub struct LiveRules {
    path: PathBuf,
    live: Arc<ArcSwap<RuleSet>>,
    shadow_path: Option<PathBuf>,
    shadow: Arc<ArcSwapOption<RuleSet>>,
    status: Mutex<ReloadStatus>,
    // Reloads from the watcher, a signal and the API take turns, so statuses stay in order.
    reloading: Mutex<()>,
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
        Self::load_with_shadow(path, None)
    }

    /// Loads the initial rules and the shadow rules; failure of either stops start-up.
    pub fn load_with_shadow(path: &Path, shadow: Option<&Path>) -> Result<LiveRules, RulesError> {
        let (rules, source) = load_rules(path)?;
        for w in rules.warnings() {
            tracing::warn!(warning = %w, "rules warning");
        }
        let shadow_rules = match shadow {
            Some(p) => {
                let set = RuleSet::load(p)?;
                tracing::info!(path = %p.display(), "shadow rules loaded; they are evaluated but never decide");
                Some(Arc::new(set))
            }
            None => None,
        };
        let now = SystemTime::now();
        Ok(LiveRules {
            path: path.to_path_buf(),
            live: Arc::new(ArcSwap::from_pointee(rules)),
            shadow_path: shadow.map(Path::to_path_buf),
            shadow: Arc::new(ArcSwapOption::new(shadow_rules)),
            status: Mutex::new(ReloadStatus {
                loaded_at: Some(now),
                source,
                shadow_source: shadow.map(|p| p.display().to_string()),
                shadow_loaded_at: shadow.map(|_| now),
                ..Default::default()
            }),
            reloading: Mutex::new(()),
        })
    }

    /// The shared handle decisions read.
    pub fn handle(&self) -> Arc<ArcSwap<RuleSet>> {
        self.live.clone()
    }

    /// The shared handle of the shadow rules (empty when none are configured).
    pub fn shadow_handle(&self) -> Arc<ArcSwapOption<RuleSet>> {
        self.shadow.clone()
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<RuleSet> {
        self.live.load_full()
    }

    /// The current shadow snapshot, if shadow rules are configured.
    pub fn shadow_snapshot(&self) -> Option<Arc<RuleSet>> {
        self.shadow.load_full()
    }

    /// The rules file, and the shadow file when configured (what the watcher watches).
    pub fn files(&self) -> Vec<PathBuf> {
        std::iter::once(self.path.clone())
            .chain(self.shadow_path.clone())
            .collect()
    }

    /// Re-reads the files; on success swaps the live set, on failure keeps it and records why.
    /// The shadow file, if any, is re-read too; its failure is recorded separately and never
    /// affects the live rules.
    pub fn reload(&self, trigger: Trigger) -> Result<(), RulesError> {
        let _turn = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let result = load_rules(&self.path);
        let shadow = self.shadow_path.as_ref().map(|p| (p, RuleSet::load(p)));
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((path, loaded)) = shadow {
            match loaded {
                Ok(set) => {
                    self.shadow.store(Some(Arc::new(set)));
                    status.shadow_loaded_at = Some(SystemTime::now());
                }
                Err(err) => {
                    tracing::error!(error = %err, trigger = trigger.as_str(), "shadow rules reload failed; the previous shadow rules stay");
                    status.shadow_last_error = Some(ReloadFailure::new(&err, path, trigger));
                }
            }
        }
        match result {
            Ok((rules, source)) => {
                tracing::info!(source = %source, hash = rules.source_hash(), trigger = trigger.as_str(), "rules reloaded");
                for w in rules.warnings() {
                    tracing::warn!(warning = %w, "rules warning");
                }
                self.live.store(Arc::new(rules));
                status.loaded_at = Some(SystemTime::now());
                status.source = source;
                status.last_trigger = Some(trigger);
                status.reloads += 1;
                status.failing = false;
                Ok(())
            }
            Err(err) => {
                tracing::error!(error = %err, trigger = trigger.as_str(), "rules reload failed; the previous rules stay live");
                status.last_error = Some(ReloadFailure::new(&err, &self.path, trigger));
                status.failures += 1;
                status.failing = true;
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

/// A hook run before every rules reload (SIGHUP, `POST /api/v1/rules/reload`), such as
/// re-reading `cluster.peers` or the API keys file.
pub type ReloadHook = Arc<dyn Fn() + Send + Sync>;

/// One hook running `first` then `second`, whichever are present.
pub fn chain_hooks(first: Option<ReloadHook>, second: Option<ReloadHook>) -> Option<ReloadHook> {
    match (first, second) {
        (Some(a), Some(b)) => Some(Arc::new(move || {
            a();
            b();
        })),
        (a, b) => a.or(b),
    }
}

/// Why the rules file cannot be watched (the proxy still runs; SIGHUP and the API reload).
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The watcher could not be set up.
    #[error("cannot watch {}: {source}", dir.display())]
    Notify {
        /// The directory that was to be watched.
        dir: PathBuf,
        /// What the OS said.
        source: notify::Error,
    },
    /// The watcher's thread could not be started.
    #[error("cannot start the rules watcher thread: {0}")]
    Thread(std::io::Error),
}

/// Watches the rules files; reloading stops when it is dropped.
pub struct RulesWatcher {
    _watcher: notify::RecommendedWatcher,
}

/// Watches the directories holding the rules files (so editors that save by writing a new file
/// and renaming it over the old one are seen), and after a burst of changes to one of those
/// files settles for [`WATCH_DEBOUNCE`], reloads through [`LiveRules::reload`].
pub fn watch(rules: &Arc<LiveRules>, debounce: Duration) -> Result<RulesWatcher, WatchError> {
    use notify::Watcher;

    let files = rules.files();
    let names: Vec<std::ffi::OsString> = files
        .iter()
        .filter_map(|f| f.file_name().map(|n| n.to_os_string()))
        .collect();
    let (tx, rx) = mpsc::channel::<notify::Result<notify::Event>>();
    let mut watcher = notify::recommended_watcher(tx).map_err(|source| WatchError::Notify {
        dir: PathBuf::from("."),
        source,
    })?;
    let mut dirs: Vec<PathBuf> = files.iter().map(|f| parent_dir(f)).collect();
    dirs.sort();
    dirs.dedup();
    for dir in &dirs {
        watcher
            .watch(dir, notify::RecursiveMode::NonRecursive)
            .map_err(|source| WatchError::Notify {
                dir: dir.clone(),
                source,
            })?;
        tracing::info!(dir = %dir.display(), "watching rules directory for changes");
    }
    let weak = Arc::downgrade(rules);
    std::thread::Builder::new()
        .name("tailsift-rules-watch".into())
        .spawn(move || debounce_loop(rx, names, debounce, weak))
        .map_err(WatchError::Thread)?;
    Ok(RulesWatcher { _watcher: watcher })
}

/// The directory holding `file` (`.` for a bare file name).
fn parent_dir(file: &Path) -> PathBuf {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Whether an event touches one of the watched files (by name: editors' temporary files and
/// other files in the directory are ignored).
fn relevant(event: &notify::Event, names: &[std::ffi::OsString]) -> bool {
    use notify::EventKind;
    matches!(
        event.kind,
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) | EventKind::Any
    ) && event
        .paths
        .iter()
        .any(|p| p.file_name().is_some_and(|n| names.iter().any(|w| w == n)))
}

/// Waits for a relevant event, lets the burst settle, reloads; ends when the watcher is
/// dropped (the channel closes) or the rules are gone.
fn debounce_loop(
    rx: mpsc::Receiver<notify::Result<notify::Event>>,
    names: Vec<std::ffi::OsString>,
    debounce: Duration,
    rules: Weak<LiveRules>,
) {
    let is_relevant = |e: &notify::Result<notify::Event>| match e {
        Ok(event) => relevant(event, &names),
        Err(err) => {
            tracing::warn!(error = %err, "rules watcher error");
            false
        }
    };
    while let Ok(event) = rx.recv() {
        if !is_relevant(&event) {
            continue;
        }
        // Quiet period: every further event restarts it.
        loop {
            match rx.recv_timeout(debounce) {
                Ok(_) => continue,
                Err(mpsc::RecvTimeoutError::Timeout) => break,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
        let Some(rules) = rules.upgrade() else {
            return;
        };
        tracing::info!("rules file changed: reloading");
        // A failure is logged and recorded by reload itself.
        let _ = rules.reload(Trigger::FileWatch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    const KEEP: &str = "[[rule]]\nname = \"keep-everything\"\nsample_rate = 1\n";
    const DROP: &str = "[[rule]]\nname = \"drop-everything\"\ndrop = true\n";

    fn first_rule(rules: &LiveRules) -> String {
        rules
            .snapshot()
            .rules()
            .next()
            .map(|r| r.rule.name().to_string())
            .unwrap_or_default()
    }

    /// Writes `text` to a temporary file and renames it over `path`, as editors do.
    fn replace_via_rename(path: &Path, text: &str) {
        let tmp = path.with_extension("toml.swp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    #[test]
    fn invalid_rules_file_keeps_old_rules_and_reports_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules.toml");
        std::fs::write(&path, KEEP).unwrap();
        let rules = LiveRules::load(&path).unwrap();
        std::fs::write(&path, "[[rule]]\nname = \"bad\"\nsample_rate = 0\n").unwrap();
        assert!(rules.reload(Trigger::Api).is_err());
        assert_eq!(first_rule(&rules), "keep-everything");
        let status = rules.status();
        assert!(status.failing);
        assert_eq!(status.failures, 1);
        let failure = status.last_error.unwrap();
        assert_eq!(failure.file, path.display().to_string());
        assert_eq!(failure.line, Some(3));
        assert_eq!(failure.trigger, Trigger::Api);
        assert!(
            failure.message.contains("sample_rate must be at least 1"),
            "{}",
            failure.message
        );
    }

    #[test]
    fn every_trigger_takes_the_same_reload_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules.toml");
        std::fs::write(&path, KEEP).unwrap();
        let rules = LiveRules::load(&path).unwrap();
        for (i, trigger) in [Trigger::Signal, Trigger::Api, Trigger::FileWatch]
            .into_iter()
            .enumerate()
        {
            std::fs::write(&path, if i % 2 == 0 { DROP } else { KEEP }).unwrap();
            rules.reload(trigger).unwrap();
            let status = rules.status();
            assert_eq!(status.last_trigger, Some(trigger));
            assert_eq!(status.reloads, i as u64 + 1);
            assert!(!status.failing);
        }
        assert_eq!(first_rule(&rules), "drop-everything");
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // a synchronous test polling the watcher thread
    fn rewriting_the_rules_file_via_rename_switches_live_rules_within_two_seconds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules.toml");
        std::fs::write(&path, KEEP).unwrap();
        let rules = Arc::new(LiveRules::load(&path).unwrap());
        let _watcher = watch(&rules, WATCH_DEBOUNCE).unwrap();
        // Another file in the directory changes nothing.
        std::fs::write(dir.path().join("notes.txt"), "x").unwrap();
        replace_via_rename(&path, DROP);
        let start = Instant::now();
        while first_rule(&rules) != "drop-everything" {
            assert!(
                start.elapsed() < Duration::from_secs(2),
                "the rules did not change within 2 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let status = rules.status();
        assert_eq!(status.last_trigger, Some(Trigger::FileWatch));
        assert_eq!(status.reloads, 1, "a burst of events reloads once");
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // a synchronous test polling the watcher thread
    fn watched_broken_rewrite_keeps_old_rules_and_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules.toml");
        std::fs::write(&path, KEEP).unwrap();
        let rules = Arc::new(LiveRules::load(&path).unwrap());
        let _watcher = watch(&rules, Duration::from_millis(50)).unwrap();
        replace_via_rename(&path, "[[rule]]\nname = \"x\"\nsample_rate = 0\n");
        let start = Instant::now();
        while rules.status().failures == 0 {
            assert!(
                start.elapsed() < Duration::from_secs(2),
                "no reload attempt seen"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(first_rule(&rules), "keep-everything");
        let failure = rules.status().last_error.unwrap();
        assert_eq!(failure.line, Some(3));
        assert_eq!(failure.trigger, Trigger::FileWatch);
    }

    #[test]
    fn shadow_rules_reload_with_the_live_rules_and_fail_on_their_own() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("rules.toml");
        let shadow = dir.path().join("candidate.toml");
        std::fs::write(&live, KEEP).unwrap();
        std::fs::write(&shadow, DROP).unwrap();
        let rules = LiveRules::load_with_shadow(&live, Some(&shadow)).unwrap();
        let shadow_first = |r: &LiveRules| {
            r.shadow_snapshot()
                .and_then(|s| s.rules().next().map(|r| r.rule.name().to_string()))
        };
        assert_eq!(shadow_first(&rules).as_deref(), Some("drop-everything"));
        std::fs::write(&shadow, KEEP).unwrap();
        rules.reload(Trigger::Api).unwrap();
        assert_eq!(shadow_first(&rules).as_deref(), Some("keep-everything"));
        std::fs::write(&shadow, "not toml [").unwrap();
        // The live rules still reload; the shadow keeps its last good set.
        rules.reload(Trigger::Api).unwrap();
        assert_eq!(shadow_first(&rules).as_deref(), Some("keep-everything"));
        let status = rules.status();
        assert!(status.shadow_last_error.is_some());
        assert!(!status.failing);
    }
}
