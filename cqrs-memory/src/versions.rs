//! The rows of one entity by version.

/// Rows by version, in a vector sorted by version.
///
/// Each write of an entity takes the version after the last, so an insert is
/// a push and the latest row is the last element: a write costs the same
/// however long the entity's history is. Lookups of a given version are
/// binary searches; an insert out of order (which the storage conditions
/// never let happen) is still placed correctly.
#[derive(Debug)]
pub(crate) struct Versions<T> {
    rows: Vec<(u64, T)>,
}

impl<T> Default for Versions<T> {
    fn default() -> Self {
        Self { rows: Vec::new() }
    }
}

impl<T> Versions<T> {
    fn find(&self, version: u64) -> Result<usize, usize> {
        match self.rows.last() {
            Some((last, _)) if *last < version => Err(self.rows.len()),
            _ => self.rows.binary_search_by_key(&version, |(v, _)| *v),
        }
    }

    pub(crate) fn get(&self, version: &u64) -> Option<&T> {
        self.find(*version).ok().map(|i| &self.rows[i].1)
    }

    pub(crate) fn get_mut(&mut self, version: &u64) -> Option<&mut T> {
        self.find(*version).ok().map(|i| &mut self.rows[i].1)
    }

    pub(crate) fn contains_key(&self, version: &u64) -> bool {
        self.find(*version).is_ok()
    }

    /// Stores `row` at `version`, replacing any row there.
    ///
    /// The first row takes a vector of exactly one (most entities of a large
    /// table have a single version, and a row held for nothing would be
    /// memory held for each of them); an entity that changes is likely to
    /// change again, so the second row makes room for four, and from there
    /// the vector doubles.
    pub(crate) fn insert(&mut self, version: u64, row: T) {
        match self.find(version) {
            Ok(i) => self.rows[i].1 = row,
            Err(i) => {
                match self.rows.len() {
                    0 => self.rows.reserve_exact(1),
                    1 => self.rows.reserve_exact(3),
                    _ => {}
                }
                self.rows.insert(i, (version, row))
            }
        }
    }

    /// The highest version stored.
    pub(crate) fn last_version(&self) -> Option<u64> {
        self.rows.last().map(|(v, _)| *v)
    }

    /// The rows by ascending version.
    pub(crate) fn values(&self) -> impl Iterator<Item = &T> {
        self.rows.iter().map(|(_, row)| row)
    }

    /// The versions stored, ascending.
    pub(crate) fn versions(&self) -> impl Iterator<Item = u64> + '_ {
        self.rows.iter().map(|(version, _)| *version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_like_an_ordered_map() {
        let mut versions = Versions::default();
        assert_eq!(versions.last_version(), None);
        for v in [1, 2, 3, 7, 5, 4] {
            versions.insert(v, v * 10);
        }
        versions.insert(5, 55);
        assert_eq!(
            versions.values().copied().collect::<Vec<_>>(),
            [10, 20, 30, 40, 55, 70]
        );
        assert_eq!(versions.last_version(), Some(7));
        assert_eq!(versions.versions().collect::<Vec<_>>(), [1, 2, 3, 4, 5, 7]);
        assert_eq!(versions.get(&4), Some(&40));
        assert!(versions.get(&6).is_none() && !versions.contains_key(&8) && versions.contains_key(&1));
        *versions.get_mut(&1).unwrap() = 11;
        assert_eq!(versions.get(&1), Some(&11));
    }
}
