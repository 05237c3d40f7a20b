//! Which buckets the limiters of this process use on each store, so that two limiters (two
//! layers) on one store with the same key prefix and limit names do not charge the same
//! buckets without saying so.

use std::collections::HashSet;
use std::sync::{LazyLock, Mutex, PoisonError};

use crate::ConfigError;
use crate::policy::Policies;

/// Every claim of every live limiter: (store identity, prefix, endpoint kind, limit).
static CLAIMS: LazyLock<Mutex<HashSet<(usize, String)>>> = LazyLock::new(Mutex::default);

/// The buckets one limiter claims on its store; given back when it is dropped.
#[derive(Debug)]
pub(crate) struct Claims {
    store: usize,
    names: Vec<String>,
}

impl Claims {
    /// Claims the buckets `policies` name under `prefix` on the store `store`.
    ///
    /// # Errors
    ///
    /// When another live limiter on the same store claimed one of them.
    pub(crate) fn take(
        store: usize,
        prefixes: &[Box<str>],
        policies: &Policies,
    ) -> Result<Self, ConfigError> {
        // What a bucket key is made of, besides the client: under the default policy any
        // endpoint (`*`), under a rule the rule; the limit's name and its algorithm.
        let names: Vec<String> = (0..policies.len())
            .flat_map(|i| {
                let entry = policies.entry(i);
                let prefix = &prefixes[i];
                let endpoint = entry
                    .rule
                    .as_deref()
                    .map_or("*".to_owned(), |r| format!("@{r}"));
                entry.limits.iter().map(move |limit| {
                    format!(
                        "{prefix}\0{endpoint}\0{}{}",
                        limit.name(),
                        limit.algorithm().key_suffix()
                    )
                })
            })
            .collect();
        let mut claims = CLAIMS.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(taken) = names
            .iter()
            .find(|n| claims.contains(&(store, (*n).clone())))
        {
            let prefix = taken.split('\0').next().unwrap_or_default();
            let limit = taken.rsplit('\0').next().unwrap_or_default();
            return Err(ConfigError::Invalid {
                field: "key_prefix",
                value: format!("{prefix} (limit {limit})"),
                reason: "another limiter or layer on this store uses this prefix for a limit of \
                         this name: the two would charge the same buckets; give each its own \
                         key_prefix or limit names, or set share_buckets(true) on both",
            });
        }
        for name in &names {
            claims.insert((store, name.clone()));
        }
        Ok(Self { store, names })
    }
}

impl Drop for Claims {
    fn drop(&mut self) {
        let mut claims = CLAIMS.lock().unwrap_or_else(PoisonError::into_inner);
        for name in self.names.drain(..) {
            claims.remove(&(self.store, name));
        }
    }
}
