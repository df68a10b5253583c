//! Avro event codec in Confluent wire format (magic byte, 4-byte schema id, Avro body) through
//! `schema_registry_converter`, with the subject strategy topic + record name.
//!
//! Encoding registers the schema this build writes if the subject lacks it. Decoding reads the
//! writer's schema from the registry by id and resolves the data to the schema this build reads,
//! so older and newer versions of an event decode alike. Decode failures are classified:
//! a registry outage is transient (retry), everything else is poison (dead-letter).

use apache_avro::types::Value;
use saga_contracts::{EventType, SagaEvent};
use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{SchemaType, SubjectNameStrategy, SuppliedSchema};

use crate::config::{KafkaConfig, RegistryConfig};
use crate::{Error, Result};

/// Kafka header carrying the event type, e.g. `order.created`.
pub const EVENT_TYPE_HEADER: &str = "event_type";
/// Kafka header carrying the event id.
pub const EVENT_ID_HEADER: &str = "event_id";
/// Kafka header carrying W3C trace context.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// An event ready to be produced.
#[derive(Debug, Clone)]
pub struct EncodedEvent {
    /// Full topic name.
    pub topic: String,
    /// Record key: the order id (the SKU for stock adjustments).
    pub key: String,
    /// Confluent-framed Avro bytes.
    pub payload: Vec<u8>,
    /// The event's type, also sent as a header.
    pub event_type: EventType,
    /// The event's id, also sent as a header.
    pub event_id: saga_contracts::EventId,
}

/// Why a record could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The registry could not be reached. Retry the same record after a backoff.
    #[error("schema registry unavailable: {0}")]
    Transient(String),
    /// The record can never be decoded (not Confluent framing, unknown schema id, content that
    /// does not fit the contract). Send it to the dead-letter topic and move on.
    #[error("undecodable record: {0}")]
    Poison(String),
}

/// Encodes and decodes saga events against the schema registry. Cheap to share behind an `Arc`;
/// schemas and ids are cached after first use.
#[derive(Debug)]
pub struct EventCodec {
    encoder: AvroEncoder,
    decoder: AvroDecoder,
    kafka: KafkaConfig,
}

impl EventCodec {
    /// Builds a codec for the given registry and topic layout.
    pub fn new(registry: &RegistryConfig, kafka: &KafkaConfig) -> Result<Self> {
        let settings = || {
            let mut builder = SrSettings::new_builder(registry.url.clone());
            builder.no_proxy().set_timeout(registry.timeout());
            if let Some(user_info) = &registry.user_info {
                builder.set_basic_authorization(user_info.user(), Some(user_info.password()));
            }
            builder
                .build()
                .map_err(|e| Error::Config(format!("schema registry settings: {e}")))
        };
        Ok(Self {
            encoder: AvroEncoder::new(settings()?),
            decoder: AvroDecoder::new(settings()?),
            kafka: kafka.clone(),
        })
    }

    /// The topic an event type is published to.
    pub fn topic_for(&self, event_type: EventType) -> String {
        self.kafka.topic(event_type.topic())
    }

    /// The registry subject an event type's schema lives under (topic + record name).
    pub fn subject_for(&self, event_type: EventType) -> String {
        format!("{}-{}", self.topic_for(event_type), event_type.record_name())
    }

    /// Encodes an event in Confluent wire format, registering its schema if needed.
    pub async fn encode(&self, event: &SagaEvent) -> Result<EncodedEvent> {
        let event_type = event.event_type();
        let value = event.to_avro_value().map_err(|e| Error::Encode(e.to_string()))?;
        let payload = self.encode_value(event_type, value).await?;
        Ok(EncodedEvent {
            topic: self.topic_for(event_type),
            key: partition_key(event),
            payload,
            event_type,
            event_id: event.event_id(),
        })
    }

    /// Encodes a raw Avro value with the schema this build writes for `event_type`.
    pub async fn encode_value(&self, event_type: EventType, value: Value) -> Result<Vec<u8>> {
        let strategy = SubjectNameStrategy::TopicRecordNameStrategyWithSchema(
            self.topic_for(event_type),
            SuppliedSchema::new(
                Some(event_type.record_name().to_string()),
                SchemaType::Avro,
                event_type.schema_json().to_string(),
            ),
        );
        self.encoder.encode_value(value, &strategy).await.map_err(|e| {
            // The encoder keeps the failures it does not judge retriable (a 500, a 401, a
            // refused schema); forget them, so that the next attempt asks the registry again.
            self.encoder.remove_errors_from_cache();
            if registry_unavailable(&e) {
                Error::RegistryUnavailable(e.to_string())
            } else {
                Error::Encode(e.to_string())
            }
        })
    }

    /// Decodes Confluent-framed bytes into an event of this build's contract version.
    pub async fn decode(&self, payload: Option<&[u8]>) -> Result<SagaEvent, DecodeError> {
        let Some(bytes) = payload else {
            return Err(DecodeError::Poison("record has no value".into()));
        };
        let decoded = self.decoder.decode(Some(bytes)).await.map_err(|error| {
            let error = classify(error);
            if matches!(error, DecodeError::Transient(_)) {
                // As the encoder, the decoder keeps failures; forget them, or retrying would only
                // ever see the cached one.
                self.decoder.remove_errors_from_cache();
            }
            error
        })?;
        let Some(name) = decoded.name else {
            return Err(DecodeError::Poison("writer schema is not a named record".into()));
        };
        SagaEvent::from_avro_value(&name.fullname(None), decoded.value).map_err(|e| DecodeError::Poison(e.to_string()))
    }
}

/// Whether a registry call failed because the registry could not serve it right now: the
/// client's own judgement (connection errors, 502, 503) or any other 5xx answer. A registry
/// answers 500 when its store (the `_schemas` topic) is unreachable, which passes with the
/// broker outage, so it must not make an event count as unencodable or undecodable. A 401 or
/// 403 (credentials missing, wrong or not allowed to register) is the deployment's fault, not
/// the event's: it is retried too, so that no event is dead-lettered or parked for it.
fn registry_unavailable(error: &SRCError) -> bool {
    let not_the_events_fault = |text: &str| {
        [
            "failed with status 5",
            "failed with status 401",
            "failed with status 403",
        ]
        .iter()
        .any(|answer| text.contains(answer))
    };
    error.retriable || not_the_events_fault(&error.error) || error.cause.as_deref().is_some_and(not_the_events_fault)
}

fn classify(error: SRCError) -> DecodeError {
    if registry_unavailable(&error) {
        DecodeError::Transient(error.to_string())
    } else {
        DecodeError::Poison(error.to_string())
    }
}

/// The record key of an event: its order id, so all events of one order share a partition;
/// stock adjustments belong to no order and are keyed by SKU.
pub fn partition_key(event: &SagaEvent) -> String {
    match event {
        SagaEvent::StockAdjusted(adjustment) => adjustment.sku.clone(),
        other => other.order_id().map(|id| id.to_string()).unwrap_or_default(),
    }
}

/// A W3C `traceparent` whose trace id is derived from the order id, so every event of one saga
/// shares a trace, and whose span id is fresh.
pub fn traceparent_for(order_id: &str) -> String {
    let mut trace_id: String = order_id.chars().filter(char::is_ascii_hexdigit).collect();
    trace_id.make_ascii_lowercase();
    if trace_id.len() != 32 || trace_id.chars().all(|c| c == '0') {
        trace_id = uuid::Uuid::new_v4().simple().to_string();
    }
    let span_id = &uuid::Uuid::new_v4().simple().to_string()[..16];
    format!("00-{trace_id}-{span_id}-01")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registry_server_error_or_refused_credentials_are_unavailability_and_other_client_errors_are_not() {
        let answer = |status: &str| {
            SRCError::new(
                &format!("HTTP request to schema registry failed with status {status}"),
                None,
                false,
            )
        };
        assert!(registry_unavailable(&answer("500 Internal Server Error")));
        assert!(registry_unavailable(&answer("504 Gateway Timeout")));
        assert!(registry_unavailable(&answer("401 Unauthorized")));
        assert!(registry_unavailable(&answer("403 Forbidden")));
        assert!(!registry_unavailable(&answer("404 Not Found")));
        assert!(!registry_unavailable(&answer("422 Unprocessable Entity")));
    }

    #[test]
    fn traceparent_reuses_the_order_id_as_trace_id() {
        let header = traceparent_for("6f1c2a4e-0b7d-4c55-9d0e-0a1b2c3d4e5f");
        let parts: Vec<&str> = header.split('-').collect();
        assert_eq!(parts.len(), 4);
        assert_eq!(parts[0], "00");
        assert_eq!(parts[1], "6f1c2a4e0b7d4c559d0e0a1b2c3d4e5f");
        assert_eq!(parts[2].len(), 16);
        assert_eq!(parts[3], "01");
    }

    #[test]
    fn traceparent_of_a_non_uuid_key_gets_a_random_trace() {
        let header = traceparent_for("SKU-1");
        assert_eq!(header.split('-').nth(1).map(str::len), Some(32));
    }
}
