"""Modes of running agents on the mesh; ``decentralized`` is M-7's."""

__all__ = ()
