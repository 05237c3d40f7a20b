//! [`PolicyWatcher`]: a limiter's policies reloaded from a TOML file when it changes (users
//! read `docs/policies.md`, "Changing limits at run time").
//!
//! The file's directory is watched (with `notify`: inotify on Linux), not the file, so every
//! way a file changes in production is seen: written in place, an editor's write to a
//! temporary file renamed over it, a symlink swapped (of the file, or of a directory on its
//! path, as `ln -sfn v2 current` does), and a Kubernetes ConfigMap volume, whose `..data` link
//! is swapped to a new directory. Whatever happened in those directories, the file is read
//! again, and applied only when its text changed. Changes within [`SETTLE`] of each other
//! (at most [`SETTLE_MAX`] in all) are read once, after the last. After each read the
//! directories are watched again, since a swapped link leads elsewhere.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use notify::{EventKind, RecursiveMode, Watcher};
use parking_lot::Mutex;

use crate::store::Store;
use crate::{ConfigError, Limiter, Policies};

/// How long the directories must be quiet before the file is read.
pub(crate) const SETTLE: Duration = Duration::from_millis(100);
/// The longest a stream of changes delays the read.
pub(crate) const SETTLE_MAX: Duration = Duration::from_secs(1);

/// Watches a policy file and reloads a [`Limiter`]'s policies (and so its layer's) when the
/// file changes: [`Limiter::reload`] with [`Policies::from_file`]. A file that does not load
/// (unreadable, invalid TOML, a bad rule) keeps the policies in force: the error, which names
/// the file, the rule and the field, is logged once (at `warn`, until the file changes again)
/// and counted in `tollgate_policy_reloads_total{outcome="rejected"}`; the next good file is
/// applied, logged at `info` as `policies reloaded from <file>: N rules`. Watching stops when
/// the watcher is dropped. It runs on a thread of its own (no runtime needed).
///
/// Start it right after building the limiter from the same file: the file's text then is
/// taken as the one in force. A signal handler (say `SIGHUP`) calls
/// [`reload`](Self::reload) to read the file again whatever changed.
///
/// ```no_run
/// use tollgate::{Limiter, Policies, PolicyWatcher};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let path = "/etc/tollgate/limits.toml";
/// let limiter = Limiter::builder().policies(Policies::from_file(path)?).build()?;
/// let watcher = PolicyWatcher::new(limiter.clone(), path)?;
/// // ... serve with the limiter, or a layer built from it; keep `watcher` alive.
/// # drop(watcher);
/// # Ok(())
/// # }
/// ```
#[must_use = "the file is watched while the watcher lives"]
pub struct PolicyWatcher {
    loader: Arc<Loader>,
    events: mpsc::Sender<Message>,
}

enum Message {
    Changed,
    Stop,
}

/// Reads the file and applies it: shared by the watching thread and [`PolicyWatcher::reload`].
struct Loader {
    path: PathBuf,
    apply: Box<dyn Fn(Policies) -> Result<(), ConfigError> + Send + Sync>,
    state: Mutex<Last>,
}

/// The file's text as last read, and the error last logged.
#[derive(Default)]
struct Last {
    text: Option<Vec<u8>>,
    error: Option<String>,
}

impl PolicyWatcher {
    /// Watches `path` for `limiter`.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Unreadable`], naming the path, when its directory cannot be watched
    /// (it does not exist, or the process may not read it, or it is out of inotify watches).
    pub fn new<St: Store>(
        limiter: Limiter<St>,
        path: impl Into<PathBuf>,
    ) -> Result<Self, ConfigError> {
        let path = absolute(path.into());
        let shown = path.display().to_string();
        let unreadable = |e: &dyn std::fmt::Display| {
            ConfigError::Unreadable {
                message: format!("cannot watch it: {e}"),
            }
            .at(&shown)
        };
        let (events, received) = mpsc::channel();
        let sender = events.clone();
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<_>| {
            // Reading the file is an access too: only changes count.
            let changed = match event {
                Ok(notify::Event { kind, .. }) => !matches!(kind, EventKind::Access(_)),
                Err(_) => true,
            };
            if changed {
                let _ = sender.send(Message::Changed);
            }
        })
        .map_err(|e| unreadable(&e))?;
        let mut watched = Vec::new();
        rewatch(&mut watcher, &path, &mut watched).map_err(|e| unreadable(&e))?;
        let loader = Arc::new(Loader {
            path,
            apply: Box::new(move |policies| limiter.reload(policies)),
            state: Mutex::new(Last::default()),
        });
        loader.state.lock().text = std::fs::read(&loader.path).ok();
        let watching = Arc::clone(&loader);
        std::thread::Builder::new()
            .name("tollgate-watch".into())
            .spawn(move || watch(watching, watcher, watched, received))
            .map_err(|e| unreadable(&e))?;
        Ok(Self { loader, events })
    }

    /// Reads the file now and applies it, changed or not (what `SIGHUP` does), logged and
    /// counted as a change is. Returns the number of rules now in force.
    ///
    /// # Errors
    ///
    /// The file's error (the policies in force stay).
    pub fn reload(&self) -> Result<usize, ConfigError> {
        self.loader
            .load(true)
            .unwrap_or_else(|| unreachable!("a forced load loads"))
    }

    /// The file watched.
    pub fn path(&self) -> &Path {
        &self.loader.path
    }
}

impl Drop for PolicyWatcher {
    fn drop(&mut self) {
        let _ = self.events.send(Message::Stop);
    }
}

impl std::fmt::Debug for PolicyWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyWatcher")
            .field("path", &self.loader.path)
            .finish_non_exhaustive()
    }
}

impl Loader {
    /// Reads the file and applies it when its text changed (or `always`); `None` when it did
    /// not change.
    fn load(&self, always: bool) -> Option<Result<usize, ConfigError>> {
        let mut last = self.state.lock();
        let text = std::fs::read(&self.path).ok();
        // Unchanged (or still missing): nothing to apply, nothing new to log or count.
        if !always && text == last.text {
            return None;
        }
        let shown = self.path.display().to_string();
        let result = match Policies::from_file(&self.path) {
            Ok(policies) => {
                let rules = policies.rule_count();
                // Counted by the limiter, applied or rejected.
                (self.apply)(policies)
                    .map(|()| rules)
                    .map_err(|e| e.at(&shown))
            }
            Err(error) => {
                crate::telemetry::policies_reloaded(false);
                Err(error)
            }
        };
        last.text = text;
        match &result {
            Ok(rules) => {
                last.error = None;
                tracing::info!("policies reloaded from {shown}: {rules} rules");
            }
            Err(error) => {
                let message = error.to_string();
                if last.error.as_deref() != Some(message.as_str()) {
                    tracing::warn!("policies not reloaded, the old ones stay: {message}");
                    last.error = Some(message);
                }
            }
        }
        Some(result)
    }
}

/// The watching thread: waits for a change, lets the directories settle, reads the file,
/// watches the directories again; until the watcher is dropped.
fn watch(
    loader: Arc<Loader>,
    mut watcher: notify::RecommendedWatcher,
    mut watched: Vec<PathBuf>,
    events: mpsc::Receiver<Message>,
) {
    while let Ok(Message::Changed) = events.recv() {
        let first = Instant::now();
        loop {
            let wait = SETTLE.min(SETTLE_MAX.saturating_sub(first.elapsed()));
            match events.recv_timeout(wait) {
                Ok(Message::Changed) if first.elapsed() < SETTLE_MAX => {}
                Ok(Message::Changed) | Err(RecvTimeoutError::Timeout) => break,
                Ok(Message::Stop) | Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        if let Err(error) = rewatch(&mut watcher, &loader.path, &mut watched) {
            tracing::warn!(path = %loader.path.display(), %error, "cannot watch the policy file's directory");
        }
        let _ = loader.load(false);
    }
}

/// Watches the directories where a change to `path` shows: its own, the one its target is
/// in, and the one holding each link on the way (the link may be swapped).
fn rewatch(
    watcher: &mut notify::RecommendedWatcher,
    path: &Path,
    watched: &mut Vec<PathBuf>,
) -> notify::Result<()> {
    for dir in watched.drain(..) {
        let _ = watcher.unwatch(&dir);
    }
    let mut dirs: Vec<PathBuf> = Vec::new();
    let mut add = |dir: Option<&Path>| {
        if let Some(dir) = dir.filter(|d| !d.as_os_str().is_empty())
            && !dirs.iter().any(|d| d == dir)
        {
            dirs.push(dir.to_owned());
        }
    };
    add(path.parent());
    if let Ok(target) = std::fs::canonicalize(path) {
        add(target.parent());
    }
    for ancestor in path.ancestors().skip(1) {
        if std::fs::symlink_metadata(ancestor).is_ok_and(|m| m.file_type().is_symlink()) {
            add(ancestor.parent());
        }
    }
    let mut first_error = None;
    for dir in dirs {
        match watcher.watch(&dir, RecursiveMode::NonRecursive) {
            Ok(()) => watched.push(dir),
            Err(error) => {
                first_error.get_or_insert(error);
            }
        }
    }
    match (first_error, watched.is_empty()) {
        (Some(error), true) => Err(error),
        _ => Ok(()),
    }
}

/// `path` from the current directory, when relative.
fn absolute(path: PathBuf) -> PathBuf {
    std::path::absolute(&path).unwrap_or(path)
}
