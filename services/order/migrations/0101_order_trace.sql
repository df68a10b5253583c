-- The W3C trace context of the request that placed the order, so a decision the deadline makes
-- belongs to the order's trace. NULL when traces are not exported.
ALTER TABLE orders ADD COLUMN traceparent TEXT;
