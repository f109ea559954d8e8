//! What a handover carries inside a process: sessions stopped at a frame boundary on the way
//! out, and listeners and sessions to resume on the way in (in the new process, or in the old
//! one after a rollback: both start from the same [`Carried`]).

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::wire::{HeldLock, SessionState};

/// A service's state, taken once every session has stopped (so nothing changes under it).
pub trait ExportState: Send {
    fn export(&mut self) -> Result<Vec<u8>, String>;
}

/// A session stopped for a handover, its service still alive: its state is exported only
/// after all sessions have stopped, so no write lands between a subscriber's export and the
/// handover (no push is lost).
pub struct Stopped {
    /// Its slot's id (see [`Slot::id`]); none outside the shared session loop.
    pub id: Option<u64>,
    pub listener: &'static str,
    pub stream: std::net::TcpStream,
    pub input: Vec<u8>,
    pub idle: Duration,
    pub partial: Option<Duration>,
    pub service: Box<dyn ExportState>,
}

/// A connection to resume: its socket and its state.
pub struct Resumable {
    pub fd: OwnedFd,
    pub state: SessionState,
    /// Whether a request was waiting in its socket, if that was looked at already (the new
    /// process polls every session as they arrive, while its store opens, so the listeners
    /// need not before the commit); `None`: the listener looks.
    pub waiting: Option<bool>,
}

/// A listening socket carried over, by name.
pub struct CarriedListener {
    pub name: String,
    pub udp: bool,
    pub fd: OwnedFd,
}

/// Everything a process starts from when it resumes a handover.
#[derive(Default)]
pub struct Carried {
    pub listeners: Vec<CarriedListener>,
    pub sessions: Vec<Resumable>,
    pub locks: Vec<HeldLock>,
}

/// What the sessions of a generation are told to do at their next frame boundary.
const RUNNING: u8 = 0;
const SHUTTING_DOWN: u8 = 1;
const EXPORTING: u8 = 2;

/// A session's slot states. A session marks itself `IDLE` while it waits at a frame boundary
/// with nothing of its own to carry (no unread input, a stateless service); a handover may
/// then take its socket without waking it (`TAKEN`): the session never touches the socket
/// again, and its task is dropped.
const BUSY: u8 = 0;
const IDLE: u8 = 1;
const TAKEN: u8 = 2;

/// One session of the shared session loop, as the handover sees it.
pub struct Slot {
    id: u64,
    state: AtomicU8,
    /// Wakes the session: a shutdown, or a handover that could not take it.
    wake: Notify,
    /// Its socket, shared with the session, so a handover can take it from an idle session
    /// and drop the session's task (and what it holds: the engine) without closing it.
    stream: Mutex<Option<Arc<TcpStream>>>,
    pub listener: &'static str,
    /// Its last complete frame while `IDLE`, in µs since the hub's epoch.
    idle_since_us: AtomicU64,
}

/// What a session does at a frame boundary.
#[derive(Debug, PartialEq, Eq)]
pub enum Park {
    /// Wait for input as usual.
    Wait,
    /// The server shuts down: say goodbye.
    ShutDown,
    /// Stop here for a handover (deposit the state).
    Stop,
    /// The handover took the socket: park until the process exits or a rollback releases it.
    Taken,
}

impl Slot {
    /// Unique within its hub: how a session whose socket was passed ahead of a handover's stop
    /// is named after it.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The slot lets go of the socket (a session that stops itself owns it alone then).
    pub fn release_stream(&self) {
        self.stream.lock().take();
    }

    /// Called at every frame boundary before waiting: `takeable` when the session has nothing
    /// of its own to carry. `last_frame` is kept for the idle timer of a taken session.
    pub fn park(&self, hub: &Hub, takeable: bool, last_frame: Instant) -> Park {
        if takeable {
            let since = last_frame.saturating_duration_since(hub.epoch).as_micros() as u64;
            self.idle_since_us.store(since, Ordering::Relaxed);
            let marked =
                self.state
                    .compare_exchange(BUSY, IDLE, Ordering::SeqCst, Ordering::SeqCst);
            if marked == Err(TAKEN) {
                return Park::Taken;
            }
        }
        // SeqCst pairs with the handover's mode store then state swap: either this load sees
        // the handover, or the handover sees IDLE and takes the session.
        match hub.mode.load(Ordering::SeqCst) {
            RUNNING => Park::Wait,
            SHUTTING_DOWN => {
                self.unpark();
                Park::ShutDown
            }
            _ if !takeable || self.unpark() => Park::Stop,
            _ => Park::Taken,
        }
    }

    /// Called when the session wakes, before it touches its socket: false when the handover
    /// took it meanwhile.
    pub fn unpark(&self) -> bool {
        match self
            .state
            .compare_exchange(IDLE, BUSY, Ordering::SeqCst, Ordering::SeqCst)
        {
            Ok(_) => true,
            Err(state) => state == BUSY,
        }
    }

    /// Waits for a wake-up (a shutdown or handover of this generation).
    pub async fn woken(&self) {
        self.wake.notified().await
    }

    /// When a taken session last completed a frame.
    pub fn idle_since(&self, hub: &Hub) -> Instant {
        hub.epoch + Duration::from_micros(self.idle_since_us.load(Ordering::Relaxed))
    }
}

/// An accept loop that may still add sessions (see [`Hub::accepting`]).
pub struct Accepting(Arc<Hub>);

impl Drop for Accepting {
    fn drop(&mut self) {
        self.0.accepting.fetch_sub(1, Ordering::SeqCst);
        self.0.changed.notify_one();
    }
}

/// A session a handover took while it waited: its socket, where it was accepted, and since
/// when it is idle.
pub struct TakenSession {
    pub id: u64,
    pub stream: Arc<TcpStream>,
    pub listener: &'static str,
    pub idle_since: Instant,
}

impl TakenSession {
    /// The socket alone, once the session's task is gone (after a failed handover).
    pub fn into_std(self) -> std::io::Result<std::net::TcpStream> {
        match Arc::try_unwrap(self.stream) {
            Ok(stream) => stream.into_std(),
            Err(_) => Err(std::io::Error::other("the session still holds its socket")),
        }
    }
}

/// Counts a live session of the shared loop (see [`Hub::alive`]).
pub struct Alive(Arc<Hub>);

impl Drop for Alive {
    fn drop(&mut self) {
        if self.0.alive.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.changed.notify_one();
        }
    }
}

/// The handover's state shared by the listeners and sessions of one serving generation.
pub struct Hub {
    epoch: Instant,
    mode: AtomicU8,
    stopped: Mutex<Vec<Stopped>>,
    listeners: Mutex<HashMap<String, (bool, OwnedFd)>>,
    sessions: Mutex<HashMap<String, Vec<Resumable>>>,
    /// Every running session of the shared loop, by id.
    slots: Mutex<HashMap<u64, Arc<Slot>>>,
    next_slot: AtomicU64,
    /// Accept loops still running.
    accepting: AtomicUsize,
    /// Sessions of the shared loop not yet dropped.
    alive: AtomicUsize,
    /// A slot left or an accept loop stopped (while the handover waits for that).
    changed: Notify,
}

impl Default for Hub {
    fn default() -> Hub {
        Hub {
            epoch: Instant::now(),
            mode: AtomicU8::new(RUNNING),
            stopped: Mutex::default(),
            listeners: Mutex::default(),
            sessions: Mutex::default(),
            slots: Mutex::default(),
            next_slot: AtomicU64::new(0),
            accepting: AtomicUsize::new(0),
            alive: AtomicUsize::new(0),
            changed: Notify::new(),
        }
    }
}

impl Hub {
    /// A hub that hands `carried`'s listeners and sessions to the listeners that claim them.
    pub fn resuming(carried: Carried) -> Hub {
        let hub = Hub::default();
        {
            let mut listeners = hub.listeners.lock();
            for l in carried.listeners {
                listeners.insert(l.name, (l.udp, l.fd));
            }
            let mut sessions = hub.sessions.lock();
            for s in carried.sessions {
                // Looked up first: a key is allocated once per listener, not per session.
                match sessions.get_mut(&s.state.listener) {
                    Some(list) => list.push(s),
                    None => {
                        sessions.insert(s.state.listener.clone(), vec![s]);
                    }
                }
            }
        }
        hub
    }

    /// The carried listening socket named `name`, if any.
    pub fn take_listener(&self, name: &str, udp: bool) -> Option<OwnedFd> {
        let mut listeners = self.listeners.lock();
        match listeners.remove(name) {
            Some((kind, fd)) if kind == udp => Some(fd),
            Some(other) => {
                listeners.insert(name.to_string(), other);
                None
            }
            None => None,
        }
    }

    /// The carried sessions of listener `name`.
    pub fn take_sessions(&self, name: &str) -> Vec<Resumable> {
        self.sessions.lock().remove(name).unwrap_or_default()
    }

    /// What no listener claimed (its configuration changed): closed, and logged.
    pub fn drop_unclaimed(&self) {
        for (name, _) in self.listeners.lock().drain() {
            tracing::warn!(listener = %name, "carried listener not in the configuration; closed");
        }
        for (name, sessions) in self.sessions.lock().drain() {
            tracing::warn!(listener = %name, count = sessions.len(), "carried sessions without their listener; closed");
        }
    }

    /// Sessions stop for a handover instead of saying goodbye when they see the shutdown.
    pub fn start_exporting(&self) {
        self.mode.store(EXPORTING, Ordering::SeqCst);
    }

    pub fn exporting(&self) -> bool {
        self.mode.load(Ordering::SeqCst) == EXPORTING
    }

    /// Tells every session of the shared loop to say goodbye at its next frame boundary.
    pub fn shut_down(&self) {
        if self
            .mode
            .compare_exchange(RUNNING, SHUTTING_DOWN, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            for slot in self.slots.lock().values() {
                slot.wake.notify_one();
            }
        }
    }

    /// A new session of listener `listener` on `stream` (registered before its task runs,
    /// so a handover that starts once the accept loops stopped sees every session).
    pub fn register(&self, listener: &'static str, stream: Arc<TcpStream>) -> Arc<Slot> {
        let slot = Arc::new(Slot {
            id: self.next_slot.fetch_add(1, Ordering::Relaxed),
            state: AtomicU8::new(BUSY),
            wake: Notify::new(),
            stream: Mutex::new(Some(stream)),
            listener,
            idle_since_us: AtomicU64::new(0),
        });
        self.slots.lock().insert(slot.id, slot.clone());
        slot
    }

    /// Counts a session until it is dropped: a handover waits for the sessions it took to be
    /// gone (with their hold on the engine) before it closes the engine.
    pub fn alive(self: &Arc<Self>) -> Alive {
        self.alive.fetch_add(1, Ordering::SeqCst);
        Alive(self.clone())
    }

    /// Waits (up to `limit`) until every session of the shared loop was dropped.
    pub async fn wait_dropped(&self, limit: Duration) {
        let gone = self.wait_until(|hub| hub.alive.load(Ordering::SeqCst) == 0);
        if tokio::time::timeout(limit, gone).await.is_err() {
            tracing::warn!("upgrade: sessions not dropped in time");
        }
    }

    /// The session ended (or deposited its state): its socket is no longer this slot's.
    pub fn unregister(&self, slot: &Slot) {
        self.slots.lock().remove(&slot.id);
        if self.mode.load(Ordering::SeqCst) != RUNNING {
            self.changed.notify_one();
        }
    }

    /// Counts an accept loop until the guard is dropped (when it stops accepting): the
    /// handover takes sessions only once no listener can add one.
    pub fn accepting(self: &Arc<Self>) -> Accepting {
        self.accepting.fetch_add(1, Ordering::SeqCst);
        Accepting(self.clone())
    }

    /// Waits until `done` holds, re-checking whenever a slot leaves or an accept loop stops.
    async fn wait_until(&self, done: impl Fn(&Hub) -> bool) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if done(self) {
                return;
            }
            changed.await;
        }
    }

    /// The handover's stop, once exporting: waits for the accept loops to stop, takes every
    /// session waiting idle without waking it, wakes the others (they stop at their next frame
    /// boundary and deposit their state) and waits for them, up to `limit`. A session still
    /// busy then (a client that does not read) is left behind and closes with this process.
    pub async fn take_sessions_for_handover(&self, limit: Duration) -> Vec<TakenSession> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + limit;
        let accepting = self.wait_until(|hub| hub.accepting.load(Ordering::SeqCst) == 0);
        if tokio::time::timeout_at(deadline, accepting).await.is_err() {
            tracing::warn!("upgrade: an accept loop did not stop in time");
        }
        let accept_stopped_us = started.elapsed().as_micros() as u64;
        let mut taken = Vec::new();
        for slot in self.slots.lock().values() {
            match slot
                .state
                .compare_exchange(IDLE, TAKEN, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => {
                    if let Some(stream) = slot.stream.lock().take() {
                        taken.push(TakenSession {
                            id: slot.id,
                            stream,
                            listener: slot.listener,
                            idle_since: slot.idle_since(self),
                        });
                    }
                }
                Err(_) => slot.wake.notify_one(),
            }
        }
        let count = taken.len();
        let taken_us = started.elapsed().as_micros() as u64;
        let stopped = self.wait_until(|hub| hub.slots.lock().len() <= count);
        if tokio::time::timeout_at(deadline, stopped).await.is_err() {
            let left = self.slots.lock().len() - count;
            tracing::warn!(left, "upgrade: sessions still busy at the deadline (a client not reading?); they close with this process");
        }
        tracing::info!(
            taken = count,
            accept_stopped_us,
            taken_us,
            others_stopped_us = started.elapsed().as_micros() as u64,
            "upgrade: sessions taken"
        );
        taken
    }

    /// Every session of the shared loop open now, with its socket (shared: the caller must
    /// let go of them before a handover stops the sessions, which may take them back).
    pub fn open_sessions(&self) -> Vec<(u64, &'static str, Arc<TcpStream>)> {
        self.slots
            .lock()
            .values()
            .filter_map(|slot| Some((slot.id, slot.listener, slot.stream.lock().clone()?)))
            .collect()
    }

    pub fn deposit(&self, stopped: Stopped) {
        self.stopped.lock().push(stopped);
    }

    pub fn take_stopped(&self) -> Vec<Stopped> {
        std::mem::take(&mut *self.stopped.lock())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn connected() -> (Arc<TcpStream>, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (Arc::new(server), client)
    }

    #[tokio::test]
    async fn a_handover_takes_idle_sessions_and_wakes_the_others() {
        let hub = Arc::new(Hub::default());
        let (idle_stream, _c1) = connected().await;
        let (busy_stream, _c2) = connected().await;
        let idle = hub.register("nmdb tcp", idle_stream.clone());
        let busy = hub.register("nmdb tcp", busy_stream);
        let since = Instant::now();
        assert_eq!(idle.park(&hub, true, since), Park::Wait);
        assert_eq!(busy.park(&hub, false, since), Park::Wait);

        hub.start_exporting();
        let taking = {
            let hub = hub.clone();
            tokio::spawn(
                async move { hub.take_sessions_for_handover(Duration::from_secs(5)).await },
            )
        };
        // The busy session is woken; at its frame boundary it stops, then leaves the hub.
        tokio::time::timeout(Duration::from_secs(5), busy.woken())
            .await
            .expect("the busy session is woken");
        assert_eq!(busy.park(&hub, false, since), Park::Stop);
        busy.release_stream();
        hub.unregister(&busy);
        let taken = taking.await.unwrap();

        assert_eq!(taken.len(), 1);
        assert!(Arc::ptr_eq(&taken[0].stream, &idle_stream));
        assert_eq!(taken[0].listener, "nmdb tcp");
        // The idle session, woken later, finds itself taken and leaves the socket alone.
        assert!(!idle.unpark());
        assert_eq!(idle.park(&hub, true, since), Park::Taken);
    }

    #[tokio::test]
    async fn a_session_that_parks_after_the_handover_started_stops_itself() {
        let hub = Arc::new(Hub::default());
        let (stream, _client) = connected().await;
        let slot = hub.register("jsonkv tcp", stream);
        hub.start_exporting();
        assert_eq!(slot.park(&hub, true, Instant::now()), Park::Stop);
        assert!(slot.unpark(), "not taken: it stops itself");
        hub.shut_down();
        let other = Hub::default();
        other.shut_down();
        let (stream, _client) = connected().await;
        let late = other.register("nmdb tcp", stream);
        assert_eq!(late.park(&other, true, Instant::now()), Park::ShutDown);
    }
}
