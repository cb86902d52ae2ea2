//! Shares of the connection pool (issue 13: expensive work cannot starve cheap
//! work). Searches, history and Bundles are [`Work`] kinds: a thread
//! doing one of them ([`Work::enter`], set by [`super::Store::call_as`]) takes a
//! connection only with a slot of its kind's share and a slot of the share all
//! expensive kinds have together. The pool's other connections, at least
//! `database.reserved_connections`, are left to what is cheap: reads by id, single
//! writes, readiness checks. The audit writer has connections of its own
//! ([`super::pool::DbPool::connect`]), so an AuditEvent can always be committed.
//!
//! A slot is waited for as long as a connection is (`database.pool_timeout_ms`);
//! then the request gets [`super::Unavailable::ShareExhausted`] (503 with
//! `Retry-After`), which names the share and its setting.
//!
//! A thread that already holds a slot takes further connections without another
//! (a nested checkout must not wait for itself). On SQLite a write transaction
//! takes no slot: SQLite's one writer already holds at most one connection, and
//! it takes it only when its turn has come.

use std::cell::Cell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// The kinds of expensive work, each with its own share of connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    Search,
    History,
    Bundle,
}

impl Work {
    pub const ALL: [Work; 3] = [Work::Search, Work::History, Work::Bundle];

    fn index(self) -> usize {
        match self {
            Work::Search => 0,
            Work::History => 1,
            Work::Bundle => 2,
        }
    }

    /// The name used in messages, readiness and settings.
    pub fn name(self) -> &'static str {
        match self {
            Work::Search => "search",
            Work::History => "history",
            Work::Bundle => "bundle",
        }
    }

    /// What a person calls this work (plural).
    pub fn describe(self) -> &'static str {
        match self {
            Work::Search => "searches",
            Work::History => "history requests",
            Work::Bundle => "batch and transaction Bundles",
        }
    }

    /// The setting that sizes this kind's share.
    pub fn setting(self) -> &'static str {
        match self {
            Work::Search => "database.search_connections",
            Work::History => "database.history_connections",
            Work::Bundle => "database.bundle_connections",
        }
    }

    /// The current thread does this work until the guard is dropped (an outer
    /// kind is kept: a search inside a Bundle counts as the Bundle's).
    pub fn enter(self) -> WorkGuard {
        let previous = WORK.with(Cell::get);
        if previous.is_none() {
            WORK.with(|w| w.set(Some(self)));
        }
        WorkGuard { previous }
    }
}

thread_local! {
    static WORK: Cell<Option<Work>> = const { Cell::new(None) };
    /// Slots the current thread holds (a nested checkout takes none).
    static HELD: Cell<u32> = const { Cell::new(0) };
}

/// Ends the current thread's [`Work`] when dropped.
pub struct WorkGuard {
    previous: Option<Work>,
}

impl Drop for WorkGuard {
    fn drop(&mut self) {
        WORK.with(|w| w.set(self.previous));
    }
}

/// The sizes of the shares, from the settings (0: automatic).
#[derive(Debug, Clone, Copy, Default)]
pub struct ShareSizes {
    pub reserved: u32,
    pub search: u32,
    pub history: u32,
    pub bundle: u32,
}

/// A counting semaphore that blocks (store work runs on blocking threads).
struct Share {
    limit: u32,
    used: Mutex<u32>,
    freed: Condvar,
    /// Checkouts refused because the share stayed full (readiness, metrics).
    refused: std::sync::atomic::AtomicU64,
}

impl Share {
    fn new(limit: u32) -> Arc<Share> {
        Arc::new(Share {
            limit,
            used: Mutex::new(0),
            freed: Condvar::new(),
            refused: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn acquire(self: &Arc<Share>, until: Instant) -> Option<SlotOf> {
        let mut used = self.used.lock();
        while *used >= self.limit {
            if self.freed.wait_until(&mut used, until).timed_out() && *used >= self.limit {
                self.refused
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return None;
            }
        }
        *used += 1;
        Some(SlotOf(self.clone()))
    }

    fn in_use(&self) -> u32 {
        *self.used.lock()
    }
}

struct SlotOf(Arc<Share>);

impl Drop for SlotOf {
    fn drop(&mut self) {
        let mut used = self.0.used.lock();
        *used = used.saturating_sub(1);
        self.0.freed.notify_one();
    }
}

/// The slots a checkout holds (its kind's and the expensive share's), released
/// with the connection.
pub(crate) struct Slot {
    _kind: SlotOf,
    _expensive: SlotOf,
}

impl Drop for Slot {
    fn drop(&mut self) {
        HELD.with(|h| h.set(h.get().saturating_sub(1)));
    }
}

/// Which share was full.
#[derive(Debug, Clone, Copy)]
pub enum Full {
    /// The kind's own share.
    Kind { work: Work, connections: u32 },
    /// The share all expensive kinds have together (the pool minus the reserve).
    Expensive {
        work: Work,
        connections: u32,
        reserved: u32,
    },
}

/// The shares of one pool.
pub(crate) struct Shares {
    kinds: [Arc<Share>; 3],
    expensive: Arc<Share>,
    reserved: u32,
}

/// How one share is used now (readiness).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ShareState {
    pub work: &'static str,
    pub connections: u32,
    pub in_use: u32,
    /// Checkouts refused since start because the share stayed full.
    pub refused: u64,
}

impl Shares {
    /// Shares of a pool of `pool_size` connections. The reserve is at least one
    /// connection and leaves at least one for expensive work; a kind's share is at
    /// most the expensive share.
    pub(crate) fn new(pool_size: u32, sizes: ShareSizes) -> Shares {
        let pool_size = pool_size.max(2);
        let reserved = match sizes.reserved {
            0 => (pool_size / 3).max(2),
            n => n,
        }
        .clamp(1, pool_size - 1);
        let expensive = pool_size - reserved;
        let auto = |n: u32, default: u32| match n {
            0 => default,
            n => n.min(expensive),
        };
        let half = (expensive / 2).max(1);
        Shares {
            kinds: [
                Share::new(auto(sizes.search, expensive)),
                Share::new(auto(sizes.history, half)),
                Share::new(auto(sizes.bundle, half)),
            ],
            expensive: Share::new(expensive),
            reserved,
        }
    }

    /// A slot for the current thread's work, waiting until `until`; None when
    /// the thread does no expensive work or already holds a slot.
    pub(crate) fn enter(&self, until: Instant) -> Result<Option<Slot>, Full> {
        let Some(work) = WORK.with(Cell::get) else {
            return Ok(None);
        };
        if HELD.with(Cell::get) > 0 {
            return Ok(None);
        }
        let share = &self.kinds[work.index()];
        let kind = share.acquire(until).ok_or(Full::Kind {
            work,
            connections: share.limit,
        })?;
        let expensive = self.expensive.acquire(until).ok_or(Full::Expensive {
            work,
            connections: self.expensive.limit,
            reserved: self.reserved,
        })?;
        HELD.with(|h| h.set(h.get() + 1));
        Ok(Some(Slot {
            _kind: kind,
            _expensive: expensive,
        }))
    }

    /// The connections no expensive work may take.
    pub(crate) fn reserved(&self) -> u32 {
        self.reserved
    }

    /// Each share's size and use, the expensive share (`expensive`) first.
    pub(crate) fn state(&self) -> Vec<ShareState> {
        let one = |work: &'static str, s: &Share| ShareState {
            work,
            connections: s.limit,
            in_use: s.in_use(),
            refused: s.refused.load(std::sync::atomic::Ordering::Relaxed),
        };
        let mut out = vec![one("expensive", &self.expensive)];
        for w in Work::ALL {
            out.push(one(w.name(), &self.kinds[w.index()]));
        }
        out
    }
}

/// A deadline for a wait of `timeout` from now.
pub(crate) fn until(timeout: Duration) -> Instant {
    Instant::now() + timeout
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn automatic_shares_leave_a_reserve() {
        let s = Shares::new(6, ShareSizes::default());
        assert_eq!(s.reserved(), 2);
        let st = s.state();
        assert_eq!(st[0].connections, 4, "expensive");
        assert_eq!(st[1].connections, 4, "search");
        assert_eq!(st[2].connections, 2, "history");
        let small = Shares::new(3, ShareSizes::default());
        assert_eq!(small.reserved(), 2);
        assert_eq!(small.state()[0].connections, 1);
    }

    #[test]
    fn a_full_share_refuses_after_the_wait_and_a_nested_checkout_takes_no_slot() {
        let s = Shares::new(
            4,
            ShareSizes {
                reserved: 2,
                search: 1,
                ..Default::default()
            },
        );
        assert!(
            s.enter(until(Duration::ZERO)).unwrap().is_none(),
            "no work, no slot"
        );
        let _w = Work::Search.enter();
        let first = s.enter(until(Duration::ZERO)).unwrap();
        assert!(first.is_some());
        // The same thread again: no second slot.
        assert!(s.enter(until(Duration::ZERO)).unwrap().is_none());
        let other = std::thread::scope(|sc| {
            sc.spawn(|| {
                let _w = Work::Search.enter();
                s.enter(until(Duration::from_millis(20)))
                    .map(|o| o.is_some())
            })
            .join()
            .unwrap()
        });
        assert!(matches!(
            other,
            Err(Full::Kind {
                work: Work::Search,
                connections: 1
            })
        ));
        drop(first);
        let again = std::thread::scope(|sc| {
            sc.spawn(|| {
                let _w = Work::Search.enter();
                s.enter(until(Duration::ZERO)).map(|o| o.is_some())
            })
            .join()
            .unwrap()
        });
        assert!(matches!(again, Ok(true)));
    }
}
