//! Starting the order service for a test.
