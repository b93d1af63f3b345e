"""The web console: the mesh, its auctions and its tasks in a browser (issue 20).

Served by the HTTP API (``/`` on ``--http-port``, behind its token), live
over server-sent events from the same model ``agoramesh watch`` draws:

- :mod:`~agoramesh.console.feed`: :class:`ConsoleFeed`, the mesh heard by a
  watcher of its own, in snapshots and frames for browsers;
- :mod:`~agoramesh.console.topology`: the seeds, leaves and agents as a graph;
- :mod:`~agoramesh.console.app`: :class:`Console`, the routes (mounted on an
  :class:`~agoramesh.api.server.HttpApi`);
- ``static/``: ``index.html``, ``console.js`` and ``console.css``, plain files
  shipped as package data (no build step, nothing from a CDN).

It sits with the applications (docs/ARCHITECTURE.md, "Layers"): it imports
the API and the monitoring views, and neither imports it; the CLI mounts it.
"""

from agoramesh.console.app import Console
from agoramesh.console.feed import ConsoleFeed

__all__ = ("Console", "ConsoleFeed")
