//! The failure-injection harness: runs the four services as OS processes against a broker and
//! registry of its own, drives a seeded load of orders while injecting faults (kills, pauses,
//! broker and registry restarts, dropped database connections, duplicates, poison records),
//! waits for the system to go quiet, and checks the invariants of DESIGN §6.

pub mod broker_storage;
pub mod cluster;
pub mod faults;
pub mod group_repair;
pub mod invariants;
pub mod load;
pub mod observe;
pub mod processes;
pub mod report;
pub mod run;
pub mod state;
