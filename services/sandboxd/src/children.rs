//! A zygote's live children, counted so that evicting a zygote never
//! kills a child a fork is making: each child sandbox holds a [`ChildOf`]
//! for as long as it lives, and a zygote retires only at zero.
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A zygote's live children, and whether it is retired: an evicted zygote
/// is retired only while it has no child, and a retired one forks none, so
/// eviction never kills a child that a fork was just making.
#[derive(Clone, Default)]
pub(crate) struct Children(Arc<AtomicUsize>);

/// The count's top bit marks a retired zygote.
const RETIRED: usize = 1 << (usize::BITS - 1);

impl Children {
    pub fn count(&self) -> usize {
        self.0.load(Ordering::Acquire) & !RETIRED
    }

    pub fn is_retired(&self) -> bool {
        self.0.load(Ordering::Acquire) & RETIRED != 0
    }

    /// Retires the zygote if it has no child; false if it has one.
    pub fn retire_if_none(&self) -> bool {
        self.0
            .compare_exchange(0, RETIRED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Counts one more child; None once the zygote is retired.
    pub fn enter(&self) -> Option<ChildOf> {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n & RETIRED == 0).then_some(n + 1)
            })
            .ok()?;
        Some(ChildOf(self.0.clone()))
    }
}

/// One live child of a zygote, for as long as this lives.
pub(crate) struct ChildOf(Arc<AtomicUsize>);

impl ChildOf {
    /// Counts another child. The zygote cannot be retired meanwhile: this
    /// one keeps the count above zero.
    pub fn sibling(&self) -> ChildOf {
        self.0.fetch_add(1, Ordering::AcqRel);
        ChildOf(self.0.clone())
    }
}

impl Drop for ChildOf {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zygote_with_a_child_cannot_retire_and_a_retired_one_forks_none() {
        let children = Children::default();
        let child = children.enter().expect("a fresh zygote forks");
        let sibling = child.sibling();
        assert_eq!(children.count(), 2);
        assert!(!children.retire_if_none(), "retired with two children");
        drop((child, sibling));
        assert_eq!(children.count(), 0);
        assert!(children.retire_if_none());
        assert!(children.is_retired());
        assert!(children.enter().is_none(), "a retired zygote forked");
        assert_eq!(children.count(), 0);
    }
}
