//! The reservation decision, free of I/O: what an order asks for per SKU, and whether the
//! stock at hand covers all of it (reserve every line) or not (reserve nothing).

use std::collections::{BTreeMap, HashMap};

use saga_contracts::{OrderLine, StockLine};

use crate::error::InvalidOrder;

/// What the stock at hand allows for one order.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Every SKU is covered: hold these quantities.
    Reserve(Vec<StockLine>),
    /// At least one SKU is short: hold nothing. The short SKUs, sorted.
    Reject {
        /// SKUs whose available units are fewer than the order asks for.
        unavailable_skus: Vec<String>,
    },
}

/// The units an order asks for per SKU, sorted by SKU, a SKU listed on several lines summed
/// into one. This is also the order in which stock rows are locked.
///
/// An order without lines, a line without a SKU, a quantity below 1 or a total above what an
/// event can carry can never be reserved: such an order is invalid, not out of stock.
pub fn demand(lines: &[OrderLine]) -> Result<Vec<StockLine>, InvalidOrder> {
    if lines.is_empty() {
        return Err(InvalidOrder::NoLines);
    }
    let mut per_sku: BTreeMap<&str, i64> = BTreeMap::new();
    for (index, line) in lines.iter().enumerate() {
        if line.sku.is_empty() {
            return Err(InvalidOrder::EmptySku { line: index });
        }
        if line.quantity < 1 {
            return Err(InvalidOrder::NonPositiveQuantity {
                line: index,
                quantity: line.quantity,
            });
        }
        *per_sku.entry(&line.sku).or_default() += i64::from(line.quantity);
    }
    per_sku
        .into_iter()
        .map(|(sku, quantity)| {
            let quantity = i32::try_from(quantity).map_err(|_| InvalidOrder::QuantityTooLarge {
                sku: sku.to_string(),
                quantity,
            })?;
            Ok(StockLine {
                sku: sku.to_string(),
                quantity,
            })
        })
        .collect()
}

/// Decides an order's reservation from the available units per SKU; a SKU missing from
/// `available` has none.
pub fn decide(demand: &[StockLine], available: &HashMap<String, i64>) -> Decision {
    let unavailable_skus: Vec<String> = demand
        .iter()
        .filter(|line| available.get(&line.sku).copied().unwrap_or(0) < i64::from(line.quantity))
        .map(|line| line.sku.clone())
        .collect();
    if unavailable_skus.is_empty() {
        Decision::Reserve(demand.to_vec())
    } else {
        Decision::Reject { unavailable_skus }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(sku: &str, quantity: i32) -> OrderLine {
        OrderLine {
            sku: sku.into(),
            quantity,
            unit_price_minor: 100,
        }
    }

    fn stock(levels: &[(&str, i64)]) -> HashMap<String, i64> {
        levels
            .iter()
            .map(|(sku, available)| (sku.to_string(), *available))
            .collect()
    }

    fn held(lines: &[(&str, i32)]) -> Vec<StockLine> {
        lines
            .iter()
            .map(|(sku, quantity)| StockLine {
                sku: sku.to_string(),
                quantity: *quantity,
            })
            .collect()
    }

    fn decide_lines(lines: &[OrderLine], levels: &[(&str, i64)]) -> Decision {
        decide(&demand(lines).expect("valid order"), &stock(levels))
    }

    #[test]
    fn an_order_within_stock_reserves_every_line() {
        let decision = decide_lines(&[line("B", 2), line("A", 1)], &[("A", 5), ("B", 5)]);
        assert_eq!(decision, Decision::Reserve(held(&[("A", 1), ("B", 2)])));
    }

    #[test]
    fn an_order_for_exactly_the_last_units_is_reserved() {
        let decision = decide_lines(&[line("A", 3), line("B", 1)], &[("A", 3), ("B", 1)]);
        assert_eq!(decision, Decision::Reserve(held(&[("A", 3), ("B", 1)])));
    }

    #[test]
    fn a_sku_listed_twice_is_summed_before_it_is_checked() {
        let lines = [line("A", 2), line("B", 1), line("A", 2)];
        assert_eq!(demand(&lines).expect("valid"), held(&[("A", 4), ("B", 1)]));
        assert_eq!(
            decide_lines(&lines, &[("A", 4), ("B", 1)]),
            Decision::Reserve(held(&[("A", 4), ("B", 1)]))
        );
        assert_eq!(
            decide_lines(&lines, &[("A", 3), ("B", 1)]),
            Decision::Reject {
                unavailable_skus: vec!["A".into()]
            },
            "each line alone fits in 3 units, together they do not"
        );
    }

    #[test]
    fn one_short_line_rejects_the_whole_order_naming_only_the_short_sku() {
        let decision = decide_lines(
            &[line("A", 1), line("B", 6), line("C", 1)],
            &[("A", 5), ("B", 5), ("C", 5)],
        );
        assert_eq!(
            decision,
            Decision::Reject {
                unavailable_skus: vec!["B".into()]
            }
        );
    }

    #[test]
    fn a_sku_never_stocked_has_nothing_available() {
        let decision = decide_lines(&[line("A", 1), line("GHOST", 1)], &[("A", 5)]);
        assert_eq!(
            decision,
            Decision::Reject {
                unavailable_skus: vec!["GHOST".into()]
            }
        );
    }

    #[test]
    fn every_short_sku_is_named_in_sku_order() {
        let decision = decide_lines(&[line("Z", 1), line("A", 9), line("M", 1)], &[("A", 8), ("M", 1)]);
        assert_eq!(
            decision,
            Decision::Reject {
                unavailable_skus: vec!["A".into(), "Z".into()]
            }
        );
    }

    #[test]
    fn one_unit_more_than_available_is_rejected() {
        let decision = decide_lines(&[line("A", 4)], &[("A", 3)]);
        assert_eq!(
            decision,
            Decision::Reject {
                unavailable_skus: vec!["A".into()]
            }
        );
    }

    #[test]
    fn an_order_without_lines_is_invalid() {
        assert_eq!(demand(&[]), Err(InvalidOrder::NoLines));
    }

    #[test]
    fn a_quantity_below_one_is_invalid() {
        assert_eq!(
            demand(&[line("A", 1), line("B", 0)]),
            Err(InvalidOrder::NonPositiveQuantity { line: 1, quantity: 0 })
        );
        assert_eq!(
            demand(&[line("A", -2)]),
            Err(InvalidOrder::NonPositiveQuantity { line: 0, quantity: -2 })
        );
    }

    #[test]
    fn a_line_without_a_sku_is_invalid() {
        assert_eq!(demand(&[line("", 1)]), Err(InvalidOrder::EmptySku { line: 0 }));
    }

    #[test]
    fn a_summed_quantity_beyond_what_an_event_carries_is_invalid() {
        let lines = [line("A", i32::MAX), line("A", 1)];
        assert_eq!(
            demand(&lines),
            Err(InvalidOrder::QuantityTooLarge {
                sku: "A".into(),
                quantity: i64::from(i32::MAX) + 1
            })
        );
    }
}
