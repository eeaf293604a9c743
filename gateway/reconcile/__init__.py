"""Stage 3, where the systems disagree: the discrepancy index and feed in Redis, event
re-checks, reconciliation runs and sync health (the rules are ``resolvers/discrepancies.py``)."""
