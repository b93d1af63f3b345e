"""The HTTP API: the mesh for clients that do not speak NATS, and the web base it shares.

- :mod:`~agoramesh.api.server`: :class:`~agoramesh.api.server.HttpApi`, the
  aiohttp server over a Dispatcher (its routes table, health, agents, the
  bearer token, the JSON error middleware).
- :mod:`~agoramesh.api.tasks`: ``POST /api/tasks`` and ``GET /api/tasks/{id}``,
  durable jobs and their Idempotency-Key included.
- :mod:`~agoramesh.api.collaborate`: ``POST /api/collaborate``.
- :mod:`~agoramesh.api.json_http`: what every route shares: JSON bodies, answers,
  errors and their statuses.
- :mod:`~agoramesh.api.web`: :class:`~agoramesh.api.web.WebServer`, one aiohttp
  site (start, stop, bind errors, aiohttp's logs bounded), also the base of
  :class:`~agoramesh.monitoring.http.MetricsServer`.
"""

__all__ = ()
