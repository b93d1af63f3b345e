"""Collaboration: several agents on one topic, in one of the modes.

- :mod:`~agoramesh.protocols.collaboration.collaboration`: ``Collaboration``, the
  modes as one API; they run in :mod:`~agoramesh.protocols.collaboration.pipeline`
  and :mod:`~agoramesh.protocols.collaboration.deliberation`, on
  :mod:`~agoramesh.protocols.collaboration.crew`.
- :mod:`~agoramesh.protocols.collaboration.request`: a collaboration request,
  checked.
"""

__all__ = ()
