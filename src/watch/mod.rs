//! [`PolicyWatcher`]: a limiter's policies reloaded from a TOML file when it changes (users
//! read `docs/policies.md`, "Changing limits at run time").
//!
//! The file's directory is watched (with `notify`: inotify on Linux), not the file, so every
//! way a file changes in production is seen: written in place, an editor's write to a
//! temporary file renamed over it, a symlink swapped (of the file, or of a directory on its
//! path, as `ln -sfn v2 current` does), and a Kubernetes ConfigMap volume, whose `..data` link
//! is swapped to a new directory. Whatever happened in those directories, the file is read
//! again, and applied only when its text changed. Changes within 100 ms of each other (at
//! most 1 s in all) are read once, after the last. After each read the directories are
//! watched again, since a swapped link leads elsewhere.

use std::path::{Path, PathBuf};

use crate::store::Store;
use crate::{ConfigError, Limiter, Policies};

mod watching;

pub(crate) use watching::{Source, Watch, absolute, dirs_of};

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
    watch: Watch<PolicyFile>,
}

/// A policy file and the limiter it is applied to.
struct PolicyFile {
    path: PathBuf,
    apply: Box<dyn Fn(Policies) -> Result<(), ConfigError> + Send + Sync>,
    /// The last result, for [`PolicyWatcher::reload`].
    rules: parking_lot::Mutex<Result<usize, ConfigError>>,
}

impl Source for PolicyFile {
    fn dirs(&self) -> Vec<PathBuf> {
        dirs_of(&self.path)
    }

    fn snapshot(&self) -> Option<Vec<u8>> {
        std::fs::read(&self.path).ok()
    }

    fn apply(&self) -> Result<String, String> {
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
        *self.rules.lock() = result.clone();
        match result {
            Ok(rules) => Ok(format!("policies reloaded from {shown}: {rules} rules")),
            Err(error) => Err(format!("policies not reloaded, the old ones stay: {error}")),
        }
    }
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
        let source = PolicyFile {
            path,
            apply: Box::new(move |policies| limiter.reload(policies)),
            rules: parking_lot::Mutex::new(Ok(0)),
        };
        let watch = Watch::start(source).map_err(|e| {
            ConfigError::Unreadable {
                message: format!("cannot watch it: {e}"),
            }
            .at(&shown)
        })?;
        Ok(Self { watch })
    }

    /// Reads the file now and applies it, changed or not (what `SIGHUP` does), logged and
    /// counted as a change is. Returns the number of rules now in force.
    ///
    /// # Errors
    ///
    /// The file's error (the policies in force stay).
    pub fn reload(&self) -> Result<usize, ConfigError> {
        let loader = &self.watch.loader;
        let _ = loader.load(true);
        loader.source.rules.lock().clone()
    }

    /// The file watched.
    pub fn path(&self) -> &Path {
        &self.watch.loader.source.path
    }
}

impl std::fmt::Debug for PolicyWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyWatcher")
            .field("path", &self.path())
            .finish_non_exhaustive()
    }
}
