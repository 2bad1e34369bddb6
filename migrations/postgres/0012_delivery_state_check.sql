-- A delivery row can only hold a state herald knows (src/domain/delivery.rs), whatever
-- writes it.
ALTER TABLE deliveries ADD CONSTRAINT deliveries_state_known CHECK (state IN ('queued',
    'sending', 'sent', 'deferred', 'bounced', 'failed', 'expired', 'cancelled', 'suppressed'));
