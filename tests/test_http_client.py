"""The HTTP client every server call goes through (served models, judges), against real servers on
127.0.0.1 that misbehave: redirect elsewhere, trickle bytes, refuse with 401, flood 50 MB, fail then recover,
echo the key back. Each server's loops are bounded in count and time and stop by themselves."""

from __future__ import annotations

import http.server
import json
import threading
import time

import pytest

from auditor.core.judge import EndpointJudge
from auditor.errors import AuditError
from auditor.io.http import MAX_BODY, Endpoint, is_loopback, public_url

KEY = "sk-test-0123456789-secret"


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list  # (path, Authorization) of every request, set per server

    def log_message(self, *a):
        pass

    def _json(self, status: int, obj) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.seen.append((self.path, self.headers.get("Authorization")))
        route = self.path.split("/")[1]
        ok = {"choices": [{"message": {"content": "#thescore: 2"}, "text": "ok"}], "usage": {"completion_tokens": 1}}
        if route == "ok":
            self._json(200, ok)
        elif route == "redirect":
            self.send_response(302)
            self.send_header("Location", f"{self.server.elsewhere}/steal")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif route == "unauthorized":
            self._json(401, {"error": {"message": "invalid api key"}})
        elif route == "echo":
            self._json(400, {"error": f"bad header {self.headers.get('Authorization')}"})
        elif route == "flood":
            self.send_response(200)
            self.send_header("Content-Length", str(50 << 20))
            self.end_headers()
            self.wfile.write(b"x" * (1 << 20))  # it claims 50 MB; the client must not wait for it
        elif route == "flood-unsized":
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            chunk = b"y" * (1 << 20)
            for _ in range(50):
                try:
                    self.wfile.write(chunk)
                except OSError:
                    return
            self.close_connection = True
        elif route == "trickle":
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            for _ in range(150):  # a byte every 0.1 s for at most 15 s
                try:
                    self.wfile.write(b" ")
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(0.1)
        elif route == "flaky":
            if len([s for s in self.seen if s[0].startswith("/flaky")]) == 1:
                self._json(503, {"error": "warming up"})
            else:
                self._json(200, ok)
        else:
            self._json(404, {})


@pytest.fixture(scope="module")
def servers():
    """Two servers on 127.0.0.1: the one we call, and 'elsewhere', where redirects point."""
    made = []
    for _ in range(2):
        handler = type("H", (_Handler,), {"seen": []})
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        srv.daemon_threads = True
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        made.append((srv, handler))
    (main, main_h), (other, other_h) = made
    main.elsewhere = f"http://127.0.0.1:{other.server_address[1]}"
    yield f"http://127.0.0.1:{main.server_address[1]}", main_h.seen, other_h.seen
    for srv, _ in made:
        srv.shutdown()


def _endpoint(url, route, **kw):
    return Endpoint(f"{url}/{route}", kw.pop("key", KEY), **{"deadline": 5, "retries": 3, "backoff": 0.01, **kw})


def test_a_redirect_is_refused_naming_where_and_the_key_stays(servers):
    url, seen, elsewhere = servers
    with pytest.raises(AuditError) as e:
        _endpoint(url, "redirect").post_json("/chat/completions", {})
    message = str(e.value)
    assert "redirected (HTTP 302) to http://127.0.0.1:" in message and "/steal" in message
    assert KEY not in message and elsewhere == []  # nothing, let alone the key, went to the other host


def test_401_is_reported_as_what_it_is_and_not_retried(servers):
    url, seen, _ = servers
    before = len(seen)
    with pytest.raises(AuditError, match=r"refused the request \(HTTP 401 Unauthorized.*invalid api key.*check the API key"):
        _endpoint(url, "unauthorized").post_json("/x", {})
    assert len(seen) == before + 1


def test_a_key_echoed_back_never_reaches_the_message(servers):
    url, _, _ = servers
    with pytest.raises(AuditError) as e:
        _endpoint(url, "echo").post_json("/x", {})
    assert "HTTP 400" in str(e.value) and KEY not in str(e.value) and "***" in str(e.value)


def test_a_trickling_server_meets_the_total_deadline(servers):
    url, _, _ = servers
    t0 = time.monotonic()
    with pytest.raises(AuditError, match=r"unreachable after 1 tries \(no complete answer within 1 s\)"):
        _endpoint(url, "trickle", deadline=1, retries=1).post_json("/x", {})
    assert time.monotonic() - t0 < 4  # a per-read timeout would have waited 10 s of trickle (0.1 s < 1 s per read)


@pytest.mark.parametrize("route,message", [("flood", "answer of 50 MB"), ("flood-unsized", "larger than 8 MB")])
def test_a_flood_is_cut_at_the_body_cap(servers, route, message):
    url, _, _ = servers
    assert MAX_BODY == 8 << 20
    with pytest.raises(AuditError, match=message):
        _endpoint(url, route).post_json("/x", {})


def test_a_5xx_is_retried_and_a_recovery_accepted(servers):
    url, seen, _ = servers
    assert _endpoint(url, "flaky").post_json("/chat/completions", {})["choices"]
    assert [p for p, _ in seen if p.startswith("/flaky")] == ["/flaky/chat/completions"] * 2
    assert ("/flaky/chat/completions", f"Bearer {KEY}") in seen  # the key goes to the server it is for


@pytest.mark.parametrize("url,allowed", [
    ("http://10.11.12.13:8000/v1", False), ("http://judge.example:8000/v1", False),
    ("https://judge.example/v1", True), ("http://127.0.0.1:8000/v1", True), ("http://127.8.9.10/v1", True),
    ("http://[::1]:8000/v1", True), ("http://localhost:8000/v1", True)])
def test_a_key_goes_over_plain_http_only_to_this_machine(url, allowed):
    """Checked when the endpoint is made, before any request: no traffic goes to these addresses."""
    if allowed:
        Endpoint(url, KEY)
    else:
        with pytest.raises(AuditError, match="refusing to send an API key over plain http.*--allow-insecure-http"):
            Endpoint(url, KEY)
        Endpoint(url, KEY, allow_insecure_http=True)
        Endpoint(url, None)  # no key, nothing to leak


def test_urls_in_messages_lose_their_credentials():
    assert public_url("https://user:pw@host.example:8443/v1?token=abc#x") == "https://host.example:8443/v1"
    assert is_loopback("127.0.0.2") and is_loopback("::1") and not is_loopback("10.0.0.1") and not is_loopback(None)


def test_the_judge_takes_its_key_from_the_environment(servers, monkeypatch):
    url, seen, _ = servers
    monkeypatch.setenv("JUDGE_KEY", KEY)
    judge = EndpointJudge(f"{url}/ok", api_key_env="JUDGE_KEY", backoff=0.01)
    assert judge.ask("rate this") == "#thescore: 2"
    assert seen[-1] == ("/ok/v1/chat/completions", f"Bearer {KEY}") and KEY not in judge.name
    monkeypatch.delenv("JUDGE_KEY")
    with pytest.raises(AuditError, match="--judge-api-key-env JUDGE_KEY: that environment variable is not set"):
        EndpointJudge(f"{url}/ok", api_key_env="JUDGE_KEY")
