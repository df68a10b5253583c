-- An email retrying cannot deliver (the SMTP server rejected it for good, e.g. a 5xx for an
-- unknown recipient, or it failed in unclassified ways more often than the budget allows) is
-- set aside as 'failed' with its last_error and failed_at, so the emails behind it go on and an
-- operator finds it (GET /admin/notifications/failed) and redrives it once the cause is fixed.
ALTER TABLE notifications DROP CONSTRAINT notifications_status_check;
ALTER TABLE notifications
    ADD CONSTRAINT notifications_status_check CHECK (status IN ('pending', 'sent', 'failed'));
ALTER TABLE notifications ADD COLUMN failed_at TIMESTAMPTZ;
ALTER TABLE notifications ADD CONSTRAINT notifications_failed_at_check CHECK ((status = 'failed') = (failed_at IS NOT NULL));
-- Failed attempts nobody classified; the error policy's budget applies to these alone.
ALTER TABLE notifications ADD COLUMN unclassified_failures INTEGER NOT NULL DEFAULT 0;

-- What an operator lists.
CREATE INDEX notifications_failed ON notifications (failed_at) WHERE status = 'failed';
