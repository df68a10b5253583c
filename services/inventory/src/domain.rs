//! The inventory's decisions, free of I/O: what an order asks for per SKU, whether the stock at
//! hand covers all of it (reserve every line) or not (reserve nothing), and what each order
//! event does to the order's reservation (commit it, release it, or nothing), whether a stock
//! adjustment leaves a SKU's available units at zero or more, and what a SKU may look like.
//!
//! The handler reads the state under its locks, asks these functions, and carries out the answer
//! (stock moves, the new reservation status, the event to emit) in one transaction.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;

use saga_contracts::{EventId, OrderLine, StockLine};
use serde::{Deserialize, Serialize};

use crate::error::InvalidOrder;

/// The life cycle of a reservation: `reserved` then `committed` or `released`; `rejected` when
/// the stock did not cover the order. Stored (and serialized) as its lowercase name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReservationStatus {
    /// Units are held for the order.
    Reserved,
    /// The order could not be reserved; nothing is held.
    Rejected,
    /// The held units were sold.
    Committed,
    /// The held units were given back (or nothing was ever held: a tombstone).
    Released,
}

impl ReservationStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            ReservationStatus::Reserved => "reserved",
            ReservationStatus::Rejected => "rejected",
            ReservationStatus::Committed => "committed",
            ReservationStatus::Released => "released",
        }
    }
}

impl fmt::Display for ReservationStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ReservationStatus {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "reserved" => Ok(ReservationStatus::Reserved),
            "rejected" => Ok(ReservationStatus::Rejected),
            "committed" => Ok(ReservationStatus::Committed),
            "released" => Ok(ReservationStatus::Released),
            other => Err(format!("unknown reservation status {other:?}")),
        }
    }
}

/// An order's reservation as stored: one decision per order, all lines or none.
#[derive(Debug, Clone, PartialEq)]
pub struct Reservation {
    /// Where it is in its life cycle.
    pub status: ReservationStatus,
    /// The units held (or once held) per SKU, sorted by SKU.
    pub items: Vec<StockLine>,
    /// The order.created that decided it; `None` for a tombstone left by an order.failed that
    /// came first.
    pub created_event_id: Option<EventId>,
}

impl Reservation {
    /// Whether this is the mark of an order that failed before its order.created was seen.
    fn is_unclaimed_tombstone(&self) -> bool {
        self.status == ReservationStatus::Released && self.created_event_id.is_none()
    }
}

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

/// What an order.created does to the order's reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnCreated {
    /// Nothing is decided yet: lock the stock rows of the demand and [`decide`].
    Decide,
    /// The order failed before it was created: reserve nothing, claim the tombstone and emit
    /// inventory.reservation_failed (order_already_failed).
    AlreadyFailed,
    /// The order was decided before (the same fact again under a new event id): nothing.
    AlreadyDecided(ReservationStatus),
}

/// What an order.confirmed does to the order's reservation.
#[derive(Debug, Clone, PartialEq)]
pub enum OnConfirmed {
    /// The held units become sold (reserved → committed); emit inventory.committed.
    Commit(Vec<StockLine>),
    /// Already committed: nothing.
    AlreadyCommitted,
    /// Nothing is held (rejected or released): nothing to commit; the saga disagrees with itself.
    NothingHeld(ReservationStatus),
    /// No reservation at all, though the order service confirms only reserved orders: the row
    /// that must exist does not.
    NeverReserved,
}

/// What an order.failed does to the order's reservation.
#[derive(Debug, Clone, PartialEq)]
pub enum OnFailed {
    /// The held units go back to available (reserved → released); emit inventory.released.
    Release(Vec<StockLine>),
    /// The units were already sold; they stay sold.
    AlreadySold,
    /// Nothing is held (rejected, or already released): nothing.
    NothingHeld(ReservationStatus),
    /// The order.created was not seen yet: leave a tombstone so that it reserves nothing.
    LeaveTombstone,
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

/// What an order.created does, given the order's reservation so far.
pub fn on_created(reservation: Option<Reservation>) -> OnCreated {
    match reservation {
        None => OnCreated::Decide,
        Some(tombstone) if tombstone.is_unclaimed_tombstone() => OnCreated::AlreadyFailed,
        Some(decided) => OnCreated::AlreadyDecided(decided.status),
    }
}

/// What an order.confirmed does, given the order's reservation.
pub fn on_confirmed(reservation: Option<Reservation>) -> OnConfirmed {
    match reservation {
        None => OnConfirmed::NeverReserved,
        Some(Reservation {
            status: ReservationStatus::Reserved,
            items,
            ..
        }) => OnConfirmed::Commit(items),
        Some(Reservation {
            status: ReservationStatus::Committed,
            ..
        }) => OnConfirmed::AlreadyCommitted,
        Some(other) => OnConfirmed::NothingHeld(other.status),
    }
}

/// What an order.failed does, given the order's reservation.
pub fn on_failed(reservation: Option<Reservation>) -> OnFailed {
    match reservation {
        None => OnFailed::LeaveTombstone,
        Some(Reservation {
            status: ReservationStatus::Reserved,
            items,
            ..
        }) => OnFailed::Release(items),
        Some(Reservation {
            status: ReservationStatus::Committed,
            ..
        }) => OnFailed::AlreadySold,
        Some(other) => OnFailed::NothingHeld(other.status),
    }
}

/// The longest SKU.
pub const MAX_SKU_LENGTH: usize = 64;

/// Whether `sku` is 1 to [`MAX_SKU_LENGTH`] characters of `A-Z a-z 0-9 . _ -`, as the stock
/// table's CHECK constraint requires (`sku ~ '^[A-Za-z0-9._-]{1,64}$'`).
pub fn is_well_formed_sku(sku: &str) -> bool {
    (1..=MAX_SKU_LENGTH).contains(&sku.len())
        && sku
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A SKU's available units after adding `delta` to `available`, or `None` if the adjustment
/// removes more units than are available (available stock never goes below zero).
pub fn available_after_adjustment(available: i64, delta: i64) -> Option<i64> {
    available.checked_add(delta).filter(|after| *after >= 0)
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

    fn rejected(skus: &[&str]) -> Decision {
        Decision::Reject {
            unavailable_skus: skus.iter().map(|sku| sku.to_string()).collect(),
        }
    }

    /// A reservation in `status` holding two units of `A`, decided by an order.created.
    fn reservation(status: ReservationStatus) -> Reservation {
        Reservation {
            status,
            items: held(&[("A", 2)]),
            created_event_id: Some(EventId::new()),
        }
    }

    /// What an order.failed leaves when it comes before the order.created.
    fn tombstone() -> Reservation {
        Reservation {
            status: ReservationStatus::Released,
            items: Vec::new(),
            created_event_id: None,
        }
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
            rejected(&["A"]),
            "each line alone fits in 3 units, together they do not"
        );
    }

    #[test]
    fn one_short_line_rejects_the_whole_order_naming_only_the_short_sku() {
        let decision = decide_lines(
            &[line("A", 1), line("B", 6), line("C", 1)],
            &[("A", 5), ("B", 5), ("C", 5)],
        );
        assert_eq!(decision, rejected(&["B"]));
    }

    #[test]
    fn a_sku_never_stocked_has_nothing_available() {
        let decision = decide_lines(&[line("A", 1), line("GHOST", 1)], &[("A", 5)]);
        assert_eq!(decision, rejected(&["GHOST"]));
    }

    #[test]
    fn every_short_sku_is_named_in_sku_order() {
        let decision = decide_lines(&[line("Z", 1), line("A", 9), line("M", 1)], &[("A", 8), ("M", 1)]);
        assert_eq!(decision, rejected(&["A", "Z"]));
    }

    #[test]
    fn one_unit_more_than_available_is_rejected() {
        let decision = decide_lines(&[line("A", 4)], &[("A", 3)]);
        assert_eq!(decision, rejected(&["A"]));
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

    #[test]
    fn a_new_order_is_decided_from_the_stock() {
        assert_eq!(on_created(None), OnCreated::Decide);
    }

    #[test]
    fn an_order_created_after_it_failed_reserves_nothing() {
        assert_eq!(on_created(Some(tombstone())), OnCreated::AlreadyFailed);
    }

    #[test]
    fn an_order_created_again_changes_no_decision() {
        for status in [
            ReservationStatus::Reserved,
            ReservationStatus::Rejected,
            ReservationStatus::Committed,
            ReservationStatus::Released,
        ] {
            assert_eq!(
                on_created(Some(reservation(status))),
                OnCreated::AlreadyDecided(status),
                "{status}"
            );
        }
        let mut claimed = tombstone();
        claimed.created_event_id = Some(EventId::new());
        assert_eq!(
            on_created(Some(claimed)),
            OnCreated::AlreadyDecided(ReservationStatus::Released),
            "a tombstone answers one order.created only"
        );
    }

    #[test]
    fn a_confirmed_order_commits_what_it_holds() {
        assert_eq!(
            on_confirmed(Some(reservation(ReservationStatus::Reserved))),
            OnConfirmed::Commit(held(&[("A", 2)]))
        );
    }

    #[test]
    fn a_confirmation_of_a_committed_order_commits_nothing_more() {
        assert_eq!(
            on_confirmed(Some(reservation(ReservationStatus::Committed))),
            OnConfirmed::AlreadyCommitted
        );
    }

    #[test]
    fn a_confirmation_without_held_units_commits_nothing() {
        for status in [ReservationStatus::Rejected, ReservationStatus::Released] {
            assert_eq!(
                on_confirmed(Some(reservation(status))),
                OnConfirmed::NothingHeld(status)
            );
        }
        assert_eq!(
            on_confirmed(Some(tombstone())),
            OnConfirmed::NothingHeld(ReservationStatus::Released)
        );
    }

    #[test]
    fn a_confirmation_of_an_order_never_reserved_finds_no_reservation() {
        assert_eq!(on_confirmed(None), OnConfirmed::NeverReserved);
    }

    #[test]
    fn a_failed_order_releases_what_it_holds() {
        assert_eq!(
            on_failed(Some(reservation(ReservationStatus::Reserved))),
            OnFailed::Release(held(&[("A", 2)]))
        );
    }

    #[test]
    fn a_failure_after_the_sale_leaves_the_units_sold() {
        assert_eq!(
            on_failed(Some(reservation(ReservationStatus::Committed))),
            OnFailed::AlreadySold
        );
    }

    #[test]
    fn a_failure_without_held_units_releases_nothing() {
        for status in [ReservationStatus::Rejected, ReservationStatus::Released] {
            assert_eq!(on_failed(Some(reservation(status))), OnFailed::NothingHeld(status));
        }
    }

    #[test]
    fn a_failure_before_the_order_was_created_leaves_a_tombstone() {
        assert_eq!(on_failed(None), OnFailed::LeaveTombstone);
    }

    #[test]
    fn a_restock_adds_to_the_available_units() {
        assert_eq!(available_after_adjustment(0, 5), Some(5));
        assert_eq!(available_after_adjustment(3, 2), Some(5));
    }

    #[test]
    fn an_adjustment_may_remove_exactly_the_available_units() {
        assert_eq!(available_after_adjustment(3, -3), Some(0));
    }

    #[test]
    fn an_adjustment_removing_more_than_is_available_is_refused() {
        assert_eq!(available_after_adjustment(3, -4), None);
        assert_eq!(available_after_adjustment(0, -1), None);
        assert_eq!(available_after_adjustment(i64::MIN + 1, -2), None, "no overflow");
    }

    #[test]
    fn a_status_reads_back_from_its_stored_name() {
        for status in [
            ReservationStatus::Reserved,
            ReservationStatus::Rejected,
            ReservationStatus::Committed,
            ReservationStatus::Released,
        ] {
            assert_eq!(status.as_str().parse(), Ok(status));
            let json = serde_json::to_value(status).expect("serializes");
            assert_eq!(json, serde_json::Value::from(status.as_str()));
            assert_eq!(serde_json::from_value::<ReservationStatus>(json).ok(), Some(status));
        }
        assert!("pending".parse::<ReservationStatus>().is_err());
    }
}
