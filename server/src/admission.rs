//! Admission: how much request memory a shard's connections may hold, and how many
//! connections it serves.
//!
//! Every request frame is paid for from a [`RequestMemory`] budget before its body is
//! buffered (the frame reader knows its length from the 4-byte prefix), and the payment is
//! returned when the request has been answered. Two budgets apply: the connection's own
//! (so one connection cannot take a shard's whole budget) and the shard's
//! (`ServerConfig::shard_request_bytes_max`), shared by all its connections. A connection
//! that cannot pay stops being read, so back-pressure reaches its client through TCP. The
//! one exception keeps request-response clients alive while others hold the shard's
//! budget: a connection with no request in flight may always have one frame of at most
//! `cairn_wire::NON_APPEND_FRAME_SIZE_BYTES_MAX` without paying the shard (see
//! `native::connection`).
//!
//! A budget serves waiters strictly in arrival order, so a large frame is never starved by
//! a stream of small ones; a frame larger than the whole budget pays the whole budget, so
//! it waits until everything else is returned and then proceeds alone. Payments come back
//! from answered requests, which need no further payment to be answered, and from
//! connections that end, so the budget cannot deadlock on itself. (A client that announces
//! a frame and never sends it holds its payment until it closes: see RELIABILITY.md,
//! known limits.)
//!
//! `Admission` also holds the state of the shard's connection limit
//! (`ServerConfig::shard_connection_count_max`): refusals are counted and logged at most
//! once per `REFUSAL_LOG_INTERVAL`.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_engine::io::event::Event;

use crate::metrics::ShardMetrics;

/// Refused connections are logged at most this often (with how many were refused since),
/// so a flood of connections cannot flood the log too.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// A shard's admission state. Lives on the shard's executor.
pub(crate) struct Admission {
    /// The shard's budget of request bytes, shared by all its connections.
    pub(crate) request_memory: RequestMemory,
    /// Connections refused since the last log line.
    refused_count: Cell<u64>,
    /// When the last refusal was logged.
    refusal_logged_at: Cell<Option<Instant>>,
    metrics: Arc<ShardMetrics>,
}

impl Admission {
    /// Admission for a shard that may hold `request_bytes_max` bytes of requests.
    /// Its budget's waits and bytes held are counted in `metrics`.
    pub(crate) fn new(request_bytes_max: usize, metrics: Arc<ShardMetrics>) -> Admission {
        Admission {
            request_memory: RequestMemory::observed(request_bytes_max, Some(metrics.clone())),
            refused_count: Cell::new(0),
            refusal_logged_at: Cell::new(None),
            metrics,
        }
    }

    /// Counts a connection refused because the shard serves `open_count` of
    /// `open_count_max`, and logs it unless a refusal was logged within
    /// `REFUSAL_LOG_INTERVAL`.
    pub(crate) fn note_refused_connection(&self, open_count: usize, open_count_max: usize) {
        ShardMetrics::add(&self.metrics.connections_refused, 1);
        if let Some(refused_count) = self.refusal_to_log(Instant::now()) {
            tracing::warn!(
                refused_count,
                open_count,
                open_count_max,
                "refusing connections: the shard serves as many as it may",
            );
        }
    }

    /// Counts a refusal at `now`; `Some(refusals since the last line)` when a line is due.
    fn refusal_to_log(&self, now: Instant) -> Option<u64> {
        let refused_count = self.refused_count.get() + 1;
        let due = self
            .refusal_logged_at
            .get()
            .is_none_or(|logged_at| now.duration_since(logged_at) >= REFUSAL_LOG_INTERVAL);
        if !due {
            self.refused_count.set(refused_count);
            return None;
        }
        self.refused_count.set(0);
        self.refusal_logged_at.set(Some(now));
        Some(refused_count)
    }
}

/// A budget of bytes, paid in before a request frame is buffered and returned when the
/// request is answered. Waiters are served in arrival order.
#[derive(Clone)]
pub(crate) struct RequestMemory {
    state: Rc<RefCell<BudgetState>>,
}

struct BudgetState {
    capacity_bytes: usize,
    available_bytes: usize,
    /// Waiting payments, oldest first; only the first can be granted.
    waiters: VecDeque<Rc<Waiter>>,
    /// Where a shard's budget reports its waits and the bytes held; `None` for a
    /// connection's own budget.
    metrics: Option<Arc<ShardMetrics>>,
}

struct Waiter {
    size_bytes: usize,
    granted: Cell<bool>,
    granted_event: Event,
}

impl BudgetState {
    /// Grants waiting payments in order, as long as the oldest fits.
    fn grant_waiters(&mut self) {
        self.publish_held();
        while let Some(waiter) = self.waiters.front() {
            if waiter.size_bytes > self.available_bytes {
                break;
            }
            self.available_bytes -= waiter.size_bytes;
            waiter.granted.set(true);
            waiter.granted_event.notify();
            self.waiters.pop_front();
            self.publish_held();
        }
    }

    fn publish_held(&self) {
        if let Some(metrics) = &self.metrics {
            let held_bytes = self.capacity_bytes - self.available_bytes;
            metrics.request_bytes_held.store(
                u64::try_from(held_bytes).unwrap_or(u64::MAX),
                std::sync::atomic::Ordering::Relaxed,
            );
        }
    }

    fn release(&mut self, size_bytes: usize) {
        self.available_bytes += size_bytes;
        assert!(
            self.available_bytes <= self.capacity_bytes,
            "returned more than was paid: {} of {} available",
            self.available_bytes,
            self.capacity_bytes
        );
        self.grant_waiters();
    }
}

impl RequestMemory {
    /// A budget of `capacity_bytes` (at least 1).
    pub(crate) fn new(capacity_bytes: usize) -> RequestMemory {
        RequestMemory::observed(capacity_bytes, None)
    }

    /// A budget of `capacity_bytes` (at least 1) that counts its waits and bytes held in
    /// `metrics`.
    fn observed(capacity_bytes: usize, metrics: Option<Arc<ShardMetrics>>) -> RequestMemory {
        let capacity_bytes = capacity_bytes.max(1);
        RequestMemory {
            state: Rc::new(RefCell::new(BudgetState {
                capacity_bytes,
                available_bytes: capacity_bytes,
                waiters: VecDeque::new(),
                metrics,
            })),
        }
    }

    /// Pays `size_bytes`, waiting behind earlier payments until that much is available.
    /// A payment over the whole budget pays the whole budget. Dropping the future before it
    /// completes leaves the budget as it was.
    pub(crate) async fn pay(&self, size_bytes: usize) -> RequestMemoryPermit {
        let waiter = {
            let mut state = self.state.borrow_mut();
            let size_bytes = size_bytes.min(state.capacity_bytes);
            if state.waiters.is_empty() && size_bytes <= state.available_bytes {
                state.available_bytes -= size_bytes;
                state.publish_held();
                return self.permit(size_bytes);
            }
            if let Some(metrics) = &state.metrics {
                ShardMetrics::add(&metrics.request_budget_waits, 1);
            }
            let waiter = Rc::new(Waiter {
                size_bytes,
                granted: Cell::new(false),
                granted_event: Event::new(),
            });
            state.waiters.push_back(waiter.clone());
            waiter
        };
        let mut waiting = WaitingPayment {
            memory: self,
            waiter: Some(waiter),
        };
        waiting.granted().await
    }

    /// Bytes not paid for now.
    #[cfg(test)]
    fn available_bytes(&self) -> usize {
        self.state.borrow().available_bytes
    }

    fn permit(&self, size_bytes: usize) -> RequestMemoryPermit {
        RequestMemoryPermit {
            memory: self.clone(),
            size_bytes,
        }
    }
}

/// A payment in a queue; dropped before it was granted, it leaves the queue, and dropped
/// after, it returns what was granted.
struct WaitingPayment<'a> {
    memory: &'a RequestMemory,
    waiter: Option<Rc<Waiter>>,
}

impl WaitingPayment<'_> {
    async fn granted(&mut self) -> RequestMemoryPermit {
        let waiter = self
            .waiter
            .clone()
            .expect("a waiting payment has its waiter until it is granted");
        loop {
            let listener = waiter.granted_event.listen();
            if waiter.granted.get() {
                self.waiter = None;
                return self.memory.permit(waiter.size_bytes);
            }
            listener.await;
        }
    }
}

impl Drop for WaitingPayment<'_> {
    fn drop(&mut self) {
        let Some(waiter) = self.waiter.take() else {
            return;
        };
        let mut state = self.memory.state.borrow_mut();
        if waiter.granted.get() {
            state.release(waiter.size_bytes);
        } else {
            state.waiters.retain(|queued| !Rc::ptr_eq(queued, &waiter));
            // It may have been the oldest, blocking others that fit.
            state.grant_waiters();
        }
    }
}

/// Bytes paid from a [`RequestMemory`]; dropping it returns them.
pub(crate) struct RequestMemoryPermit {
    memory: RequestMemory,
    size_bytes: usize,
}

impl RequestMemoryPermit {
    /// The bytes this permit holds.
    #[cfg(test)]
    fn size_bytes(&self) -> usize {
        self.size_bytes
    }
}

impl Drop for RequestMemoryPermit {
    fn drop(&mut self) {
        self.memory.state.borrow_mut().release(self.size_bytes);
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    use super::*;

    /// Polls `future` once, outside any executor: the budget never needs one.
    fn poll_once<F: Future>(future: std::pin::Pin<&mut F>) -> Poll<F::Output> {
        future.poll(&mut Context::from_waker(Waker::noop()))
    }

    fn ready<F: Future>(future: F) -> F::Output {
        let mut future = pin!(future);
        match poll_once(future.as_mut()) {
            Poll::Ready(output) => output,
            Poll::Pending => panic!("expected the payment to be granted at once"),
        }
    }

    #[test]
    fn refusals_are_logged_at_most_once_per_interval() {
        let admission = Admission::new(1, Arc::new(ShardMetrics::new()));
        let start = Instant::now();
        assert_eq!(admission.refusal_to_log(start), Some(1));
        for second in 1..10 {
            let now = start + Duration::from_secs(second);
            assert_eq!(admission.refusal_to_log(now), None);
        }
        // The next line says how many were refused meanwhile, itself included.
        assert_eq!(
            admission.refusal_to_log(start + REFUSAL_LOG_INTERVAL),
            Some(10)
        );
        assert_eq!(admission.refusal_to_log(start + REFUSAL_LOG_INTERVAL), None);
    }

    #[test]
    fn payments_are_returned_when_permits_drop() {
        let memory = RequestMemory::new(100);
        let first = ready(memory.pay(60));
        let second = ready(memory.pay(40));
        assert_eq!(memory.available_bytes(), 0);
        drop(first);
        assert_eq!(memory.available_bytes(), 60);
        drop(second);
        assert_eq!(memory.available_bytes(), 100);
    }

    #[test]
    fn waiters_are_served_in_arrival_order() {
        let memory = RequestMemory::new(100);
        let held = ready(memory.pay(90));
        // A large payment waits; a small one that would fit must not overtake it, or a
        // stream of small frames could starve a large one for ever.
        let mut large = pin!(memory.pay(80));
        assert!(poll_once(large.as_mut()).is_pending());
        let mut small = pin!(memory.pay(5));
        assert!(poll_once(small.as_mut()).is_pending());
        drop(held);
        let Poll::Ready(large_permit) = poll_once(large.as_mut()) else {
            panic!("the oldest payment is granted first");
        };
        let Poll::Ready(small_permit) = poll_once(small.as_mut()) else {
            panic!("and the next one once it fits");
        };
        assert_eq!(large_permit.size_bytes() + small_permit.size_bytes(), 85);
        assert_eq!(memory.available_bytes(), 15);
    }

    #[test]
    fn a_payment_over_the_budget_pays_all_of_it_and_proceeds_alone() {
        let memory = RequestMemory::new(100);
        let held = ready(memory.pay(1));
        let mut huge = pin!(memory.pay(1_000_000));
        assert!(poll_once(huge.as_mut()).is_pending());
        drop(held);
        let Poll::Ready(permit) = poll_once(huge.as_mut()) else {
            panic!("granted once the whole budget is free");
        };
        assert_eq!(permit.size_bytes(), 100);
        assert_eq!(memory.available_bytes(), 0);
        drop(permit);
        assert_eq!(memory.available_bytes(), 100);
    }

    #[test]
    fn a_cancelled_payment_leaves_no_trace() {
        let memory = RequestMemory::new(100);
        let held = ready(memory.pay(50));
        {
            // Cancelled while waiting at the head of the queue: the one behind it, which
            // fits, is granted as soon as it is gone.
            let mut blocked = Box::pin(memory.pay(80));
            assert!(poll_once(blocked.as_mut()).is_pending());
            let mut behind = pin!(memory.pay(30));
            assert!(poll_once(behind.as_mut()).is_pending());
            drop(blocked);
            assert!(poll_once(behind.as_mut()).is_ready());
        }
        assert_eq!(memory.available_bytes(), 50);
        {
            // Granted but dropped before it was polled again: returned.
            let mut granted_unseen = pin!(memory.pay(60));
            assert!(poll_once(granted_unseen.as_mut()).is_pending());
            drop(held);
            assert_eq!(memory.available_bytes(), 40);
        }
        assert_eq!(memory.available_bytes(), 100);
        assert!(memory.state.borrow().waiters.is_empty());
    }
}
