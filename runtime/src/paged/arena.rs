//! Regions of the host store: each request holds one contiguous region
//! (its K/V, and `X` when kept, at the same token offsets in every layer's
//! buffer), taken when it is added and given back when it finishes, so the
//! store serves requests that come and go. First fit over the free spans,
//! which merge with their neighbours when given back.

use std::collections::BTreeMap;

#[derive(Clone, Debug)]
pub(crate) struct Arena {
    len: usize,
    /// Free spans: start -> length, none adjacent to another.
    free: BTreeMap<usize, usize>,
}

impl Arena {
    pub fn new(len: usize) -> Self {
        let mut free = BTreeMap::new();
        if len > 0 {
            free.insert(0, len);
        }
        Arena { len, free }
    }

    /// Tokens free in all.
    pub fn available(&self) -> usize {
        self.free.values().sum()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// The start of a free span of `n` tokens (the lowest that fits), now taken.
    pub fn take(&mut self, n: usize) -> Option<usize> {
        if n == 0 {
            return Some(0);
        }
        let (&start, &len) = self.free.iter().find(|(_, &len)| len >= n)?;
        self.free.remove(&start);
        if len > n {
            self.free.insert(start + n, len - n);
        }
        Some(start)
    }

    /// Gives back `[start, start + n)`, merging it with free neighbours.
    pub fn give(&mut self, start: usize, n: usize) {
        if n == 0 {
            return;
        }
        let (mut start, mut n) = (start, n);
        if let Some((&s, &l)) = self.free.range(..start).next_back() {
            if s + l == start {
                self.free.remove(&s);
                (start, n) = (s, l + n);
            }
        }
        if let Some(&l) = self.free.get(&(start + n)) {
            self.free.remove(&(start + n));
            n += l;
        }
        self.free.insert(start, n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn first_fit_and_merging() {
        let mut a = Arena::new(10);
        assert_eq!((a.take(4), a.take(4), a.take(4)), (Some(0), Some(4), None));
        a.give(0, 4);
        assert_eq!(a.take(3), Some(0));
        a.give(4, 4);
        // [3, 10) free again, in one span.
        assert_eq!(a.take(7), Some(3));
        assert_eq!(a.available(), 0);
        a.give(0, 3);
        a.give(3, 7);
        assert_eq!((a.available(), a.free.len()), (10, 1));
    }

    proptest! {
        /// Taken regions never overlap or leave the arena, and giving all
        /// back leaves one free span of the whole arena.
        #[test]
        fn regions_never_overlap_and_all_come_back(
            ops in proptest::collection::vec((any::<bool>(), 1usize..20, any::<usize>()), 1..100),
        ) {
            let mut a = Arena::new(64);
            let mut held: Vec<(usize, usize)> = Vec::new();
            for (take, n, pick) in ops {
                if take || held.is_empty() {
                    if let Some(s) = a.take(n) {
                        prop_assert!(s + n <= a.len());
                        for &(t, m) in &held {
                            prop_assert!(s + n <= t || t + m <= s, "{s}+{n} overlaps {t}+{m}");
                        }
                        held.push((s, n));
                    } else {
                        prop_assert!(a.free.values().all(|&l| l < n));
                    }
                } else {
                    let (s, n) = held.swap_remove(pick % held.len());
                    a.give(s, n);
                }
                let in_use: usize = held.iter().map(|h| h.1).sum();
                prop_assert_eq!(a.available() + in_use, 64);
            }
            for (s, n) in held.drain(..) {
                a.give(s, n);
            }
            prop_assert_eq!(a.free.len(), 1);
            prop_assert_eq!(a.available(), 64);
        }
    }
}
