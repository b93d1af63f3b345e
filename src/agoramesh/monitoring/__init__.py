"""Monitoring: views of the mesh and of a process's agents, read from outside them.

What an agent records (counters, logs, trajectories) is
:mod:`agoramesh.observability`, below the nodes; the views here read the
nodes, the servers and the mesh, so they sit above them.

- :mod:`~agoramesh.monitoring.metrics`: the Prometheus view of a process's
  agents and servers, one collector per process with an ``agent`` label;
  :mod:`~agoramesh.monitoring.http` serves ``/metrics`` and ``/healthz``.
- :mod:`~agoramesh.monitoring.mesh_view`: the model behind ``agoramesh watch``
  (its :mod:`~agoramesh.monitoring.records`), drawn by
  :mod:`~agoramesh.monitoring.screen`.
- :mod:`~agoramesh.monitoring.job_queue`: the durable-job store's counts, which
  both read.
- ``dashboards/``: the Grafana dashboard, shipped as package data.
"""

__all__ = ()
