//! The watching itself, whatever is watched: directories watched with `notify`, changes let
//! settle, what they hold read again, and applied when it changed; logged once per error.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use notify::{EventKind, RecursiveMode, Watcher as _};
use parking_lot::Mutex;

/// How long the directories must be quiet before the source is read.
pub(crate) const SETTLE: Duration = Duration::from_millis(100);
/// The longest a stream of changes delays the read.
pub(crate) const SETTLE_MAX: Duration = Duration::from_secs(1);

/// What a watcher watches and applies.
pub(crate) trait Source: Send + Sync + 'static {
    /// The directories where a change shows, now (after a change they are asked again: a
    /// swapped link leads elsewhere).
    fn dirs(&self) -> Vec<PathBuf>;
    /// What the source holds now, to tell whether it changed: `None` when unreadable.
    fn snapshot(&self) -> Option<Vec<u8>>;
    /// Loads and applies it: the line to log, or the error.
    fn apply(&self) -> Result<String, String>;
}

/// A running watch; it stops when dropped.
pub(crate) struct Watch<S> {
    pub(crate) loader: Arc<Loader<S>>,
    events: mpsc::Sender<Message>,
}

enum Message {
    Changed,
    Stop,
}

/// Applies the source: shared by the watching thread and a reload asked for.
pub(crate) struct Loader<S> {
    pub(crate) source: S,
    last: Mutex<Last>,
}

/// The snapshot last applied (or tried), and the error last logged.
#[derive(Default)]
struct Last {
    snapshot: Option<Vec<u8>>,
    error: Option<String>,
}

impl<S: Source> Watch<S> {
    /// Watches `source`'s directories on a thread of its own; what it holds now is taken as
    /// the one in force.
    pub(crate) fn start(source: S) -> Result<Self, String> {
        let (events, received) = mpsc::channel();
        let sender = events.clone();
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<_>| {
            // Reading is an access too: only changes count.
            let changed = match event {
                Ok(notify::Event { kind, .. }) => !matches!(kind, EventKind::Access(_)),
                Err(_) => true,
            };
            if changed {
                let _ = sender.send(Message::Changed);
            }
        })
        .map_err(|e| e.to_string())?;
        let mut watched = Vec::new();
        rewatch(&mut watcher, source.dirs(), &mut watched).map_err(|e| e.to_string())?;
        let loader = Arc::new(Loader {
            last: Mutex::new(Last {
                snapshot: source.snapshot(),
                error: None,
            }),
            source,
        });
        let watching = Arc::clone(&loader);
        std::thread::Builder::new()
            .name("tollgate-watch".into())
            .spawn(move || run(watching, watcher, watched, received))
            .map_err(|e| e.to_string())?;
        Ok(Self { loader, events })
    }
}

impl<S> Drop for Watch<S> {
    fn drop(&mut self) {
        let _ = self.events.send(Message::Stop);
    }
}

impl<S: Source> Loader<S> {
    /// Applies the source when it changed (or `always`): `None` when it did not.
    pub(crate) fn load(&self, always: bool) -> Option<Result<String, String>> {
        let mut last = self.last.lock();
        let snapshot = self.source.snapshot();
        // Unchanged (or still unreadable): nothing to apply, nothing new to log.
        if !always && snapshot == last.snapshot {
            return None;
        }
        let result = self.source.apply();
        last.snapshot = snapshot;
        match &result {
            Ok(line) => {
                last.error = None;
                tracing::info!("{line}");
            }
            Err(message) => {
                if last.error.as_deref() != Some(message.as_str()) {
                    tracing::warn!("{message}");
                    last.error = Some(message.clone());
                }
            }
        }
        Some(result)
    }
}

/// The watching thread: waits for a change, lets the directories settle, watches them again,
/// applies the source; until the watch is dropped.
fn run<S: Source>(
    loader: Arc<Loader<S>>,
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
        if let Err(error) = rewatch(&mut watcher, loader.source.dirs(), &mut watched) {
            tracing::warn!(%error, "cannot watch the directories of what is watched");
        }
        let _ = loader.load(false);
    }
}

/// Watches `dirs` (non-recursively) instead of `watched`.
fn rewatch(
    watcher: &mut notify::RecommendedWatcher,
    dirs: Vec<PathBuf>,
    watched: &mut Vec<PathBuf>,
) -> notify::Result<()> {
    for dir in watched.drain(..) {
        let _ = watcher.unwatch(&dir);
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

/// The directories where a change to `path` shows: its own, the one its target is in, and
/// the one holding each link on the way (the link may be swapped).
pub(crate) fn dirs_of(path: &Path) -> Vec<PathBuf> {
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
    dirs
}

/// `path` from the current directory, when relative.
pub(crate) fn absolute(path: PathBuf) -> PathBuf {
    std::path::absolute(&path).unwrap_or(path)
}
