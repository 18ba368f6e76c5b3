//! What the process shares: the one place for process-wide state.
//!
//! - **Served engines.** Every `cliptag` element registers its engine here when it starts
//!   and unregisters it when it stops, so every server of the process sees every stream,
//!   whichever element started the server. The hub also turns "an engine published a
//!   result" into a tokio wake-up for the detection subscribers, without ever waiting on
//!   them.
//! - **Engines by id** ([`Hub::shared_engine`]): elements naming one `engine-id` share
//!   one model and one worker.
//! - **Servers by address** ([`Server::shared`](crate::Server::shared)): elements and
//!   programs naming one address share one gRPC server.
//! - **Supervised streams** ([`Supervised`](crate::Supervised)): how the streams a
//!   supervisor keeps running are doing, also while their pipelines are down.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError, Weak};

use cliptag_engine::{Engine, EngineConfig, EngineError, StreamInfo};
use tokio::sync::watch;

use crate::server::Server;
use crate::supervision::{self, Slot, StreamHealth};

struct Entry {
    engine: Arc<Engine>,
    /// Registrations of this engine (elements sharing one engine register it once each).
    count: usize,
    listener: u64,
}

/// One engine id's place: held while its engine loads, so that callers asking for the
/// same id wait for that load while callers of other ids do not.
type EngineSlot = Arc<Mutex<Weak<Engine>>>;

/// The process-wide registry: engines served over gRPC, engines shared by id, servers
/// shared by address.
pub struct Hub {
    entries: Mutex<Vec<Entry>>,
    named: Mutex<HashMap<String, EngineSlot>>,
    servers: Mutex<HashMap<String, Weak<Server>>>,
    /// Supervised streams' reports, by stream id.
    supervised: Mutex<BTreeMap<String, Slot>>,
    /// Bumped on every result of every engine and on every registration change.
    activity: watch::Sender<u64>,
    /// Bumped when the set of engines changes.
    membership: watch::Sender<u64>,
    /// Detection subscribers (gRPC and the console) connected now.
    subscribers: std::sync::atomic::AtomicU64,
    /// Results subscribers missed because they read too slowly, since the start.
    missed: std::sync::atomic::AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn bump(tx: &watch::Sender<u64>) {
    tx.send_modify(|n| *n = n.wrapping_add(1));
}

static HUB: LazyLock<Hub> = LazyLock::new(|| Hub {
    entries: Mutex::new(Vec::new()),
    named: Mutex::new(HashMap::new()),
    servers: Mutex::new(HashMap::new()),
    supervised: Mutex::new(BTreeMap::new()),
    activity: watch::channel(0).0,
    membership: watch::channel(0).0,
    subscribers: std::sync::atomic::AtomicU64::new(0),
    missed: std::sync::atomic::AtomicU64::new(0),
});

/// Counts a detection subscriber as connected while it lives.
pub(crate) struct Connected(());

impl Connected {
    pub(crate) fn new() -> Self {
        HUB.subscribers
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self(())
    }
}

impl Drop for Connected {
    fn drop(&mut self) {
        HUB.subscribers
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The hub of this process.
pub fn hub() -> &'static Hub {
    &HUB
}

/// Keeps an engine served until dropped.
#[must_use = "the engine is unregistered when the registration is dropped"]
pub struct Registration {
    engine: Arc<Engine>,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("model", &self.engine.model().source)
            .finish()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        hub().unregister(&self.engine);
    }
}

impl Hub {
    /// Detection subscribers connected now, and the results subscribers have missed
    /// (read too slowly) since the process started.
    pub fn subscriber_counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.subscribers.load(Relaxed), self.missed.load(Relaxed))
    }

    pub(crate) fn count_missed(&self, n: u64) {
        self.missed
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// Serves `engine`'s streams until the registration is dropped. Registering one
    /// engine several times is fine; it stays until the last registration goes.
    pub fn register(&self, engine: &Arc<Engine>) -> Registration {
        let mut entries = lock(&self.entries);
        match entries.iter_mut().find(|e| Arc::ptr_eq(&e.engine, engine)) {
            Some(entry) => entry.count += 1,
            None => {
                let listener = engine.add_listener(|| bump(&hub().activity));
                entries.push(Entry {
                    engine: engine.clone(),
                    count: 1,
                    listener,
                });
            }
        }
        drop(entries);
        bump(&self.membership);
        bump(&self.activity);
        Registration {
            engine: engine.clone(),
        }
    }

    fn unregister(&self, engine: &Arc<Engine>) {
        let mut entries = lock(&self.entries);
        if let Some(i) = entries.iter().position(|e| Arc::ptr_eq(&e.engine, engine)) {
            entries[i].count -= 1;
            if entries[i].count == 0 {
                let entry = entries.remove(i);
                entry.engine.remove_listener(entry.listener);
            }
        }
        drop(entries);
        bump(&self.membership);
        bump(&self.activity);
    }

    /// The registered engines, oldest first.
    pub fn engines(&self) -> Vec<Arc<Engine>> {
        lock(&self.entries)
            .iter()
            .map(|e| e.engine.clone())
            .collect()
    }

    /// Every stream of every registered engine, sorted by id.
    pub fn streams(&self) -> Vec<(Arc<Engine>, StreamInfo)> {
        let mut streams: Vec<_> = self
            .engines()
            .into_iter()
            .flat_map(|engine| {
                engine
                    .streams()
                    .into_iter()
                    .map(move |s| (engine.clone(), s))
                    .collect::<Vec<_>>()
            })
            .collect();
        streams.sort_by(|a, b| a.1.id.cmp(&b.1.id));
        streams
    }

    /// The stream `id` and its engine.
    pub fn stream(&self, id: &str) -> Option<(Arc<Engine>, StreamInfo)> {
        self.engines().into_iter().find_map(|engine| {
            let info = engine.streams().into_iter().find(|s| s.id == id)?;
            Some((engine, info))
        })
    }

    /// The engine shared under `id` in this process, started with `config` if there is
    /// none yet. Engines with the same id share one model and one worker; asking for an
    /// id that runs another model is an error. Loading holds only this id's place: a
    /// caller asking for another id does not wait behind a load of seconds.
    pub fn shared_engine(
        &self,
        id: &str,
        config: EngineConfig,
    ) -> Result<Arc<Engine>, EngineError> {
        let slot = {
            let mut named = lock(&self.named);
            // Forget ids whose engine is gone and that nobody is loading.
            named.retain(|_, slot| {
                Arc::strong_count(slot) > 1
                    || slot.try_lock().map_or(true, |weak| weak.strong_count() > 0)
            });
            named.entry(id.to_string()).or_default().clone()
        };
        let mut engine = lock(&slot);
        if let Some(running) = engine.upgrade() {
            let existing = running.config();
            if (&existing.model, &existing.device, &existing.dtype)
                != (&config.model, &config.device, &config.dtype)
            {
                return Err(EngineError::EngineMismatch {
                    id: id.to_string(),
                    existing: existing.model_description(),
                    requested: config.model_description(),
                });
            }
            return Ok(running);
        }
        let started = Engine::new(config)?;
        *engine = Arc::downgrade(&started);
        Ok(started)
    }

    /// The engine shared under `id`, if one is running.
    pub fn named_engine(&self, id: &str) -> Option<Arc<Engine>> {
        let slot = lock(&self.named).get(id).cloned()?;
        // A load under way: not running yet.
        slot.try_lock().ok()?.upgrade()
    }

    /// The servers of this process, by address.
    pub(crate) fn servers(&self) -> MutexGuard<'_, HashMap<String, Weak<Server>>> {
        lock(&self.servers)
    }

    /// Every supervised stream's health, sorted by id.
    pub fn supervised(&self) -> Vec<(String, StreamHealth)> {
        lock(&self.supervised)
            .iter()
            .map(|(id, slot)| (id.clone(), supervision::lock(slot).clone()))
            .collect()
    }

    /// The health of the supervised stream `id`, if a supervisor reports it.
    pub fn stream_health(&self, id: &str) -> Option<StreamHealth> {
        let slot = lock(&self.supervised).get(id).cloned()?;
        let health = supervision::lock(&slot).clone();
        Some(health)
    }

    pub(crate) fn supervised_slots(&self) -> MutexGuard<'_, BTreeMap<String, Slot>> {
        lock(&self.supervised)
    }

    /// Changes on every result and every registration: for waking subscribers.
    pub(crate) fn activity(&self) -> watch::Receiver<u64> {
        self.activity.subscribe()
    }

    /// Changes when engines come or go.
    pub(crate) fn membership(&self) -> watch::Receiver<u64> {
        self.membership.subscribe()
    }
}
