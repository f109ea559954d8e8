//! The reference: every setting's path, flag, variable, default and documentation, from the
//! configuration's defaults and its fields' doc comments.

use super::{Config, Settings};

/// Every setting's path and documentation, from the doc comments of the settings' fields.
pub fn docs() -> Vec<(String, String)> {
    let mut out = Vec::new();
    Config::document("", "", &[], &mut out);
    out
}

/// One configuration field, as a path into the TOML tree.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    /// Dotted path, e.g. `nmdb.port`.
    pub path: String,
    /// CLI flag without dashes, e.g. `nmdb-port`.
    pub flag: String,
    /// Environment variable, e.g. `POLYKV_NMDB_PORT`.
    pub env: String,
    pub default: toml::Value,
    pub doc: String,
}

/// Every leaf field of the configuration, in declaration order.
pub fn fields() -> Vec<Field> {
    let defaults =
        toml::Value::try_from(Config::default()).unwrap_or(toml::Value::Table(Default::default()));
    let docs = docs();
    let mut out = Vec::new();
    collect_leaves(&defaults, "", &docs, &mut out);
    out
}

fn collect_leaves(
    value: &toml::Value,
    prefix: &str,
    docs: &[(String, String)],
    out: &mut Vec<Field>,
) {
    let toml::Value::Table(table) = value else {
        return;
    };
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        if value.is_table() {
            collect_leaves(value, &path, docs, out);
            continue;
        }
        let flag = path.replace(['.', '_'], "-");
        let env = format!("POLYKV_{}", path.replace('.', "_").to_uppercase());
        let doc = docs
            .iter()
            .find(|(p, _)| *p == path)
            .map_or_else(String::new, |(_, d)| d.clone());
        out.push(Field {
            path,
            flag,
            env,
            default: value.clone(),
            doc,
        });
    }
}

/// The configuration reference as a Markdown table (kept in `docs/configuration.md`).
pub fn reference_markdown() -> String {
    let mut out = String::from(
        "| Setting (TOML path) | Default | Flag | Environment | Meaning |\n|---|---|---|---|---|\n",
    );
    for f in fields() {
        let default = match &f.default {
            toml::Value::String(s) if s.is_empty() => "(empty)".to_string(),
            toml::Value::String(s) => format!("`{s}`"),
            other => format!("`{other}`"),
        };
        out.push_str(&format!(
            "| `{}` | {} | `--{}` | `{}` | {} |\n",
            f.path, default, f.flag, f.env, f.doc
        ));
    }
    out
}
