"""Observability: what every node counts, exposes and records.

- :mod:`~agoramesh.observability.stats`: the counters and histograms an agent
  keeps as it works (plain integers; nothing is formatted until someone asks).
- :mod:`~agoramesh.observability.metrics`: the Prometheus view of them, one
  collector per process with an ``agent`` label; :mod:`~agoramesh.observability.http`
  serves ``/metrics`` and ``/healthz``.
- :mod:`~agoramesh.observability.trajectory`: per-agent JSON lines of what it
  saw, decided and sent.
- :mod:`~agoramesh.observability.logs`: human or JSON-lines logging.
- :mod:`~agoramesh.observability.watch`: the model behind ``agoramesh watch``.
"""

from agoramesh.observability.stats import BUCKETS, AgentMetrics, Histogram

__all__ = ("BUCKETS", "AgentMetrics", "Histogram")
