-- The W3C trace context of the consumer span that recorded the email, so the mailer's SMTP span
-- and the notification event it publishes belong to the order's trace. NULL when traces are not
-- exported, and for rows written before this column existed.
ALTER TABLE notifications ADD COLUMN traceparent TEXT;
