//! Logging with `tracing`: human-readable by default, JSON on request.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// The filter of the default level: polykv's own crates (`polykv`, `polykv_server`,
/// `polykv_engine`, ...: one prefix covers them all) at INFO, dependencies at WARN, so start-up
/// shows polykv's lines and not the store's internals.
const QUIET_DEFAULT: &str = "warn,polykv=info";

/// The filter for a configured level: the default level is quiet about dependencies; any other
/// level or directive list is taken as written.
fn configured_filter(level: &str) -> String {
    if level == LogConfig::default().level {
        QUIET_DEFAULT.to_string()
    } else {
        level.to_string()
    }
}

/// Installs the global subscriber. `RUST_LOG` overrides the configured level when set.
pub fn init(config: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(configured_filter(&config.level)))
        .unwrap_or_else(|_| EnvFilter::new(QUIET_DEFAULT));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // A second init (tests) is harmless: the first subscriber stays.
    let _ = if config.format == LogFormat::Json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_level_is_quiet_about_dependencies() {
        assert_eq!(configured_filter("info"), QUIET_DEFAULT);
        assert_eq!(configured_filter("debug"), "debug");
        assert_eq!(
            configured_filter("polykv_server=debug,info"),
            "polykv_server=debug,info"
        );
        EnvFilter::try_new(QUIET_DEFAULT).expect("a valid filter");
    }
}
