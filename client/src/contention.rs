//! Contention management for read + conditional-append cycles on hot keys.
//!
//! A command handler reads a key's latest offset and appends conditionally on it. When many
//! handlers do that to one key at once, each success invalidates every other attempt in
//! flight: goodput falls to one success per conflict round trip, and conflicts per success
//! approach the handler count. Two remedies live here, both on the client, because only
//! the client knows which attempts are its own:
//!
//! - **Local turns** ([`ContentionPolicy::Queue`]): the handlers of one executor that work
//!   on the same key take turns, first come first served. A turn covers the read and the
//!   sending of the append, not the wait for its acknowledgement: the holder gives the turn
//!   up as soon as its append is queued on the connection ([`Turn::release_after_send`]),
//!   so the next holder's read goes out behind it, and with `include_appended` it sees that
//!   append and chains its own right after, into the same group commit. Queueing locally
//!   costs nothing on the wire; a conflict costs a round trip and wastes the server's work.
//! - **Randomized exponential backoff** ([`Backoff`]), for what local turns cannot see:
//!   handlers of other executors and processes. After the n-th consecutive conflict of a
//!   cycle the handler waits a uniformly random time in `[0, min(cap, base × 2^(n-1))]`
//!   ("full jitter"), which spreads the retries of a crowd over a window that grows with
//!   the crowd, and starts again from nothing on the next cycle.
//!
//! A [`Contention`] belongs to one executor, like [`crate::Client`]; its tasks share it
//! through clones. Nothing here changes what is appended: a turn only orders a handler's
//! own requests, so correctness never depends on it (a conflict still decides every race).
//! The state is bounded: a key has an entry only while a handler holds or waits for its
//! turn, so there are never more entries than handlers.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::pin;
use std::rc::Rc;
use std::time::Duration;

use glommio::sync::{Semaphore, StaticPermit};

/// Where the backoff window starts: about one loopback round trip, the time one conflict
/// costs, so that the first retry of a pair of racers already lands apart more often than
/// not.
pub const BACKOFF_BASE_DEFAULT: Duration = Duration::from_micros(50);

/// Where the backoff window stops growing: long enough to spread a few hundred racers
/// one round trip apart, short enough that a handler never sleeps through many rounds.
pub const BACKOFF_CAP_DEFAULT: Duration = Duration::from_millis(10);

/// Randomized exponential backoff with full jitter: how long to wait after a conflict.
///
/// Sans-I/O: [`Backoff::delay`] turns a conflict count and random bits into a duration; the
/// caller sleeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The window after the first conflict of a cycle.
    pub base: Duration,
    /// The largest window, whatever the conflict count.
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            base: BACKOFF_BASE_DEFAULT,
            cap: BACKOFF_CAP_DEFAULT,
        }
    }
}

impl Backoff {
    /// The window after the `conflict_count`-th consecutive conflict: nothing before the
    /// first, then `base`, doubling with each further conflict, never above `cap`.
    #[must_use]
    pub fn window(&self, conflict_count: u32) -> Duration {
        let Some(doublings) = conflict_count.checked_sub(1) else {
            return Duration::ZERO;
        };
        // 2^31 × any base above a nanosecond is past every sensible cap; clamping the
        // shift keeps the multiplication defined for any count.
        let factor = 1u32 << doublings.min(31);
        self.base
            .checked_mul(factor)
            .map_or(self.cap, |window| window.min(self.cap))
    }

    /// The wait after the `conflict_count`-th consecutive conflict, drawn from `random`
    /// (uniform bits): uniform in `[0, window(conflict_count)]`, to the nanosecond.
    #[must_use]
    pub fn delay(&self, conflict_count: u32, random: u64) -> Duration {
        let window_ns = u64::try_from(self.window(conflict_count).as_nanos()).unwrap_or(u64::MAX);
        if window_ns == 0 {
            return Duration::ZERO;
        }
        // Multiply-shift maps 64 random bits onto 0..=window without the bias of `%`.
        let scaled = (u128::from(random) * (u128::from(window_ns) + 1)) >> 64;
        Duration::from_nanos(u64::try_from(scaled).unwrap_or(window_ns))
    }
}

/// What a [`Contention`] does around each cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentionPolicy {
    /// Nothing: every handler reads and appends at once, and retries at once after a
    /// conflict. What the log alone gives.
    None,
    /// Randomized exponential backoff after each conflict; no local turns.
    Backoff(Backoff),
    /// Local turns per key, and backoff after the conflicts that still happen (with handlers
    /// of other executors or processes).
    Queue(Backoff),
}

impl ContentionPolicy {
    /// The policy's name, for reports: `none`, `backoff` or `queue`.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            ContentionPolicy::None => "none",
            ContentionPolicy::Backoff(_) => "backoff",
            ContentionPolicy::Queue(_) => "queue",
        }
    }

    fn backoff(&self) -> Option<&Backoff> {
        match self {
            ContentionPolicy::None => None,
            ContentionPolicy::Backoff(backoff) | ContentionPolicy::Queue(backoff) => Some(backoff),
        }
    }
}

/// The contention policy of one executor's command handlers, shared by cloning. See the
/// module docs for how a cycle uses it.
#[derive(Clone)]
pub struct Contention {
    inner: Rc<ContentionInner>,
}

struct ContentionInner {
    policy: ContentionPolicy,
    /// Keys some handler holds or waits for a turn on (only under `Queue`).
    keys: RefCell<HashMap<Vec<u8>, Rc<KeyTurns>>>,
    /// SplitMix64 state of the backoff's random draws.
    random_state: Cell<u64>,
}

/// The turns of one key: a one-unit semaphore (glommio's wakes waiters in arrival order)
/// and how many handlers hold or wait for it, so that the last one out removes the entry.
struct KeyTurns {
    turn: Rc<Semaphore>,
    handler_count: Cell<u32>,
}

impl std::fmt::Debug for Contention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Contention")
            .field("policy", &self.inner.policy)
            .field("key_count", &self.inner.keys.borrow().len())
            .finish_non_exhaustive()
    }
}

impl Contention {
    /// A policy for the handlers of this executor; `seed` seeds the backoff's random waits
    /// (give each executor its own, or their handlers back off in step).
    #[must_use]
    pub fn new(policy: ContentionPolicy, seed: u64) -> Contention {
        Contention {
            inner: Rc::new(ContentionInner {
                policy,
                keys: RefCell::new(HashMap::new()),
                random_state: Cell::new(seed),
            }),
        }
    }

    /// The policy this was made with.
    #[must_use]
    pub fn policy(&self) -> ContentionPolicy {
        self.inner.policy
    }

    /// Keys some handler holds or waits for a turn on right now.
    #[must_use]
    pub fn key_count(&self) -> usize {
        self.inner.keys.borrow().len()
    }

    /// Waits for this executor's turn on `key` (at once unless the policy is `Queue` and
    /// another handler holds it), before the cycle's read. Hold the [`Turn`] until the
    /// append is sent: [`Turn::release_after_send`].
    pub async fn turn(&self, key: &[u8]) -> Turn {
        let ContentionPolicy::Queue(_) = self.inner.policy else {
            return Turn {
                held: None,
                waited: false,
            };
        };
        let turns = {
            let mut keys = self.inner.keys.borrow_mut();
            let turns = keys.entry(key.to_vec()).or_insert_with(|| {
                Rc::new(KeyTurns {
                    turn: Rc::new(Semaphore::new(1)),
                    handler_count: Cell::new(0),
                })
            });
            turns.handler_count.set(turns.handler_count.get() + 1);
            turns.clone()
        };
        // Counted before waiting, so that a turn given up meanwhile never removes the entry
        // this handler waits on.
        let mut held = HeldTurn {
            contention: self.inner.clone(),
            key: key.to_vec(),
            turns: turns.clone(),
            permit: None,
        };
        let (permit, waited) = match turns.turn.try_acquire_static_permit(1) {
            Ok(permit) => (permit, false),
            Err(_) => {
                let permit = turns
                    .turn
                    .acquire_static_permit(1)
                    .await
                    .expect("a key's turn semaphore is never closed");
                (permit, true)
            }
        };
        held.permit = Some(permit);
        Turn {
            held: Some(held),
            waited,
        }
    }

    /// Waits out the backoff after the `conflict_count`-th consecutive conflict of a cycle
    /// (1 for the first); at once under `None`. Call it before taking the turn again.
    pub async fn conflicted(&self, conflict_count: u32) {
        let delay = self.backoff_delay(conflict_count);
        if !delay.is_zero() {
            glommio::timer::sleep(delay).await;
        }
    }

    /// The wait [`Contention::conflicted`] would sleep, drawn now.
    #[must_use]
    pub fn backoff_delay(&self, conflict_count: u32) -> Duration {
        match self.inner.policy.backoff() {
            Some(backoff) => backoff.delay(conflict_count, self.next_random()),
            None => Duration::ZERO,
        }
    }

    fn next_random(&self) -> u64 {
        // SplitMix64: one step per draw is all the quality a backoff needs.
        let state = self
            .inner
            .random_state
            .get()
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        self.inner.random_state.set(state);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// A handler's turn on a key; dropping it gives the turn to the next handler waiting.
#[must_use = "a turn is given up when dropped"]
pub struct Turn {
    held: Option<HeldTurn>,
    waited: bool,
}

impl Turn {
    /// Whether another handler of this executor held the key's turn while this one waited:
    /// then the key has probably moved since anything this handler learnt before, and a
    /// retry should read it again rather than trust an older conflict's offset.
    #[must_use]
    pub fn waited(&self) -> bool {
        self.waited
    }

    /// Runs `append` and gives the turn up as soon as it is under way: after its first
    /// poll, which for [`crate::Client::append`] queues the request on the connection when
    /// one is open and has a free slot. The next holder's requests then follow it on the
    /// wire. Then waits for the append's result, without the turn.
    pub async fn release_after_send<F: Future>(self, append: F) -> F::Output {
        let mut append = pin!(append);
        let first = futures_lite::future::poll_once(append.as_mut()).await;
        drop(self);
        match first {
            Some(output) => output,
            None => append.await,
        }
    }
}

struct HeldTurn {
    contention: Rc<ContentionInner>,
    key: Vec<u8>,
    turns: Rc<KeyTurns>,
    permit: Option<StaticPermit>,
}

impl Drop for HeldTurn {
    fn drop(&mut self) {
        // The permit first: it wakes the next waiter, which is still counted, so the entry
        // stays for it.
        self.permit = None;
        let handler_count = self.turns.handler_count.get() - 1;
        self.turns.handler_count.set(handler_count);
        if handler_count == 0 {
            self.contention.keys.borrow_mut().remove(&self.key);
        }
    }
}

impl std::fmt::Debug for Turn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Turn")
            .field("is_held", &self.held.is_some())
            .field("waited", &self.waited)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

    use proptest::prelude::*;

    use super::*;
    use crate::pipelined::tests::run;

    const BACKOFF: Backoff = Backoff {
        base: Duration::from_micros(50),
        cap: Duration::from_millis(10),
    };

    #[test]
    fn window_is_zero_before_a_conflict_then_doubles_up_to_the_cap() {
        assert_eq!(BACKOFF.window(0), Duration::ZERO);
        assert_eq!(BACKOFF.window(1), Duration::from_micros(50));
        assert_eq!(BACKOFF.window(2), Duration::from_micros(100));
        assert_eq!(BACKOFF.window(8), Duration::from_micros(6400));
        assert_eq!(BACKOFF.window(9), Duration::from_millis(10));
        assert_eq!(BACKOFF.window(u32::MAX), Duration::from_millis(10));
    }

    #[test]
    fn delay_spans_the_whole_window() {
        assert_eq!(BACKOFF.delay(1, 0), Duration::ZERO);
        assert_eq!(BACKOFF.delay(1, u64::MAX), Duration::from_micros(50));
        assert_eq!(BACKOFF.delay(0, u64::MAX), Duration::ZERO);
        assert_eq!(BACKOFF.delay(3, 1 << 63), Duration::from_micros(100));
    }

    proptest! {
        #[test]
        fn delay_stays_within_the_window(
            conflict_count in 0u32..100,
            random: u64,
            base_us in 1u64..10_000,
            cap_us in 1u64..1_000_000,
        ) {
            let backoff = Backoff {
                base: Duration::from_micros(base_us),
                cap: Duration::from_micros(cap_us),
            };
            let window = backoff.window(conflict_count);
            prop_assert!(window <= backoff.cap);
            prop_assert!(backoff.delay(conflict_count, random) <= window);
            // The window never shrinks as conflicts add up.
            prop_assert!(backoff.window(conflict_count + 1) >= window);
        }
    }

    #[test]
    fn draws_are_random_and_reproducible_by_seed() {
        let policy = ContentionPolicy::Backoff(BACKOFF);
        let draws = |seed| {
            let contention = Contention::new(policy, seed);
            (0..200)
                .map(|_| contention.backoff_delay(4))
                .collect::<Vec<_>>()
        };
        let first = draws(7);
        assert_eq!(first, draws(7));
        assert_ne!(first, draws(8));
        let window = BACKOFF.window(4);
        assert!(first.iter().all(|delay| *delay <= window));
        // Spread over the window, not stuck in a corner of it.
        assert!(first.iter().any(|delay| *delay < window / 4));
        assert!(first.iter().any(|delay| *delay > window * 3 / 4));
        let distinct: std::collections::HashSet<_> = first.iter().collect();
        assert!(distinct.len() > 150, "{} distinct of 200", distinct.len());
    }

    #[test]
    fn none_never_waits() {
        let contention = Contention::new(ContentionPolicy::None, 1);
        assert_eq!(contention.backoff_delay(1), Duration::ZERO);
        assert_eq!(contention.backoff_delay(50), Duration::ZERO);
        assert_eq!(contention.policy().name(), "none");
    }

    #[test]
    fn each_cycle_starts_the_backoff_from_its_own_first_conflict() {
        // The count is the cycle's: a success (a new cycle) resets it to the smallest window.
        let contention = Contention::new(ContentionPolicy::Backoff(BACKOFF), 3);
        for _ in 0..100 {
            assert!(contention.backoff_delay(1) <= BACKOFF.base);
        }
    }

    #[test]
    fn queue_gives_a_key_to_one_handler_at_a_time_in_arrival_order() {
        let (order, key_count_after) = run(|| async {
            let contention = Contention::new(ContentionPolicy::Queue(BACKOFF), 1);
            let order = Rc::new(RefCell::new(Vec::new()));
            let first = contention.turn(b"hot").await;
            assert!(!first.waited());
            let waiters: Vec<_> = (0..3)
                .map(|index| {
                    let contention = contention.clone();
                    let order = order.clone();
                    glommio::spawn_local(async move {
                        let turn = contention.turn(b"hot").await;
                        order.borrow_mut().push((index, turn.waited()));
                        futures_lite::future::yield_now().await;
                        order.borrow_mut().push((index + 10, turn.waited()));
                    })
                })
                .collect();
            // Another key is not held up by the hot one.
            let other = contention.turn(b"cold").await;
            assert!(!other.waited());
            drop(other);
            futures_lite::future::yield_now().await;
            assert!(order.borrow().is_empty(), "nobody got the held turn");
            assert_eq!(contention.key_count(), 1);
            drop(first);
            for waiter in waiters {
                waiter.await;
            }
            (order.take(), contention.key_count())
        });
        // Each waiter ran its whole turn before the next started, in the order they came.
        assert_eq!(
            order,
            vec![
                (0, true),
                (10, true),
                (1, true),
                (11, true),
                (2, true),
                (12, true)
            ]
        );
        assert_eq!(key_count_after, 0, "no entry outlives its last handler");
    }

    #[test]
    fn release_after_send_frees_the_turn_before_the_append_completes() {
        run(|| async {
            let contention = Contention::new(ContentionPolicy::Queue(BACKOFF), 1);
            let turn = contention.turn(b"hot").await;
            let (sender, receiver) = glommio::channels::local_channel::new_bounded::<u32>(1);
            let appending = glommio::spawn_local(async move {
                turn.release_after_send(async move { receiver.recv().await })
                    .await
            });
            // The "append" is waiting for its answer; the turn is free already.
            let next = contention.turn(b"hot").await;
            drop(contention);
            assert!(!next.waited());
            sender.try_send(5).unwrap();
            assert_eq!(appending.await, Some(5));
        });
    }

    #[test]
    fn turns_are_free_under_none_and_backoff() {
        run(|| async {
            for policy in [ContentionPolicy::None, ContentionPolicy::Backoff(BACKOFF)] {
                let contention = Contention::new(policy, 1);
                let first = contention.turn(b"hot").await;
                let second = contention.turn(b"hot").await;
                assert!(!first.waited() && !second.waited());
                assert_eq!(contention.key_count(), 0);
            }
        });
    }
}
