//! The notification service binary: runs until SIGTERM or Ctrl-C, then stops gracefully.

saga_common::service_main!(notification_service);
