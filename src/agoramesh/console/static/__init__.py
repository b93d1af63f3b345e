"""The web console's page, script and style sheet: package data, served as they are
(:mod:`agoramesh.console.app`); no build step makes them."""

__all__ = ()
