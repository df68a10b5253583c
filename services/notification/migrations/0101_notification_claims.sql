-- A mailer's claim on an email, committed before it talks to the SMTP server: while
-- claimed_until lies ahead, no other mailer takes the row. A row lock alone was lost with its
-- connection (a database restart, a terminated backend) while the send went on, and another
-- mailer then sent the same email again. A mailer that dies mid-send leaves its claim to expire.
ALTER TABLE notifications ADD COLUMN claimed_until TIMESTAMPTZ;
