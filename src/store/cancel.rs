//! A client that hangs up stops its expensive work (issue 13 item 1: "a cancelled
//! client cancels its query"). The HTTP layer watches the client's socket while a
//! search, history or Bundle runs ([`super::Store::call_as`] takes the watch);
//! when the client is gone the request's [`Cancel`] is triggered:
//!
//! - SQLite: the progress handler that enforces the deadline (store::deadline)
//!   interrupts the running statement as soon as the flag is set;
//! - PostgreSQL: each connection the request holds is registered with its server
//!   process id, and `pg_cancel_backend` stops its statement (from another pooled
//!   connection; repeated at each look at the socket while the work still runs, so a
//!   statement that started between two cancellations is stopped too);
//! - both: no further connection is handed to the request, and the connections it
//!   held are closed instead of pooled again (store::pool).
//!
//! A cancellation reaches only the request's own connections: a connection is
//! unregistered before it goes back to the pool, and unregistering waits while a
//! cancellation is being sent.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

/// One request's cancellation.
#[derive(Default)]
pub struct Cancel {
    cancelled: AtomicBool,
    /// The PostgreSQL server processes of the connections the request holds now.
    pids: Mutex<Vec<i32>>,
}

impl Cancel {
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    pub(super) fn register(&self, pid: i32) {
        self.pids.lock().push(pid);
    }

    pub(super) fn unregister(&self, pid: i32) {
        let mut pids = self.pids.lock();
        if let Some(i) = pids.iter().position(|p| *p == pid) {
            pids.swap_remove(i);
        }
    }

    /// Marks the request cancelled and stops the statements its PostgreSQL
    /// connections run now (blocking: run it on the blocking pool). The lock on the
    /// registered processes is held meanwhile, so none of them can be given back to
    /// the pool (and to another request) before its cancellation is sent.
    pub(super) fn trigger(&self, pool: &super::pool::DbPool) {
        self.cancelled.store(true, Ordering::Relaxed);
        let pids = self.pids.lock();
        if pids.is_empty() {
            return;
        }
        let result = pool.read(|c| {
            for pid in pids.iter() {
                c.batch(&format!("SELECT pg_cancel_backend({pid})"))?;
            }
            Ok(())
        });
        if let Err(e) = result {
            tracing::warn!(error = %e, "a hung-up client's statement could not be cancelled; it ends at the request deadline");
        }
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<Cancel>>> = const { RefCell::new(None) };
}

/// The request whose store work runs on this thread can be cancelled through
/// `cancel` until the guard is dropped.
pub(super) struct Guard {
    previous: Option<Arc<Cancel>>,
}

impl Guard {
    pub(super) fn new(cancel: Option<Arc<Cancel>>) -> Guard {
        let previous = CURRENT.with(|c| c.replace(cancel));
        Guard { previous }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let previous = self.previous.take();
        CURRENT.with(|c| *c.borrow_mut() = previous);
    }
}

/// The cancellation of the request whose work runs on this thread.
pub(super) fn current() -> Option<Arc<Cancel>> {
    CURRENT.try_with(|c| c.borrow().clone()).ok().flatten()
}

/// True when the request whose work runs on this thread was cancelled.
pub(super) fn cancelled() -> bool {
    CURRENT
        .try_with(|c| c.borrow().as_ref().is_some_and(|c| c.is_cancelled()))
        .unwrap_or(false)
}
