//! How much message data all sessions together may hold in memory.
//!
//! A message is received into memory before intake stores it. Without a bound, fifty
//! clients each sending 25 MB without the final dot hold 1.2 GB, and the connection
//! limits allow twenty times that. Each session holds the bytes it has buffered against
//! one budget ([`Held`]); a session that would pass it is refused (`452 4.3.1`, or exit 75
//! for `sendmail`) and its buffer freed, and the client tries again later.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The bytes buffered now, over all sessions.
#[derive(Debug, Default)]
pub struct BufferBudget {
    used: AtomicUsize,
}

/// What one session holds of the budget; dropping it gives the bytes back.
#[derive(Debug)]
pub struct Held {
    budget: Arc<BufferBudget>,
    bytes: usize,
}

impl BufferBudget {
    /// A session's share, empty to begin with.
    pub fn share(self: &Arc<Self>) -> Held {
        Held {
            budget: Arc::clone(self),
            bytes: 0,
        }
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

impl Held {
    /// Takes `more` bytes if the total stays within `limit` (0 = no limit).
    pub fn grow(&mut self, more: usize, limit: usize) -> bool {
        let taken = self
            .budget
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                let next = used.checked_add(more)?;
                (limit == 0 || next <= limit).then_some(next)
            });
        if taken.is_ok() {
            self.bytes += more;
        }
        taken.is_ok()
    }

    /// Gives back everything held (the message was stored or refused).
    pub fn release(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
        self.bytes = 0;
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_fit_within_the_limit_and_give_back_what_they_held() {
        let budget = Arc::new(BufferBudget::default());
        let mut a = budget.share();
        let mut b = budget.share();
        assert!(a.grow(600, 1000));
        assert!(!b.grow(500, 1000), "600 + 500 is over 1000");
        assert!(b.grow(400, 1000));
        assert_eq!(budget.used(), 1000);
        a.release();
        assert_eq!(budget.used(), 400);
        assert!(b.grow(500, 1000));
        drop(b);
        assert_eq!(budget.used(), 0);
        assert!(a.grow(usize::MAX / 2, 0), "0 is no limit");
    }
}
