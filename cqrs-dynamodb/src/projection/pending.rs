//! The writes of one transaction, one per item: DynamoDB refuses a
//! transaction that names an item twice, so a second write of the same
//! item is merged into the first (two deltas add up, a delta on a put
//! changes the put) and reads see them.

use std::collections::{BTreeMap, HashMap};

use aws_sdk_dynamodb::types::AttributeValue;
use cqrs_core::{Error, Result};

use crate::item::{n, Item};

/// A condition of a write, with its placeholders' values.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Condition {
    pub expression: String,
    pub values: HashMap<String, AttributeValue>,
}

impl Condition {
    /// The item must not exist.
    pub fn absent() -> Self {
        Condition {
            expression: "attribute_not_exists(pk)".into(),
            values: HashMap::new(),
        }
    }

    /// The number attribute `attribute` must equal `value` (a missing item
    /// when `value` is 0).
    pub fn number_is(attribute: &str, value: u64) -> Self {
        if value == 0 {
            return Self::absent();
        }
        Condition {
            expression: format!("{attribute} = :expected"),
            values: HashMap::from([(":expected".to_owned(), n(value))]),
        }
    }
}

/// An update expression a projection writes (`ADD units :n`, `SET #s = :s`).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Expression {
    pub update: String,
    pub names: HashMap<String, String>,
    pub values: HashMap<String, AttributeValue>,
}

/// What a transaction does to one item.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Op {
    /// Writes the whole item, under a condition when there is one.
    Put {
        item: Item,
        condition: Option<Condition>,
    },
    /// Removes the item.
    Delete,
    /// Adds integers to number attributes (missing: 0), without a read.
    Add(BTreeMap<String, i64>),
    /// Runs an update expression.
    Update(Expression),
    /// Writes nothing; fails the transaction unless the condition holds.
    Check(Condition),
}

impl Op {
    /// Whether the operation writes (a transaction of checks only is not sent).
    pub fn writes(&self) -> bool {
        !matches!(self, Op::Check(_))
    }
}

/// `then` after `before` on the same item, as one operation.
pub(crate) fn merge(before: Op, then: Op, item_name: &str) -> Result<Op> {
    match (before, then) {
        // A condition must still hold when a write replaces it: the caller
        // conditions its write itself (checkpoints, documents).
        (Op::Check(_), _) | (_, Op::Check(_)) => Err(Error::invalid(
            "projection write",
            format!("{item_name} is checked and written in one transaction"),
        )),
        (
            Op::Put { condition, .. },
            Op::Put {
                item,
                condition: None,
            },
        ) => Ok(Op::Put { item, condition }),
        (_, put @ Op::Put { .. }) => Ok(put),
        (_, Op::Delete) => Ok(Op::Delete),
        (Op::Add(mut sums), Op::Add(deltas)) => {
            for (attribute, delta) in deltas {
                let sum = sums.entry(attribute.clone()).or_insert(0);
                *sum = sum
                    .checked_add(delta)
                    .ok_or_else(|| overflow(item_name, &attribute))?;
            }
            Ok(Op::Add(sums))
        }
        (Op::Put { mut item, condition }, Op::Add(deltas)) => {
            add_to(&mut item, &deltas, item_name)?;
            Ok(Op::Put { item, condition })
        }
        (Op::Delete, Op::Add(deltas)) => {
            // The item is gone by then: the deltas start from 0.
            Ok(Op::Put {
                item: deltas.into_iter().map(|(a, d)| (a, n(d))).collect(),
                condition: None,
            })
        }
        (Op::Update(_), _) | (_, Op::Update(_)) => Err(Error::invalid(
            "projection write",
            format!(
                "{item_name}: an update expression and another write of the same item in one \
                 transaction (DynamoDB takes one operation per item): use `add` for deltas, or \
                 one expression"
            ),
        )),
    }
}

/// Adds `deltas` to the number attributes of `item` (missing ones count as 0).
pub(crate) fn add_to(item: &mut Item, deltas: &BTreeMap<String, i64>, item_name: &str) -> Result<()> {
    for (attribute, delta) in deltas {
        let current = match item.get(attribute) {
            None => 0,
            Some(AttributeValue::N(number)) => number.parse::<i64>().map_err(|_| {
                Error::invalid(
                    "projection write",
                    format!("{item_name}: cannot add an integer to {attribute} = {number}"),
                )
            })?,
            Some(other) => {
                return Err(Error::invalid(
                    "projection write",
                    format!("{item_name}: {attribute} is not a number ({other:?})"),
                ))
            }
        };
        let sum = current
            .checked_add(*delta)
            .ok_or_else(|| overflow(item_name, attribute))?;
        item.insert(attribute.clone(), n(sum));
    }
    Ok(())
}

fn overflow(item_name: &str, attribute: &str) -> Error {
    Error::invalid(
        "projection write",
        format!("{item_name}: {attribute} overflows a 64-bit integer"),
    )
}

/// What a read of an item sees in this transaction: `stored` (read from
/// the table) with `op` applied.
pub(crate) fn overlay(stored: Option<Item>, op: &Op, key: Item, item_name: &str) -> Result<Option<Item>> {
    match op {
        Op::Put { item, .. } => Ok(Some(item.clone())),
        Op::Delete => Ok(None),
        Op::Check(_) => Ok(stored),
        Op::Add(deltas) => {
            let mut item = stored.unwrap_or(key);
            add_to(&mut item, deltas, item_name)?;
            Ok(Some(item))
        }
        Op::Update(_) => Err(Error::invalid(
            "projection read",
            format!(
                "{item_name} has an update expression pending in this transaction: its result is \
                 known only once committed"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::item::s;

    fn adds(pairs: &[(&str, i64)]) -> Op {
        Op::Add(pairs.iter().map(|(a, d)| ((*a).to_owned(), *d)).collect())
    }

    #[test]
    fn deltas_on_one_item_add_up() {
        let merged = merge(adds(&[("v", 3)]), adds(&[("v", -5), ("w", 1)]), "x").unwrap();
        assert_eq!(merged, adds(&[("v", -2), ("w", 1)]));
    }

    #[test]
    fn a_delta_after_a_put_changes_the_put() {
        let put = Op::Put {
            item: HashMap::from([("v".to_owned(), n(10)), ("name".to_owned(), s("a"))]),
            condition: None,
        };
        let Op::Put { item, .. } = merge(put, adds(&[("v", 5), ("w", 2)]), "x").unwrap() else {
            panic!("a put")
        };
        assert_eq!(item["v"], n(15));
        assert_eq!(item["w"], n(2));
        assert_eq!(item["name"], s("a"));
    }

    #[test]
    fn a_delta_after_a_delete_starts_from_zero() {
        let Op::Put { item, .. } = merge(Op::Delete, adds(&[("v", 4)]), "x").unwrap() else {
            panic!("a put")
        };
        assert_eq!(item["v"], n(4));
    }

    #[test]
    fn an_expression_does_not_merge_with_another_write() {
        let expression = Op::Update(Expression::default());
        assert!(merge(expression.clone(), adds(&[("v", 1)]), "x").is_err());
        assert!(merge(adds(&[("v", 1)]), expression.clone(), "x").is_err());
        // A put or delete replaces it.
        assert_eq!(merge(expression, Op::Delete, "x").unwrap(), Op::Delete);
    }

    #[test]
    fn a_conditioned_put_keeps_its_condition_under_a_later_put() {
        let first = Op::Put {
            item: HashMap::new(),
            condition: Some(Condition::absent()),
        };
        let later = Op::Put {
            item: HashMap::from([("v".to_owned(), n(1))]),
            condition: None,
        };
        let Op::Put { condition, .. } = merge(first, later, "x").unwrap() else {
            panic!("a put")
        };
        assert_eq!(condition, Some(Condition::absent()));
    }

    #[test]
    fn reads_see_pending_deltas() {
        let stored = HashMap::from([("v".to_owned(), n(7))]);
        let seen = overlay(Some(stored), &adds(&[("v", -2)]), HashMap::new(), "x").unwrap();
        assert_eq!(seen.unwrap()["v"], n(5));
        let fresh = overlay(None, &adds(&[("v", 3)]), HashMap::new(), "x").unwrap();
        assert_eq!(fresh.unwrap()["v"], n(3));
        assert_eq!(
            overlay(Some(HashMap::new()), &Op::Delete, HashMap::new(), "x").unwrap(),
            None
        );
        assert!(overlay(None, &Op::Update(Expression::default()), HashMap::new(), "x").is_err());
    }

    #[test]
    fn integer_overflow_is_an_error() {
        assert!(merge(adds(&[("v", i64::MAX)]), adds(&[("v", 1)]), "x").is_err());
    }
}
