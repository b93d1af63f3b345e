"""Bridges between the mesh and the protocols agents of other ecosystems speak.

- :mod:`~agoramesh.bridges.mesh_client`: :class:`~agoramesh.bridges.mesh_client.MeshClient`,
  the mesh as a long-lived client sees it (a live directory, a dispatcher, durable jobs).
- :mod:`~agoramesh.bridges.mcp_catalog`: the MCP tools the mesh offers: one per
  capability on the mesh, and the fixed ``mesh_*`` tools.
- :mod:`~agoramesh.bridges.mcp_calls`: what a tool call does on the mesh, with its
  progress and its cancellation.
- :mod:`~agoramesh.bridges.mcp_server`: :class:`~agoramesh.bridges.mcp_server.MeshMcpServer`,
  the MCP server (``agoramesh mcp``); its transports: stdio
  (:mod:`~agoramesh.bridges.mcp_stdio`) and streamable HTTP
  (:mod:`~agoramesh.bridges.mcp_http`).

The MCP modules need the ``mcp`` extra (``pip install 'agoramesh[mcp]'``); an
MCP server's tools as an agent are a backend, :mod:`agoramesh.nodes.backends.mcp`.
"""

__all__ = ()
