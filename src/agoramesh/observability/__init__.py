"""Observability: what every agent counts and records as it works.

- :mod:`~agoramesh.observability.stats`: the counters and histograms an agent
  keeps as it works (plain integers; nothing is formatted until someone asks).
- :mod:`~agoramesh.observability.trajectory`: per-agent JSON lines of what it
  saw, decided and sent.
- :mod:`~agoramesh.observability.logs`: human or JSON-lines logging.

The views that read them (Prometheus metrics, ``/healthz``, ``agoramesh watch``)
are :mod:`agoramesh.monitoring`.
"""

from agoramesh.observability.stats import BUCKETS, AgentMetrics, Histogram

__all__ = ("BUCKETS", "AgentMetrics", "Histogram")
