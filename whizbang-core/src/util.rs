//! Small helpers shared across the crate: the cheap id hasher, the
//! poison-ignoring lock, catching a panic in a future, and a short inline list.
//!
//! Owns nothing of the domain; it imports only `std` and may be used by every
//! other module.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Hashes UUID-keyed maps cheaply: ids are random (v7) or caller-chosen, and
/// the in-process structures keyed by them are for development and tests, not
/// hostile input, so SipHash's flood resistance buys nothing here and costs on
/// every append.
#[derive(Clone, Copy, Default)]
pub(crate) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut buf = [0u8; 8];
            buf[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(buf))
                .wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
}

/// A map keyed by ids, hashed with [`IdHasher`].
pub(crate) type IdMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<IdHasher>>;

/// Locks `m`, ignoring poisoning: every critical section in this crate
/// validates before it mutates, so a panic while holding a lock cannot leave
/// its data half-written.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs a future, turning a panic in any of its polls into `Err(message)`,
/// so a task running user code can report the panic instead of vanishing.
pub(crate) struct CatchUnwind<F>(pub(crate) std::pin::Pin<Box<F>>);

impl<F: std::future::Future> std::future::Future for CatchUnwind<F> {
    type Output = Result<F::Output, String>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let inner = self.0.as_mut();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(std::task::Poll::Ready(out)) => std::task::Poll::Ready(Ok(out)),
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Err(panic) => std::task::Poll::Ready(Err(
                panic_text(&*panic).unwrap_or_else(|| "a panic without a message".to_owned())
            )),
        }
    }
}

/// The message a panic carried, when it carried text.
pub(crate) fn panic_text(panic: &(dyn std::any::Any + Send)) -> Option<String> {
    if let Some(s) = panic.downcast_ref::<&str>() {
        Some((*s).to_owned())
    } else {
        panic.downcast_ref::<String>().cloned()
    }
}

/// A short list of `Copy` items kept inline while it holds at most one (most
/// waits await one id on one stream): no heap block until a second item.
#[derive(Clone, Debug, Default)]
pub(crate) enum Few<T> {
    /// No item.
    #[default]
    Empty,
    /// One item, inline.
    One(T),
    /// Two or more (or emptied by `retain` from more), on the heap.
    Many(Vec<T>),
}

impl<T: Copy> Few<T> {
    /// Appends an item.
    pub(crate) fn push(&mut self, item: T) {
        match self {
            Few::Empty => *self = Few::One(item),
            Few::One(first) => *self = Few::Many(vec![*first, item]),
            Few::Many(v) => v.push(item),
        }
    }

    /// Keeps the items `keep` accepts, in order.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        match self {
            Few::Empty => {}
            Few::One(item) => {
                if !keep(item) {
                    *self = Few::Empty;
                }
            }
            Few::Many(v) => v.retain(keep),
        }
    }
}

impl<T> std::ops::Deref for Few<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        match self {
            Few::Empty => &[],
            Few::One(item) => std::slice::from_ref(item),
            Few::Many(v) => v,
        }
    }
}

impl<T: Copy> Extend<T> for Few<T> {
    fn extend<I: IntoIterator<Item = T>>(&mut self, items: I) {
        for item in items {
            self.push(item);
        }
    }
}

impl<T> From<Vec<T>> for Few<T> {
    fn from(mut v: Vec<T>) -> Self {
        if v.len() > 1 {
            return Few::Many(v);
        }
        match v.pop() {
            Some(item) => Few::One(item),
            None => Few::Empty,
        }
    }
}

impl<'a, T> IntoIterator for &'a Few<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::Few;

    #[test]
    fn a_few_items_stay_inline_until_a_second_and_keep_their_order() {
        let mut few = Few::default();
        assert!(few.is_empty());
        few.push(1u64);
        assert!(matches!(few, Few::One(1)));
        few.extend([2, 3]);
        assert_eq!(&*few, &[1, 2, 3]);
        few.retain(|x| *x != 2);
        assert_eq!(&*few, &[1, 3]);
        few.retain(|_| false);
        assert!(few.is_empty());
        let mut one = Few::One(7u64);
        one.retain(|x| *x == 7);
        assert_eq!(&*one, &[7]);
        one.retain(|x| *x != 7);
        assert!(matches!(one, Few::Empty));
        assert!(matches!(Few::from(Vec::<u64>::new()), Few::Empty));
        assert!(matches!(Few::from(vec![4u64]), Few::One(4)));
        assert_eq!(&*Few::from(vec![4u64, 5]), &[4, 5]);
        assert_eq!((&Few::from(vec![4u64, 5])).into_iter().sum::<u64>(), 9);
    }
}
