"""The ``agoramesh`` command line: one module per command group."""

from agoramesh.cli.main import main

__all__ = ("main",)
