//! Which instances a watch's listing shows to be gone. The watcher lists every Deployment when
//! it starts and again after it lost its connection, and reports no deletion for what went
//! away before or in between: an instance this server knew (loaded at start, or seen since)
//! that a complete listing lacks was deleted elsewhere. One created after the listing began is
//! not known yet, so it is never taken for gone.

use crate::instance::InstanceId;
use std::collections::HashSet;

pub(super) struct Known {
    ids: HashSet<InstanceId>,
    /// What the listing under way has shown so far.
    listing: Option<HashSet<InstanceId>>,
}

impl Known {
    pub fn new(ids: impl IntoIterator<Item = InstanceId>) -> Self {
        Self {
            ids: ids.into_iter().collect(),
            listing: None,
        }
    }

    /// A listing begins.
    pub fn begin(&mut self) {
        self.listing = Some(HashSet::new());
    }

    /// `id` exists: listed, created or changed.
    pub fn present(&mut self, id: &InstanceId) {
        if let Some(listed) = &mut self.listing {
            listed.insert(id.clone());
        }
        self.ids.insert(id.clone());
    }

    pub fn deleted(&mut self, id: &InstanceId) {
        self.ids.remove(id);
    }

    /// The listing is complete: what was known and is not in it, now forgotten.
    pub fn done(&mut self) -> Vec<InstanceId> {
        let Some(listed) = self.listing.take() else {
            return Vec::new();
        };
        let gone: Vec<InstanceId> = self.ids.difference(&listed).cloned().collect();
        for id in &gone {
            self.ids.remove(id);
        }
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> InstanceId {
        InstanceId::parse(s).unwrap()
    }

    #[test]
    fn known_instances_a_listing_lacks_are_gone_once() {
        let mut k = Known::new([id("ann-00000001"), id("bob-00000002")]);
        k.begin();
        k.present(&id("bob-00000002"));
        k.present(&id("cat-00000003"));
        assert_eq!(k.done(), vec![id("ann-00000001")]);
        // The next listing shows the same: nothing more is gone.
        k.begin();
        k.present(&id("bob-00000002"));
        k.present(&id("cat-00000003"));
        assert!(k.done().is_empty());
    }

    #[test]
    fn what_appears_after_a_listing_began_is_not_taken_for_gone() {
        let mut k = Known::new([]);
        k.begin();
        k.present(&id("ann-00000001"));
        assert!(k.done().is_empty());
        // Created after this listing; the listing after it shows it.
        k.present(&id("dan-00000004"));
        k.begin();
        k.present(&id("ann-00000001"));
        k.present(&id("dan-00000004"));
        assert!(k.done().is_empty());
        // Deleted while the watch was away: the next listing lacks it.
        k.begin();
        k.present(&id("dan-00000004"));
        assert_eq!(k.done(), vec![id("ann-00000001")]);
        // A deletion seen as such is not reported again.
        k.deleted(&id("dan-00000004"));
        k.begin();
        assert!(k.done().is_empty());
    }

    #[test]
    fn without_a_listing_under_way_nothing_is_gone() {
        let mut k = Known::new([id("ann-00000001")]);
        assert!(k.done().is_empty());
    }
}
