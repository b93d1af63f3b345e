"""One NATS connection: a Bus's own, or shared by the buses of many agents in one process.

A client connection costs a process far more than the agent on it: nats-py
runs a reader, a flusher and a pinger task per connection, and each one is a
TCP session its server keeps. Agents hosted in one process
(:class:`~agoramesh.nodes.host.AgentHost`) therefore share one, as the NATS
services protocol lets one connection carry many endpoints: every Bus still
signs with its own identity and reads its own ``_INBOX.<agent-id>.…`` reply
subjects; only the socket is common. The connection is opened by its first
user and closed when its last one leaves.

A connection authenticates as one identity (on a secured mesh, with that
identity's JWT), so only buses that would connect with the same credentials may
share it: a shared connection is for an open mesh, or for a host whose
credentials are its agents' (docs/ARCHITECTURE.md, "Hosting many agents").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.nuid import NUID

from agoramesh.bus.credentials import connect_options, tls_hint
from agoramesh.bus.identity import Identity
from agoramesh.config import BusConfig
from agoramesh.errors import BusError, NotConnected

__all__ = ("Connection", "OnDenied", "bus_error", "refusal")

log = logging.getLogger("agoramesh.bus")

#: Called with the text of each permission refusal the server sends on the connection.
OnDenied = Callable[[str], None]


def bus_error(exc: nats.errors.Error, action: str) -> BusError:
    """nats-py's ``exc``, raised while trying to ``action`` ("publish on <subject>"), as
    ours: NotConnected for a closed (or closing) connection, else a BusError saying why.

    Callers of the Bus then catch agoramesh's errors only, never nats-py's.
    """
    if isinstance(exc, nats.errors.ConnectionClosedError | nats.errors.ConnectionDrainingError):
        return NotConnected(f"cannot {action}: connection closed")
    return BusError(f"cannot {action}: {type(exc).__name__} {exc}".rstrip())


def _retrieved(future: asyncio.Future[None]) -> None:
    """Mark a flush round's failure as seen even if every caller was cancelled meanwhile."""
    if not future.cancelled():
        future.exception()


def _refused(exc: BaseException) -> bool:
    """True for a server's refusal of our credentials.

    While connecting, nats-py reports the server's ``-ERR 'Authorization
    Violation'`` as a plain ``nats.errors.Error``, not AuthorizationError.
    """
    return isinstance(exc, nats.errors.AuthorizationError) or (
        isinstance(exc, nats.errors.Error) and "authorization violation" in str(exc).lower())


class Connection:
    """A NATS client connection with reference-counted users (buses).

    ``identity`` authenticates the connection (it signs the server's nonce
    for a JWT) and names nats-py's own inbox prefix; ``config`` gives the
    servers, TLS, credentials and timings.
    """

    def __init__(self, config: BusConfig, identity: Identity) -> None:
        self.config = config
        self.identity = identity
        self._nc: NatsClient | None = None
        self._users: dict[object, OnDenied] = {}
        self._lock = asyncio.Lock()
        self._nuid = NUID()
        self._next_flush: asyncio.Future[None] | None = None  # what the next round answers
        self._flusher: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()
        #: Why the connection closed, as the client last heard it ('' until then, or if it
        #: closed without an error).
        self.close_reason = ""

    @property
    def users(self) -> int:
        """Buses using the connection now."""
        return len(self._users)

    @property
    def client(self) -> NatsClient | None:
        """The nats-py client while the connection is open, else None."""
        return self._nc if self._nc is not None and not self._nc.is_closed else None

    def server(self) -> dict[str, str] | None:
        """``{id, name}`` of the server this connection is on now (its INFO), or None."""
        nc = self._nc
        info = getattr(nc, "_server_info", None) if nc is not None and nc.is_connected else None
        if not isinstance(info, dict) or not isinstance(info.get("server_id"), str):
            return None
        return {"id": info["server_id"][:64], "name": str(info.get("server_name") or "")[:64]}

    def new_inbox(self, agent_id: str) -> str:
        """A fresh reply subject of ``agent_id``'s: ``_INBOX.<agent-id>.<nuid>``.

        Inboxes carry the agent's id, so a server can let only that agent read
        them (docs/SECURITY.md), whichever connection it shares.
        """
        return f"_INBOX.{agent_id}.{self._nuid.next().decode()}"

    async def acquire(self, user: object, on_denied: OnDenied) -> NatsClient:
        """The open client, connecting first if ``user`` is the first; NotConnected within
        ``connect_timeout`` if no server answers."""
        async with self._lock:
            if self.client is None:
                self._nc = await self._connect()
            self._users[user] = on_denied
            return self._nc  # type: ignore[return-value]

    async def release(self, user: object, timeout: float) -> None:
        """``user`` is done; the last user's release flushes and closes (bounded by ``timeout``)."""
        async with self._lock:
            self._users.pop(user, None)
            nc = self._nc
            if self._users or nc is None:
                return
            self._nc = None
            flusher, self._flusher = self._flusher, None
        if flusher is not None and not flusher.done():  # its callers are gone with their buses
            flusher.cancel()
            await asyncio.wait([flusher], timeout=1.0)
        with contextlib.suppress(TimeoutError, nats.errors.Error, OSError):
            if nc.is_connected:
                await nc.flush(timeout=max(1, round(timeout)))
        with contextlib.suppress(TimeoutError, nats.errors.Error, OSError):
            async with asyncio.timeout(max(0.5, timeout)):
                await nc.close()

    async def flush(self, timeout: float) -> None:
        """Return once the server has processed everything sent on the connection before
        the call; nats.errors.TimeoutError if a PONG takes over ``timeout`` seconds.

        Two PINGs a round: nats-py writes a PING straight to the socket, ahead of
        commands (a SUB) still queued for its writer task, so the first PONG can
        come back before the server has seen them; the second is written after
        them. Callers that arrive while a round runs share the next one (their
        commands may have been queued after its first PING), so a thousand agents
        of one process confirming their subscriptions at once cost a few rounds,
        not a thousand.
        """
        if self.client is None:
            raise nats.errors.ConnectionClosedError
        if self._next_flush is None:
            self._next_flush = asyncio.get_running_loop().create_future()
            self._next_flush.add_done_callback(_retrieved)
        round_ = self._next_flush
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush_rounds(timeout))
        await asyncio.shield(round_)

    async def _flush_rounds(self, timeout: float) -> None:
        wait = max(1, round(timeout))
        while self._next_flush is not None:
            round_, self._next_flush = self._next_flush, None
            try:
                nc = self.client
                if nc is None:
                    raise nats.errors.ConnectionClosedError
                for _ in range(2):
                    await nc.flush(timeout=wait)
            except BaseException as exc:  # every caller of this round hears why
                round_.set_exception(exc if isinstance(exc, Exception)
                                     else nats.errors.ConnectionClosedError())
                if not isinstance(exc, Exception):
                    raise
            else:
                round_.set_result(None)

    async def _connect(self) -> NatsClient:
        cfg = self.config
        nc = NatsClient()
        self._closed.clear()
        self.close_reason = ""
        try:
            async with asyncio.timeout(cfg.connect_timeout):
                await nc.connect(
                    servers=list(cfg.servers),
                    name=cfg.name,
                    # Our inboxes carry our id, so a server can let only us read them.
                    inbox_prefix=f"_INBOX.{self.identity.agent_id}",
                    **connect_options(cfg, self.identity),
                    connect_timeout=max(1, int(cfg.connect_timeout)),
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=cfg.reconnect_wait,  # type: ignore[arg-type]
                    ping_interval=cfg.ping_interval,  # type: ignore[arg-type]
                    max_outstanding_pings=cfg.max_outstanding_pings,
                    drain_timeout=max(1, int(cfg.drain_timeout)),
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                    closed_cb=self._on_closed,
                )
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            # nats-py retries a failed attempt until our timeout: its last error says why.
            cause = nc.last_error if isinstance(exc, TimeoutError) and nc.last_error else exc
            with contextlib.suppress(Exception):
                await nc.close()
            if isinstance(cause, Exception) and _refused(cause):
                raise NotConnected(
                    f"{', '.join(cfg.servers)} refused this identity's credentials "
                    f"(Authorization Violation): not a member, revoked, expired, or the wrong "
                    f"key for its JWT; see `agoramesh trust admit` and --creds") from None
            raise NotConnected(
                f"cannot connect to {', '.join(cfg.servers)} within {cfg.connect_timeout:g}s: "
                f"{type(cause).__name__} {cause}".rstrip() + tls_hint(cause, cfg.tls)
            ) from None
        if cfg.tls is not None and not getattr(nc, "_server_info", {}).get("tls_required"):
            # nats-py upgrades only when the server asks: never fall back to plaintext.
            with contextlib.suppress(Exception):
                await nc.close()
            raise NotConnected(f"{', '.join(cfg.servers)} does not use TLS, and this client "
                               f"was given a CA ({cfg.tls.ca_file}): refusing plaintext")
        return nc

    async def _on_error(self, exc: Exception) -> None:
        if self._nc is None and _refused(exc):
            # Refused credentials: retrying until connect_timeout would not change the
            # answer. Raised from here, it ends nats-py's connect loop at once.
            raise exc
        text = str(exc)
        if "permissions violation" in text.lower():
            # The server refused a publish or subscribe: every user hears it and
            # matches it against what it asked for (Bus.confirm).
            log.warning("connection %s: %s", self.identity.agent_id[:8], text)
            for on_denied in list(self._users.values()):
                on_denied(text)
            return
        log.debug("nats client error: %s", exc)

    async def _on_closed(self) -> None:
        nc = self._nc
        error = nc.last_error if nc is not None else None
        self.close_reason = str(error or "").removeprefix("nats: ").strip("'")
        self._closed.set()

    async def closed(self) -> str:
        """Wait until the connection closes (by the server, e.g. a revoked member's, or a
        close of ours); :attr:`close_reason`. Callers bound the wait."""
        await self._closed.wait()
        return self.close_reason

    async def _on_disconnected(self) -> None:
        log.info("connection %s disconnected; reconnecting", self.identity.agent_id[:8])

    async def _on_reconnected(self) -> None:
        nc = self._nc
        log.info("connection %s reconnected to %s", self.identity.agent_id[:8],
                 nc.connected_url.netloc if nc and nc.connected_url else "?")


async def refusal(url: str, options: dict[str, Any], *, timeout: float = 1.0) -> str | None:
    """Connect once to ``url``, without retrying, as the ``nats`` CLI does; the server's
    reason to refuse (its ``-ERR`` text), or None if it let the connection in.

    ``options``: what :func:`~agoramesh.bus.credentials.connect_options` gives (credentials,
    TLS). NotConnected if nothing answers within ``timeout``.
    """
    client = NatsClient()

    async def quiet(_: Exception) -> None:  # the refusal is the answer, not an error to log
        return None

    try:
        async with asyncio.timeout(timeout):
            await client.connect(url, allow_reconnect=False, max_reconnect_attempts=0,
                                 connect_timeout=max(1, round(timeout)), error_cb=quiet,
                                 **options)
    except (TimeoutError, OSError, nats.errors.NoServersError) as exc:
        cause = client.last_error or exc
        raise NotConnected(f"no answer from {url} to a connect within {timeout:g} s: "
                           f"{type(cause).__name__} {cause}".rstrip()) from None
    except nats.errors.Error as refused:
        return str(refused).removeprefix("nats: ").strip("'")
    finally:
        with contextlib.suppress(Exception):
            await client.close()
    return None
