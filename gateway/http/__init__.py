"""Stage 1, requests: the ASGI middlewares every HTTP request passes (body guard, browser
origins, credentials, batches, rate limit, persisted queries, cached responses), the GraphQL
app and its transports (WebSocket, SSE, multipart) and the per-operation guard."""
