//! `Event`: wake every task waiting for "something changed" on one executor.
//!
//! A generation counter plus the wakers of its listeners. A listener created before a
//! `notify` completes; one created after waits for the next. Used for group completion,
//! "a group was taken" (back-pressure), "a group is ready" (the committer) and "a
//! partition's durable end moved" (long-poll fetch). Single-threaded by construction: it
//! lives in an `Rc` on its shard's executor.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use hashbrown::HashMap;

#[derive(Default)]
struct EventState {
    generation: u64,
    /// The waker of each waiting listener, by listener id. A listener removes its entry
    /// when it is dropped, so the map holds only listeners that still wait: a task that
    /// listened and went away (a closed connection, a fetch that timed out) leaves nothing
    /// behind, neither memory nor work for the next `notify`.
    wakers: HashMap<u64, Waker>,
    listener_id_next: u64,
}

/// A broadcast wake-up for tasks on one executor.
#[derive(Default, Clone)]
pub struct Event {
    state: Rc<RefCell<EventState>>,
}

impl Event {
    /// A new event with no listeners.
    pub fn new() -> Self {
        Self::default()
    }

    /// Wakes every current listener.
    pub fn notify(&self) {
        let wakers = {
            let mut state = self.state.borrow_mut();
            state.generation += 1;
            std::mem::take(&mut state.wakers)
        };
        for waker in wakers.into_values() {
            waker.wake();
        }
    }

    /// A future that completes at the next `notify` after this call.
    pub fn listen(&self) -> Listener {
        let mut state = self.state.borrow_mut();
        let id = state.listener_id_next;
        state.listener_id_next += 1;
        Listener {
            state: self.state.clone(),
            generation: state.generation,
            id,
            registered: Cell::new(false),
        }
    }

    /// Listeners waiting now (for tests).
    #[cfg(test)]
    fn waiting_count(&self) -> usize {
        self.state.borrow().wakers.len()
    }
}

/// Completes once its `Event` has been notified since the listener was created.
pub struct Listener {
    state: Rc<RefCell<EventState>>,
    generation: u64,
    id: u64,
    /// Whether `wakers` may hold an entry for `id`.
    registered: Cell<bool>,
}

impl Future for Listener {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.state.borrow_mut();
        if state.generation != self.generation {
            return Poll::Ready(());
        }
        let replaced = match state.wakers.get(&self.id) {
            Some(waker) if waker.will_wake(cx.waker()) => None,
            _ => state.wakers.insert(self.id, cx.waker().clone()),
        };
        drop(state);
        // Dropped outside the borrow: dropping a waker may drop a task, and with it other
        // listeners of this event.
        drop(replaced);
        self.registered.set(true);
        Poll::Pending
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if self.registered.get() {
            // After a notify the entry is gone already; removing nothing is fine. The waker
            // is dropped after the borrow ends (see `poll`).
            let removed = self.state.borrow_mut().wakers.remove(&self.id);
            drop(removed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listener_completes_only_after_notify() {
        let event = Event::new();
        let mut before = Box::pin(event.listen());
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(before.as_mut().poll(&mut cx).is_pending());
        event.notify();
        assert!(before.as_mut().poll(&mut cx).is_ready());
        let mut after = Box::pin(event.listen());
        assert!(after.as_mut().poll(&mut cx).is_pending());
    }

    #[test]
    fn a_dropped_listener_leaves_nothing_behind() {
        let event = Event::new();
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        for _ in 0..1000 {
            let mut listener = Box::pin(event.listen());
            assert!(listener.as_mut().poll(&mut cx).is_pending());
            assert!(listener.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(event.waiting_count(), 0, "dropped listeners deregistered");
        let mut waiting = Box::pin(event.listen());
        assert!(waiting.as_mut().poll(&mut cx).is_pending());
        assert_eq!(event.waiting_count(), 1);
        event.notify();
        assert_eq!(event.waiting_count(), 0);
        assert!(waiting.as_mut().poll(&mut cx).is_ready());
    }
}
