"""Bridges: the mesh in the agent ecosystem's open protocols (application layer).

Each bridge needs its SDK, an optional extra; nothing here is imported by the
core, only by the commands and backends that ask for it.

- :mod:`~agoramesh.bridges.a2a_server`: :class:`~agoramesh.bridges.a2a_server.A2AServer`,
  the mesh's agents as A2A agents (``agoramesh a2a``, ``--a2a-port``): the whole mesh
  at ``/``, each agent at ``/agents/<name or id>/``, over a2a-sdk's JSON-RPC server.
- :mod:`~agoramesh.bridges.a2a_executor`: what runs an A2A message on the mesh (an
  auction, or the named agent) and what streams its progress back.
- :mod:`~agoramesh.bridges.a2a_cards`: the A2A agent cards of the mesh and of its agents.
- :mod:`~agoramesh.bridges.a2a_parts`: A2A messages and parts to task parameters and
  back, skills chosen, numbers normalised.
- :mod:`~agoramesh.bridges.asgi`: :class:`~agoramesh.bridges.asgi.AsgiSite`, one ASGI
  app on uvicorn (a2a-sdk serves Starlette apps).

The other direction, a remote A2A agent as a mesh agent, is a backend like the
others: :mod:`agoramesh.nodes.backends.a2a` (``agoramesh node --type a2a``).

The MCP side:

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
