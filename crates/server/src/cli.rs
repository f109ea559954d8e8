//! Command-line arguments for the configuration: `--config FILE` plus one flag per field,
//! generated from [`crate::config::fields`], each also read from its environment variable.

use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{Arg, ArgMatches, Args, Command, FromArgMatches};

use crate::config::{fields, Config, ConfigError, Origin, Override};

/// `--config` and every per-field flag.
#[derive(Debug, Clone, Default)]
pub struct ConfigArgs {
    pub config_file: Option<PathBuf>,
    pub overrides: Vec<Override>,
}

impl ConfigArgs {
    pub fn load(&self) -> Result<Config, ConfigError> {
        Config::load(self.config_file.as_deref(), &self.overrides)
    }
}

const CONFIG_ARG: &str = "config";

impl FromArgMatches for ConfigArgs {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut args = ConfigArgs {
            config_file: matches.get_one::<PathBuf>(CONFIG_ARG).cloned(),
            overrides: Vec::new(),
        };
        for field in fields() {
            let Some(value) = matches.get_one::<String>(&field.path) else {
                continue;
            };
            let origin = match matches.value_source(&field.path) {
                Some(ValueSource::EnvVariable) => Origin::Env,
                _ => Origin::Flag,
            };
            args.overrides.push(Override {
                path: field.path.clone(),
                value: value.clone(),
                origin,
            });
        }
        Ok(args)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl Args for ConfigArgs {
    fn augment_args(cmd: Command) -> Command {
        let mut cmd = cmd.arg(
            Arg::new(CONFIG_ARG)
                .long("config")
                .env("POLYKV_CONFIG")
                .value_name("FILE")
                .value_parser(clap::value_parser!(PathBuf))
                .help("TOML configuration file (flags and environment override it)"),
        );
        for field in fields() {
            let value_name = match field.default {
                toml::Value::Boolean(_) => "BOOL",
                toml::Value::Integer(_) => "N",
                _ => "TEXT",
            };
            let default = match &field.default {
                toml::Value::String(s) => format!("{s:?}"),
                other => other.to_string(),
            };
            cmd = cmd.arg(
                Arg::new(field.path.clone())
                    .long(field.flag.clone())
                    .env(field.env.clone())
                    .value_name(value_name)
                    .help(format!("{} [default: {default}]", field.doc))
                    .help_heading("Configuration (flag > environment > file > default)"),
            );
        }
        cmd
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}
