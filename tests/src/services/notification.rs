//! Starting the notification service for a test.
