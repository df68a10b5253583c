//! Starting the inventory service for a test.
