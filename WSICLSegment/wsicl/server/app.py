"""``wsicl serve``: the inference service over HTTP (FastAPI on uvicorn; ``pip install
".[server]"`` from the checkout).

Endpoints (all under ``/v1``; a bearer token is required on all but ``/v1/health`` when the
server has one; ``/openapi.json`` describes them):

* ``GET /v1/health``: ``{"status": "ok", "version": ...}``.
* ``GET /v1/info``: version, device, precision, models (by name) and limits.
* ``POST /v1/volumes?format=mha|nrrd|nii|nii.gz``: the body is one self-contained image
  file; answers ``{"id": ...}`` (201). Its header is checked before any voxel is read
  (:func:`wsicl.imageio.read_image` with ``untrusted``); the file only passes through the
  server's private temporary folder, under a random name.
* ``POST /v1/jobs?wait=S``: a job request (:mod:`wsicl.server.service`); answers its state (202).
* ``GET /v1/jobs/{id}?wait=S``: its state, once changed or after ``S`` seconds.
* ``GET /v1/jobs/{id}/mask?wait=S``: 200 with the mask (:func:`wsicl.server.wire.mask_to_bytes`)
  once done; 202 with the state while not; 409 cancelled; 422/500 failed (state JSON).
* ``DELETE /v1/jobs/{id}``: cancel.

The browser page (:mod:`wsicl.server.page`) is served at ``/``, public like a login page:
its files hold no data, and it reaches the server's data through the API above with the
token the user types.

Errors are JSON ``{"detail": message}``; a full queue answers 503 with Retry-After.

Threat model (the README's server section says the same for users): whoever can reach the
port and holds the token may use the models, upload volumes and read the results of jobs
whose ids they know; nothing else. Uploads cannot name other files, every body is bounded
as it streams, a volume's memory is checked against the cache budget before it is read,
decompression stops at the size the header declares, connections are capped and must send
their headers within :data:`HEADER_SECONDS`, and long polls hold no thread. On loopback,
requests must be addressed to a loopback name (no DNS rebinding from a web page).
"""
import asyncio
import hmac
import ipaddress
import json
import math
import os
import resource
import secrets
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import h11
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from uvicorn.protocols.http.h11_impl import H11Protocol

from .. import __version__
from ..geometry import check_geometry
from ..imageio import TooLarge, read_image
from .page import HEADERS as PAGE_HEADERS, PAGE_FILES, page_file
from .service import Busy, Job, Service, ServiceError, scrub
from .wire import (API, EVIDENCE_HEADER, NOTES_HEADER, SECONDS_HEADER, SIZE_HEADER,
                   UPLOAD_FORMATS)

MAX_JSON_BYTES = 4 * 2 ** 20
"""Largest body of any request but an upload (a context set of 128 images with a few
prompts each is about 50 kB), counted as it streams, chunked or not."""
MAX_WAIT_SECONDS = 30.0
"""Longest a request waits for a job to change."""
POLL_SECONDS = 0.025
"""How often a waiting request looks at its job (it holds no thread while it waits)."""
HEADER_SECONDS = 10.0
"""A connection must send a request's headers within this long (after connecting, or
after the keep-alive wait that follows an answer), or it is closed."""
BODY_CHECK_SECONDS = 5.0
"""How often a connection receiving a request body is checked for progress."""
MIN_BODY_BYTES = 16 * 1024
"""Least body a connection must receive between two checks (about 3 kB/s): a body
trickled slower is a stalled one, and its connection is closed."""
KEEP_ALIVE_SECONDS = 5
"""An idle connection is kept this long for the client's next request."""
MAX_CONNECTIONS = 64
"""Open connections at most (fewer when the process may open few files); more are closed
as soon as they are accepted."""
MAX_DECODES = 2
"""Uploads decoded at once; each may take up to the volume cache's budget in memory."""
TOKEN_CHARS = 32
"""Shortest token ``wsicl serve`` accepts."""


def connection_cap() -> int:
    """:data:`MAX_CONNECTIONS`, or half the files this process may open if that is fewer
    (the rest are for uploads, logs and the models)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return MAX_CONNECTIONS if soft == resource.RLIM_INFINITY else \
        max(4, min(MAX_CONNECTIONS, soft // 2))


class Guard:
    """ASGI middleware, in front of every request: the ``Host`` header on a loopback
    server, the bearer token (constant-time comparison, scheme case-insensitive) on every
    path but the health check, and the body size: uploads up to ``max_upload_bytes``
    (declared or counted as they stream), every other body read here up to
    :data:`MAX_JSON_BYTES` before the application sees it."""

    def __init__(self, app: Any, token: Optional[str], max_upload_bytes: int,
                 loopback: bool) -> None:
        self.app = app
        self.token = token.encode("utf-8") if token else None
        self.max_upload_bytes = max_upload_bytes
        self.loopback = loopback

    async def __call__(self, scope: Dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        path = scope["path"]
        if self.loopback and not loopback_host(headers.get(b"host")):
            return await refuse(421, "this server answers only requests addressed to "
                                     "localhost or a loopback address; connect to it as such "
                                     "(an SSH tunnel or proxy must pass Host: localhost)",
                                scope, receive, send)
        public = path == f"{API}/health" or (path in PAGE_FILES and scope["method"] == "GET")
        length = headers.get(b"content-length")
        if public and (b"transfer-encoding" in headers or length not in (None, b"0")):
            return await refuse(400, "this path takes no request body", scope, receive, send)
        if path not in PAGE_FILES and cross_origin(headers):
            return await refuse(403, "requests from another web origin are refused; use the "
                                     "page this server serves at /", scope, receive, send)
        upload = path == f"{API}/volumes"
        if upload and headers.get(b"content-type", b"").split(b";")[0].strip().lower() != \
                b"application/octet-stream":
            return await refuse(415, "send the volume file with Content-Type: "
                                     "application/octet-stream", scope, receive, send)
        if self.token is not None and not public and \
                not self.authorised(headers.get(b"authorization", b"")):
            return await refuse(401, "missing or wrong bearer token", scope, receive, send,
                                {"WWW-Authenticate": "Bearer"})
        limit = self.max_upload_bytes if upload else MAX_JSON_BYTES
        if length is not None and (not length.isdigit() or int(length) > limit):
            if length.isdigit() and int(length) <= 2 * MAX_JSON_BYTES:   # a few MB: read,
                await drain(receive)       # so a client that sends before it reads gets it
            return await refuse(413, too_large(limit), scope, receive, send)
        if upload:                  # streamed to disk and counted by the endpoint
            return await self.app(scope, receive, send)
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return                                  # the client went away
            body += message.get("body", b"")
            if len(body) > limit:
                return await refuse(413, too_large(limit), scope, receive, send)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Dict[str, Any]:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)

    def authorised(self, header: bytes) -> bool:
        scheme, _, credentials = header.strip().partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(),
                                                                    self.token)


async def drain(receive: Callable) -> None:
    """Reads and drops a request's body (bounded by the caller; a stalled body is cut off
    by :class:`BoundedProtocol`)."""
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


async def refuse(status: int, detail: str, scope: Dict[str, Any], receive: Callable,
                 send: Callable, headers: Optional[Dict[str, str]] = None) -> None:
    await JSONResponse({"detail": detail}, status, headers)(scope, receive, send)


def cross_origin(headers: Dict[bytes, bytes]) -> bool:
    """Whether a browser sent the request from a page of another origin (or a ``file://``
    page): an ``Origin`` other than ``http(s)://`` + this request's ``Host``, or
    ``Sec-Fetch-Site`` other than ``same-origin`` / ``none``. Other clients send neither."""
    site = headers.get(b"sec-fetch-site")
    if site is not None and site.strip().lower() not in (b"same-origin", b"none"):
        return True
    origin = headers.get(b"origin")
    if origin is None:
        return False
    host = headers.get(b"host", b"").strip().lower()
    return origin.strip().lower() not in (b"http://" + host, b"https://" + host)


def loopback_host(host: Optional[bytes]) -> bool:
    """Whether a ``Host`` header names this machine by loopback (``localhost``,
    ``127.x.x.x``, ``[::1]``, any port); a request without one (HTTP/1.0) passes."""
    if host is None:
        return True
    name = host.decode("latin-1").strip().lower()
    name = name[1:name.find("]")] if name.startswith("[") else name.rsplit(":", 1)[0] \
        if name.count(":") == 1 else name
    return name == "localhost" or name.endswith(".localhost") or loopback_address(name)


def loopback_address(address: str) -> bool:
    """Whether ``address`` (an IP address, IPv6 with or without a ``%zone``) is a loopback
    address; False for anything else, names included."""
    try:
        return ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return False


def too_large(limit: int) -> str:
    return (f"the request is larger than the server accepts ({limit / 2 ** 20:.0f} MB; "
            "--max-upload-mb on the server)")


def wait_seconds(wait: float) -> float:
    """A client's ``wait`` query, as seconds within [0, :data:`MAX_WAIT_SECONDS`]."""
    return min(max(wait, 0.0), MAX_WAIT_SECONDS) if math.isfinite(wait) else 0.0


async def settled(service: Service, job_id: str, wait: float,
                  seen: Optional[Tuple[str, float]] = None) -> Job:
    """The job once finished, or changed from ``seen`` (state, progress), or after
    ``wait`` seconds (see :func:`wait_seconds`), whichever comes first; the wait polls
    and holds no thread."""
    job = service.job(job_id)
    deadline = asyncio.get_running_loop().time() + wait_seconds(wait)
    while not Service.changed(job, seen) and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(POLL_SECONDS)
    return job


def create_app(service: Service, token: Optional[str], max_upload_bytes: int,
               folder: Path, loopback: bool = True) -> Any:
    """The ASGI application: ``service``'s endpoints behind :class:`Guard`; uploads pass
    through ``folder`` (private to this process); ``loopback``: the server listens on a
    loopback address only (requests must be addressed to one)."""
    app = FastAPI(title="WSICL inference server", version=__version__, docs_url=None,
                  redoc_url=None)
    decoding = asyncio.Semaphore(MAX_DECODES)

    @app.exception_handler(ServiceError)
    async def refused(request: Request, error: ServiceError) -> JSONResponse:
        headers = {"Retry-After": str(error.retry_after)} if isinstance(error, Busy) else None
        return JSONResponse({"detail": str(error)}, error.status, headers)

    @app.get(f"{API}/health")
    async def health() -> Dict[str, str]:
        return {"status": "ok", "version": __version__}

    @app.get(f"{API}/info")
    async def info() -> Dict[str, Any]:
        return {**service.info(), "max_upload_mb": max_upload_bytes / 2 ** 20}

    @app.post(f"{API}/volumes", status_code=201)
    async def upload(request: Request, format: str = "mha") -> Dict[str, Any]:
        if format not in UPLOAD_FORMATS:
            raise ServiceError(422, f"format must be one of {', '.join(UPLOAD_FORMATS)}")
        path = folder / f"{secrets.token_hex(16)}.{format}"
        try:
            received = 0
            with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as file:
                async for chunk in request.stream():
                    received += len(chunk)
                    if received > max_upload_bytes:
                        raise ServiceError(413, too_large(max_upload_bytes))
                    file.write(chunk)
            if received == 0:
                raise ServiceError(422, "the upload is empty; send the image file as the body")
            async with decoding:
                image = await run_in_threadpool(_read_upload, path, service.volumes.max_bytes)
        finally:
            path.unlink(missing_ok=True)
        return {"id": service.volumes.add(image), "size": list(image.GetSize()),
                "bytes": received}

    @app.post(f"{API}/jobs", status_code=202)
    async def submit(request_json: Dict[str, Any], wait: float = 0.0) -> Dict[str, Any]:
        job = service.submit(request_json)
        return (await settled(service, job.id, wait)).describe()

    @app.get(f"{API}/jobs/{{job_id}}")
    async def state(job_id: str, wait: float = 0.0, seen_state: str = "",
                    seen_progress: float = -1.0) -> Dict[str, Any]:
        return (await settled(service, job_id, wait,
                              (seen_state, seen_progress) if seen_state else None)).describe()

    @app.get(f"{API}/jobs/{{job_id}}/mask")
    async def mask(job_id: str, wait: float = 0.0, seen_state: str = "",
                   seen_progress: float = -1.0) -> Response:
        job = await settled(service, job_id, wait,
                            (seen_state, seen_progress) if seen_state else None)
        if job.state == "done":
            payload, size = job.result
            return Response(payload, 200, {SIZE_HEADER: size,
                                           NOTES_HEADER: json.dumps(job.notes),
                                           SECONDS_HEADER: f"{job.seconds:.6f}",
                                           EVIDENCE_HEADER: json.dumps(
                                               job.evidence.as_dict() if job.evidence
                                               else None)},
                            media_type="application/octet-stream")
        status = {"cancelled": 409, "failed": 500 if job.error_kind == "internal" else 422
                  }.get(job.state, 202)
        return JSONResponse(job.describe(), status)

    @app.delete(f"{API}/jobs/{{job_id}}")
    async def cancel(job_id: str) -> Dict[str, Any]:
        return service.cancel(job_id).describe()

    for url_path in PAGE_FILES:                 # the browser page (public, no data)
        app.add_api_route(url_path, _page_endpoint(*page_file(url_path)), methods=["GET"],
                          include_in_schema=False)

    return Guard(app, token, max_upload_bytes, loopback)


def _page_endpoint(body: bytes, media_type: str) -> Callable[[], Any]:
    """An endpoint answering one of the page's files; it takes no parameters, so nothing
    a request carries can reach the answer."""
    async def answer() -> Response:
        return Response(body, 200, PAGE_HEADERS, media_type=media_type)
    return answer


def _read_upload(path: Path, max_bytes: int):
    """The uploaded image at ``path`` (self-contained, at most ``max_bytes`` of voxels), or
    a ServiceError whose message names no server path or address."""
    try:
        image = read_image(path, untrusted=True, max_bytes=max_bytes)
    except TooLarge as error:
        raise ServiceError(413, scrub(str(error).replace(str(path), "the uploaded volume")) +
                           " (--cache-mb on the server)") from None
    except (ValueError, FileNotFoundError) as error:
        raise ServiceError(422, scrub(str(error).replace(str(path), "the uploaded volume"))
                           ) from None
    if image.GetDimension() != 3:
        raise ServiceError(422, f"the uploaded volume is {image.GetDimension()}D; WSICL "
                                "segments 3D volumes")
    try:
        check_geometry(image.GetSpacing(), image.GetOrigin(), "the uploaded volume")
    except ValueError as error:
        raise ServiceError(422, str(error)) from None
    for key in image.GetMetaDataKeys():     # nothing of the header is used: not kept
        image.EraseMetaData(key)
    return image


class BoundedProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with the bounds it lacks, so that slow or stalled
    clients cannot hold the server:

    - at most ``cap`` open connections; a new one beyond it takes the place of the
      connection that has waited longest for its client (sending headers or a body, or
      idle between requests), and is closed only when every other is being answered;
    - a deadline for each request's headers (:data:`HEADER_SECONDS`; a client that
      connects and sends nothing, or its headers a byte at a time, is cut off);
    - a body must keep arriving: at least :data:`MIN_BODY_BYTES` every
      :data:`BODY_CHECK_SECONDS` until it is complete (unless the server itself paused
      reading), else the connection is closed;
    - a large body the answer did not need (a refused request) is not read: the connection
      closes once the answer is sent (a small one is read and dropped, so that the client
      can read the answer).
    """

    cap = MAX_CONNECTIONS
    header_seconds = HEADER_SECONDS
    body_check_seconds = BODY_CHECK_SECONDS
    min_body_bytes = MIN_BODY_BYTES

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._started = None
        self._deadline = None
        self._body_timer = None
        self._received = 0
        self._waiting_since = self.loop.time()
        if len(self.connections) > self.cap and not self._evict_one():
            transport.abort()
            return
        self._arm(self.header_seconds)

    def waiting_for_client(self) -> bool:
        """Whether the client owes this connection a request or the rest of its body."""
        return self.transport is not None and not self.transport.is_closing() and \
            self.conn.their_state in (h11.IDLE, h11.SEND_BODY)

    def _evict_one(self) -> bool:
        """Closes the connection that has waited longest for its client; False if every
        other connection is being answered."""
        waiting = [other for other in self.connections if other is not self and
                   isinstance(other, BoundedProtocol) and other.waiting_for_client()]
        if not waiting:
            return False
        min(waiting, key=lambda other: other._waiting_since).transport.abort()
        return True

    def _arm(self, seconds: float) -> None:
        """Closes the connection in ``seconds`` unless a new request has begun by then."""
        if self._deadline is not None:
            self._deadline.cancel()
        self._started = self.cycle
        self._deadline = self.loop.call_later(seconds, self._headers_late)

    def _headers_late(self) -> None:
        self._deadline = None
        if self.cycle is self._started and self.transport is not None:
            self.transport.close()          # no new request began in time

    def data_received(self, data: bytes) -> None:
        self._received += len(data)
        super().data_received(data)

    def handle_events(self) -> None:
        super().handle_events()
        if self._deadline is not None and self.cycle is not self._started:
            self._deadline.cancel()
            self._deadline = None
        if self._body_timer is None and self.transport is not None and \
                not self.transport.is_closing() and self.conn.their_state is h11.SEND_BODY:
            self._watch_body(self._received)

    def _watch_body(self, received: int) -> None:
        self._body_timer = self.loop.call_later(self.body_check_seconds, self._body_check,
                                                received)

    def _body_check(self, received: int) -> None:
        """Closes the connection if its body stalled since the last check."""
        self._body_timer = None
        if self.transport is None or self.transport.is_closing() or \
                self.conn.their_state is not h11.SEND_BODY:
            return
        if self._received - received < self.min_body_bytes and not self.flow.read_paused:
            self.transport.abort()
            return
        self._watch_body(self._received)

    def on_response_complete(self) -> None:
        answered = self.cycle
        if self.conn.their_state is h11.SEND_BODY and not self._small_body():
            self.transport.close()       # answered (refused) before a large body came
            return
        super().on_response_complete()        # may start a pipelined request at once
        self._waiting_since = self.loop.time()
        if self.cycle is answered and not self.transport.is_closing():
            self._arm(self.timeout_keep_alive + self.header_seconds)

    def _small_body(self) -> bool:
        """Whether the request declared a body of at most :data:`MAX_JSON_BYTES`: once it
        is answered, the rest of such a body is read and dropped (so the client reads the
        answer), while a larger or chunked one closes the connection."""
        length = dict(self.headers).get(b"content-length", b"")
        return length.isdigit() and int(length) <= MAX_JSON_BYTES

    def connection_lost(self, exc: Optional[Exception]) -> None:
        for timer in (self._deadline, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._deadline = self._body_timer = None
        super().connection_lost(exc)


def listening_socket(host: str, port: int, token: Optional[str]) -> socket.socket:
    """A socket bound to ``host``:``port`` (0: a free port) and listening, or a ValueError
    that says why not; an address that is not loopback needs a ``token`` (anyone who can
    reach it could use the server otherwise)."""
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except OSError as error:
        raise ValueError(f"cannot listen on {host}:{port} ({error.strerror or error}); choose "
                         "another --host") from None
    if token is None and not loopback_address(address[0]):
        raise ValueError(f"refusing to listen on {host} without a token: anyone who can reach "
                         "it could use the server; give --token-file (see the README)")
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as error:
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port} ({error.strerror or error}); choose "
                         "another --port or --host") from None
    return sock


def read_server_token(path: Path) -> str:
    """The token a server is started with: the file must be private to its owner (on
    POSIX systems) and the token at least :data:`TOKEN_CHARS` characters; a ValueError
    says how to fix either."""
    from .client import read_token
    path = Path(path).expanduser()
    token = read_token(path)
    mode = path.stat().st_mode & 0o777
    if os.name == "posix" and mode & 0o077:
        raise ValueError(f"{path}: the token file can be read by other users (mode "
                         f"{mode:03o}); make it private: chmod 600 {path}")
    if len(token) < TOKEN_CHARS:
        raise ValueError(f"{path}: the token is {len(token)} characters; use at least "
                         f"{TOKEN_CHARS} (`wsicl serve --new-token FILE` writes a good one)")
    return token


def write_new_token(path: Path) -> str:
    """Writes a new random token (256 bits, URL-safe) to ``path``, readable by its owner
    only, and returns it; a ValueError if the file exists (a token in use is never
    overwritten) or cannot be written."""
    path = Path(path).expanduser()
    token = secrets.token_urlsafe(32)
    try:
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ValueError(f"{path}: exists; use it with --token-file, or name a new file for "
                         "--new-token") from None
    except OSError as error:
        raise ValueError(f"{path}: cannot write the token there ({error.strerror or error}); "
                         "choose a writable folder") from None
    try:
        with open(handle, "w", encoding="ascii") as stream:
            stream.write(token + "\n")
            stream.flush()
            os.fsync(stream.fileno())
        if path.read_text(encoding="ascii").strip() != token:
            raise OSError(5, "it did not read back as written")
    except OSError as error:
        path.unlink(missing_ok=True)
        raise ValueError(f"{path}: the token could not be written ({error.strerror or error}); "
                         "check the free disk space") from None
    return token


class Stopped(Exception):
    """A stop signal reached the server (SIGTERM: ``kill``, systemd, docker stop; SIGINT:
    Ctrl-C; SIGHUP: a closed terminal or SSH session): it shuts down cleanly."""


def _stop(signum: int, frame: Any) -> None:
    raise Stopped()


def serve(service: Service, sock: socket.socket, token: Optional[str],
          max_upload_bytes: int, say: Callable[[str], None] = print) -> None:
    """Serves ``service`` on ``sock`` (from :func:`listening_socket`, which the caller
    closes) until stopped (Ctrl-C, SIGTERM or SIGHUP: each finishes the requests in flight,
    removes the private upload folder and returns); says ``listening on URL`` once
    requests are accepted."""
    import uvicorn
    hang_up = getattr(signal, "SIGHUP", None)           # not on Windows
    stops = [signal.SIGTERM, signal.SIGINT] + ([hang_up] if hang_up else [])
    previous = {number: signal.signal(number, _stop) for number in stops}  # uvicorn raises
    folder = Path(tempfile.mkdtemp(prefix="wsicl-serve-"))   # SIGTERM / SIGINT again at its end
    try:
        app = create_app(service, token, max_upload_bytes, folder,
                         loopback_address(sock.getsockname()[0]))
        cap = connection_cap()
        protocol = type("Bounded", (BoundedProtocol,), {"cap": cap})
        server = uvicorn.Server(uvicorn.Config(
            app, log_level="warning", lifespan="off", http=protocol,
            timeout_keep_alive=KEEP_ALIVE_SECONDS, limit_concurrency=cap + 1,
            h11_max_incomplete_event_size=64 * 1024))
        if hang_up:                       # uvicorn itself handles SIGTERM and SIGINT only
            signal.signal(hang_up, lambda number, frame: setattr(server, "should_exit", True))

        async def run() -> None:
            task = asyncio.ensure_future(server.serve(sockets=[sock]))
            while not server.started and not task.done():
                await asyncio.sleep(0.02)
            if server.started:
                bound = sock.getsockname()
                shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
                say(f"listening on http://{shown}:{bound[1]}")
                sys.stdout.flush()
            await task

        try:
            asyncio.run(run())
        except Stopped:
            pass
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        service.close()
        shutil.rmtree(folder, ignore_errors=True)
