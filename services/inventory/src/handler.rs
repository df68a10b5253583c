//! Reactions to the `orders` topic: reserve on order.created, commit on order.confirmed,
//! release on order.failed.
//!
//! Each event is applied exactly once: its id goes into the inbox in the same transaction as
//! its effect and the events it causes (outbox), and every reservation transition is guarded in
//! SQL, so a redelivered event, or the same fact under a new event id, changes nothing. What to
//! do is decided in [`crate::domain`]; failures are classed by [`crate::error::Error`].
//!
//! The effect itself is [`apply`], generic over the [`InventoryStore`] it reads and changes:
//! the live handler is the inbox, [`apply`] on its transaction, and the outbox for the events it
//! returns; replay runs the same [`apply`] on the state it rebuilds in memory.

use async_trait::async_trait;
use saga_common::consumer::{self, AfterCommit, BatchHandler, ConsumedEvent, EventHandler, HandlerError};
use saga_common::outbox::{self, Relay};
use saga_contracts::{
    Envelope, FailureReason, InventoryCommitted, InventoryReleased, InventoryReservationFailed, InventoryReserved,
    OrderConfirmed, OrderCreated, OrderFailed, OrderId, SagaEvent,
};
use sqlx::{PgConnection, PgPool};

use crate::domain::{self, Decision, OnConfirmed, OnCreated, OnFailed, ReservationStatus};
use crate::error::{Error, Result};
use crate::store::{InventoryStore, Movement, NewReservation};

/// Applies `orders` events to the stock.
pub(crate) struct InventoryHandler {
    pub(crate) database: PgPool,
    pub(crate) relay: Relay,
}

#[async_trait]
impl EventHandler for InventoryHandler {
    async fn handle(&self, consumed: &ConsumedEvent) -> Result<(), HandlerError> {
        consumer::handle_alone(self, consumed).await
    }

    fn batched(&self) -> Option<&dyn BatchHandler> {
        Some(self)
    }
}

#[async_trait]
impl BatchHandler for InventoryHandler {
    fn database(&self) -> &PgPool {
        &self.database
    }

    fn wants(&self, _event: &ConsumedEvent) -> bool {
        true
    }

    /// Stock rows are what orders of every partition share: lock those the batch's orders
    /// reserve (order.created's lines) or commit and release (their reservations' lines) in
    /// sku order first, as the single-event path locks an order's own.
    async fn lock_shared_rows(&self, tx: &mut PgConnection, events: &[&ConsumedEvent]) -> Result<(), HandlerError> {
        let mut skus = Vec::new();
        let mut decided = Vec::new();
        for consumed in events {
            match &consumed.event {
                SagaEvent::OrderCreated(created) => skus.extend(created.items.iter().map(|item| item.sku.clone())),
                SagaEvent::OrderConfirmed(_) | SagaEvent::OrderFailed(_) => {
                    decided.extend(consumed.event.order_id().map(OrderId::uuid));
                }
                _ => {}
            }
        }
        crate::store::lock_stock_in_order(tx, &skus, &decided).await?;
        Ok(())
    }

    /// [`apply`] in the caller's transaction, the events it causes into the outbox.
    async fn apply(
        &self,
        tx: &mut PgConnection,
        consumed: &ConsumedEvent,
    ) -> Result<Option<AfterCommit>, HandlerError> {
        for caused in apply(&mut *tx, &consumed.event).await? {
            outbox::enqueue(&mut *tx, &caused, consumed.traceparent.as_deref()).await?;
        }
        let relay = self.relay.clone();
        Ok(Some(Box::new(move || relay.notify())))
    }
}

/// Applies an `orders` event to the stock and the order's reservation in `store` and returns the
/// events that say what it did (live they go to the outbox; replay compares them with the
/// recorded ones). Events of other types change nothing.
pub(crate) async fn apply<S: InventoryStore>(store: &mut S, event: &SagaEvent) -> Result<Vec<SagaEvent>> {
    let caused = match event {
        SagaEvent::OrderCreated(created) => on_order_created(store, created).await?,
        SagaEvent::OrderConfirmed(confirmed) => on_order_confirmed(store, confirmed).await?,
        SagaEvent::OrderFailed(failed) => on_order_failed(store, failed).await?,
        _ => None,
    };
    Ok(caused.into_iter().collect())
}

/// Reserves every line of the order or none; returns the event that says which.
#[tracing::instrument(skip_all, fields(order_id = %created.envelope.order_id, event_id = %created.envelope.event_id))]
async fn on_order_created<S: InventoryStore>(store: &mut S, created: &OrderCreated) -> Result<Option<SagaEvent>> {
    let order_id = created.envelope.order_id;
    let demand = domain::demand(&created.items)?;
    match domain::on_created(store.lock_reservation(order_id).await?) {
        OnCreated::AlreadyDecided(status) => {
            tracing::warn!(%status, "order.created for an order already decided; ignored");
            return Ok(None);
        }
        OnCreated::AlreadyFailed => {
            if !store.claim_tombstone(order_id, created.envelope.event_id).await? {
                return Err(Error::DecidedConcurrently { order_id });
            }
            tracing::info!("order failed before it was created: reserving nothing");
            return Ok(Some(reservation_failed(
                created,
                FailureReason::OrderAlreadyFailed,
                Vec::new(),
            )));
        }
        OnCreated::Decide => {}
    }

    let skus: Vec<String> = demand.iter().map(|line| line.sku.clone()).collect();
    let available = store.lock_available(&skus).await?;
    let (status, reason, caused) = match domain::decide(&demand, &available) {
        Decision::Reserve(items) => {
            store.move_units(order_id, &items, Movement::Reserve).await?;
            tracing::info!(lines = items.len(), "order reserved");
            let reserved = InventoryReserved {
                envelope: Envelope::caused_by(created),
                items,
            };
            (ReservationStatus::Reserved, None, reserved.into())
        }
        Decision::Reject { unavailable_skus } => {
            tracing::info!(?unavailable_skus, "order rejected: out of stock");
            let reason = FailureReason::OutOfStock;
            let failed = reservation_failed(created, reason, unavailable_skus);
            (ReservationStatus::Rejected, Some(reason.as_str()), failed)
        }
    };
    let decision = NewReservation {
        order_id,
        status,
        items: &demand,
        created_event_id: Some(created.envelope.event_id),
        reason,
    };
    if !store.insert_reservation(decision).await? {
        // Another instance decided this order between our read and our insert; the retry rolls
        // back (stock included) and sees its decision.
        return Err(Error::DecidedConcurrently { order_id });
    }
    Ok(Some(caused))
}

/// Turns a held reservation into a sale; returns inventory.committed if it did.
#[tracing::instrument(skip_all, fields(order_id = %confirmed.envelope.order_id, event_id = %confirmed.envelope.event_id))]
async fn on_order_confirmed<S: InventoryStore>(store: &mut S, confirmed: &OrderConfirmed) -> Result<Option<SagaEvent>> {
    let order_id = confirmed.envelope.order_id;
    match domain::on_confirmed(store.lock_reservation(order_id).await?) {
        OnConfirmed::Commit(items) => {
            transition(store, order_id, ReservationStatus::Committed, None).await?;
            store.move_units(order_id, &items, Movement::Commit).await?;
            tracing::info!(lines = items.len(), "reservation committed");
            let committed = InventoryCommitted {
                envelope: Envelope::caused_by(confirmed),
                items,
            };
            Ok(Some(committed.into()))
        }
        OnConfirmed::AlreadyCommitted => {
            tracing::info!("reservation already committed; nothing to do");
            Ok(None)
        }
        OnConfirmed::NothingHeld(status) => {
            tracing::error!(%status, "order confirmed without a held reservation; nothing to commit");
            Ok(None)
        }
        OnConfirmed::NeverReserved => Err(Error::NeverReserved { order_id }),
    }
}

/// Gives a failed order's held units back; returns inventory.released if it did.
#[tracing::instrument(skip_all, fields(order_id = %failed.envelope.order_id, event_id = %failed.envelope.event_id))]
async fn on_order_failed<S: InventoryStore>(store: &mut S, failed: &OrderFailed) -> Result<Option<SagaEvent>> {
    let order_id = failed.envelope.order_id;
    let reason = failed.reason();
    match domain::on_failed(store.lock_reservation(order_id).await?) {
        OnFailed::Release(items) => {
            transition(store, order_id, ReservationStatus::Released, Some(reason.as_str())).await?;
            store.move_units(order_id, &items, Movement::Release).await?;
            tracing::info!(lines = items.len(), %reason, "reservation released");
            let released = InventoryReleased {
                envelope: Envelope::caused_by(failed),
                items,
                reason: reason.to_string(),
            };
            Ok(Some(released.into()))
        }
        OnFailed::AlreadySold => {
            tracing::error!("order failed after its reservation was committed; the stock stays sold");
            Ok(None)
        }
        OnFailed::NothingHeld(status) => {
            tracing::info!(%status, "nothing held for the failed order");
            Ok(None)
        }
        OnFailed::LeaveTombstone => {
            let tombstone = NewReservation {
                order_id,
                status: ReservationStatus::Released,
                items: &[],
                created_event_id: None,
                reason: Some(reason.as_str()),
            };
            if !store.insert_reservation(tombstone).await? {
                return Err(Error::DecidedConcurrently { order_id });
            }
            tracing::warn!("order failed before its order.created was seen; recorded a tombstone");
            Ok(None)
        }
    }
}

/// Moves the order's held reservation (locked by the caller) to `to`.
async fn transition<S: InventoryStore>(
    store: &mut S,
    order_id: OrderId,
    to: ReservationStatus,
    reason: Option<&str>,
) -> Result<()> {
    if !store
        .transition(order_id, ReservationStatus::Reserved, to, reason)
        .await?
    {
        return Err(Error::DecidedConcurrently { order_id });
    }
    Ok(())
}

/// inventory.reservation_failed for `created`: nothing was reserved, for `reason`.
fn reservation_failed(created: &OrderCreated, reason: FailureReason, unavailable_skus: Vec<String>) -> SagaEvent {
    InventoryReservationFailed {
        envelope: Envelope::caused_by(created),
        reason: reason.to_string(),
        failure_reason: reason,
        unavailable_skus,
    }
    .into()
}
