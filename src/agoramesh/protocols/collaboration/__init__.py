"""Collaboration: several agents on one topic, in one of the modes.

- :mod:`~agoramesh.protocols.collaboration.collaboration`: the modes' runs.
- :mod:`~agoramesh.protocols.collaboration.request`: a collaboration request,
  checked.
"""

__all__ = ()
