"""Durable jobs: tasks stored in JetStream, run by whichever node takes them.

- :mod:`~agoramesh.protocols.jobs.jobs`: the submitter's API and the result store.
- :mod:`~agoramesh.protocols.jobs.worker`: the worker every node runs.
"""

__all__ = ()
