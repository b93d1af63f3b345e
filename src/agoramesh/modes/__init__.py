"""Modes of running agents on the mesh; ``decentralized`` is the second seed's (M-7)."""

__all__ = ()
