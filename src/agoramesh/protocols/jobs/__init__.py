"""Durable jobs: tasks stored in JetStream, run by whichever node takes them.

- :mod:`~agoramesh.protocols.jobs.jobs`: the submitter's API and the result store.
- :mod:`~agoramesh.protocols.jobs.worker`: the worker every node runs; it takes
  jobs through :mod:`~agoramesh.protocols.jobs.intake` and sees each delivery
  through in :mod:`~agoramesh.protocols.jobs.delivery`.
"""

__all__ = ()
