//! The `polykv` binary: parses arguments and calls into the crates.

mod allocator;
mod bench;
mod cluster;
mod upgrade;
mod verbs;

use anyhow::Context;
use clap::{Parser, Subcommand};
use polykv_server::cli::ConfigArgs;

/// mimalloc instead of glibc's malloc: in alternating A/B runs (docs/performance.md) the server
/// answered 9–15 % more nmdb GETs and SETs at depth 1. `MIMALLOC_ALLOW_LARGE_OS_PAGES=1` in the
/// environment also backs the heap with transparent huge pages (docs/operations.md).
#[global_allocator]
static ALLOCATOR: allocator::Mimalloc = allocator::Mimalloc;

#[derive(Parser)]
#[command(
    name = "polykv",
    version,
    about = "One durable server for five legacy key-value wire protocols"
)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    /// Run the server (every enabled protocol on its port; data in ./polykv-data by default).
    Serve(#[command(flatten)] ConfigArgs),
    #[command(flatten)]
    Client(verbs::Verb),
    /// Load generator: the same load against one or more servers, with a ratio table.
    Bench(bench::BenchArgs),
    /// Hot upgrade of the running server: a new binary takes over its listeners and connections.
    Upgrade(upgrade::UpgradeArgs),
    /// The replicated cluster: status, add or remove a member (through a node's admin API).
    Cluster(cluster::ClusterArgs),
    /// Print the effective configuration (defaults, file, environment and flags merged) as TOML.
    Config {
        /// Print the reference of every setting (Markdown) instead.
        #[arg(long)]
        reference: bool,
        #[command(flatten)]
        args: ConfigArgs,
    },
}

fn main() -> std::process::ExitCode {
    allocator::configure();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("polykv: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Commands::Bench(args) => bench::bench(args),
        Commands::Cluster(args) => cluster::run(args),
        Commands::Client(verb) => verbs::run(verb),
        Commands::Upgrade(args) => upgrade::upgrade(args),
        Commands::Config {
            reference: true, ..
        } => {
            print!("{}", polykv_server::config::reference_markdown());
            Ok(())
        }
        Commands::Config { args, .. } => {
            let config = args.load()?;
            print!("{}", config.to_toml());
            Ok(())
        }
        Commands::Serve(args) => {
            let config = args.load()?;
            allocator::start_trimmer().context("starting the allocator's trimmer thread")?;
            // The new binary of a hot upgrade is told so by its parent; its own children are not.
            let takeover = std::env::var_os(polykv_server::upgrade::HANDOVER_ENV);
            std::env::remove_var(polykv_server::upgrade::HANDOVER_ENV);
            let takeover_version = std::env::var(polykv_server::upgrade::HANDOVER_VERSION_ENV)
                .ok()
                .and_then(|v| v.parse().ok());
            std::env::remove_var(polykv_server::upgrade::HANDOVER_VERSION_ENV);
            let launch = polykv_server::server::Launch {
                args: std::env::args_os().skip(1).collect(),
                takeover: takeover.map(std::path::PathBuf::from),
                takeover_version,
            };
            polykv_server::logging::init(&config.log);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("polykv-worker")
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(polykv_server::server::serve(config, launch))?;
            Ok(())
        }
    }
}
