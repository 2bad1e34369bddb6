//! `HERALD__SECTION__KEY` environment variables, the last configuration layer.
//!
//! figment's own `Env` provider parses each value as it sees fit: `007` becomes the
//! number 7 and `[x]` a list, which would change a password or a link secret. This one
//! hands every value over as the text it is; each key's type then reads it (see
//! `Problems::take`). It also takes its variables as given, so tests pass their own.

use figment::value::{Dict, Map, Value};
use figment::{Error, Metadata, Profile, Provider};

/// The prefix every override starts with; `__` then separates section and key.
const PREFIX: &str = "HERALD__";

/// The `HERALD__…` variables of one environment.
pub(super) struct Overrides {
    /// (key path, lower-cased; the variable's name; its value), in the order given.
    entries: Vec<(Vec<String>, String, String)>,
}

impl Overrides {
    /// Keeps the `HERALD__…` variables of `env` and ignores the rest.
    pub(super) fn new(env: impl IntoIterator<Item = (String, String)>) -> Overrides {
        let entries = env
            .into_iter()
            .filter_map(|(name, value)| {
                let path = name
                    .strip_prefix(PREFIX)?
                    .split("__")
                    .map(str::to_ascii_lowercase)
                    .collect();
                Some((path, name, value))
            })
            .collect();
        Overrides { entries }
    }

    /// The variable that set `key` (such as `smtp.port`), if one did.
    pub(super) fn variable(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .rev()
            .find(|(path, _, _)| path.join(".") == key)
            .map(|(_, name, _)| name.as_str())
    }
}

impl Provider for Overrides {
    fn metadata(&self) -> Metadata {
        Metadata::named("HERALD__ environment variables")
    }

    fn data(&self) -> Result<Map<Profile, Dict>, Error> {
        let mut root = Dict::new();
        for (path, _, value) in &self.entries {
            insert(&mut root, path, Value::from(value.clone()));
        }
        Ok(Profile::Default.collect(root))
    }
}

/// Sets `path` in `dict` to `value`, making the tables on the way (a later variable
/// replaces what an earlier one set there).
fn insert(dict: &mut Dict, path: &[String], value: Value) {
    match path {
        [] => {}
        [key] => {
            dict.insert(key.clone(), value);
        }
        [key, rest @ ..] => {
            let entry = dict
                .entry(key.clone())
                .or_insert_with(|| Value::from(Dict::new()));
            if !matches!(entry, Value::Dict(..)) {
                *entry = Value::from(Dict::new());
            }
            if let Value::Dict(_, inner) = entry {
                insert(inner, rest, value);
            }
        }
    }
}
