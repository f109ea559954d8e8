//! Settings that document themselves: the first paragraph of a field's doc comment is its line
//! in the configuration reference (`polykv config --reference`) and its flag's help, so every
//! setting is documented once, next to its field.
//!
//! [`settings!`](crate::config::settings) declares a settings struct with its defaults and its
//! [`Settings`] implementation. A part that is flattened into its parent's table (a listener's
//! shared settings) is declared `pub flattened struct`: its settings take the parent's path, its
//! docs may name the protocol as `{name}`, and the parent overrides one with a line
//! `` `field`: text `` in the doc comment of the flattened field.

use std::path::PathBuf;

/// A part of the configuration whose settings document themselves.
pub trait Settings {
    /// Appends `(path, documentation)` for every setting of the field at `path` whose doc
    /// comment is `doc`; `title` is the protocol's name where the field belongs to one.
    fn document(path: &str, title: &str, doc: &[&str], out: &mut Vec<(String, String)>);
}

/// The first paragraph of a doc comment as one line, the protocol's name put in for `{name}`.
pub fn summary(doc: &[&str], title: &str) -> String {
    doc.iter()
        .map(|line| line.trim())
        .take_while(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
        .replace("{name}", title)
}

/// The parent's override of a flattened field's documentation: its doc line `` `field`: text ``.
pub fn override_of<'a>(doc: &[&'a str], field: &str) -> Option<&'a str> {
    doc.iter().find_map(|line| {
        line.trim()
            .strip_prefix('`')?
            .strip_prefix(field)?
            .strip_prefix("`: ")
    })
}

/// `path.field`, or `field` at the root.
pub fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

/// The path of the table a flattened field's settings belong to.
pub fn parent(path: &str) -> &str {
    path.rsplit_once('.').map_or("", |(parent, _)| parent)
}

macro_rules! leaves {
    ($($t:ty),*) => {$(
        impl Settings for $t {
            fn document(path: &str, title: &str, doc: &[&str], out: &mut Vec<(String, String)>) {
                out.push((path.to_string(), summary(doc, title)));
            }
        }
    )*};
}

leaves!(bool, u16, u32, u64, String, PathBuf);

/// The text of a `#[doc = "..."]` attribute; nothing for any other attribute.
#[doc(hidden)]
#[macro_export]
macro_rules! __settings_doc {
    (doc = $doc:literal) => {
        Some($doc)
    };
    ($($other:tt)*) => {
        None
    };
}

/// Declares a settings struct: each field with its doc comment (its documentation) and its
/// default, `pub name: Type = default,`.
#[macro_export]
macro_rules! settings {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $(
                $(#[$($attr:tt)*])*
                pub $field:ident: $ty:ty = $default:expr,
            )*
        }
    ) => {
        $(#[$meta])*
        pub struct $name {
            $( $(#[$($attr)*])* pub $field: $ty, )*
        }

        impl Default for $name {
            fn default() -> Self {
                $name { $( $field: $default, )* }
            }
        }

        impl $crate::config::Settings for $name {
            fn document(
                path: &str,
                title: &str,
                _doc: &[&str],
                out: &mut Vec<(String, String)>,
            ) {
                $(
                    let doc: &[Option<&str>] = &[$( $crate::__settings_doc!($($attr)*) ),*];
                    let doc: Vec<&str> = doc.iter().flatten().copied().collect();
                    <$ty as $crate::config::Settings>::document(
                        &$crate::config::settings::join(path, stringify!($field)),
                        title,
                        &doc,
                        out,
                    );
                )*
            }
        }
    };
    (
        $(#[$meta:meta])*
        pub flattened struct $name:ident {
            $(
                $(#[$($attr:tt)*])*
                pub $field:ident: $ty:ty,
            )*
        }
    ) => {
        $(#[$meta])*
        pub struct $name {
            $( $(#[$($attr)*])* pub $field: $ty, )*
        }

        impl $crate::config::Settings for $name {
            fn document(
                path: &str,
                title: &str,
                doc: &[&str],
                out: &mut Vec<(String, String)>,
            ) {
                let parent = $crate::config::settings::parent(path);
                $(
                    let own: &[Option<&str>] = &[$( $crate::__settings_doc!($($attr)*) ),*];
                    let own: Vec<&str> = own.iter().flatten().copied().collect();
                    let overridden = $crate::config::settings::override_of(doc, stringify!($field));
                    <$ty as $crate::config::Settings>::document(
                        &$crate::config::settings::join(parent, stringify!($field)),
                        title,
                        overridden.as_ref().map_or(&own[..], std::slice::from_ref),
                        out,
                    );
                )*
            }
        }
    };
}

/// `a`, `a or b`, `a, b or c`: the choices of a setting, for its error message.
pub fn one_of(choices: &[&str]) -> String {
    match choices.split_last() {
        Some((last, [])) => last.to_string(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// Declares an enum-like setting: each variant with its text in the configuration,
/// `Variant = "text",`. `path` names the setting in the error for any other text.
#[macro_export]
macro_rules! choice {
    (
        $(#[$meta:meta])*
        pub enum $name:ident ($path:literal) {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )*
        }

        impl $name {
            /// Its text in the configuration.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $text, )*
                }
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                match text.as_str() {
                    $( $text => Ok($name::$variant), )*
                    _ => Err(<D::Error as serde::de::Error>::custom(format!(
                        "{} must be {}, not {:?}",
                        $path,
                        $crate::config::settings::one_of(&[$($text),*]),
                        text
                    ))),
                }
            }
        }

        impl $crate::config::Settings for $name {
            fn document(path: &str, title: &str, doc: &[&str], out: &mut Vec<(String, String)>) {
                out.push((path.to_string(), $crate::config::settings::summary(doc, title)));
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_and_overrides() {
        assert_eq!(
            summary(&[" Serve {name}", " over TCP", "", " More."], "nmdb"),
            "Serve nmdb over TCP"
        );
        let doc = [" Shared settings.", " `addr`: Own text (empty = bind)"];
        assert_eq!(override_of(&doc, "addr"), Some("Own text (empty = bind)"));
        assert_eq!(override_of(&doc, "add"), None);
        assert_eq!(override_of(&doc, "port"), None);
        assert_eq!(join("", "bind"), "bind");
        assert_eq!(join("nmdb", "port"), "nmdb.port");
        assert_eq!(parent("nmdb.listener"), "nmdb");
        assert_eq!(parent("protocols"), "");
        assert_eq!(one_of(&["text", "json"]), "text or json");
        assert_eq!(
            one_of(&["stdout", "stderr", "off"]),
            "stdout, stderr or off"
        );
    }
}
