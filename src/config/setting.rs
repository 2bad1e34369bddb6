//! One setting as read from the layered sources, and the list of problems found in them.
//!
//! A plain `serde` derive stops at the first bad value. Here every field of a section
//! is a [`Setting`], which keeps its own failure instead of failing the section, and
//! [`Problems`] gathers those failures, each under its key, so one start-up reports
//! everything that is wrong.

use std::fmt::Display;

use figment::error::{Actual, Kind};
use figment::value::Value;
use serde::Deserialize;
use serde::de::{DeserializeOwned, Deserializer};

use super::env::Overrides;

/// A value written as text and read by its type's [`FromText`], e.g. `"30m"` or
/// `"Site Name <news@example.org>"`.
pub(super) struct Text<T>(pub T);

/// How a type is read from the text written in the file or an environment variable.
pub(super) trait FromText: Sized {
    /// The value `text` stands for, or a sentence saying what to write instead.
    fn from_text(text: &str) -> Result<Self, String>;
}

impl<'de, T: FromText> Deserialize<'de> for Text<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        T::from_text(&text)
            .map(Text)
            .map_err(serde::de::Error::custom)
    }
}

/// One key's value, or why it could not be read (kept, not raised, so the rest of
/// its section is still read and checked).
pub(super) struct Setting<T>(Result<T, Unread>);

/// A value that did not fit its key's type.
struct Unread {
    value: Value,
    error: figment::Error,
}

impl<T> Setting<T> {
    fn read(value: Value) -> Setting<T>
    where
        T: DeserializeOwned,
    {
        Setting(
            value
                .deserialize::<T>()
                .map_err(|error| Unread { value, error }),
        )
    }
}

/// An optional key left out reads as its type's empty value.
impl<T: Default> Default for Setting<T> {
    fn default() -> Self {
        Setting(Ok(T::default()))
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Setting<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        <Value as Deserialize>::deserialize(deserializer).map(Setting::read)
    }
}

/// Every problem found so far, one sentence each, starting with its key.
pub(super) struct Problems<'a> {
    list: Vec<String>,
    env: &'a Overrides,
}

impl<'a> Problems<'a> {
    /// An empty list; `env` tells which keys came from `HERALD__…` variables.
    pub(super) fn new(env: &'a Overrides) -> Problems<'a> {
        Problems {
            list: Vec::new(),
            env,
        }
    }

    /// Whether nothing was found wrong.
    pub(super) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The problems, in the order they were found.
    pub(super) fn into_list(self) -> Vec<String> {
        self.list
    }

    /// Records `message` under `key`, naming the environment variable that set it.
    pub(super) fn push(&mut self, key: &str, message: impl Display) {
        let setting = key.split('[').next().unwrap_or(key);
        match self.env.variable(setting) {
            Some(variable) => self
                .list
                .push(format!("{key}: {message} (from {variable})")),
            None => self.list.push(format!("{key}: {message}")),
        }
    }

    /// The value of `key`, or `None` with the problem recorded.
    pub(super) fn take<T: DeserializeOwned>(
        &mut self,
        key: &str,
        setting: Setting<T>,
    ) -> Option<T> {
        let unread = match setting.0 {
            Ok(value) => return Some(value),
            Err(unread) => unread,
        };
        if self.env.variable(key).is_some() {
            // An environment variable is text: "2525", "true" or "a, b" stand for the
            // number, yes/no or list the key holds, as they would be written in the file.
            if let Some(value) = retyped(&unread.value).find_map(|v| v.deserialize::<T>().ok()) {
                return Some(value);
            }
        }
        self.push(key, describe(&unread.error));
        None
    }

    /// `value` read as `key`'s type, or `None` with the problem recorded.
    pub(super) fn value<T: DeserializeOwned>(&mut self, key: &str, value: Value) -> Option<T> {
        self.take(key, Setting::read(value))
    }

    /// The value of a key written as text (see [`Text`]).
    pub(super) fn text<T: FromText>(&mut self, key: &str, setting: Setting<Text<T>>) -> Option<T> {
        self.take(key, setting).map(|Text(value)| value)
    }

    /// The items of a list of keys written as text; each bad item is recorded under
    /// its index (`key[2]`).
    pub(super) fn list<T: FromText>(
        &mut self,
        key: &str,
        setting: Setting<Vec<Setting<Text<T>>>>,
    ) -> Option<Vec<T>> {
        let items = self.take(key, setting)?;
        let mut all_read = true;
        let values = items
            .into_iter()
            .enumerate()
            .filter_map(|(j, item)| {
                let value = self.text(&format!("{key}[{j}]"), item);
                all_read &= value.is_some();
                value
            })
            .collect();
        all_read.then_some(values)
    }

    /// `result`'s value, or `None` with its message recorded under `key`.
    pub(super) fn check<T>(&mut self, key: &str, result: Result<T, String>) -> Option<T> {
        result.map_err(|message| self.push(key, message)).ok()
    }

    /// Reads section `name` of the merged layers as `T` (see [`Problems::table`]).
    pub(super) fn section<T: DeserializeOwned>(&mut self, root: &Value, name: &str) -> Option<T> {
        self.table(name, root.find_ref(name)?.clone())
    }

    /// Reads the table `value` as `T`. Each key `T` does not know is recorded (with the
    /// keys it does) and left out, so the known ones are still read and checked.
    pub(super) fn table<T: DeserializeOwned>(&mut self, key: &str, mut value: Value) -> Option<T> {
        loop {
            let error = match value.deserialize::<T>() {
                Ok(table) => return Some(table),
                Err(error) => error,
            };
            match (&error.kind, &mut value) {
                (Kind::UnknownField(name, known), Value::Dict(_, dict)) => {
                    let known = known.join(", ");
                    if key.is_empty() {
                        self.push(name, format!("unknown section (known sections: {known})"));
                    } else {
                        self.push(
                            &format!("{key}.{name}"),
                            format!("unknown key (known keys here: {known})"),
                        );
                    }
                    dict.remove(name);
                }
                _ => {
                    self.push(key, describe(&error));
                    return None;
                }
            }
        }
    }
}

/// What an environment variable's text may stand for, tried in order after the text
/// itself did not fit: a number, `true`/`false`, a comma-separated list.
fn retyped(value: &Value) -> impl Iterator<Item = Value> {
    let mut candidates = Vec::new();
    if let Value::String(tag, text) = value {
        let trimmed = text.trim();
        if let Ok(n) = trimmed.parse::<u64>() {
            candidates.push(Value::from(n));
        } else if let Ok(n) = trimmed.parse::<i64>() {
            candidates.push(Value::from(n));
        } else if let Ok(n) = trimmed.parse::<f64>() {
            candidates.push(Value::from(n));
        }
        if let Ok(b) = trimmed.parse::<bool>() {
            candidates.push(Value::from(b));
        }
        let items = text
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(|item| Value::from(item.to_string()))
            .collect();
        candidates.push(Value::Array(*tag, items));
    }
    candidates.into_iter()
}

/// A sentence for a value that did not fit its key, in the terms of the file.
fn describe(error: &figment::Error) -> String {
    match &error.kind {
        Kind::Message(message) => message.clone(),
        Kind::InvalidType(actual, expected) | Kind::InvalidValue(actual, expected) => {
            format!("{} is not {}", shown(actual), wanted(expected))
        }
        Kind::UnknownVariant(name, known) => {
            format!("\"{name}\" is not one of {}", known.join(", "))
        }
        Kind::UnknownField(name, known) => format!(
            "unknown key \"{name}\" (known keys here: {})",
            known.join(", ")
        ),
        Kind::MissingField(name) => format!("\"{name}\" is missing"),
        other => other.to_string(),
    }
}

/// A value as it would be written in the file.
fn shown(actual: &Actual) -> String {
    match actual {
        Actual::Str(text) => format!("{text:?}"),
        Actual::Unsigned(n) => n.to_string(),
        Actual::Signed(n) => n.to_string(),
        Actual::Float(n) => n.to_string(),
        Actual::Bool(b) => b.to_string(),
        Actual::Seq => "a list".into(),
        Actual::Map => "a table".into(),
        other => other.to_string(),
    }
}

/// What serde's name of a type means to someone writing the file.
fn wanted(expected: &str) -> String {
    match expected {
        "u16" => "a whole number from 0 to 65535".into(),
        "u32" => "a whole number from 0 to 4294967295".into(),
        "u64" | "usize" | "i64" => "a whole number".into(),
        "f64" | "f32" => "a number".into(),
        "a boolean" => "true or false".into(),
        "a string" => "text (in quotes)".into(),
        "a sequence" => "a list".into(),
        "a map" => "a table".into(),
        other if other.starts_with("struct ") => "a table".into(),
        other => other.into(),
    }
}
