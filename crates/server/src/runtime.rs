//! What the protocol wings start on: the engine, the listener context, the task set and the
//! binding of listeners; and the error of start-up. It sits below both `server` (which builds
//! it) and `services` (which start on it), so neither imports the other.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use std::os::fd::{AsFd, OwnedFd};

use parking_lot::Mutex;
use polykv_engine::Engine;
use polykv_protocols::ServerCodec;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::{Config, Listener, SessionSettings};
use crate::metrics::ProtocolMetrics;
use crate::session::{serve_tcp, ListenerContext, Service};
use crate::upgrade::carry::CarriedListener;
use crate::ReadOnly;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("data directory {path} is in use by another polykv server{holder} (lock file {lock})")]
    Locked {
        path: PathBuf,
        lock: PathBuf,
        holder: String,
    },
    #[error("cannot open the store in {path}: {source}")]
    Engine {
        path: PathBuf,
        source: polykv_engine::Error,
    },
    #[error("cannot open keyspace {name}: {source}")]
    Keyspace {
        name: String,
        source: polykv_engine::Error,
    },
    #[error("cannot listen on {addr} for {what}: {source}")]
    Bind {
        what: &'static str,
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot watch {signal}: {source}")]
    Signal {
        signal: &'static str,
        source: std::io::Error,
    },
    /// A file or system call of start-up failed; `what` says what was being done.
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Format(#[from] crate::format::FormatError),
    #[error("{0}")]
    Other(String),
}

/// Everything a protocol needs to start its listeners.
pub struct Runtime {
    pub config: Config,
    pub engine: Engine,
    /// Where writes go: the engine, or the cluster.
    pub submitter: crate::submit::Submitter,
    /// Cluster mode: the members' endpoints, liveness and leader, for the protocols.
    pub view: Option<crate::topology::ClusterView>,
    pub context: ListenerContext,
    pub read_only: Arc<ReadOnly>,
    pub tasks: Tasks,
    /// A copy of every listening socket, by name, for a hot upgrade to pass on.
    pub bound: Mutex<Vec<CarriedListener>>,
    /// This process's cluster member, in cluster mode.
    pub cluster: Option<crate::cluster::ClusterMember>,
}

/// The tasks of one serving generation.
pub struct Tasks {
    /// Listeners and background work: they run once the process serves.
    others: JoinSet<()>,
    /// The shared session loop's listeners, with their sessions. They start at once: carried
    /// sessions are prepared before the commit and wait for it themselves. A handover does not
    /// join them (a session it took stays parked until the process exits).
    sessions: JoinSet<()>,
    serving: watch::Receiver<bool>,
}

impl Tasks {
    pub fn new(serving: watch::Receiver<bool>) -> Tasks {
        Tasks {
            others: JoinSet::new(),
            sessions: JoinSet::new(),
            serving,
        }
    }

    /// Spawns a task that runs once the process serves.
    pub fn spawn(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        let mut serving = self.serving.clone();
        self.others.spawn(async move {
            if crate::session::wait_serving(&mut serving).await {
                task.await
            }
        });
    }

    /// Spawns a listener of the shared session loop ([`crate::session::serve_tcp`]) at once.
    pub fn spawn_sessions(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        self.sessions.spawn(task);
    }

    /// The shared session loop's listeners, kept alive (with the sessions a handover took)
    /// until the returned set is dropped.
    pub fn take_sessions(&mut self) -> JoinSet<()> {
        std::mem::take(&mut self.sessions)
    }
}

/// Joins every task of `set`, waiting at most `limit`; past that the rest are aborted.
async fn join_within(set: &mut JoinSet<()>, limit: std::time::Duration, why: &str) {
    if tokio::time::timeout(limit, async { while set.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        tracing::warn!(seconds = limit.as_secs(), "{why}");
        set.abort_all();
        while set.join_next().await.is_some() {}
    }
}

/// A socket a listener binds, or takes over from a hot upgrade: a TCP listener or a UDP socket.
trait ListeningSocket: Sized + AsFd {
    /// The standard-library socket a carried descriptor becomes before tokio takes it.
    type Std: From<OwnedFd> + AsFd;
    /// Whether the handover carries it as a datagram socket.
    const UDP: bool;
    /// What the log and errors call it.
    const NOUN: &'static str;
    fn from_std(socket: Self::Std) -> std::io::Result<Self>;
    fn bind(addr: String) -> impl Future<Output = std::io::Result<Self>>;
    fn local_addr(&self) -> std::io::Result<std::net::SocketAddr>;
}

impl ListeningSocket for TcpListener {
    type Std = std::net::TcpListener;
    const UDP: bool = false;
    const NOUN: &'static str = "listener";
    fn from_std(socket: Self::Std) -> std::io::Result<Self> {
        TcpListener::from_std(socket)
    }
    fn bind(addr: String) -> impl Future<Output = std::io::Result<Self>> {
        TcpListener::bind(addr)
    }
    fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        TcpListener::local_addr(self)
    }
}

impl ListeningSocket for UdpSocket {
    type Std = std::net::UdpSocket;
    const UDP: bool = true;
    const NOUN: &'static str = "socket";
    fn from_std(socket: Self::Std) -> std::io::Result<Self> {
        UdpSocket::from_std(socket)
    }
    fn bind(addr: String) -> impl Future<Output = std::io::Result<Self>> {
        UdpSocket::bind(addr)
    }
    fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        UdpSocket::local_addr(self)
    }
}

/// A listening socket carried over by a hot upgrade, made ready for tokio.
fn carried<S: ListeningSocket>(fd: OwnedFd) -> std::io::Result<S> {
    let socket = S::Std::from(fd);
    set_nonblocking(socket.as_fd())?;
    S::from_std(socket)
}

/// Sets O_NONBLOCK (tokio needs it; a descriptor passed over keeps the flags of its file).
fn set_nonblocking(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: fcntl on a descriptor we borrow; no memory is passed.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Binds one listener or socket, logging the address it got (a configured port 0 picks one).
async fn bind<S: ListeningSocket>(what: &'static str, addr: String) -> Result<S, ServerError> {
    let bound = S::bind(addr.clone())
        .await
        .map_err(|source| ServerError::Bind {
            what,
            addr: addr.clone(),
            source,
        })?;
    let local = bound.local_addr().map(|a| a.to_string()).unwrap_or(addr);
    tracing::info!(listener = what, addr = %local, "listening");
    Ok(bound)
}

/// The listener or socket `bind` (a [`Runtime::bind_tcp`] or [`Runtime::bind_udp`]) if
/// `enabled`; otherwise nothing is bound.
pub async fn bind_if<T>(
    enabled: bool,
    bind: impl Future<Output = Result<T, ServerError>>,
) -> Result<Option<T>, ServerError> {
    match enabled {
        true => bind.await.map(Some),
        false => Ok(None),
    }
}

impl Runtime {
    /// Lets every listener and session task end (they were told to stop), waiting at most
    /// `shutdown_timeout_secs`; past that the rest are aborted. Returns once none is left.
    pub async fn stop_tasks(&mut self, why: &'static str) {
        let limit = std::time::Duration::from_secs(self.config.shutdown_timeout_secs);
        let (tasks, sessions) = (&mut self.tasks.others, &mut self.tasks.sessions);
        tokio::join!(
            join_within(tasks, limit, why),
            join_within(sessions, limit, why)
        );
    }

    /// [`Runtime::stop_tasks`] for everything but the shared session loop (the handover
    /// stops its sessions through the hub).
    pub async fn stop_tasks_but_sessions(&mut self, why: &'static str) {
        let limit = std::time::Duration::from_secs(self.config.shutdown_timeout_secs);
        join_within(&mut self.tasks.others, limit, why).await;
    }

    /// The id of a protocol's keyspace, creating it if needed (through the cluster in
    /// cluster mode, so every node numbers keyspaces alike).
    pub async fn keyspace(&self, name: &str) -> Result<polykv_engine::KeyspaceId, ServerError> {
        let failed = |source| ServerError::Keyspace {
            name: name.to_string(),
            source,
        };
        let Some(node) = self.submitter.node() else {
            return self.engine.keyspace(name).map_err(failed);
        };
        if let Some((id, _)) = self.engine.keyspaces().into_iter().find(|(_, n)| n == name) {
            return Ok(id);
        }
        if !polykv_engine::valid_keyspace_name(name) {
            return Err(failed(polykv_engine::Error::Invalid(
                "keyspace names are 1-64 characters of A-Z a-z 0-9 _ . -",
            )));
        }
        let command = polykv_engine::Command::CreateKeyspace { name: name.into() };
        // Start-up waits here until the cluster has a leader (bounded by the caller's patience:
        // the process can be stopped at any time).
        loop {
            match node
                .submit(command.clone(), polykv_engine::Durability::Sync)
                .await
            {
                Ok(polykv_engine::Outcome::KeyspaceCreated(id)) => return Ok(id),
                Ok(_) => {
                    return Err(failed(polykv_engine::Error::Invalid(
                        "keyspace not created",
                    )))
                }
                Err(polykv_cluster::ClusterError::Unavailable(why)) => {
                    tracing::info!(keyspace = name, %why, "waiting for the cluster to create a keyspace");
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
                Err(e) => return Err(failed(polykv_engine::Error::Unavailable(e.to_string()))),
            }
        }
    }

    /// The address a listener binds to: its own if set, else the global `bind`.
    pub fn listen_addr(&self, own: &str, port: u16) -> String {
        self.config.listen_addr(own, port)
    }

    /// Binds a TCP listener, or takes the one a hot upgrade carried under the same name (the
    /// same kernel socket: the port never refuses a connection).
    pub async fn bind_tcp(
        &self,
        what: &'static str,
        addr: String,
    ) -> Result<TcpListener, ServerError> {
        self.bind_or_take(what, addr).await
    }

    /// Binds a UDP socket, or takes the one a hot upgrade carried under the same name.
    pub async fn bind_udp(
        &self,
        what: &'static str,
        addr: String,
    ) -> Result<UdpSocket, ServerError> {
        self.bind_or_take(what, addr).await
    }

    async fn bind_or_take<S: ListeningSocket>(
        &self,
        what: &'static str,
        addr: String,
    ) -> Result<S, ServerError> {
        let socket = match self.context.handover.take_listener(what, S::UDP) {
            Some(fd) => carried::<S>(fd).map_err(|source| ServerError::Bind {
                what,
                addr: format!("the carried {what} {}", S::NOUN),
                source,
            })?,
            None => bind(what, addr).await?,
        };
        self.keep(what, S::UDP, socket.as_fd())?;
        Ok(socket)
    }

    /// Keeps a copy of a listening socket for a later hot upgrade.
    fn keep(
        &self,
        name: &'static str,
        udp: bool,
        fd: std::os::fd::BorrowedFd<'_>,
    ) -> Result<(), ServerError> {
        let fd = fd.try_clone_to_owned().map_err(|source| ServerError::Io {
            what: format!("cannot keep a copy of the {name} socket"),
            source,
        })?;
        self.bound.lock().push(CarriedListener {
            name: name.to_string(),
            udp,
            fd,
        });
        Ok(())
    }

    /// Binds a protocol's TCP listener at its address and port (a taken port fails the start)
    /// and serves it with the shared session loop, under its session limits, until shutdown.
    #[allow(clippy::too_many_arguments)]
    pub async fn serve_tcp<C, S, F>(
        &mut self,
        what: &'static str,
        listener: &Listener,
        session: &SessionSettings,
        codec: C,
        new_service: F,
        metrics: Arc<ProtocolMetrics>,
    ) -> Result<(), ServerError>
    where
        C: ServerCodec<Request = S::Request, Response = S::Response> + Send + Sync + 'static,
        S: Service,
        F: Fn() -> S + Send + Sync + 'static,
    {
        let addr = self.listen_addr(&listener.addr, listener.port);
        let tcp = self.bind_tcp(what, addr).await?;
        self.tasks.spawn_sessions(serve_tcp(
            what,
            tcp,
            Arc::new(codec),
            new_service,
            session.limits(),
            metrics,
            self.context.clone(),
        ));
        Ok(())
    }
}
