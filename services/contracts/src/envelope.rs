//! The envelope every event carries (event id, order id, causation id, occurred-at), and the
//! only way events get one: [`Envelope::caused_by`] for an event that reacts to another
//! ([`Envelope::caused_by_recorded`] when only the cause's ids were kept), and
//! [`Envelope::for_command`] for one a request caused. No handler writes these fields itself.

use serde::{Deserialize, Serialize};

use crate::ids::{EventId, OrderId};

/// The common fields of every event. Generated event structs hold it as `envelope`, flattened,
/// so on the wire these are four top-level fields of the record, as the schemas declare them.
///
/// `O` is the order reference: [`OrderId`] for events of an order, `Option<OrderId>` for the
/// few that may belong to none (a stock adjustment).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope<O = OrderId> {
    /// Unique id of this event; consumers deduplicate on it.
    pub event_id: EventId,
    /// The order this event belongs to; also the Kafka record key.
    pub order_id: O,
    /// `event_id` of the event that caused this one; `None` when a command caused it.
    pub causation_id: Option<EventId>,
    /// When the fact happened, milliseconds since the Unix epoch (UTC).
    pub occurred_at: i64,
}

/// Implemented by every generated event struct: access to its envelope.
pub trait Event {
    /// [`OrderId`], or `Option<OrderId>` for events that may belong to no order.
    type OrderRef: OrderRef;

    /// The event's envelope.
    fn envelope(&self) -> &Envelope<Self::OrderRef>;
}

/// How an envelope refers to its order: always ([`OrderId`]) or maybe (`Option<OrderId>`).
pub trait OrderRef: Copy {
    /// The order, if there is one.
    fn order_id(self) -> Option<OrderId>;
}

impl OrderRef for OrderId {
    fn order_id(self) -> Option<OrderId> {
        Some(self)
    }
}

impl OrderRef for Option<OrderId> {
    fn order_id(self) -> Option<OrderId> {
        self
    }
}

impl Envelope<OrderId> {
    /// The envelope of an event that reacts to `cause`: a new event id, the cause's order, the
    /// cause's event id as causation, and the current time.
    pub fn caused_by(cause: &impl Event<OrderRef = OrderId>) -> Self {
        let cause = cause.envelope();
        Self::caused_by_recorded(cause.order_id, cause.event_id)
    }

    /// The envelope of an event that reacts to an event consumed earlier, of which only its
    /// order and its event id were kept (a worker that acts long after a handler recorded the
    /// cause, like the payment service's charger).
    pub fn caused_by_recorded(order_id: OrderId, cause: EventId) -> Self {
        Self {
            event_id: EventId::new(),
            order_id,
            causation_id: Some(cause),
            occurred_at: now_millis(),
        }
    }

    /// The envelope of an event of `order_id` that a command (an HTTP request, a timer), not
    /// another event, caused.
    pub fn for_command(order_id: OrderId) -> Self {
        Self {
            event_id: EventId::new(),
            order_id,
            causation_id: None,
            occurred_at: now_millis(),
        }
    }
}

impl Envelope<Option<OrderId>> {
    /// The envelope of an event that belongs to no order and that a command caused.
    pub fn for_command_without_order() -> Self {
        Self {
            event_id: EventId::new(),
            order_id: None,
            causation_id: None,
            occurred_at: now_millis(),
        }
    }
}

impl<O: OrderRef> Envelope<O> {
    /// The same envelope with the order made optional, as [`crate::SagaEvent`] reports it.
    pub fn with_optional_order(self) -> Envelope<Option<OrderId>> {
        Envelope {
            event_id: self.event_id,
            order_id: self.order_id.order_id(),
            causation_id: self.causation_id,
            occurred_at: self.occurred_at,
        }
    }

    /// The same envelope with another occurred-at time (for facts that happened earlier than
    /// they are recorded, and for tests that need fixed times).
    pub fn at(self, occurred_at: i64) -> Self {
        Self { occurred_at, ..self }
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_millis() -> i64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}
