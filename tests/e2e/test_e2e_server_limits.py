"""What ``wattfare serve`` allows a client, over real sockets: a head and a body that
dribble in are cut at their deadlines, a silent connection is closed, an oversized head
and a connection beyond the limit are answered at once, each in the OpenAI error shape;
protocol garbage keeps the parser's plain 400. Streams are not touched by the deadlines.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest
from consent.helpers import csrf_of

from .harness import AppKeys, Gateway, GatewayConfig, chat_body, secret_headers, wait_until

pytestmark = pytest.mark.e2e

HEAD_S = 1.0
BODY_S = 1.0
MAX_HEAD = 4096
MAX_CONNECTIONS = 6
SIGNIN_PER_IP = 3
# Every wait below is bounded by this; the deadlines above are well inside it.
READ_BOUND_S = 6.0


@pytest.fixture(scope="module")
def gateway_config() -> GatewayConfig:
    return GatewayConfig(
        idle_timeout_s=5.0,
        server_extra=(
            f"header_timeout_s = {HEAD_S}\n"
            f"body_timeout_s = {BODY_S}\n"
            f"max_header_bytes = {MAX_HEAD}\n"
            f"max_connections = {MAX_CONNECTIONS}\n"
            "[consent]\n"
            f"signin_attempts_per_ip = {SIGNIN_PER_IP}\n"
        ),
    )


def connect(gateway: Gateway) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=READ_BOUND_S)
    sock.settimeout(0.2)
    return sock


def read_all(sock: socket.socket, *, dribble: bytes = b"", every_s: float = 0.2) -> bytes:
    """What the server sends until it closes (bounded), sending ``dribble`` now and then."""
    got = b""
    sock.settimeout(every_s)
    deadline = time.monotonic() + READ_BOUND_S
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            if dribble:
                with contextlib.suppress(OSError):
                    sock.sendall(dribble)
            continue
        except ConnectionResetError:
            break
        if not chunk:
            return got
        got += chunk
    raise AssertionError(f"the connection was still open after {READ_BOUND_S} s: {got!r}")


def answer(raw: bytes) -> tuple[int, dict[str, str], dict[str, object]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, json.loads(body)


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    try:
        yield opened
    finally:
        for sock in opened:
            sock.close()


def test_a_dribbled_head_is_answered_408(gateway: Gateway, sockets: list[socket.socket]) -> None:
    started = time.monotonic()  # the deadline runs from the connection's opening
    sock = connect(gateway)
    sockets.append(sock)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n")
    raw = read_all(sock, dribble=b"X-Slow: 1\r\n")
    elapsed = time.monotonic() - started
    status, headers, body = answer(raw)
    assert status == 408
    assert headers["connection"] == "close"
    assert headers["content-type"] == "application/json"
    assert body["error"]["code"] == "request_timeout"  # type: ignore[index]
    assert HEAD_S * 0.9 <= elapsed < HEAD_S + 3


def test_a_silent_connection_is_closed(gateway: Gateway, sockets: list[socket.socket]) -> None:
    started = time.monotonic()
    sock = connect(gateway)
    sockets.append(sock)
    assert read_all(sock) == b""
    assert time.monotonic() - started < HEAD_S + 3


def test_a_dribbled_body_is_answered_408_and_holds_nothing(
    gateway: Gateway, app: AppKeys, user_id: str, sockets: list[socket.socket]
) -> None:
    sock = connect(gateway)
    sockets.append(sock)
    head = "".join(f"{k}: {v}\r\n" for k, v in secret_headers(app, user_id).items())
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        b"Content-Length: 500\r\n" + head.encode() + b"\r\n" + b'{"model": "'
    )
    status, _headers, body = answer(read_all(sock, dribble=b"x"))
    assert status == 408
    assert body["error"]["code"] == "request_timeout"  # type: ignore[index]
    assert "body" in body["error"]["message"]  # type: ignore[index]
    # The handler heard the client go: the gateway keeps serving, and holds nothing.
    assert httpx.get(f"{gateway.url}/healthz", timeout=5).status_code == 200


@pytest.mark.parametrize("chunked", [pytest.param(False, id="one-write"),
                                     pytest.param(True, id="dribbled-64k")])
def test_an_oversized_head_is_answered_431(
    gateway: Gateway, sockets: list[socket.socket], chunked: bool
) -> None:
    sock = connect(gateway)
    sockets.append(sock)
    big = b"GET /healthz HTTP/1.1\r\nHost: gw\r\nX-Big: " + b"a" * (MAX_HEAD * 4)
    if chunked:
        # Never finished: the server must answer without waiting for the end of it.
        sock.sendall(big[:MAX_HEAD * 2])
        raw = read_all(sock, dribble=b"a" * 65536, every_s=0.05)
    else:
        sock.sendall(big + b"\r\n\r\n")
        raw = read_all(sock)
    status, headers, body = answer(raw)
    assert status == 431
    assert headers["connection"] == "close"
    assert body["error"]["code"] == "headers_too_large"  # type: ignore[index]


def test_connections_beyond_the_limit_get_503(
    gateway: Gateway, sockets: list[socket.socket]
) -> None:
    for _ in range(MAX_CONNECTIONS):
        sock = connect(gateway)
        sockets.append(sock)
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # a head begun: it holds its place
    extra = connect(gateway)
    sockets.append(extra)
    extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
    status, headers, body = answer(read_all(extra))
    assert status == 503
    assert headers["retry-after"] == "1"
    assert body["error"]["code"] == "server_busy"  # type: ignore[index]
    for sock in sockets:
        sock.close()
    sockets.clear()

    def healthy() -> bool:
        try:
            return httpx.get(f"{gateway.url}/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    assert wait_until(healthy, timeout=HEAD_S + 3)


def test_protocol_garbage_keeps_the_parsers_plain_400(
    gateway: Gateway, sockets: list[socket.socket]
) -> None:
    sock = connect(gateway)
    sockets.append(sock)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\nX-Bad: a\x00b\r\n\r\n")
    raw = read_all(sock)
    assert raw.startswith(b"HTTP/1.1 400 ")
    assert b"content-type: text/plain" in raw.lower()


def test_streams_outlive_the_deadlines(
    gateway: Gateway, app: AppKeys, user_id: str
) -> None:
    # A stream lasting longer than both deadlines, on a kept-alive connection twice.
    body = chat_body("hi", chunks=6, gap_ms=400)
    with httpx.Client(base_url=gateway.url, timeout=20) as http:
        for _ in range(2):
            started = time.monotonic()
            response = http.post("/v1/chat/completions", json=body,
                                 headers=secret_headers(app, user_id))
            assert response.status_code == 200
            assert response.text.rstrip().endswith("data: [DONE]")
            assert time.monotonic() - started > HEAD_S + BODY_S


def test_forwarded_for_is_not_believed_by_default(gateway: Gateway) -> None:
    # A client on the same host rotates X-Forwarded-For: it is still one client.
    with httpx.Client(base_url=gateway.url, timeout=20) as http:
        statuses = []
        for n in range(SIGNIN_PER_IP + 1):
            csrf = csrf_of(http.get("/signin").text)
            response = http.post(
                "/signin",
                data={"csrf": csrf, "email": f"nobody-{n}@example.com", "password": "x" * 12},
                headers={"X-Forwarded-For": f"203.0.113.{n + 1}"},
            )
            statuses.append(response.status_code)
    assert statuses == [401] * SIGNIN_PER_IP + [429]
