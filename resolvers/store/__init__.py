"""What retailgraph keeps in Redis itself: the key layout (``keys``) and the reservations it
holds (``reservations``)."""
