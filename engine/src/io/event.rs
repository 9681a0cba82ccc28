//! `Event`: wake every task waiting for "something changed" on one executor.
//!
//! A generation counter plus the wakers of its listeners. A listener created before a
//! `notify` completes; one created after waits for the next. Used for group completion,
//! "a group was taken" (back-pressure), "a group is ready" (the committer) and "a
//! partition's durable end moved" (long-poll fetch). Single-threaded by construction: it
//! lives in an `Rc` on its shard's executor.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

#[derive(Default)]
struct EventState {
    generation: u64,
    wakers: Vec<Waker>,
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
        for waker in wakers {
            waker.wake();
        }
    }

    /// A future that completes at the next `notify` after this call.
    pub fn listen(&self) -> Listener {
        Listener {
            state: self.state.clone(),
            generation: self.state.borrow().generation,
        }
    }
}

/// Completes once its `Event` has been notified since the listener was created.
pub struct Listener {
    state: Rc<RefCell<EventState>>,
    generation: u64,
}

impl Future for Listener {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.state.borrow_mut();
        if state.generation != self.generation {
            return Poll::Ready(());
        }
        // A task polled again re-registers; keep one waker per task so the list stays
        // bounded by the number of waiting tasks.
        if !state.wakers.iter().any(|waker| waker.will_wake(cx.waker())) {
            state.wakers.push(cx.waker().clone());
        }
        Poll::Pending
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
}
