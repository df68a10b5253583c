//! The payment service's tables held in memory while replay rebuilds them
//! ([`RebuiltPayments`]): the [`PaymentStore`] replay runs the live state changes on. Each
//! operation does to its rows what its SQL in [`crate::store`] does to the database's, so the
//! rows the replay runner writes in bulk are the ones the live service would have written.

use std::collections::HashMap;

use saga_common::replay::memory::{MemoryTable, RebuiltTable, Row, Statement};
use saga_contracts::{EventId, OrderId, PaymentId};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::domain::{OrderFailure, Payment, PaymentState};
use crate::error::{Error, Result};
use crate::store::{self, PaymentRow, PaymentStore, StatusColumns};

/// The payment service's rebuilt tables: `payments` and `failed_orders`.
#[derive(Debug, Default)]
pub struct RebuiltPayments {
    /// `payments`.
    pub payments: PaymentsTable,
    /// `failed_orders`.
    pub failed_orders: MemoryTable<FailedOrderRow>,
}

impl RebuiltPayments {
    /// The tables, as the replay runner handles them (no foreign key joins them).
    pub fn tables(&mut self) -> Vec<&mut dyn RebuiltTable> {
        vec![&mut self.payments, &mut self.failed_orders]
    }

    /// Gives the payment of `order_id` the id the service published for it (in payment.success
    /// and payment.refunded): payments made before ids were derived from the order id (see
    /// [`crate::domain::payment_id_for`]) had random ones, which only their events still tell.
    /// Nothing changes for an order without a payment. [`Error::PaymentIdTaken`] if another
    /// order's payment has that id.
    pub fn adopt_published_payment_id(&mut self, order_id: OrderId, payment_id: PaymentId) -> Result<()> {
        self.payments.give_payment_id(order_id, payment_id)
    }
}

impl PaymentStore for RebuiltPayments {
    // Replay applies one event at a time: nothing to lock.
    async fn lock(&mut self, order_id: OrderId) -> Result<PaymentState> {
        Ok(PaymentState {
            payment: self.payments.get(&order_id).map(PaymentRecord::payment).transpose()?,
            failure: self
                .failed_orders
                .get(&order_id)
                .map(|row| store::stored_failure(&row.reason, row.event_id)),
        })
    }

    async fn insert_failure(&mut self, order_id: OrderId, failure: &OrderFailure) -> Result<()> {
        self.failed_orders.insert_new(FailedOrderRow {
            order_id,
            reason: failure.reason.as_str().to_owned(),
            event_id: failure.event_id,
        });
        Ok(())
    }

    async fn insert_payment(&mut self, payment: &Payment) -> Result<bool> {
        self.payments.insert_new(PaymentRecord::of(payment))
    }

    async fn update_payment(&mut self, old: &Payment, new: &Payment) -> Result<bool> {
        let in_old_status = self
            .payments
            .get(&new.order_id)
            .is_some_and(|row| row.status == old.status.as_str());
        if in_old_status {
            self.payments.rows.update(&new.order_id, |row| row.settle(new));
        }
        Ok(in_old_status)
    }
}

/// A row of `payments`. Left out, so the database fills them: `created_at` and `updated_at`
/// (`now()` when the row is first written; verify ignores them) and `stalled_reason` and
/// `stalled_at` (NULL: replay calls no gateway, so never gives up on a payment).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRecord {
    /// The order paid for.
    pub order_id: OrderId,
    /// The payment's own id (unique too).
    pub payment_id: PaymentId,
    /// `pending`, `captured`, `declined`, `refunding` or `refunded`.
    pub status: String,
    /// The order total, in minor units.
    pub amount_minor: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// How much was given back, in minor units.
    pub refunded_minor: i64,
    /// The capture, once captured.
    pub gateway_reference: Option<String>,
    /// The gateway's decline code, if declined.
    pub decline_reason: Option<String>,
    /// The customer's payment token, while pending.
    pub payment_token: Option<String>,
    /// The order.created that asked for the charge (kept once settled, as the SQL keeps it).
    pub causation_id: Option<EventId>,
    /// W3C trace context of that order.created.
    pub traceparent: Option<String>,
}

impl PaymentRecord {
    /// The row the SQL `insert` writes for a new payment.
    fn of(payment: &Payment) -> Self {
        let columns = StatusColumns::of(payment);
        Self {
            order_id: payment.order_id,
            payment_id: payment.payment_id,
            status: payment.status.as_str().to_owned(),
            amount_minor: payment.amount_minor,
            currency: payment.currency.clone(),
            refunded_minor: payment.refunded_minor(),
            gateway_reference: columns.capture.map(str::to_owned),
            decline_reason: columns.decline_reason.map(str::to_owned),
            payment_token: columns.token.map(str::to_owned),
            causation_id: columns.requested_by,
            traceparent: payment.traceparent.clone(),
        }
    }

    /// What the SQL `update` changes: the status and the columns it fills; the ids, the amount,
    /// the causation and the trace stay.
    fn settle(&mut self, new: &Payment) {
        let columns = StatusColumns::of(new);
        self.status = new.status.as_str().to_owned();
        self.payment_token = columns.token.map(str::to_owned);
        self.gateway_reference = columns.capture.map(str::to_owned);
        self.decline_reason = columns.decline_reason.map(str::to_owned);
        self.refunded_minor = new.refunded_minor();
    }

    /// The payment, read as the SQL reads it.
    fn payment(&self) -> Result<Payment> {
        Payment::try_from(PaymentRow {
            order_id: self.order_id,
            payment_id: self.payment_id,
            status: self.status.clone(),
            amount_minor: self.amount_minor,
            currency: self.currency.clone(),
            traceparent: self.traceparent.clone(),
            payment_token: self.payment_token.clone(),
            causation_id: self.causation_id,
            gateway_reference: self.gateway_reference.clone(),
            decline_reason: self.decline_reason.clone(),
        })
    }
}

impl Row for PaymentRecord {
    type Key = OrderId;
    const TABLE: &'static str = "payments";
    const KEY_COLUMNS: &'static [&'static str] = &["order_id"];
    fn key(&self) -> OrderId {
        self.order_id
    }
}

/// A row of `failed_orders`. `failed_at` is left out: the database's `now()` fills it, as live
/// (verify ignores it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedOrderRow {
    /// The order that failed.
    pub order_id: OrderId,
    /// The failure reason's symbol.
    pub reason: String,
    /// The order.failed event.
    pub event_id: Option<EventId>,
}

impl Row for FailedOrderRow {
    type Key = OrderId;
    const TABLE: &'static str = "failed_orders";
    const KEY_COLUMNS: &'static [&'static str] = &["order_id"];
    fn key(&self) -> OrderId {
        self.order_id
    }
}

/// `payments` in memory, with an index of its second unique key, `payment_id`, which the
/// database enforces as it does live.
#[derive(Debug, Default)]
pub struct PaymentsTable {
    rows: MemoryTable<PaymentRecord>,
    /// The order whose payment has each payment id.
    by_payment_id: HashMap<PaymentId, OrderId>,
    /// Each payment id the event being applied gave an order's payment, to mend the index with
    /// if the event is undone (the table's undo log restores only the rows).
    given: Vec<(PaymentId, OrderId)>,
}

impl PaymentsTable {
    /// The payment of `order_id`.
    pub fn get(&self, order_id: &OrderId) -> Option<&PaymentRecord> {
        self.rows.get(order_id)
    }

    /// Every payment, in no particular order.
    pub fn rows(&self) -> impl Iterator<Item = &PaymentRecord> {
        self.rows.rows()
    }

    /// How many payments there are.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// `INSERT ... ON CONFLICT (order_id) DO NOTHING`: whether it inserted `row`;
    /// [`Error::PaymentIdTaken`] if another order's payment has its payment id.
    fn insert_new(&mut self, row: PaymentRecord) -> Result<bool> {
        if self.rows.contains(&row.order_id) {
            return Ok(false);
        }
        self.claim(row.payment_id, row.order_id)?;
        self.rows.insert_new(row);
        Ok(true)
    }

    /// `UPDATE payments SET payment_id = $2 WHERE order_id = $1 AND payment_id <> $2`.
    fn give_payment_id(&mut self, order_id: OrderId, payment_id: PaymentId) -> Result<()> {
        let Some(before) = self.rows.get(&order_id).map(|row| row.payment_id) else {
            return Ok(());
        };
        if before == payment_id {
            return Ok(());
        }
        self.claim(payment_id, order_id)?;
        self.by_payment_id.remove(&before);
        self.rows.update(&order_id, |row| row.payment_id = payment_id);
        Ok(())
    }

    /// Enters `payment_id` as the id of `order_id`'s payment, unless another order's has it.
    fn claim(&mut self, payment_id: PaymentId, order_id: OrderId) -> Result<()> {
        match self.by_payment_id.get(&payment_id) {
            Some(holder) if *holder != order_id => Err(Error::PaymentIdTaken { payment_id, order_id }),
            _ => {
                self.by_payment_id.insert(payment_id, order_id);
                self.given.push((payment_id, order_id));
                Ok(())
            }
        }
    }

    fn index_every_row(&mut self) {
        self.by_payment_id = self.rows.rows().map(|row| (row.payment_id, row.order_id)).collect();
    }
}

impl RebuiltTable for PaymentsTable {
    fn name(&self) -> &'static str {
        self.rows.name()
    }

    fn clear(&mut self) {
        *self = Self::default();
    }

    fn load(&mut self, rows: Vec<Value>) -> saga_common::Result<()> {
        self.rows.load(rows)?;
        self.index_every_row();
        Ok(())
    }

    fn end_event(&mut self, keep: bool) {
        self.rows.end_event(keep);
        if keep {
            self.given.clear();
            return;
        }
        // The rows are as before the event: take out the ids it gave, put back the ones its
        // orders' payments have again.
        for (payment_id, order_id) in self.given.drain(..).rev() {
            if self.by_payment_id.get(&payment_id) == Some(&order_id) {
                self.by_payment_id.remove(&payment_id);
            }
            if let Some(row) = self.rows.get(&order_id) {
                self.by_payment_id.insert(row.payment_id, order_id);
            }
        }
    }

    fn take_changes(&mut self) -> saga_common::Result<Vec<Statement>> {
        self.rows.take_changes()
    }
}

#[cfg(test)]
mod tests {
    use saga_contracts::FailureReason;

    use super::*;
    use crate::domain::PaymentStatus;

    fn pending(order_id: OrderId, payment_id: PaymentId) -> Payment {
        Payment {
            order_id,
            payment_id,
            amount_minor: 3998,
            currency: "USD".into(),
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            status: PaymentStatus::Pending {
                token: "tok_visa".into(),
                requested_by: EventId::new(),
            },
        }
    }

    #[tokio::test]
    async fn a_payment_inserted_and_settled_in_memory_reads_back_as_it_was_written() {
        let mut tables = RebuiltPayments::default();
        let order_id = OrderId::new();
        let before = pending(order_id, PaymentId::new());
        assert!(tables.insert_payment(&before).await.expect("inserted"));
        let captured = Payment {
            status: PaymentStatus::Captured {
                capture: "sim_ch_1".into(),
            },
            ..before.clone()
        };
        assert!(tables.update_payment(&before, &captured).await.expect("updated"));

        let state = tables.lock(order_id).await.expect("read");
        assert_eq!(state.payment, Some(captured));
        let row = tables.payments.get(&order_id).expect("a row");
        assert_eq!(row.payment_token, None);
        assert_eq!(row.gateway_reference.as_deref(), Some("sim_ch_1"));
        // As the SQL update leaves it: the causation of the charge's outcome stays recorded.
        assert!(row.causation_id.is_some());
    }

    #[tokio::test]
    async fn a_second_payment_or_failure_of_an_order_is_not_inserted_and_the_first_stays() {
        let mut tables = RebuiltPayments::default();
        let order_id = OrderId::new();
        let first = pending(order_id, PaymentId::new());
        assert!(tables.insert_payment(&first).await.expect("inserted"));
        assert!(!tables
            .insert_payment(&pending(order_id, PaymentId::new()))
            .await
            .expect("no error"));
        let failure = OrderFailure {
            event_id: Some(EventId::new()),
            reason: FailureReason::OutOfStock,
        };
        tables.insert_failure(order_id, &failure).await.expect("recorded");
        let later = OrderFailure {
            event_id: Some(EventId::new()),
            reason: FailureReason::DeadlineExceeded,
        };
        tables.insert_failure(order_id, &later).await.expect("no error");

        let state = tables.lock(order_id).await.expect("read");
        assert_eq!(state.payment, Some(first));
        assert_eq!(state.failure, Some(failure));
    }

    #[tokio::test]
    async fn an_update_from_a_status_the_payment_is_no_longer_in_changes_nothing() {
        let mut tables = RebuiltPayments::default();
        let order_id = OrderId::new();
        let payment = pending(order_id, PaymentId::new());
        let declined = Payment {
            status: PaymentStatus::Declined {
                reason: "card_declined".into(),
            },
            ..payment.clone()
        };
        let captured = Payment {
            status: PaymentStatus::Captured {
                capture: "sim_ch_1".into(),
            },
            ..payment.clone()
        };
        tables.insert_payment(&payment).await.expect("inserted");
        assert!(tables.update_payment(&payment, &declined).await.expect("updated"));
        assert!(!tables.update_payment(&payment, &captured).await.expect("no error"));
        assert_eq!(tables.lock(order_id).await.expect("read").payment, Some(declined));
    }

    #[tokio::test]
    async fn a_payment_id_another_order_has_is_refused_and_the_refused_event_leaves_the_index_as_it_was() {
        let mut tables = RebuiltPayments::default();
        let (first, second) = (OrderId::new(), OrderId::new());
        let (first_id, second_id) = (PaymentId::new(), PaymentId::new());
        tables
            .insert_payment(&pending(first, first_id))
            .await
            .expect("inserted");
        tables
            .insert_payment(&pending(second, second_id))
            .await
            .expect("inserted");
        tables.payments.end_event(true);

        // An event gives the second payment a new id, then asks for the first's: refused.
        let new_id = PaymentId::new();
        tables.adopt_published_payment_id(second, new_id).expect("a free id");
        assert!(matches!(
            tables.adopt_published_payment_id(second, first_id),
            Err(Error::PaymentIdTaken { .. })
        ));
        assert!(matches!(
            tables.insert_payment(&pending(OrderId::new(), first_id)).await,
            Err(Error::PaymentIdTaken { .. })
        ));
        tables.payments.end_event(false);

        assert_eq!(tables.payments.get(&second).map(|row| row.payment_id), Some(second_id));
        // The id the undone event gave is free again, the one it took away taken again.
        tables.adopt_published_payment_id(first, new_id).expect("free again");
        assert!(matches!(
            tables.adopt_published_payment_id(first, second_id),
            Err(Error::PaymentIdTaken { .. })
        ));
    }

    #[tokio::test]
    async fn every_payment_row_names_the_same_columns_whatever_its_status() {
        let mut tables = RebuiltPayments::default();
        let pending_payment = pending(OrderId::new(), PaymentId::new());
        let declined = Payment {
            status: PaymentStatus::Declined {
                reason: "card_declined".into(),
            },
            ..pending(OrderId::new(), PaymentId::new())
        };
        tables.insert_payment(&pending_payment).await.expect("inserted");
        tables.insert_payment(&declined).await.expect("inserted");
        let columns: Vec<Vec<String>> = tables
            .payments
            .rows()
            .map(|row| {
                let json = serde_json::to_value(row).expect("serializes");
                json.as_object().expect("an object").keys().cloned().collect()
            })
            .collect();
        assert_eq!(columns.len(), 2);
        assert_eq!(columns[0], columns[1]);
    }

    #[tokio::test]
    async fn rows_read_back_from_the_database_are_payments_again_and_keep_their_ids_unique() {
        let order_id = OrderId::new();
        let payment_id = PaymentId::new();
        // As `to_jsonb` gives a row: every column, the ones the row leaves out too.
        let stored = serde_json::json!({
            "order_id": order_id.to_string(),
            "payment_id": payment_id.to_string(),
            "status": "refunding",
            "amount_minor": 3998,
            "currency": "USD",
            "refunded_minor": 0,
            "gateway_reference": "sim_ch_1",
            "decline_reason": null,
            "created_at": "2026-12-02T06:04:20.288882+00:00",
            "updated_at": "2026-12-02T06:04:21.1+00:00",
            "payment_token": null,
            "causation_id": EventId::new().to_string(),
            "traceparent": null,
            "stalled_reason": null,
            "stalled_at": null,
        });
        let mut tables = RebuiltPayments::default();
        tables.payments.load(vec![stored]).expect("reads back");

        let payment = tables.lock(order_id).await.expect("read").payment.expect("a payment");
        assert_eq!(
            payment.status,
            PaymentStatus::Refunding {
                capture: "sim_ch_1".into()
            }
        );
        assert!(matches!(
            tables.insert_payment(&pending(OrderId::new(), payment_id)).await,
            Err(Error::PaymentIdTaken { .. })
        ));
    }
}
