"""Stage 2, events: the envelope and the durable event log, the applier that writes each
event to the cache, and the change stream every replica tails."""
