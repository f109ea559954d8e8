//! Start-up and shutdown of the daemon.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use polykv_engine::Engine;
use tokio::net::TcpListener;
use tokio::signal::unix::SignalKind;
use tokio::sync::{watch, Semaphore};

use crate::admin::{self, AdminState};
use crate::config::Config;
use crate::runtime::{Runtime, ServerError, Tasks};
use crate::session::ListenerContext;
use crate::upgrade::{self, carry::Carried, carry::Hub, control};
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

/// How the process was started: the arguments a hot upgrade passes on to the new binary, and
/// the handover socket if this process is that new binary.
#[derive(Debug, Clone, Default)]
pub struct Launch {
    pub args: Vec<OsString>,
    pub takeover: Option<PathBuf>,
    /// The newest handover format the old process speaks, as it announced (none: 1).
    pub takeover_version: Option<u16>,
}

/// Runs the server until SIGTERM or SIGINT, then shuts down gracefully.
pub async fn run(config: Config) -> Result<(), ServerError> {
    serve(config, Launch::default()).await
}

/// Opens the engine in the data directory's `store`.
pub fn open_engine(config: &Config) -> Result<Engine, ServerError> {
    let store_dir = config.data_dir.join("store");
    Engine::open_dir(&store_dir, config.engine.to_engine_config()).map_err(|source| {
        ServerError::Engine {
            path: store_dir.clone(),
            source,
        }
    })
}

/// Runs the server (or takes over from the running one) until SIGTERM or SIGINT, or until a
/// hot upgrade hands everything to a new process.
pub async fn serve(config: Config, launch: Launch) -> Result<(), ServerError> {
    // Signal handlers first: a SIGTERM that arrives while the listeners start must still shut
    // down cleanly instead of killing the process.
    let watch = |kind: SignalKind, signal: &'static str| {
        tokio::signal::unix::signal(kind).map_err(|source| ServerError::Signal { signal, source })
    };
    let mut term = watch(SignalKind::terminate(), "SIGTERM")?;
    let mut int = watch(SignalKind::interrupt(), "SIGINT")?;
    let mut usr1 = watch(SignalKind::user_defined1(), "SIGUSR1")?;
    let mut usr2 = watch(SignalKind::user_defined2(), "SIGUSR2")?;
    // A takeover's last step: everything is prepared in the first generation, then the old
    // process is told this one is ready and the commit opens the gate.
    let mut commit = None;
    // Before a takeover, so that nothing of it waits for this (and the store's open is counted).
    let prometheus = crate::metrics::install();
    let (lock, mut carried, mut opened) = match &launch.takeover {
        Some(path) => {
            let received = upgrade::new::take_over(&config, path, launch.takeover_version)
                .await
                .map_err(|reason| {
                    ServerError::Other(format!("upgrade: cannot take over: {reason}"))
                })?;
            tracing::info!(
                listeners = received.carried.listeners.len(),
                sessions = received.carried.sessions.len(),
                "upgrade: received the running server's state; preparing"
            );
            commit = Some((received.commit, Instant::now()));
            let lock = DirLock {
                _file: received.dir_lock,
            };
            (lock, received.carried, Some(received.engine))
        }
        None => {
            // A directory written by a newer format is refused before anything in it is touched.
            crate::format::check(&config.data_dir)?;
            (lock_data_dir(&config.data_dir)?, Carried::default(), None)
        }
    };
    let read_only = Arc::new(ReadOnly::new(config.protocols.nmdb.read_only));
    let started = Instant::now();

    // One serving generation per loop: a rolled-back upgrade starts the next one from the
    // state it carried, exactly as the new process would have.
    loop {
        let engine = match opened.take() {
            Some(engine) => engine,
            None => open_engine(&config)?,
        };
        // A takeover writes nothing in the data directory before the commit.
        if commit.is_none() {
            if let Err(e) = crate::format::record(&config.data_dir) {
                engine.close();
                return Err(e.into());
            }
        }
        tracing::info!(data_dir = %config.data_dir.display(), "store opened");
        upgrade::restore_locks(&engine, &carried.locks);
        let hub = Arc::new(Hub::resuming(std::mem::take(&mut carried)));

        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let (serving_tx, serving_rx) = watch::channel(commit.is_none());
        let mut tasks = Tasks::new(serving_rx.clone());
        if config.cluster.enabled() {
            // The Raft node starts only once the old process has stopped its own: in cluster
            // mode the commit comes before anything is prepared.
            if let Some((pending, since)) = commit.take() {
                if let Err(e) = commit_takeover(pending, since, &lock, &config).await {
                    engine.close();
                    return Err(e);
                }
                serving_tx.send_replace(true);
            }
        }
        let member = if config.cluster.enabled() {
            let started =
                crate::cluster::start(&config, &engine, &mut tasks, &hub, shutdown_rx.clone());
            match started.await {
                Ok(member) => Some(member),
                Err(e) => {
                    engine.close();
                    return Err(e);
                }
            }
        } else {
            None
        };
        let submitter = match &member {
            Some(member) => crate::submit::Submitter::Cluster {
                engine: engine.clone(),
                node: member.node.clone(),
                stale_reads: config.cluster.stale_reads,
            },
            None => crate::submit::Submitter::Local(engine.clone()),
        };
        let bound = member
            .as_ref()
            .and_then(|m| {
                let fd = m.listener.fd.try_clone().ok()?;
                let (name, udp) = (m.listener.name.clone(), m.listener.udp);
                Some(vec![upgrade::carry::CarriedListener { name, udp, fd }])
            })
            .unwrap_or_default();
        let mut runtime = Runtime {
            context: ListenerContext {
                connections: Arc::new(Semaphore::new(config.max_connections as usize)),
                shutdown: shutdown_rx.clone(),
                serving: serving_rx.clone(),
                handover: hub.clone(),
            },
            engine: engine.clone(),
            submitter,
            view: None,
            read_only: read_only.clone(),
            tasks,
            config: config.clone(),
            bound: parking_lot::Mutex::new(bound),
            cluster: member,
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
        // Only the runtime holds the engine from here: a handover must be able to release it.
        drop(engine);
        // In cluster mode the protocols' keyspaces are created through the cluster, so the
        // listeners start once it has a leader; a signal meanwhile still stops the server.
        let starting = Instant::now();
        let result = tokio::select! {
            result = start_listeners(&mut runtime, prometheus.clone(), started) => result,
            _ = term.recv() => Err(ServerError::Other("SIGTERM during start-up".into())),
            _ = int.recv() => Err(ServerError::Other("SIGINT during start-up".into())),
        };
        let result = match (result, commit.take()) {
            (Ok(()), Some((pending, since))) => {
                let ms = starting.elapsed().as_millis() as u64;
                let before_ms = starting.saturating_duration_since(since).as_millis() as u64;
                tracing::info!(ms, before_ms, "upgrade: listeners started");
                commit_takeover(pending, since, &lock, &config).await
            }
            (Err(e), Some((pending, _))) => {
                pending.fail(&e.to_string());
                Err(e)
            }
            (result, None) => result,
        };
        if let Err(e) = result {
            let engine = runtime.engine.clone();
            hub.shut_down();
            let member = runtime.cluster.take();
            drop(runtime);
            let _ = shutdown_tx.send(true);
            if let Some(member) = member {
                member.stop().await;
            }
            engine.close();
            return Err(e);
        }
        // Serving: the carried sessions with work waiting go on, the listeners accept.
        serving_tx.send_replace(true);
        hub.drop_unclaimed();

        tracing::info!(version = env!("CARGO_PKG_VERSION"), "polykv ready");
        loop {
            let upgrade = tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); false }
                _ = int.recv() => { tracing::info!("SIGINT: shutting down"); false }
                _ = usr1.recv() => {
                    read_only.set(true);
                    tracing::warn!("SIGUSR1: nmdb is now read-only (turn it off with the admin API)");
                    continue;
                }
                _ = usr2.recv() => { tracing::info!("SIGUSR2: hot upgrade"); true }
            };
            if !upgrade {
                shut_down(runtime, &shutdown_tx).await;
                return Ok(());
            }
            let request = control::take_request(&config.data_dir);
            let id = request.as_ref().map(|r| r.id.clone());
            let status = |ok, message: String, pid| control::Status {
                id: id.clone(),
                ok,
                message,
                pid,
            };
            let serving = upgrade::old::Serving {
                runtime,
                shutdown: &shutdown_tx,
                dir_lock: &lock._file,
                args: &launch.args,
            };
            match upgrade::old::hand_over(serving, request.and_then(|r| r.binary)).await {
                upgrade::old::Outcome::NotStarted {
                    reason,
                    runtime: back,
                } => {
                    tracing::error!(reason, "upgrade refused; still serving");
                    let pid = std::process::id();
                    control::write_status(&config.data_dir, &status(false, reason, pid));
                    runtime = *back;
                }
                upgrade::old::Outcome::Committed { pid } => {
                    let message = format!("upgraded: pid {pid} serves");
                    control::write_status(&config.data_dir, &status(true, message, pid));
                    // Exit at once: the new process serves from now on, and tearing this one's
                    // runtime down (dropping the parked sessions' tasks: tens of milliseconds
                    // on every core for 10 000) would compete with its first answers. What must
                    // last is written: the store was closed and released, the status file is
                    // in place, the log goes unbuffered to stderr.
                    std::process::exit(0);
                }
                upgrade::old::Outcome::RolledBack {
                    reason,
                    carried: back,
                } => {
                    tracing::error!(reason, "upgrade failed; rolled back, serving on");
                    let message = format!("rolled back: {reason}");
                    let pid = std::process::id();
                    control::write_status(&config.data_dir, &status(false, message, pid));
                    carried = back;
                    // The engine is closed: the next generation reopens it (bounded wait).
                    opened = Some(open_engine_waiting(&config).await?);
                    break;
                }
            }
        }
    }
}

/// A takeover's commit: tells the old process everything is prepared, waits for its go, then
/// records this process as the data directory's server.
async fn commit_takeover(
    pending: upgrade::new::Commit,
    since: Instant,
    lock: &DirLock,
    config: &Config,
) -> Result<(), ServerError> {
    let prepared_ms = since.elapsed().as_millis() as u64;
    pending
        .commit()
        .await
        .map_err(|reason| ServerError::Other(format!("upgrade: cannot take over: {reason}")))?;
    tracing::info!(prepared_ms, "upgrade: committed; serving");
    // The lock file names the serving pid (`polykv upgrade` signals it).
    let _ = lock._file.set_len(0);
    let _ = lock
        ._file
        .write_all_at(std::process::id().to_string().as_bytes(), 0);
    crate::format::record(&config.data_dir)?;
    Ok(())
}

/// Opens the engine, waiting (up to the upgrade timeout) for a process that is letting go of
/// it: after a handover the store may still be closing for a moment.
pub async fn open_engine_waiting(config: &Config) -> Result<Engine, ServerError> {
    let deadline = Instant::now() + Duration::from_secs(config.upgrade_timeout_secs.max(1));
    let mut retries = 0;
    loop {
        match open_engine(config) {
            Ok(engine) => {
                if retries > 0 {
                    tracing::info!(retries, "upgrade: the store was still held; opened");
                }
                return Ok(engine);
            }
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => {
                retries += 1;
                tokio::time::sleep(Duration::from_millis(20)).await
            }
        }
    }
}

/// Graceful shutdown: stop accepting, let sessions finish (bounded), sync, close.
async fn shut_down(mut runtime: Runtime, shutdown_tx: &watch::Sender<bool>) {
    let engine = runtime.engine.clone();
    let _ = shutdown_tx.send(true);
    runtime.context.handover.shut_down();
    runtime
        .stop_tasks("sessions still busy at the shutdown deadline; closing them")
        .await;
    if let Some(member) = runtime.cluster.take() {
        member.stop().await;
    }
    let syncing = engine.sync().await;
    engine.close();
    match syncing {
        Ok(()) => tracing::info!("store synced; bye"),
        Err(e) => tracing::error!(error = %e, "final sync failed"),
    }
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
    if let Some(node) = runtime.submitter.node().cloned() {
        let records = runtime.keyspace(crate::topology::KEYSPACE).await?;
        let locks = runtime.keyspace(crate::topology::LOCKS_KEYSPACE).await?;
        let shutdown = runtime.context.shutdown.clone();
        runtime.view = Some(crate::topology::start(
            &config,
            node,
            runtime.engine.clone(),
            records,
            locks,
            &mut runtime.tasks,
            shutdown,
        ));
    }
    services::start_all(runtime).await?;
    if let Some(listener) = admin {
        let token = admin_token(&config, &listener)?;
        let state = AdminState {
            shutdown: runtime.context.shutdown.clone(),
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
