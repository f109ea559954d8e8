//! The protocol wings: one folder per protocol holding its service (its requests mapped onto the
//! engine, its quirks: reply codes, flags, value formats), its configuration section and its
//! start-up. [`protocols!`] lists them once; the configuration tree ([`ProtocolsConfig`]), the
//! reference, [`start_all`] and [`default_ports`] follow from that list.

pub mod jsonkv;
pub mod minority;
pub mod nmdb;
pub mod opencluster;
pub mod smalld;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::config::{Listener, Settings};
use crate::runtime::{Runtime, ServerError};

/// One protocol: its name, its configuration section and its start-up.
///
/// Its section holds the shared listener settings as a field `listener: Listener` (flattened
/// into the section); the protocol list reads their keyspace check and default port from it.
#[allow(async_fn_in_trait)]
pub trait Protocol {
    /// Its configuration section, the prefix of its flags and environment variables: `nmdb`.
    const NAME: &'static str;
    /// Its name in documentation, put in for `{name}` in its listener's docs: `OpenCluster`.
    const TITLE: &'static str = Self::NAME;
    /// Its configuration section.
    type Config: Default + Clone + Serialize + DeserializeOwned + Settings;

    /// Refuses a section that cannot start, beyond its listener's settings (checked for every
    /// protocol); the message names the setting.
    fn validate(_config: &Self::Config) -> Result<(), String> {
        Ok(())
    }

    /// Binds and serves what its section enables; binds nothing when it enables nothing.
    async fn start(runtime: &mut Runtime, config: &Self::Config) -> Result<(), ServerError>;
}

/// Declares the protocols, in start-up order: the order their keyspaces are created on a new
/// store and their listeners are bound.
macro_rules! protocols {
    ($($name:ident: $wing:ty,)*) => {
        /// Every protocol's section of the configuration, flattened into the top level
        /// (`[nmdb]`, `[minority]`, ...).
        #[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
        #[serde(default)]
        pub struct ProtocolsConfig {
            $( pub $name: <$wing as Protocol>::Config, )*
        }

        impl ProtocolsConfig {
            /// Each protocol's validation, in list order.
            pub fn validate(&self) -> Result<(), String> {
                $(
                Listener::validate(&self.$name.listener, <$wing as Protocol>::NAME)?;
                <$wing as Protocol>::validate(&self.$name)?;
            )*
                Ok(())
            }
        }

        impl Settings for ProtocolsConfig {
            fn document(path: &str, _title: &str, _doc: &[&str], out: &mut Vec<(String, String)>) {
                let parent = crate::config::settings::parent(path);
                $(
                    <<$wing as Protocol>::Config as Settings>::document(
                        &crate::config::settings::join(parent, <$wing as Protocol>::NAME),
                        <$wing as Protocol>::TITLE,
                        &[],
                        out,
                    );
                )*
            }
        }

        /// Starts the listeners of every enabled protocol.
        pub async fn start_all(runtime: &mut Runtime) -> Result<(), ServerError> {
            $(
                let config = runtime.config.protocols.$name.clone();
                <$wing as Protocol>::start(runtime, &config).await?;
            )*
            Ok(())
        }

        /// Each protocol's name and default (TCP) port.
        pub fn default_ports() -> Vec<(&'static str, u16)> {
            vec![$(
                (
                    <$wing as Protocol>::NAME,
                    <<$wing as Protocol>::Config as Default>::default().listener.port,
                ),
            )*]
        }

        /// The section names, checked against each protocol's [`Protocol::NAME`].
        #[cfg(test)]
        const SECTIONS: &[(&str, &str)] = &[$( (stringify!($name), <$wing as Protocol>::NAME), )*];
    };
}

protocols! {
    nmdb: nmdb::Wing,
    minority: minority::Wing,
    smalld: smalld::Wing,
    opencluster: opencluster::Wing,
    jsonkv: jsonkv::Wing,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_are_named_after_their_protocols() {
        for (section, name) in SECTIONS {
            assert_eq!(section, name);
        }
        assert_eq!(
            default_ports(),
            [
                ("nmdb", 26010),
                ("minority", 8000),
                ("smalld", 4121),
                ("opencluster", 13600),
                ("jsonkv", 15001)
            ]
        );
    }
}
