//! Shared machinery of the saga services: typed configuration, telemetry, Kafka clients,
//! the Avro event codec, health checks, and the at-least-once consumer loop.
//!
//! Nothing here knows about orders, payments or stock (beyond the names of their metrics, kept
//! together in [`metrics`]); the services build on it.

pub mod admin;
pub mod auth;
pub mod codec;
pub mod config;
pub mod consumer;
pub mod database;
pub mod error;
pub mod health;
pub mod http;
pub mod inbox;
pub mod kafka;
pub mod metrics;
pub mod openapi;
pub mod outbox;
pub mod replay;
pub mod retry;
pub mod service;
pub mod telemetry;

pub use error::{Classify, Error, ErrorClass, Result};
