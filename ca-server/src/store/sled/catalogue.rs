//! The names of an archive's batch files, held in memory, so that a reader finds the batch
//! it needs without listing a folder that can hold hundreds of thousands of them.
//!
//! Nothing is read at start-up: the first read that needs the names lists the folders,
//! and from then on every write and removal of a batch (each made with the archive's
//! watermark held) keeps them in step. A write or removal that fails may or may not have
//! changed the folder, so it forgets the names, and the next read lists them again.

use std::collections::BTreeSet;
use std::ops::Deref;
use std::sync::{Mutex, MutexGuard};

use crate::store::StoreError;

#[derive(Debug)]
pub(super) struct Catalogue<K> {
    names: Mutex<Option<BTreeSet<K>>>,
}

/// The names, held for as long as this lives: writers wait meanwhile.
pub(super) struct Names<'a, K>(MutexGuard<'a, Option<BTreeSet<K>>>);

impl<K> Deref for Names<'_, K> {
    type Target = BTreeSet<K>;

    fn deref(&self) -> &BTreeSet<K> {
        self.0
            .as_ref()
            .expect("Catalogue::names loads them before handing them out")
    }
}

impl<K: Ord> Catalogue<K> {
    pub fn new() -> Self {
        Self {
            names: Mutex::new(None),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<BTreeSet<K>>> {
        self.names.lock().expect("catalogue lock")
    }

    /// Records a write or removal made with the watermark held: `change` applies it to the
    /// names if they are held and it was `done`; if it failed, the names are forgotten.
    pub fn changed(&self, done: bool, change: impl FnOnce(&mut BTreeSet<K>)) {
        let mut names = self.lock();
        match (done, names.as_mut()) {
            (true, Some(held)) => change(held),
            (true, None) => {}
            (false, _) => *names = None,
        }
    }

    /// The names, listed by `list` if not held. `watermark` (the archive's) is taken
    /// before listing, as writers take it, so that no write falls between the listing and
    /// the names.
    pub fn names<W>(
        &self,
        watermark: &Mutex<W>,
        list: impl FnOnce() -> Result<BTreeSet<K>, StoreError>,
    ) -> Result<Names<'_, K>, StoreError> {
        {
            let names = self.lock();
            if names.is_some() {
                return Ok(Names(names));
            }
        }
        let _writing = watermark.lock().expect("watermark lock");
        let mut names = self.lock();
        if names.is_none() {
            *names = Some(list()?);
        }
        Ok(Names(names))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_once_follows_changes_and_lists_again_after_a_failure() {
        let watermark = Mutex::new(());
        let catalogue = Catalogue::new();
        let listings = std::cell::Cell::new(0);
        let list = || {
            listings.set(listings.get() + 1);
            Ok(BTreeSet::from([1, 2]))
        };
        // Nothing is held before the first read, so a change has nothing to change.
        catalogue.changed(true, |names| {
            names.insert(9);
        });
        assert_eq!(
            *catalogue.names(&watermark, list).unwrap(),
            BTreeSet::from([1, 2])
        );
        catalogue.changed(true, |names| {
            names.insert(3);
        });
        assert_eq!(
            *catalogue.names(&watermark, list).unwrap(),
            BTreeSet::from([1, 2, 3])
        );
        assert_eq!(listings.get(), 1, "held names are not listed again");
        // A failed write may have left the folder either way: list it again, and a listing
        // that fails is an error, not the names held before.
        catalogue.changed(false, |names| {
            names.insert(4);
        });
        let broken = || {
            Err(StoreError::Corrupt {
                table: "history",
                reason: "unreadable folder".into(),
            })
        };
        assert!(catalogue.names(&watermark, broken).is_err());
        assert_eq!(
            *catalogue.names(&watermark, list).unwrap(),
            BTreeSet::from([1, 2])
        );
        assert_eq!(listings.get(), 2);
    }
}
