"""Stage 1, webhooks: signatures checked on the raw body, each vendor's format normalised
into envelopes, the delivery logged before its 2xx."""
