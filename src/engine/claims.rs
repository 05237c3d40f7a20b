//! Which buckets the limiters of this process use on each store, so that two limiters (two
//! layers) on one store with the same key prefix and limit names do not charge the same
//! buckets without saying so.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, PoisonError};

use crate::ConfigError;
use crate::policy::Policies;

/// Every claim of every live limiter: (store identity, prefix, endpoint kind, limit) to the
/// limiter that holds it and how many of its generations do (a reload claims its new
/// policies' buckets before the last generation, which may share them, is gone).
static CLAIMS: LazyLock<Mutex<HashMap<Claimed, Holder>>> = LazyLock::new(Mutex::default);

/// A bucket claimed: (store identity, prefix, endpoint kind, limit).
type Claimed = (usize, String);
/// Who holds a claim: the limiter, and how many of its generations.
type Holder = (usize, usize);

/// The buckets one generation of a limiter claims on its store; given back when it is dropped.
#[derive(Debug)]
pub(crate) struct Claims {
    store: usize,
    names: Vec<String>,
}

impl Claims {
    /// Claims for the limiter `owner` the buckets `policies` name under `prefixes` on the store
    /// `store`.
    ///
    /// # Errors
    ///
    /// When another live limiter on the same store claimed one of them.
    pub(crate) fn take(
        store: usize,
        owner: usize,
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
        if let Some(taken) = names.iter().find(|n| {
            claims
                .get(&(store, (*n).clone()))
                .is_some_and(|&(holder, _)| holder != owner)
        }) {
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
            claims.entry((store, name.clone())).or_insert((owner, 0)).1 += 1;
        }
        Ok(Self { store, names })
    }
}

impl Drop for Claims {
    fn drop(&mut self) {
        let mut claims = CLAIMS.lock().unwrap_or_else(PoisonError::into_inner);
        for name in self.names.drain(..) {
            let key = (self.store, name);
            if let Some((_, held)) = claims.get_mut(&key) {
                *held -= 1;
                if *held == 0 {
                    claims.remove(&key);
                }
            }
        }
    }
}
