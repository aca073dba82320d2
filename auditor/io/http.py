"""The one HTTP client for every server the product talks to (a served model, a judge), written so that a
server cannot take a secret elsewhere, flood memory or stall a run.

Why not urllib: `urlopen` follows 301/302/303 redirects to any host and scheme and copies the request's
headers, the API key included; its timeout bounds each socket read, so a server that trickles a byte a
second never times out; it reads a body of any size; and its HTTPError is a URLError, so a caller that
retries network errors retries a 401 too. Here:
- a redirect is never followed: one line names where the server pointed (point the URL there yourself);
- an API key goes over plain http only to a loopback host, unless the user allows it;
- every request has a total deadline (connect, send, headers and body), enforced by closing the socket;
- bodies, error bodies included, are capped (`MAX_BODY`);
- 4xx answers are the request's fault and are not retried; connection failures, timeouts, 5xx and non-JSON
  answers are retried a bounded number of times;
- messages name the URL without credentials and never contain the key.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from ..errors import AuditError

MAX_BODY = 8 << 20  # an OpenAI-style answer of a few thousand tokens is tens of KB
REDIRECTS = range(300, 400)


def public_url(url: str) -> str:
    """The URL as it may appear in a report or a message: no user:password@, no query, no fragment."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    except ValueError:
        return "(unparseable URL)"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() in ("localhost", "localhost.localdomain") or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Endpoint:
    """A server's base URL and how to talk to it: the key (never printed), the total deadline per request,
    how many tries, and what the caller is called in messages ('the server', 'the judge')."""

    url: str
    key: str | None = None
    deadline: float = 300.0
    retries: int = 3
    backoff: float = 0.5
    what: str = "the server"
    allow_insecure_http: bool = False

    def __post_init__(self):
        try:
            parts = urlsplit(self.url)
            parts.port  # noqa: B018 (raises on a bad port)
        except ValueError:
            raise AuditError(f"{self.what}: not a valid URL", public_url(self.url)) from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise AuditError(f"{self.what}: the URL must be http(s)://HOST[:PORT][/PATH]", public_url(self.url))
        if self.key and parts.scheme == "http" and not is_loopback(parts.hostname) and not self.allow_insecure_http:
            raise AuditError(f"{self.what}: refusing to send an API key over plain http to a host that is not this "
                             "machine (use https, or --allow-insecure-http)", public_url(self.url))
        if self.deadline <= 0:
            raise AuditError(f"{self.what}: the timeout must be > 0 seconds (got {self.deadline:g})")

    @property
    def shown(self) -> str:
        return public_url(self.url)

    def _scrub(self, text: str) -> str:
        return text.replace(self.key, "***") if self.key else text

    def post_json(self, path: str, body: dict) -> dict:
        """POST JSON to base URL + path and return the JSON answer, with bounded retries."""
        last = "no answer"
        for attempt in range(max(self.retries, 1)):
            try:
                return self._once(path, body)
            except _Retry as e:
                last = str(e)
            if attempt + 1 < self.retries:
                time.sleep(self.backoff * 2**attempt)
        raise AuditError(self._scrub(f"{self.what} is unreachable after {self.retries} tries ({last})"), self.shown)

    def _once(self, path: str, body: dict) -> dict:
        parts = urlsplit(self.url.rstrip("/") + path)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        headers = {"Content-Type": "application/json", "Accept": "application/json", "Connection": "close"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        if parts.scheme == "https":
            conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=self.deadline,
                                               context=ssl.create_default_context())
        else:
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=self.deadline)
        expired = threading.Event()

        def expire():  # the total deadline: a trickling server's socket is shut, the blocked read returns
            expired.set()
            sock = conn.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        timer = threading.Timer(self.deadline, expire)
        timer.daemon = True
        timer.start()
        try:
            conn.request("POST", target, body=json.dumps(body).encode(), headers=headers)
            resp = conn.getresponse()
            if resp.status in REDIRECTS:
                where = resp.getheader("Location") or "(no Location)"
                raise AuditError(f"{self.what} redirected (HTTP {resp.status}) to {public_url(where)}; redirects are "
                                 "not followed, so a key cannot leave with one: give that address instead", self.shown)
            data = self._read(resp)
            if expired.is_set():
                raise _Retry(f"no complete answer within {self.deadline:g} s")
            if resp.status >= 400:
                snippet = " ".join(data[:200].decode("utf-8", "replace").split())
                message = self._scrub(f"HTTP {resp.status} {resp.reason}" + (f": {snippet}" if snippet else ""))
                if resp.status < 500:
                    hint = " (check the API key)" if resp.status in (401, 403) else ""
                    raise AuditError(f"{self.what} refused the request ({message}){hint}", self.shown)
                raise _Retry(message)
            try:
                return json.loads(data)
            except (ValueError, RecursionError):
                raise _Retry("the answer is not JSON") from None
        except (AuditError, _Retry):
            raise
        except (OSError, http.client.HTTPException) as e:
            if expired.is_set():
                raise _Retry(f"no complete answer within {self.deadline:g} s") from None
            raise _Retry(self._scrub(f"{type(e).__name__}: {e}"[:200])) from None
        finally:
            timer.cancel()
            conn.close()

    def _read(self, resp: http.client.HTTPResponse) -> bytes:
        length = resp.getheader("Content-Length")
        if length and length.isdigit() and int(length) > MAX_BODY:
            raise AuditError(f"{self.what} sent an answer of {int(length) / 2**20:.0f} MB; the limit is "
                             f"{MAX_BODY >> 20} MB", self.shown)
        data = resp.read(MAX_BODY + 1)
        if len(data) > MAX_BODY:
            raise AuditError(f"{self.what} sent an answer larger than {MAX_BODY >> 20} MB", self.shown)
        return data


class _Retry(Exception):
    """A failure another try may not have: the connection, a timeout, a 5xx, an answer that is not JSON."""
