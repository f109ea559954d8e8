//! Start-up and shutdown of the daemon.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use polykv_engine::Engine;
use tokio::net::TcpListener;
use tokio::signal::unix::SignalKind;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::admin::{self, AdminState};
use crate::config::Config;
use crate::runtime::{Runtime, ServerError};
use crate::session::ListenerContext;
use crate::{services, ReadOnly};

/// Holds the data directory's lock for the life of the server.
struct DirLock {
    _file: File,
}

fn lock_data_dir(dir: &Path) -> Result<DirLock, ServerError> {
    std::fs::create_dir_all(dir).map_err(|source| ServerError::DataDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let lock = dir.join("polykv.lock");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock)
        .map_err(|source| ServerError::DataDir {
            path: lock.clone(),
            source,
        })?;
    if file.try_lock().is_err() {
        let holder = std::fs::read_to_string(&lock)
            .ok()
            .map(|pid| pid.trim().to_string())
            .filter(|pid| !pid.is_empty())
            .map_or_else(String::new, |pid| format!(" (pid {pid})"));
        return Err(ServerError::Locked {
            path: dir.to_path_buf(),
            lock,
            holder,
        });
    }
    let _ = file.set_len(0);
    let _ = write!(file, "{}", std::process::id());
    Ok(DirLock { _file: file })
}

/// Runs the server until SIGTERM or SIGINT, then shuts down gracefully.
pub async fn run(config: Config) -> Result<(), ServerError> {
    // Signal handlers first: a SIGTERM that arrives while the listeners start must still shut
    // down cleanly instead of killing the process.
    let watch = |kind: SignalKind, signal: &'static str| {
        tokio::signal::unix::signal(kind).map_err(|source| ServerError::Signal { signal, source })
    };
    let mut term = watch(SignalKind::terminate(), "SIGTERM")?;
    let mut int = watch(SignalKind::interrupt(), "SIGINT")?;
    let mut usr1 = watch(SignalKind::user_defined1(), "SIGUSR1")?;
    let _lock = lock_data_dir(&config.data_dir)?;
    let store_dir = config.data_dir.join("store");
    let engine =
        Engine::open_dir(&store_dir, config.engine.to_engine_config()).map_err(|source| {
            ServerError::Engine {
                path: store_dir.clone(),
                source,
            }
        })?;
    tracing::info!(data_dir = %config.data_dir.display(), "store opened");
    let prometheus = crate::metrics::install();

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let read_only = Arc::new(ReadOnly::new(config.protocols.nmdb.read_only));
    let mut tasks = JoinSet::new();
    let node = if config.cluster.enabled() {
        match crate::cluster::start(&config, &engine, &mut tasks, shutdown_rx.clone()).await {
            Ok(node) => Some(node),
            Err(e) => {
                engine.close();
                return Err(e);
            }
        }
    } else {
        None
    };
    let submitter = match &node {
        Some(node) => crate::submit::Submitter::Cluster {
            engine: engine.clone(),
            node: node.clone(),
            stale_reads: config.cluster.stale_reads,
        },
        None => crate::submit::Submitter::Local(engine.clone()),
    };
    let mut runtime = Runtime {
        context: ListenerContext {
            connections: Arc::new(Semaphore::new(config.max_connections as usize)),
            shutdown: shutdown_rx.clone(),
        },
        engine: engine.clone(),
        submitter,
        read_only: read_only.clone(),
        tasks,
        config: config.clone(),
    };

    if let Some(handle) = prometheus.clone() {
        // The exporter keeps histogram samples until they are aggregated; without a scrape they
        // would pile up, so aggregate them every few seconds.
        let mut shutdown = shutdown_rx.clone();
        runtime.tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => handle.run_upkeep(),
                    _ = shutdown.changed() => return,
                }
            }
        });
    }
    let started = Instant::now();
    // In cluster mode the protocols' keyspaces are created through the cluster, so the
    // listeners start once it has a leader; a signal meanwhile still stops the server.
    let result = tokio::select! {
        result = start_listeners(&mut runtime, prometheus, started) => result,
        _ = term.recv() => Err(ServerError::Other("SIGTERM during start-up".into())),
        _ = int.recv() => Err(ServerError::Other("SIGINT during start-up".into())),
    };
    if let Err(e) = result {
        let _ = shutdown_tx.send(true);
        if let Some(node) = &node {
            node.shutdown().await;
        }
        engine.close();
        return Err(e);
    }

    tracing::info!(version = env!("CARGO_PKG_VERSION"), "polykv ready");
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            _ = int.recv() => { tracing::info!("SIGINT: shutting down"); break; }
            _ = usr1.recv() => {
                read_only.set(true);
                tracing::warn!("SIGUSR1: nmdb is now read-only (turn it off with the admin API)");
            }
        }
    }

    let _ = shutdown_tx.send(true);
    let limit = Duration::from_secs(config.shutdown_timeout_secs);
    let tasks = &mut runtime.tasks;
    if tokio::time::timeout(limit, async { while tasks.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        tracing::warn!(
            seconds = limit.as_secs(),
            "sessions still busy at the shutdown deadline; closing them"
        );
        runtime.tasks.abort_all();
    }
    if let Some(node) = &node {
        node.shutdown().await;
    }
    let syncing = engine.sync().await;
    engine.close();
    match syncing {
        Ok(()) => tracing::info!("store synced; bye"),
        Err(e) => tracing::error!(error = %e, "final sync failed"),
    }
    Ok(())
}

async fn start_listeners(
    runtime: &mut Runtime,
    prometheus: Option<metrics_exporter_prometheus::PrometheusHandle>,
    started: Instant,
) -> Result<(), ServerError> {
    let config = runtime.config.clone();
    // Bind everything before serving anything, so a taken port fails the start cleanly.
    let admin = if config.admin.enabled {
        let addr = config.listen_addr(&config.admin.addr, config.admin.port);
        Some(runtime.bind_tcp("admin http", addr).await?)
    } else {
        None
    };
    services::start_all(runtime).await?;
    if let Some(listener) = admin {
        let token = admin_token(&config, &listener)?;
        let state = AdminState {
            token,
            engine: runtime.engine.clone(),
            submitter: runtime.submitter.clone(),
            prometheus,
            read_only: runtime.read_only.clone(),
            started,
        };
        runtime.tasks.spawn(admin::serve(
            listener,
            state,
            runtime.context.shutdown.clone(),
        ));
    }
    Ok(())
}

/// The admin token: the configured one; or, off loopback, the one kept in the data directory.
fn admin_token(config: &Config, listener: &TcpListener) -> Result<Option<Arc<str>>, ServerError> {
    let loopback = listener
        .local_addr()
        .map(|a| a.ip().is_loopback())
        .unwrap_or(false);
    resolve_admin_token(config, loopback)
}

fn resolve_admin_token(config: &Config, loopback: bool) -> Result<Option<Arc<str>>, ServerError> {
    if !config.admin.token.is_empty() {
        return Ok(Some(Arc::from(config.admin.token.as_str())));
    }
    if loopback {
        return Ok(None);
    }
    let path = config.data_dir.join("admin.token");
    let (token, created) =
        crate::secret::load_or_create(&path, 24).map_err(|source| ServerError::Io {
            what: format!("cannot create the admin token file {}", path.display()),
            source,
        })?;
    if created {
        tracing::warn!(file = %path.display(), "admin listener is not on loopback: generated a bearer token");
    }
    tracing::info!(file = %path.display(), "admin API requires Authorization: Bearer <token from this file>");
    Ok(Some(Arc::from(token.as_str())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn admin_token_rules() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            data_dir: dir.path().to_path_buf(),
            ..Config::default()
        };
        assert_eq!(
            resolve_admin_token(&config, true).unwrap(),
            None,
            "loopback: optional"
        );
        let generated = resolve_admin_token(&config, false).unwrap().unwrap();
        assert_eq!(generated.len(), 48);
        let path = dir.path().join("admin.token");
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            resolve_admin_token(&config, false).unwrap().unwrap(),
            generated,
            "kept across restarts"
        );
        config.admin.token = "configured".into();
        assert_eq!(
            resolve_admin_token(&config, true).unwrap().as_deref(),
            Some("configured")
        );
    }
}
