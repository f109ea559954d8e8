//! The watch hub: change events for subscribers of a key or a prefix.
//!
//! Events are published by `apply`, under the engine's write lock, so every subscriber sees them
//! in version order. Each subscriber has a bounded queue. When it is full, the subscriber switches
//! to coalescing: only the latest event per key is kept until it catches up. A writer never
//! waits for a subscriber, and the final state of every key always reaches it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use bytes::Bytes;
use hashbrown::HashMap;
use parking_lot::{Mutex, RwLock};
use tokio::sync::Notify;

use crate::value::Entry;
use crate::KeyspaceId;

/// What happened to a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Set(Entry),
    Deleted,
}

/// One committed change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub keyspace: KeyspaceId,
    pub key: Bytes,
    /// The version of the write (for a deletion, the version the deletion was given).
    pub version: u64,
    pub change: Change,
}

/// What a subscription matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    Key(Bytes),
    Prefix(Bytes),
}

impl Selector {
    fn matches(&self, key: &[u8]) -> bool {
        match self {
            Selector::Key(k) => k.as_ref() == key,
            Selector::Prefix(p) => key.starts_with(p),
        }
    }
}

#[derive(Default)]
struct Queue {
    events: VecDeque<Event>,
    /// Latest pending event per key, used once `events` has overflowed, and the same events
    /// by version (the order in which they are delivered).
    coalesced: HashMap<Bytes, Event>,
    coalesced_order: BTreeMap<u64, Bytes>,
    closed: bool,
}

struct Subscriber {
    id: u64,
    keyspace: KeyspaceId,
    selector: Selector,
    capacity: usize,
    queue: Mutex<Queue>,
    notify: Notify,
    coalesced_events: AtomicU64,
}

impl Subscriber {
    fn push(&self, event: &Event) {
        let mut queue = self.queue.lock();
        if queue.closed {
            return;
        }
        if queue.coalesced.is_empty() && queue.events.len() < self.capacity {
            queue.events.push_back(event.clone());
        } else {
            queue
                .coalesced_order
                .insert(event.version, event.key.clone());
            if let Some(older) = queue.coalesced.insert(event.key.clone(), event.clone()) {
                queue.coalesced_order.remove(&older.version);
                self.coalesced_events.fetch_add(1, Ordering::Relaxed);
            }
        }
        drop(queue);
        self.notify.notify_one();
    }

    fn pop(&self) -> Option<Event> {
        let mut queue = self.queue.lock();
        if let Some(event) = queue.events.pop_front() {
            return Some(event);
        }
        // Deliver coalesced events oldest first, so versions keep increasing.
        let (_, oldest) = queue.coalesced_order.pop_first()?;
        queue.coalesced.remove(&oldest)
    }

    /// The version of the event [`Subscriber::pop`] would return.
    fn next_version(&self) -> Option<u64> {
        let queue = self.queue.lock();
        match queue.events.front() {
            Some(event) => Some(event.version),
            None => queue.coalesced_order.keys().next().copied(),
        }
    }

    fn pending(&self) -> usize {
        let queue = self.queue.lock();
        queue.events.len() + queue.coalesced.len()
    }
}

/// A live subscription. Dropping it unsubscribes.
pub struct Subscription {
    subscriber: Arc<Subscriber>,
    hub: Weak<HubInner>,
}

impl Subscription {
    /// The next event, waiting for one. `None` once the hub has shut down.
    pub async fn recv(&self) -> Option<Event> {
        loop {
            if let Some(event) = self.subscriber.pop() {
                return Some(event);
            }
            if self.subscriber.queue.lock().closed {
                return None;
            }
            self.subscriber.notify.notified().await;
        }
    }

    /// Waits until an event may be queued (or the hub shut down); [`Subscription::try_recv`]
    /// then takes it. May wake spuriously. Cancel-safe: a notification received by a dropped
    /// waiter is kept for the next.
    pub async fn changed(&self) {
        if self.subscriber.pending() > 0 || self.subscriber.queue.lock().closed {
            return;
        }
        self.subscriber.notify.notified().await;
    }

    /// Whether the hub has shut down (and nothing more will arrive).
    pub fn is_closed(&self) -> bool {
        self.subscriber.queue.lock().closed
    }

    /// The next event if one is queued.
    pub fn try_recv(&self) -> Option<Event> {
        self.subscriber.pop()
    }

    /// Events waiting to be received (after coalescing).
    pub fn pending(&self) -> usize {
        self.subscriber.pending()
    }

    /// The version of the event [`Subscription::try_recv`] would return now.
    pub fn next_version(&self) -> Option<u64> {
        self.subscriber.next_version()
    }

    /// How many events were replaced by a later one for the same key while coalescing.
    pub fn coalesced(&self) -> u64 {
        self.subscriber.coalesced_events.load(Ordering::Relaxed)
    }

    pub fn selector(&self) -> &Selector {
        &self.subscriber.selector
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(hub) = self.hub.upgrade() {
            hub.remove(&self.subscriber);
        }
    }
}

/// Takes the oldest event queued in any of `watches` (subscriptions of one keyspace, each
/// tagged), so that a client with several subscriptions gets their events in commit order,
/// not one subscription's queue after another's.
///
/// Two looks, because a queue found empty may receive an older event before a later queue is
/// looked at. Events are published in version order, so once the first look has seen version
/// `v` anywhere, every event older than `v` is already queued, and the second look sees it.
pub fn recv_oldest<T: Copy>(watches: &[(T, &Subscription)]) -> Option<(T, Event)> {
    let oldest = |watches: &[(T, &Subscription)]| {
        watches
            .iter()
            .enumerate()
            .filter_map(|(i, (_, w))| w.next_version().map(|v| (v, i)))
            .min()
    };
    oldest(watches)?;
    let (_, index) = oldest(watches)?;
    let (tag, watch) = watches[index];
    // Only this task takes from these queues, so the event looked at is still the first.
    watch.try_recv().map(|event| (tag, event))
}

#[derive(Default)]
struct KeyspaceSubscribers {
    by_key: HashMap<Bytes, Vec<Arc<Subscriber>>>,
    by_prefix: Vec<Arc<Subscriber>>,
}

#[derive(Default)]
struct HubInner {
    keyspaces: RwLock<HashMap<KeyspaceId, KeyspaceSubscribers>>,
    count: AtomicUsize,
    next_id: AtomicU64,
}

impl HubInner {
    fn remove(&self, subscriber: &Arc<Subscriber>) {
        let mut keyspaces = self.keyspaces.write();
        let Some(subs) = keyspaces.get_mut(&subscriber.keyspace) else {
            return;
        };
        let before = match &subscriber.selector {
            Selector::Key(key) => {
                let Some(list) = subs.by_key.get_mut(key) else {
                    return;
                };
                let before = list.len();
                list.retain(|s| s.id != subscriber.id);
                let removed = before - list.len();
                if list.is_empty() {
                    subs.by_key.remove(key);
                }
                removed
            }
            Selector::Prefix(_) => {
                let before = subs.by_prefix.len();
                subs.by_prefix.retain(|s| s.id != subscriber.id);
                before - subs.by_prefix.len()
            }
        };
        self.count.fetch_sub(before, Ordering::Relaxed);
    }
}

/// Statistics of the hub.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WatchStats {
    pub subscribers: u64,
    pub queued_events: u64,
}

/// The registry of subscriptions.
#[derive(Clone, Default)]
pub struct WatchHub {
    inner: Arc<HubInner>,
}

impl WatchHub {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a subscription. The engine calls this under its write lock so that the
    /// subscription starts at a known version.
    pub(crate) fn subscribe(
        &self,
        keyspace: KeyspaceId,
        selector: Selector,
        capacity: usize,
    ) -> Subscription {
        let subscriber = Arc::new(Subscriber {
            id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            keyspace,
            selector: selector.clone(),
            capacity: capacity.max(1),
            queue: Mutex::new(Queue::default()),
            notify: Notify::new(),
            coalesced_events: AtomicU64::new(0),
        });
        let mut keyspaces = self.inner.keyspaces.write();
        let subs = keyspaces.entry(keyspace).or_default();
        match selector {
            Selector::Key(key) => subs.by_key.entry(key).or_default().push(subscriber.clone()),
            Selector::Prefix(_) => subs.by_prefix.push(subscriber.clone()),
        }
        self.inner.count.fetch_add(1, Ordering::Relaxed);
        Subscription {
            subscriber,
            hub: Arc::downgrade(&self.inner),
        }
    }

    /// Delivers an event to every matching subscriber. Never blocks on a subscriber.
    pub(crate) fn publish(&self, event: Event) {
        if self.inner.count.load(Ordering::Relaxed) == 0 {
            return;
        }
        let keyspaces = self.inner.keyspaces.read();
        let Some(subs) = keyspaces.get(&event.keyspace) else {
            return;
        };
        if let Some(list) = subs.by_key.get(&event.key) {
            for subscriber in list {
                subscriber.push(&event);
            }
        }
        for subscriber in &subs.by_prefix {
            if subscriber.selector.matches(&event.key) {
                subscriber.push(&event);
            }
        }
    }

    /// What is watched: each keyspace's watched keys and prefixes, once each.
    pub(crate) fn selectors(&self) -> Vec<(KeyspaceId, Selector)> {
        if self.inner.count.load(Ordering::Relaxed) == 0 {
            return Vec::new();
        }
        let keyspaces = self.inner.keyspaces.read();
        let mut out = Vec::new();
        for (ks, subs) in keyspaces.iter() {
            for key in subs.by_key.keys() {
                out.push((*ks, Selector::Key(key.clone())));
            }
            for subscriber in &subs.by_prefix {
                let selector = (*ks, subscriber.selector.clone());
                if !out.contains(&selector) {
                    out.push(selector);
                }
            }
        }
        out
    }

    /// Ends every subscription: receivers get `None` once they have drained their queue.
    pub(crate) fn close_all(&self) {
        let keyspaces = self.inner.keyspaces.read();
        for subs in keyspaces.values() {
            for subscriber in subs.by_key.values().flatten().chain(subs.by_prefix.iter()) {
                subscriber.queue.lock().closed = true;
                subscriber.notify.notify_one();
            }
        }
    }

    pub fn stats(&self) -> WatchStats {
        let keyspaces = self.inner.keyspaces.read();
        let mut stats = WatchStats::default();
        for subs in keyspaces.values() {
            for subscriber in subs.by_key.values().flatten().chain(subs.by_prefix.iter()) {
                stats.subscribers += 1;
                stats.queued_events += subscriber.pending() as u64;
            }
        }
        stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::Value;

    fn set(key: &str, version: u64) -> Event {
        Event {
            keyspace: 0,
            key: Bytes::copy_from_slice(key.as_bytes()),
            version,
            change: Change::Set(Entry {
                value: Value::I64(version as i64),
                version,
                expires_at: None,
                owner: None,
                label: None,
            }),
        }
    }

    #[test]
    fn key_and_prefix_selection() {
        let hub = WatchHub::new();
        let key = hub.subscribe(0, Selector::Key("a/1".into()), 16);
        let prefix = hub.subscribe(0, Selector::Prefix("a/".into()), 16);
        let other = hub.subscribe(1, Selector::Prefix("".into()), 16);
        hub.publish(set("a/1", 1));
        hub.publish(set("a/2", 2));
        hub.publish(set("b", 3));
        assert_eq!(key.try_recv().map(|e| e.version), Some(1));
        assert!(key.try_recv().is_none());
        assert_eq!(prefix.try_recv().map(|e| e.version), Some(1));
        assert_eq!(prefix.try_recv().map(|e| e.version), Some(2));
        assert!(prefix.try_recv().is_none());
        assert!(other.try_recv().is_none(), "other keyspace");
    }

    #[test]
    fn several_subscriptions_are_taken_from_in_version_order() {
        let hub = WatchHub::new();
        let root = hub.subscribe(0, Selector::Key("app".into()), 16);
        let children = hub.subscribe(0, Selector::Prefix("app/".into()), 2);
        hub.publish(set("app/db", 1));
        hub.publish(set("app/cache", 2));
        hub.publish(set("app", 3));
        // Past the prefix queue's capacity: coalesced events keep their versions too.
        hub.publish(set("app/db", 4));
        hub.publish(set("app", 5));
        hub.publish(set("app/x", 6));
        let watches = [("root", &root), ("children", &children)];
        let mut taken = Vec::new();
        while let Some((tag, event)) = recv_oldest(&watches) {
            taken.push((tag, event.version));
        }
        assert_eq!(
            taken,
            [
                ("children", 1),
                ("children", 2),
                ("root", 3),
                ("children", 4),
                ("root", 5),
                ("children", 6)
            ]
        );
        assert!(recv_oldest::<u8>(&[]).is_none());
    }

    #[test]
    fn overflow_coalesces_to_latest_per_key_in_version_order() {
        let hub = WatchHub::new();
        let sub = hub.subscribe(0, Selector::Prefix("".into()), 2);
        let mut version = 0;
        for round in 0..100 {
            for key in ["x", "y", "z"] {
                version += 1;
                hub.publish(set(key, version));
                let _ = round;
            }
        }
        let mut seen = Vec::new();
        while let Some(event) = sub.try_recv() {
            seen.push((event.key.clone(), event.version));
        }
        // The first two went through the queue, then one latest event per key.
        assert_eq!(seen.len(), 5, "{seen:?}");
        assert!(
            seen.windows(2).all(|w| w[0].1 < w[1].1),
            "versions increase: {seen:?}"
        );
        let last: Vec<_> = seen[2..].iter().map(|(_, v)| *v).collect();
        assert_eq!(last, vec![298, 299, 300]);
        assert_eq!(sub.coalesced(), 300 - 5);
        // Caught up: back to queueing every event.
        hub.publish(set("x", 301));
        hub.publish(set("x", 302));
        assert_eq!(sub.try_recv().map(|e| e.version), Some(301));
        assert_eq!(sub.try_recv().map(|e| e.version), Some(302));
    }

    #[test]
    fn dropping_unsubscribes() {
        let hub = WatchHub::new();
        let sub = hub.subscribe(0, Selector::Key("k".into()), 4);
        assert_eq!(hub.stats().subscribers, 1);
        drop(sub);
        assert_eq!(hub.stats().subscribers, 0);
        assert_eq!(hub.inner.count.load(Ordering::Relaxed), 0);
        hub.publish(set("k", 1));
    }

    #[tokio::test]
    async fn recv_waits_and_ends_on_close() {
        let hub = WatchHub::new();
        let sub = hub.subscribe(0, Selector::Key("k".into()), 4);
        let publisher = hub.clone();
        let task = tokio::spawn(async move {
            tokio::task::yield_now().await;
            publisher.publish(set("k", 7));
            publisher.close_all();
        });
        assert_eq!(sub.recv().await.map(|e| e.version), Some(7));
        assert_eq!(sub.recv().await, None);
        task.await.unwrap();
    }
}
