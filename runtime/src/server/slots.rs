//! Slots: N engine sessions (each with its own KV cache) shared by all requests.
//!
//! - A request takes a free slot at once if nobody is waiting; otherwise it joins the back of a
//!   FIFO queue, and each slot that comes free goes to the oldest waiter: served in arrival order.
//! - Among free slots, it takes the one whose cached tokens share the longest prefix with its
//!   prompt (the previous turn of the same conversation), else the least recently used one, so a
//!   conversation keeps finding its KV cache and does not re-process its history.
//! - A slot is held by a `SlotLease` and returns to the pool when the lease drops, whatever ends
//!   the generation (finished, failed, client gone, panicked).

use super::model::{Model, ModelSession};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::oneshot;

pub struct Slot {
    pub id: usize,
    pub session: Box<dyn ModelSession>,
    /// The prompt of the last request this slot served (a prefix of what its KV cache holds).
    pub cached: Vec<u32>,
    last_used: u64,
}

/// What `/slots` and `/health` report.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SlotInfo {
    pub id: usize,
    pub is_processing: bool,
    pub n_cached_tokens: usize,
    pub requests: u64,
    /// How the last generation ended (`end_token`, `max_tokens`, `cancelled`...), if any.
    pub last_stop: Option<String>,
    pub last_generated_tokens: usize,
    pub last_cached_tokens: usize,
}

struct State {
    free: Vec<Slot>,
    waiters: VecDeque<oneshot::Sender<Slot>>,
}

pub struct SlotPool {
    state: Mutex<State>,
    info: Mutex<Vec<SlotInfo>>,
    clock: AtomicU64,
    n: usize,
}

/// Locks even if a thread panicked while holding the lock: the data here stays consistent
/// (every update is a single assignment), so a poisoned lock is no reason to stop serving.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Which free slot a prompt takes: the one whose cache it continues best, counting only slots
/// whose cached prompt it shares at least half of (every chat shares the template's first few
/// tokens; that must not make a new conversation evict another's cache); else the least
/// recently used slot (never-used slots first).
fn choose(free: &[Slot], prompt: &[u32]) -> usize {
    let continues = (0..free.len())
        .filter_map(|i| {
            let s = &free[i];
            let lcp = common_prefix(&s.cached, prompt);
            (!s.cached.is_empty() && lcp * 2 >= s.cached.len()).then_some((lcp, i))
        })
        .max();
    match continues {
        Some((_, i)) => i,
        None => (0..free.len()).min_by_key(|&i| free[i].last_used).expect("free is not empty"),
    }
}

impl SlotPool {
    pub fn new(model: &dyn Model, n: usize) -> Arc<SlotPool> {
        let n = n.max(1);
        let free =
            (0..n).map(|id| Slot { id, session: model.new_session(), cached: Vec::new(), last_used: 0 }).collect();
        let info = (0..n)
            .map(|id| SlotInfo {
                id,
                is_processing: false,
                n_cached_tokens: 0,
                requests: 0,
                last_stop: None,
                last_generated_tokens: 0,
                last_cached_tokens: 0,
            })
            .collect();
        Arc::new(SlotPool {
            state: Mutex::new(State { free, waiters: VecDeque::new() }),
            info: Mutex::new(info),
            clock: AtomicU64::new(0),
            n,
        })
    }

    /// How many slots (at least 1).
    pub fn slots(&self) -> usize {
        self.n
    }

    /// Requests waiting for a slot.
    pub fn queued(&self) -> usize {
        lock(&self.state).waiters.iter().filter(|w| !w.is_closed()).count()
    }

    pub fn info(&self) -> Vec<SlotInfo> {
        lock(&self.info).clone()
    }

    /// Wait for a slot (FIFO), preferring the one that holds the longest prefix of `prompt`.
    /// Dropping the future while it waits leaves the queue (and gives back a slot it was handed).
    pub async fn acquire(self: &Arc<Self>, prompt: &[u32]) -> SlotLease {
        let rx = {
            let mut st = lock(&self.state);
            st.waiters.retain(|w| !w.is_closed());
            if st.waiters.is_empty() && !st.free.is_empty() {
                let best = choose(&st.free, prompt);
                let slot = st.free.swap_remove(best);
                return self.lease(slot);
            }
            let (tx, rx) = oneshot::channel();
            st.waiters.push_back(tx);
            rx
        };
        let mut waiter = Waiter { rx: Some(rx), pool: self.clone() };
        let slot = waiter.rx.as_mut().expect("set above").await;
        waiter.rx = None;
        match slot {
            Ok(slot) => self.lease(slot),
            // The sender lives in the queue until it is used; it is only dropped with the pool.
            Err(_) => unreachable!("slot pool dropped while a request waits on it"),
        }
    }

    fn lease(self: &Arc<Self>, slot: Slot) -> SlotLease {
        {
            let mut info = lock(&self.info);
            info[slot.id].is_processing = true;
            info[slot.id].requests += 1;
        }
        SlotLease { slot: Some(slot), pool: self.clone() }
    }

    /// Hand the slot to the oldest waiter still there, or put it back.
    fn release(&self, mut slot: Slot) {
        slot.last_used = self.clock.fetch_add(1, Ordering::Relaxed) + 1;
        let mut st = lock(&self.state);
        while let Some(w) = st.waiters.pop_front() {
            match w.send(slot) {
                Ok(()) => return,
                Err(back) => slot = back, // that waiter left; try the next
            }
        }
        st.free.push(slot);
    }

    pub fn set_result(&self, id: usize, cached: usize, stop: &str, generated: usize, cached_tokens: usize) {
        let mut info = lock(&self.info);
        info[id].n_cached_tokens = cached;
        info[id].last_stop = Some(stop.to_string());
        info[id].last_generated_tokens = generated;
        info[id].last_cached_tokens = cached_tokens;
    }
}

/// A request's place in the queue: if the request goes away after a slot was sent to it but
/// before it took it, the slot goes back to the pool instead of being lost.
struct Waiter {
    rx: Option<oneshot::Receiver<Slot>>,
    pool: Arc<SlotPool>,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if let Some(mut rx) = self.rx.take() {
            rx.close();
            if let Ok(slot) = rx.try_recv() {
                self.pool.release(slot);
            }
        }
    }
}

/// A slot held by one request; goes back to the pool on drop.
pub struct SlotLease {
    slot: Option<Slot>,
    pool: Arc<SlotPool>,
}

impl SlotLease {
    pub fn slot(&mut self) -> &mut Slot {
        self.slot.as_mut().expect("present until drop")
    }
    pub fn id(&self) -> usize {
        self.slot.as_ref().expect("present until drop").id
    }
}

impl Drop for SlotLease {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            lock(&self.pool.info)[slot.id].is_processing = false;
            self.pool.release(slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::testing::FakeModel;
    use std::time::Duration;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    #[test]
    fn sessions_are_made_once() {
        let m = FakeModel::new();
        let pool = SlotPool::new(&m, 3);
        assert_eq!(pool.slots(), 3);
        assert_eq!(m.counters.sessions.load(Ordering::SeqCst), 3);
        rt().block_on(async {
            for _ in 0..10 {
                let l = pool.acquire(&[1, 2]).await;
                drop(l);
            }
        });
        assert_eq!(m.counters.sessions.load(Ordering::SeqCst), 3, "no session made per request");
    }

    #[test]
    fn prefix_affinity() {
        let m = FakeModel::new();
        let pool = SlotPool::new(&m, 3);
        rt().block_on(async {
            // conversation A lands somewhere, B elsewhere
            let mut a = pool.acquire(&[1, 10, 11]).await;
            a.slot().cached = vec![1, 10, 11];
            let a_id = a.id();
            let mut b = pool.acquire(&[1, 20]).await;
            b.slot().cached = vec![1, 20];
            let b_id = b.id();
            assert_ne!(a_id, b_id);
            drop(a);
            drop(b);
            // A's next turn finds A's slot, B's finds B's, whatever the order
            let mut b2 = pool.acquire(&[1, 20, 21, 22]).await;
            assert_eq!(b2.id(), b_id);
            let a2 = pool.acquire(&[1, 10, 11, 12]).await;
            assert_eq!(a2.id(), a_id);
            b2.slot().cached = vec![1, 20, 21, 22];
            // a new conversation takes the slot not holding anything useful
            let c = pool.acquire(&[1, 30]).await;
            assert!(c.id() != a_id && c.id() != b_id);
        });
    }

    #[test]
    fn a_shared_template_prefix_does_not_steal_a_conversation() {
        let m = FakeModel::new();
        let pool = SlotPool::new(&m, 2);
        rt().block_on(async {
            let mut a = pool.acquire(&[1, 7, 7, 10, 11, 12, 13]).await;
            a.slot().cached = vec![1, 7, 7, 10, 11, 12, 13];
            let a_id = a.id();
            drop(a);
            // a new conversation with the same 3-token template head goes to the other slot
            let b = pool.acquire(&[1, 7, 7, 20]).await;
            assert_ne!(b.id(), a_id);
        });
    }

    #[test]
    fn least_recently_used_when_no_prefix_matches() {
        let m = FakeModel::new();
        let pool = SlotPool::new(&m, 2);
        rt().block_on(async {
            let x = pool.acquire(&[5]).await;
            let x_id = x.id();
            drop(x);
            // the other slot was never used: it is the least recently used one
            let y = pool.acquire(&[6]).await;
            assert_ne!(y.id(), x_id);
        });
    }

    #[test]
    fn queue_is_fifo_and_survives_departures() {
        let m = FakeModel::new();
        let pool = SlotPool::new(&m, 1);
        rt().block_on(async {
            let held = pool.acquire(&[]).await;
            let order = Arc::new(Mutex::new(Vec::new()));
            let mut tasks = Vec::new();
            for i in 0..4 {
                let (pool, order) = (pool.clone(), order.clone());
                tasks.push(tokio::spawn(async move {
                    let l = pool.acquire(&[]).await;
                    order.lock().unwrap().push(i);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    drop(l);
                }));
                tokio::time::sleep(Duration::from_millis(5)).await; // arrive in order
            }
            assert_eq!(pool.queued(), 4);
            // waiter 1 gives up
            tasks[1].abort();
            tokio::time::sleep(Duration::from_millis(5)).await;
            assert_eq!(pool.queued(), 3);
            drop(held);
            for (i, t) in tasks.into_iter().enumerate() {
                if i != 1 {
                    t.await.unwrap();
                }
            }
            assert_eq!(*order.lock().unwrap(), vec![0, 2, 3]);
            // and the slot is back
            let again = tokio::time::timeout(Duration::from_secs(1), pool.acquire(&[])).await;
            assert!(again.is_ok(), "slot lost");
        });
    }

    #[test]
    fn a_slot_sent_to_a_departed_waiter_is_not_lost() {
        let m = FakeModel::new();
        let pool = SlotPool::new(&m, 1);
        rt().block_on(async {
            let held = pool.acquire(&[]).await;
            let fut = Box::pin(pool.acquire(&[]));
            let mut fut = fut;
            // poll once so it queues
            assert!(futures::poll!(&mut fut).is_pending());
            drop(held); // the slot is sent to the waiter...
            drop(fut); // ...which leaves before taking it
            let again = tokio::time::timeout(Duration::from_secs(1), pool.acquire(&[])).await;
            assert!(again.is_ok(), "slot lost");
            assert_eq!(pool.queued(), 0);
        });
    }

    #[test]
    fn info_tracks_processing() {
        let m = FakeModel::new();
        let pool = SlotPool::new(&m, 2);
        rt().block_on(async {
            let l = pool.acquire(&[]).await;
            let id = l.id();
            assert!(pool.info()[id].is_processing);
            pool.set_result(id, 7, "cancelled", 3, 2);
            drop(l);
            let i = &pool.info()[id];
            assert!(!i.is_processing);
            assert_eq!((i.n_cached_tokens, i.last_stop.as_deref(), i.requests), (7, Some("cancelled"), 1));
        });
    }
}
