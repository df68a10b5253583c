//! Reactions to the `orders` topic: reserve on order.created, commit on order.confirmed,
//! release on order.failed.
//!
//! Each event is applied exactly once: its id goes into the inbox in the same transaction as
//! its effect and the events it causes (outbox), and every reservation transition is guarded in
//! SQL, so a redelivered event, or the same fact under a new event id, changes nothing.

use async_trait::async_trait;
use saga_common::consumer::{ConsumedEvent, EventHandler, HandlerError};
use saga_common::inbox;
use saga_common::outbox::{self, Relay};
use saga_contracts::{
    InventoryCommitted, InventoryReleased, InventoryReservationFailed, InventoryReserved, OrderConfirmed, OrderCreated,
    OrderFailed, SagaEvent,
};
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::reservation::{self, Decision};
use crate::store::{self, Movement, NewReservation, ReservationStatus};

/// Reason of an inventory.reservation_failed when stock is short.
pub const OUT_OF_STOCK: &str = "out_of_stock";
/// Reason of an inventory.reservation_failed when the order had already failed before its
/// order.created was seen.
pub const ORDER_ALREADY_FAILED: &str = "order_already_failed";

/// Applies `orders` events to the stock.
pub(crate) struct OrderEventHandler {
    pub(crate) database: PgPool,
    pub(crate) relay: Relay,
}

#[async_trait]
impl EventHandler for OrderEventHandler {
    async fn handle(&self, consumed: &ConsumedEvent) -> Result<(), HandlerError> {
        match &consumed.event {
            SagaEvent::OrderCreated(created) => self.on_order_created(consumed, created).await,
            SagaEvent::OrderConfirmed(confirmed) => self.on_order_confirmed(consumed, confirmed).await,
            SagaEvent::OrderFailed(failed) => self.on_order_failed(consumed, failed).await,
            _ => Ok(()),
        }
    }
}

impl OrderEventHandler {
    /// Reserves every line of the order or none.
    #[tracing::instrument(skip_all, fields(order_id = %created.order_id, event_id = %created.event_id))]
    async fn on_order_created(&self, consumed: &ConsumedEvent, created: &OrderCreated) -> Result<(), HandlerError> {
        let order_id = parse_uuid("order_id", &created.order_id)?;
        let event_id = parse_uuid("event_id", &created.event_id)?;
        let demand = reservation::demand(&created.items).map_err(|error| HandlerError::Invalid(error.to_string()))?;
        let Some(mut tx) = self.begin_once(consumed).await? else {
            return Ok(());
        };
        if let Some(existing) = store::lock_reservation(&mut tx, order_id)
            .await
            .map_err(HandlerError::Transient)?
        {
            if existing.created_event_id.is_none() && store::claim_tombstone(&mut tx, order_id, event_id).await? {
                tracing::info!("order failed before it was created: reserving nothing");
                let failed = InventoryReservationFailed {
                    event_id: new_event_id(),
                    order_id: created.order_id.clone(),
                    causation_id: Some(created.event_id.clone()),
                    occurred_at: now_millis(),
                    reason: ORDER_ALREADY_FAILED.into(),
                    unavailable_skus: Vec::new(),
                };
                enqueue(&mut tx, failed.into(), consumed).await?;
            } else {
                tracing::warn!(
                    status = existing.status.as_str(),
                    "order.created for an order already decided; ignored"
                );
            }
            return self.commit(tx).await;
        }

        let skus: Vec<String> = demand.iter().map(|line| line.sku.clone()).collect();
        let available = store::lock_available(&mut tx, &skus).await?;
        let (status, reason, caused): (_, _, SagaEvent) = match reservation::decide(&demand, &available) {
            Decision::Reserve(items) => {
                store::move_units(&mut tx, &items, Movement::Reserve)
                    .await
                    .map_err(HandlerError::Transient)?;
                tracing::info!(lines = items.len(), "order reserved");
                let reserved = InventoryReserved {
                    event_id: new_event_id(),
                    order_id: created.order_id.clone(),
                    causation_id: Some(created.event_id.clone()),
                    occurred_at: now_millis(),
                    items,
                };
                (ReservationStatus::Reserved, None, reserved.into())
            }
            Decision::Reject { unavailable_skus } => {
                tracing::info!(?unavailable_skus, "order rejected: out of stock");
                let failed = InventoryReservationFailed {
                    event_id: new_event_id(),
                    order_id: created.order_id.clone(),
                    causation_id: Some(created.event_id.clone()),
                    occurred_at: now_millis(),
                    reason: OUT_OF_STOCK.into(),
                    unavailable_skus,
                };
                (ReservationStatus::Rejected, Some(OUT_OF_STOCK), failed.into())
            }
        };
        let decision = NewReservation {
            order_id,
            status,
            items: &demand,
            created_event_id: Some(event_id),
            reason,
        };
        if !store::insert_reservation(&mut tx, decision).await? {
            // Another instance decided this order between our read and our insert; roll back
            // (stock included) and let the retry see its decision.
            return Err(HandlerError::Transient(anyhow::anyhow!(
                "reservation of order {order_id} was decided concurrently"
            )));
        }
        enqueue(&mut tx, caused, consumed).await?;
        self.commit(tx).await
    }

    /// Turns a held reservation into a sale.
    #[tracing::instrument(skip_all, fields(order_id = %confirmed.order_id, event_id = %confirmed.event_id))]
    async fn on_order_confirmed(
        &self,
        consumed: &ConsumedEvent,
        confirmed: &OrderConfirmed,
    ) -> Result<(), HandlerError> {
        let order_id = parse_uuid("order_id", &confirmed.order_id)?;
        let Some(mut tx) = self.begin_once(consumed).await? else {
            return Ok(());
        };
        match store::lock_reservation(&mut tx, order_id)
            .await
            .map_err(HandlerError::Transient)?
        {
            Some(held) if held.status == ReservationStatus::Reserved => {
                if !store::transition(
                    &mut tx,
                    order_id,
                    ReservationStatus::Reserved,
                    ReservationStatus::Committed,
                    None,
                )
                .await?
                {
                    return Err(HandlerError::Transient(anyhow::anyhow!(
                        "reservation of order {order_id} changed under its lock"
                    )));
                }
                store::move_units(&mut tx, &held.items, Movement::Commit)
                    .await
                    .map_err(HandlerError::Transient)?;
                tracing::info!(lines = held.items.len(), "reservation committed");
                let committed = InventoryCommitted {
                    event_id: new_event_id(),
                    order_id: confirmed.order_id.clone(),
                    causation_id: Some(confirmed.event_id.clone()),
                    occurred_at: now_millis(),
                    items: held.items,
                };
                enqueue(&mut tx, committed.into(), consumed).await?;
            }
            Some(other) if other.status == ReservationStatus::Committed => {
                tracing::info!("reservation already committed; nothing to do");
            }
            Some(other) => {
                tracing::error!(
                    status = other.status.as_str(),
                    "order confirmed without a held reservation; nothing to commit"
                );
            }
            None => tracing::error!("order confirmed but never reserved; nothing to commit"),
        }
        self.commit(tx).await
    }

    /// Gives a failed order's held units back.
    #[tracing::instrument(skip_all, fields(order_id = %failed.order_id, event_id = %failed.event_id))]
    async fn on_order_failed(&self, consumed: &ConsumedEvent, failed: &OrderFailed) -> Result<(), HandlerError> {
        let order_id = parse_uuid("order_id", &failed.order_id)?;
        let Some(mut tx) = self.begin_once(consumed).await? else {
            return Ok(());
        };
        match store::lock_reservation(&mut tx, order_id)
            .await
            .map_err(HandlerError::Transient)?
        {
            Some(held) if held.status == ReservationStatus::Reserved => {
                let reason = Some(failed.reason.as_str());
                if !store::transition(
                    &mut tx,
                    order_id,
                    ReservationStatus::Reserved,
                    ReservationStatus::Released,
                    reason,
                )
                .await?
                {
                    return Err(HandlerError::Transient(anyhow::anyhow!(
                        "reservation of order {order_id} changed under its lock"
                    )));
                }
                store::move_units(&mut tx, &held.items, Movement::Release)
                    .await
                    .map_err(HandlerError::Transient)?;
                tracing::info!(lines = held.items.len(), reason = %failed.reason, "reservation released");
                let released = InventoryReleased {
                    event_id: new_event_id(),
                    order_id: failed.order_id.clone(),
                    causation_id: Some(failed.event_id.clone()),
                    occurred_at: now_millis(),
                    items: held.items,
                    reason: failed.reason.clone(),
                };
                enqueue(&mut tx, released.into(), consumed).await?;
            }
            Some(other) if other.status == ReservationStatus::Committed => {
                tracing::error!("order failed after its reservation was committed; the stock stays sold");
            }
            Some(other) => {
                tracing::info!(status = other.status.as_str(), "nothing held for the failed order");
            }
            None => {
                let tombstone = NewReservation {
                    order_id,
                    status: ReservationStatus::Released,
                    items: &[],
                    created_event_id: None,
                    reason: Some(failed.reason.as_str()),
                };
                if !store::insert_reservation(&mut tx, tombstone).await? {
                    return Err(HandlerError::Transient(anyhow::anyhow!(
                        "reservation of order {order_id} was decided concurrently"
                    )));
                }
                tracing::warn!("order failed before its order.created was seen; recorded a tombstone");
            }
        }
        self.commit(tx).await
    }

    /// Starts the event's transaction and records it in the inbox; `None` if it was processed
    /// before (nothing else may happen then).
    async fn begin_once(
        &self,
        consumed: &ConsumedEvent,
    ) -> Result<Option<Transaction<'static, Postgres>>, HandlerError> {
        let mut tx = self.database.begin().await?;
        if !inbox::record(&mut tx, consumed).await? {
            return Ok(None);
        }
        Ok(Some(tx))
    }

    async fn commit(&self, tx: Transaction<'static, Postgres>) -> Result<(), HandlerError> {
        tx.commit().await?;
        self.relay.notify();
        Ok(())
    }
}

async fn enqueue(tx: &mut PgConnection, event: SagaEvent, cause: &ConsumedEvent) -> Result<(), HandlerError> {
    outbox::enqueue(tx, &event, cause.traceparent.as_deref())
        .await
        .map_err(|error| HandlerError::Transient(error.into()))
}

fn parse_uuid(field: &str, value: &str) -> Result<Uuid, HandlerError> {
    Uuid::parse_str(value).map_err(|error| HandlerError::Invalid(format!("{field} {value:?} is not a UUID: {error}")))
}

fn new_event_id() -> String {
    Uuid::new_v4().to_string()
}

fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
