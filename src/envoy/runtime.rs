//! [`Runtime`]: where envoyproxy/ratelimit finds its configuration files (`RUNTIME_ROOT`,
//! `RUNTIME_SUBDIRECTORY`, `RUNTIME_APPDIRECTORY`, `RUNTIME_WATCH_ROOT`,
//! `RUNTIME_IGNOREDOTFILES`, `MERGE_DOMAIN_CONFIG`), how their names are made, and the
//! watcher that reloads them into a [`RateLimitService`].

use std::path::{Path, PathBuf};

use super::{Config, ConfigError, RateLimitService};
use crate::store::Store;
use crate::watch::{Source, Watch, absolute, dirs_of};

/// The most bytes read from the configuration files in all (they are an operator's, but a
/// runaway file must not take the process's memory): 64 MiB.
const MAX_BYTES: u64 = 64 << 20;

/// Where the configuration files are, as envoyproxy/ratelimit's settings say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runtime {
    /// `RUNTIME_ROOT` (default `/srv/runtime_data/current`).
    pub root: PathBuf,
    /// `RUNTIME_SUBDIRECTORY` (default empty).
    pub subdirectory: String,
    /// `RUNTIME_APPDIRECTORY` (default `config`).
    pub appdirectory: String,
    /// `RUNTIME_WATCH_ROOT` (default `true`): reload when `root` itself is swapped (a
    /// symlink moved over it), and name files `<appdirectory>.<file>`; `false`: reload on any
    /// change in the configuration directory, and name files `<file>`.
    pub watch_root: bool,
    /// `RUNTIME_IGNOREDOTFILES` (default `false`): skip files and directories whose name
    /// starts with a dot.
    pub ignore_dotfiles: bool,
    /// `MERGE_DOMAIN_CONFIG` (default `false`): a domain in several files is merged.
    pub merge: bool,
}

impl Default for Runtime {
    fn default() -> Self {
        Self {
            root: PathBuf::from("/srv/runtime_data/current"),
            subdirectory: String::new(),
            appdirectory: "config".to_owned(),
            watch_root: true,
            ignore_dotfiles: false,
            merge: false,
        }
    }
}

impl Runtime {
    /// The directory whose files are loaded: `root/subdirectory/appdirectory`.
    pub fn config_dir(&self) -> PathBuf {
        self.root.join(&self.subdirectory).join(&self.appdirectory)
    }

    /// Every configuration file with its name, sorted by name: each regular file under
    /// [`config_dir`](Self::config_dir), whatever its extension, in subdirectories too (a
    /// link to a file is read; a link to a directory is not followed). Named by its path
    /// from the directory, `/` made `.`, with `appdirectory.` before it when `watch_root`.
    /// With `watch_root` and no `subdirectory` there is no file, as for the peer.
    ///
    /// # Errors
    ///
    /// The directory cannot be read (a missing one has no file).
    pub fn files(&self) -> std::io::Result<Vec<(String, PathBuf)>> {
        let mut files = Vec::new();
        if self.watch_root && self.subdirectory.is_empty() {
            return Ok(files);
        }
        let dir = self.config_dir();
        if !dir.exists() {
            return Ok(files);
        }
        let prefix = match self.watch_root {
            true => format!("{}.", self.appdirectory),
            false => String::new(),
        };
        self.walk(&dir, &prefix, &mut files)?;
        files.sort();
        Ok(files)
    }

    fn walk(
        &self,
        dir: &Path,
        prefix: &str,
        files: &mut Vec<(String, PathBuf)>,
    ) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if self.ignore_dotfiles && name.starts_with('.') {
                continue;
            }
            let path = entry.path();
            let kind = entry.file_type()?;
            if kind.is_dir() {
                self.walk(&path, &format!("{prefix}{name}."), files)?;
            } else if kind.is_file()
                || (kind.is_symlink() && std::fs::metadata(&path).is_ok_and(|m| m.is_file()))
            {
                files.push((format!("{prefix}{name}"), path));
            }
        }
        Ok(())
    }

    /// Loads every file into one configuration.
    ///
    /// # Errors
    ///
    /// The first file that does not load (`<name>: <error>`, in the peer's words), or one that
    /// cannot be read.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let texts = self.texts()?;
        Config::from_files(
            texts.iter().map(|(n, t)| (n.as_str(), t.as_str())),
            self.merge,
        )
    }

    fn texts(&self) -> Result<Vec<(String, String)>, ConfigError> {
        let unreadable = |name: &str, error: &dyn std::fmt::Display| {
            ConfigError::new(name, format!("error loading config file: {error}"))
        };
        let dir = self.config_dir();
        let files = self
            .files()
            .map_err(|e| unreadable(&dir.display().to_string(), &e))?;
        let mut total = 0;
        let mut texts = Vec::with_capacity(files.len());
        for (name, path) in files {
            // Read no further than one byte past what is left: a huge file is never held whole.
            let mut bytes = Vec::new();
            std::fs::File::open(&path)
                .and_then(|file| {
                    use std::io::Read as _;
                    file.take(MAX_BYTES - total + 1).read_to_end(&mut bytes)
                })
                .map_err(|e| unreadable(&name, &e))?;
            total += bytes.len() as u64;
            if total > MAX_BYTES {
                return Err(unreadable(
                    &name,
                    &"the configuration files hold more than 64 MiB",
                ));
            }
            let text = String::from_utf8(bytes).map_err(|e| unreadable(&name, &e))?;
            texts.push((name, text));
        }
        Ok(texts)
    }

    /// Watches the files and puts each configuration that loads in force in `service`,
    /// until the watcher is dropped: with `watch_root`, when `root` is swapped; else when
    /// anything in the configuration directory changes. Each load is logged (`Successfully
    /// loaded new configuration` at info, `Error loading new configuration: <name>: <error>`
    /// at warn, the old configuration staying).
    ///
    /// # Errors
    ///
    /// The directories cannot be watched.
    pub fn watch<St: Store>(
        &self,
        service: RateLimitService<St>,
    ) -> Result<RuntimeWatcher, String> {
        let mut runtime = self.clone();
        runtime.root = absolute(runtime.root);
        let source = RuntimeSource {
            runtime,
            apply: Box::new(move |config| service.set_config(config)),
        };
        Ok(RuntimeWatcher {
            _watch: Watch::start(source)?,
        })
    }
}

/// Watches a [`Runtime`]'s files (see [`Runtime::watch`]); stops when dropped.
#[must_use = "the files are watched while the watcher lives"]
pub struct RuntimeWatcher {
    _watch: Watch<RuntimeSource>,
}

impl std::fmt::Debug for RuntimeWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeWatcher").finish_non_exhaustive()
    }
}

struct RuntimeSource {
    runtime: Runtime,
    apply: Box<dyn Fn(Config) + Send + Sync>,
}

impl Source for RuntimeSource {
    fn dirs(&self) -> Vec<PathBuf> {
        match self.runtime.watch_root {
            // The root's own directory: where the root is swapped.
            true => self
                .runtime
                .root
                .parent()
                .map(Path::to_path_buf)
                .into_iter()
                .collect(),
            // The configuration directory, and where its links are swapped.
            false => {
                let mut dirs = dirs_of(&self.runtime.config_dir().join("file"));
                dirs.retain(|d| d.exists());
                dirs
            }
        }
    }

    fn snapshot(&self) -> Option<Vec<u8>> {
        let texts = self.runtime.texts().ok()?;
        let mut snapshot = Vec::new();
        for (name, text) in texts {
            snapshot.extend_from_slice(name.as_bytes());
            snapshot.push(0);
            snapshot.extend_from_slice(text.as_bytes());
            snapshot.push(0);
        }
        Some(snapshot)
    }

    fn apply(&self) -> Result<String, String> {
        match self.runtime.load() {
            Ok(config) => {
                (self.apply)(config);
                super::metrics::config_loaded(true);
                Ok("Successfully loaded new configuration".to_owned())
            }
            Err(error) => {
                super::metrics::config_loaded(false);
                Err(format!("Error loading new configuration: {error}"))
            }
        }
    }
}
