//! Loading: defaults, then the file, then flags and environment variables; and errors that
//! name the setting.

use std::path::Path;

use serde::Deserialize;

use super::{docs, fields, settings, Config, ConfigError};

/// Where an override came from, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Flag,
    Env,
}

/// A value given by flag or environment for one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    pub path: String,
    pub value: String,
    pub origin: Origin,
}

impl Config {
    /// Builds the effective configuration: defaults, then the file, then the overrides (which
    /// the caller has already resolved as flag-over-environment).
    pub fn load(file: Option<&Path>, overrides: &[Override]) -> Result<Config, ConfigError> {
        let mut tree = toml::Value::try_from(Config::default())
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            let from_file: toml::Value = toml::from_str(&text).map_err(|e| ConfigError::Parse {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
            merge(&mut tree, from_file);
            // Deserializing the defaults with the file over them rejects unknown fields with
            // their names and malformed values, as errors of the file.
            decode(&tree).map_err(|message| ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            })?;
        }
        let fields = fields();
        for o in overrides {
            let field = fields
                .iter()
                .find(|f| f.path == o.path)
                .ok_or_else(|| ConfigError::Invalid(format!("unknown field {}", o.path)))?;
            let value =
                parse_like(&field.default, &o.value).map_err(|expected| ConfigError::Value {
                    field: match o.origin {
                        Origin::Flag => format!("--{}", field.flag),
                        Origin::Env => field.env.clone(),
                    },
                    value: o.value.clone(),
                    origin: match o.origin {
                        Origin::Flag => "command line".into(),
                        Origin::Env => "environment".into(),
                    },
                    expected,
                })?;
            set_path(&mut tree, &o.path, value);
        }
        let config = decode(&tree).map_err(ConfigError::Invalid)?;
        config.validate()?;
        Ok(config)
    }
}

/// Deserializes the configuration tree, with errors that say where, as toml says them.
///
/// serde's `flatten` (each protocol's section holds its listener settings flattened) loses
/// which fields a table expects and where a bad value is; this finds an unknown field itself,
/// naming the fields its table has, and names the setting whose value is refused.
fn decode(tree: &toml::Value) -> Result<Config, String> {
    let paths: Vec<String> = docs().into_iter().map(|(path, _)| path).collect();
    if let Some(message) = unknown_field(tree, "", &paths) {
        return Err(message);
    }
    Config::deserialize(tree.clone()).map_err(|e| {
        let message = e.to_string();
        if message.contains("\nin `") {
            return message;
        }
        // The first setting that alone, over the defaults, is refused.
        let culprit = paths.iter().find(|path| {
            let Some(value) = get_path(tree, path) else {
                return false;
            };
            let Ok(mut alone) = toml::Value::try_from(Config::default()) else {
                return false;
            };
            set_path(&mut alone, path, value.clone());
            Config::deserialize(alone).is_err()
        });
        match culprit {
            Some(path) => format!("{}\nin `{path}`\n", message.trim_end()),
            None => message,
        }
    })
}

/// The first key of `tree` (at `prefix`) that is no setting, in toml's words.
fn unknown_field(tree: &toml::Value, prefix: &str, paths: &[String]) -> Option<String> {
    let toml::Value::Table(table) = tree else {
        return None;
    };
    // The names this table holds, in declaration order.
    let mut names: Vec<&str> = Vec::new();
    for path in paths {
        let rest = if prefix.is_empty() {
            Some(path.as_str())
        } else {
            path.strip_prefix(prefix).and_then(|r| r.strip_prefix('.'))
        };
        if let Some(name) = rest.and_then(|r| r.split('.').next()) {
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    for (key, value) in table {
        if !names.contains(&key.as_str()) {
            let expected = match names.as_slice() {
                [] => "there are no fields".to_string(),
                [one] => format!("expected `{one}`"),
                [one, two] => format!("expected `{one}` or `{two}`"),
                all => format!(
                    "expected one of {}",
                    all.iter()
                        .map(|n| format!("`{n}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            let place = if prefix.is_empty() {
                String::new()
            } else {
                format!("in `{prefix}`\n")
            };
            return Some(format!("unknown field `{key}`, {expected}\n{place}"));
        }
        let child = settings::join(prefix, key);
        let section = format!("{child}.");
        if value.is_table() && paths.iter().any(|p| p.starts_with(&section)) {
            if let Some(message) = unknown_field(value, &child, paths) {
                return Some(message);
            }
        }
    }
    None
}

fn get_path<'a>(tree: &'a toml::Value, path: &str) -> Option<&'a toml::Value> {
    path.split('.').try_fold(tree, |node, part| node.get(part))
}

fn parse_like(default: &toml::Value, raw: &str) -> Result<toml::Value, &'static str> {
    match default {
        toml::Value::Boolean(_) => match raw.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(toml::Value::Boolean(true)),
            "false" | "0" | "no" | "off" => Ok(toml::Value::Boolean(false)),
            _ => Err("true or false"),
        },
        toml::Value::Integer(_) => raw
            .trim()
            .replace('_', "")
            .parse::<i64>()
            .map(toml::Value::Integer)
            .map_err(|_| "an integer"),
        _ => Ok(toml::Value::String(raw.to_string())),
    }
}

fn merge(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(base), toml::Value::Table(over)) => {
            for (key, value) in over {
                match base.get_mut(&key) {
                    Some(slot) if slot.is_table() && value.is_table() => merge(slot, value),
                    _ => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, over) => *base = over,
    }
}

fn set_path(tree: &mut toml::Value, path: &str, value: toml::Value) {
    let mut node = tree;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        let toml::Value::Table(table) = node else {
            return;
        };
        if parts.peek().is_none() {
            table.insert(part.to_string(), value);
            return;
        }
        node = table
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()));
    }
}
