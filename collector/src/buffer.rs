//! The bounded buffer between sampling and publishing.
//!
//! Sampling never waits for the broker: it pushes here and goes on. When the broker is away
//! the buffer fills; at capacity the **oldest** record is dropped (fresh telemetry is worth
//! more than old) and counted. Records whose delivery failed are put back at the front so
//! they go out first once the broker returns.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Notify;

/// A bounded FIFO that drops its oldest entry when full.
#[derive(Debug)]
pub struct Buffer<T> {
    items: Mutex<VecDeque<T>>,
    capacity: usize,
    dropped: AtomicU64,
    notify: Notify,
}

impl<T> Buffer<T> {
    /// A buffer holding at most `capacity` entries (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            items: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            dropped: AtomicU64::new(0),
            notify: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<T>> {
        self.items.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends `item`, dropping the oldest entry if full. Returns whether one was dropped.
    pub fn push(&self, item: T) -> bool {
        let dropped = {
            let mut q = self.lock();
            let dropped = if q.len() >= self.capacity {
                q.pop_front();
                true
            } else {
                false
            };
            q.push_back(item);
            dropped
        };
        if dropped {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        self.notify.notify_one();
        dropped
    }

    /// Puts a record whose delivery failed back at the front. When full, the record itself
    /// is the oldest, so it is the one dropped (and counted).
    pub fn requeue(&self, item: T) {
        let mut q = self.lock();
        if q.len() >= self.capacity {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        } else {
            q.push_front(item);
        }
    }

    /// Takes the oldest entry.
    pub fn pop(&self) -> Option<T> {
        self.lock().pop_front()
    }

    /// Entries waiting.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries dropped because the buffer was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Resolves after the next [`Buffer::push`] (or at once if one happened since the last wait).
    pub async fn pushed(&self) {
        self.notify.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_buffer_drops_oldest_and_counts() {
        let b = Buffer::new(3);
        for i in 0..5 {
            b.push(i);
        }
        assert_eq!(b.dropped(), 2);
        assert_eq!(
            (b.pop(), b.pop(), b.pop(), b.pop()),
            (Some(2), Some(3), Some(4), None)
        );
    }

    #[test]
    fn requeued_item_goes_out_first_or_is_dropped_when_full() {
        let b = Buffer::new(2);
        b.push(1);
        b.requeue(0);
        assert_eq!(b.pop(), Some(0));
        b.push(2);
        b.requeue(9);
        assert_eq!(b.dropped(), 1);
        assert_eq!((b.pop(), b.pop()), (Some(1), Some(2)));
    }
}
