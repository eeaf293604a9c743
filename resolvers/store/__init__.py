"""What retailgraph keeps in Redis: the key layout of every ``rg:*`` key (``keys``), the event
cache and response cache with the guarded client (``cache``), and the reservations it holds
(``reservations``)."""
