"""The browser's way to the API's token: a login form, ``/?token=…`` once, then a cookie.

A browser cannot put an ``Authorization`` header on a page load or an
``EventSource``, so the web console (:mod:`agoramesh.console`) authenticates
with a session cookie instead, and this module is the whole of that:

- ``GET /login`` is a form; ``POST /login`` (form-encoded ``token``) checks
  the token like the bearer check does (``hmac.compare_digest``) and, if it
  is the API's, answers ``303 /`` with the cookie; otherwise 401 and the form.
- ``GET /?token=…`` with the right token sets the cookie the same way and
  answers ``303 /``, so the token leaves the address bar (and the history).
- The cookie is ``agoramesh_session``: HttpOnly, SameSite=Strict, Path=/,
  Secure when the request came over https, Max-Age 12 hours
  (:data:`SESSION_SECONDS`). Its value is ``<expiry>.<HMAC of the expiry under
  the token>`` (:func:`session_value`; the expiry in Unix seconds): it does not
  reveal the token, needs no state on the server, and stops working when the
  token changes or the expiry passes, whatever the browser does with Max-Age.
  ``POST /logout`` clears it (a copy taken before stays valid until its
  expiry: a stateless session cannot be revoked but by changing the token).
- A request that the cookie (not a bearer header) authenticates and that may
  change something (any method but GET and HEAD) must also carry
  ``X-Agoramesh-Console: 1`` and, if it has an ``Origin``, the API's own:
  SameSite=Strict already keeps the cookie off other sites' requests, and a
  page elsewhere cannot add that header without a CORS preflight this API
  never grants (403 ``Forbidden`` otherwise). ``POST /login`` with a foreign
  ``Origin`` is refused too (login CSRF).

Pages here carry a strict Content-Security-Policy and no data but the
fixed texts of this module.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from urllib.parse import urlsplit

from aiohttp import hdrs, web

__all__ = ("CONSOLE_HEADER", "COOKIE", "PAGE_HEADERS", "SESSION_SECONDS", "login_page",
           "same_origin", "session_value", "set_session", "valid_session")

COOKIE = "agoramesh_session"
#: The header a cookie-authenticated request that changes something must carry.
CONSOLE_HEADER = "X-Agoramesh-Console"
_SESSION_LABEL = b"agoramesh console session v2:"
#: How long a session cookie is good for: a working day, then the token again.
SESSION_SECONDS = 12 * 3600

#: What every HTML page of the API is served with (the console adds its script and style).
PAGE_HEADERS: Mapping[str, str] = {
    "Content-Security-Policy": "default-src 'none'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

_LOGIN = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>agoramesh console: sign in</title></head>
<body>
<main>
<h1>agoramesh console</h1>
<p>{message}</p>
<form method="post" action="/login">
<label for="token">API token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required autofocus>
<button type="submit">Sign in</button>
</form>
</main>
</body>
</html>
"""

_MESSAGES = {
    "": "This mesh's HTTP API needs its token (AGORAMESH_API_TOKEN or --api-token).",
    "wrong": "That token is not this API's token.",
    "origin": "The sign-in came from another site and was refused.",
}


def session_value(token: bytes, expires: int) -> str:
    """The cookie value for ``token`` until ``expires`` (Unix seconds): the expiry and an
    HMAC of it under the token, so the cookie never carries the token."""
    mac = hmac.new(token, _SESSION_LABEL + str(expires).encode(), hashlib.sha256).hexdigest()
    return f"{expires}.{mac}"


def valid_session(request: web.Request, token: bytes) -> bool:
    """The request carries a session cookie for ``token`` that has not expired."""
    expires, _, mac = request.cookies.get(COOKIE, "").partition(".")
    if not (expires.isascii() and expires.isdigit() and len(expires) <= 12 and mac):
        return False
    left = int(expires) - time.time()
    # Never longer than a session lasts: an expiry further out was not made here.
    if not 0 < left <= SESSION_SECONDS:
        return False
    return hmac.compare_digest(f"{expires}.{mac}".encode("utf-8", "surrogatepass"),
                               session_value(token, int(expires)).encode())


def set_session(response: web.StreamResponse, request: web.Request, token: bytes | None) -> None:
    """Give ``response`` the session cookie for ``token``; None clears it."""
    if token is None:
        response.del_cookie(COOKIE, path="/", httponly=True, samesite="Strict")
        return
    expires = int(time.time()) + SESSION_SECONDS
    response.set_cookie(COOKIE, session_value(token, expires), path="/", httponly=True,
                        samesite="Strict", secure=request.secure, max_age=SESSION_SECONDS)


def same_origin(request: web.Request) -> bool:
    """No ``Origin`` header (not a cross-site browser request), or this server's own."""
    origin = request.headers.get(hdrs.ORIGIN)
    if origin is None:
        return True
    parts = urlsplit(origin)
    return parts.scheme == request.scheme and parts.netloc == request.host


def login_page(status: int = 401, reason: str = "") -> web.Response:
    """The sign-in form (``reason``: a key of ``_MESSAGES``, never client text)."""
    return web.Response(status=status, text=_LOGIN.format(message=_MESSAGES[reason]),
                        content_type="text/html", headers=dict(PAGE_HEADERS))
