//! The request deadline inside the database (issue 13: no single request takes the
//! database for minutes). A [`Guard`] gives the current thread a deadline while a
//! request's store work runs on it ([`super::Store::call`]); the database stops the
//! request's statements when it passes:
//!
//! - SQLite: a progress handler, installed on every connection SQLite opens in this
//!   process (`sqlite3_auto_extension`), interrupts the running statement once the
//!   thread's deadline has passed (it runs every few thousand virtual-machine steps,
//!   on the thread executing the statement, so a thread-local deadline is exact).
//! - PostgreSQL: the session's `statement_timeout` is the request budget (set when a
//!   connection is made), and a write transaction or read that starts more than a
//!   second into the request gets `SET LOCAL statement_timeout` to what is left.
//!
//! A database error on a thread whose deadline has passed is a [`super::StoreError::Timeout`]:
//! classified by the deadline, not by the database's message text.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// A thread's deadline and the budget it was given.
#[derive(Clone, Copy)]
struct Deadline {
    at: Instant,
    budget: Duration,
}

thread_local! {
    static DEADLINE: Cell<Option<Deadline>> = const { Cell::new(None) };
}

/// The current thread works under a deadline until the guard is dropped. A guard
/// inside another keeps the earlier deadline.
pub(super) struct Guard {
    previous: Option<Deadline>,
}

impl Guard {
    /// A deadline `budget` from now; None: no deadline (the guard changes nothing).
    pub(super) fn new(budget: Option<Duration>) -> Guard {
        let previous = DEADLINE.with(Cell::get);
        if let Some(budget) = budget {
            let mine = Deadline {
                at: Instant::now() + budget,
                budget,
            };
            let d = match previous {
                Some(p) if p.at <= mine.at => p,
                _ => mine,
            };
            DEADLINE.with(|c| c.set(Some(d)));
        }
        Guard { previous }
    }
}

impl Guard {
    /// The current deadline's whole budget again, from now (until dropped): time a
    /// request spent queued for SQLite's single writer is the server's load, not
    /// the request's cost.
    pub(super) fn restart() -> Guard {
        let previous = DEADLINE.with(Cell::get);
        if let Some(p) = previous {
            DEADLINE.with(|c| {
                c.set(Some(Deadline {
                    at: Instant::now() + p.budget,
                    budget: p.budget,
                }))
            });
        }
        Guard { previous }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        DEADLINE.with(|d| d.set(self.previous));
    }
}

fn current() -> Option<Deadline> {
    DEADLINE.try_with(Cell::get).ok().flatten()
}

/// True when the current thread has a deadline and it has passed, or its request
/// was cancelled (store::cancel: the client hung up).
pub(super) fn passed() -> bool {
    current().is_some_and(|d| Instant::now() >= d.at) || super::cancel::cancelled()
}

/// True when the current thread has a deadline and half of its budget is spent.
pub(super) fn half_spent() -> bool {
    current().is_some_and(|d| d.at.saturating_duration_since(Instant::now()) < d.budget / 2)
}

/// The budget of the current thread's deadline, for the message that it passed.
pub(super) fn budget() -> Option<Duration> {
    current().map(|d| d.budget)
}

/// What is left of the current thread's deadline, once more than `spent` of its
/// budget is used up, as PostgreSQL's `statement_timeout` in milliseconds; None
/// without a deadline or while less is spent.
pub(super) fn statement_timeout_after(spent: Duration) -> Option<u128> {
    let d = current()?;
    let left = d.at.saturating_duration_since(Instant::now());
    (d.budget.saturating_sub(left) > spent).then(|| timeout_millis(left))
}

/// `left` in whole milliseconds, rounded up, plus one: PostgreSQL must not stop a
/// statement before the deadline has passed here, or its error would not be
/// classified as the deadline's ([`passed`]) and the client would get a 500 instead
/// of 400 `too-costly`. Truncating 1,234.9 ms to 1,234 did exactly that, now and then.
fn timeout_millis(left: Duration) -> u128 {
    left.as_nanos().div_ceil(1_000_000) + 1
}

/// Virtual-machine steps between two looks at the clock (a look costs tens of
/// nanoseconds; a step a few).
const SQLITE_PROGRESS_STEPS: std::os::raw::c_int = 4096;

/// Installs the SQLite progress handler on every connection opened from now on in
/// this process (once; later calls do nothing).
pub(super) fn install_sqlite_interrupt() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: `register` has the signature SQLite expects of an auto-extension
        // entry point; registering it is allowed at any time.
        let rc = unsafe { libsqlite3_sys::sqlite3_auto_extension(Some(register)) };
        if rc != libsqlite3_sys::SQLITE_OK {
            tracing::warn!(
                code = rc,
                "the SQLite request deadline could not be installed; SQLite statements run without it"
            );
        }
    });
}

/// The auto-extension entry point: SQLite calls it for each new connection.
unsafe extern "C" fn register(
    db: *mut libsqlite3_sys::sqlite3,
    _err: *mut *mut std::os::raw::c_char,
    _api: *const libsqlite3_sys::sqlite3_api_routines,
) -> std::os::raw::c_int {
    // SAFETY: `db` is the connection SQLite is opening; the handler takes no data.
    unsafe {
        libsqlite3_sys::sqlite3_progress_handler(
            db,
            SQLITE_PROGRESS_STEPS,
            Some(progress),
            std::ptr::null_mut(),
        );
    }
    libsqlite3_sys::SQLITE_OK
}

/// Non-zero interrupts the running statement (SQLITE_INTERRUPT): the deadline has
/// passed or the request was cancelled.
extern "C" fn progress(_: *mut std::os::raw::c_void) -> std::os::raw::c_int {
    std::os::raw::c_int::from(passed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_stops_a_statement_only_after_the_deadline() {
        for (left, expected) in [
            (Duration::from_nanos(1_234_900_000), 1_236),
            (Duration::from_millis(1_234), 1_235),
            (Duration::from_nanos(1), 2),
            (Duration::ZERO, 1),
        ] {
            let ms = timeout_millis(left);
            assert_eq!(ms, expected, "{left:?}");
            assert!(
                Duration::from_millis(ms as u64) > left,
                "{left:?} -> {ms} ms"
            );
        }
    }

    #[test]
    fn a_late_statement_gets_what_is_left() {
        let budget = Duration::from_millis(1_500);
        let _g = Guard::new(Some(budget));
        // Less than `spent` used: the session's timeout (the whole budget) applies.
        assert_eq!(statement_timeout_after(Duration::from_secs(1)), None);
        std::thread::sleep(Duration::from_millis(20));
        let ms = statement_timeout_after(Duration::from_millis(10)).expect("spent");
        assert!((1..=1_481).contains(&ms), "{ms}");
    }
}
