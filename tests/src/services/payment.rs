//! Starting the payment service for a test.
