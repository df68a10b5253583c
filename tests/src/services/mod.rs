//! One start helper per service: each starts the real service in-process on the test's own
//! topics and database, with the settings tests need.

pub mod inventory;
pub mod notification;
pub mod order;
pub mod payment;
