//! Sort-key conditions as `BTreeMap` ranges, so a query reads only the rows it returns.

use std::ops::Bound;

use cqrs_core::{SkCondition, SortOrder};

/// The sort-key range of a query: its condition narrowed by the cursor.
pub(crate) struct SkRange {
    lower: Bound<String>,
    upper: Bound<String>,
}

impl SkRange {
    pub(crate) fn new(condition: Option<&SkCondition>, order: SortOrder, start_after: Option<&str>) -> Self {
        use Bound::{Excluded, Included, Unbounded};
        let (mut lower, mut upper) = match condition {
            None => (Unbounded, Unbounded),
            Some(SkCondition::Equals(v)) => (Included(v.clone()), Included(v.clone())),
            Some(SkCondition::BeginsWith(p)) => (
                Included(p.clone()),
                prefix_successor(p).map_or(Unbounded, Excluded),
            ),
            Some(SkCondition::Between(low, high)) => (Included(low.clone()), Included(high.clone())),
            Some(SkCondition::LessThan(v)) => (Unbounded, Excluded(v.clone())),
            Some(SkCondition::LessOrEqual(v)) => (Unbounded, Included(v.clone())),
            Some(SkCondition::GreaterThan(v)) => (Excluded(v.clone()), Unbounded),
            Some(SkCondition::GreaterOrEqual(v)) => (Included(v.clone()), Unbounded),
        };
        if let Some(after) = start_after {
            match order {
                SortOrder::Ascending if beyond_lower(&lower, after) => lower = Excluded(after.to_owned()),
                SortOrder::Descending if below_upper(&upper, after) => upper = Excluded(after.to_owned()),
                _ => {}
            }
        }
        Self { lower, upper }
    }

    /// The range to pass to `BTreeMap::range`, `None` when it is empty
    /// (`range` panics on an inverted range).
    pub(crate) fn as_range(&self) -> Option<(Bound<&str>, Bound<&str>)> {
        use Bound::{Excluded, Included, Unbounded};
        let empty = match (&self.lower, &self.upper) {
            (Unbounded, _) | (_, Unbounded) => false,
            (Included(l), Included(u)) => l > u,
            (Included(l) | Excluded(l), Included(u) | Excluded(u)) => l >= u,
        };
        (!empty).then(|| (as_ref(&self.lower), as_ref(&self.upper)))
    }
}

fn as_ref(bound: &Bound<String>) -> Bound<&str> {
    match bound {
        Bound::Included(s) => Bound::Included(s.as_str()),
        Bound::Excluded(s) => Bound::Excluded(s.as_str()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// Whether `after` narrows the lower bound (it is at or above it).
fn beyond_lower(lower: &Bound<String>, after: &str) -> bool {
    match lower {
        Bound::Unbounded => true,
        Bound::Included(l) | Bound::Excluded(l) => after >= l.as_str(),
    }
}

/// Whether `after` narrows the upper bound (it is at or below it).
fn below_upper(upper: &Bound<String>, after: &str) -> bool {
    match upper {
        Bound::Unbounded => true,
        Bound::Included(u) | Bound::Excluded(u) => after <= u.as_str(),
    }
}

/// The smallest string greater than every string starting with `prefix`;
/// `None` when there is none. Strings compare byte-wise, and UTF-8 keeps
/// code-point order, so incrementing the last character that can be
/// incremented gives it.
fn prefix_successor(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = (last as u32 + 1..=char::MAX as u32).find_map(char::from_u32);
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn successor_of_prefixes() {
        assert_eq!(prefix_successor("ORDER#").as_deref(), Some("ORDER$"));
        assert_eq!(prefix_successor("a\u{D7FF}").as_deref(), Some("a\u{E000}"));
        assert_eq!(prefix_successor("\u{10FFFF}"), None);
        assert_eq!(prefix_successor(""), None);
    }

    #[test]
    fn inverted_ranges_are_empty_not_panics() {
        let r = SkRange::new(
            Some(&SkCondition::Between("b".into(), "a".into())),
            SortOrder::Ascending,
            None,
        );
        assert!(r.as_range().is_none());
        let r = SkRange::new(
            Some(&SkCondition::Equals("a".into())),
            SortOrder::Ascending,
            Some("a"),
        );
        assert!(r.as_range().is_none());
        let r = SkRange::new(
            Some(&SkCondition::LessThan("a".into())),
            SortOrder::Descending,
            Some("0"),
        );
        assert!(r.as_range().is_some());
    }
}
