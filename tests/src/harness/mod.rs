//! The failure-injection harness: runs the four services as OS processes against an Apache
//! Kafka cluster (three KRaft nodes of its own by default, or an existing cluster) and a schema
//! registry, drives a seeded load of orders while injecting faults (service kills and pauses,
//! broker kills, pauses, rolling restarts and network isolation, registry restarts, dropped
//! database connections, duplicates, poison records), waits for the system to go quiet, and
//! checks the six invariants of the saga.

pub mod cluster;
pub mod faults;
pub mod invariants;
pub mod isolation;
pub mod kafka_nodes;
pub mod load;
pub mod observe;
pub mod processes;
pub mod replay;
pub mod report;
pub mod run;
pub mod state;
