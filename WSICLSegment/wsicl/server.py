"""``wsicl serve``: the inference service over HTTP (FastAPI on uvicorn; ``pip install
wsicl[server]``).

Endpoints (all under ``/v1``; a bearer token is required on all but ``/v1/health`` when the
server has one; ``/openapi.json`` describes them):

* ``GET /v1/health``: ``{"status": "ok", "version": ...}``.
* ``GET /v1/info``: version, device, precision, models and limits.
* ``POST /v1/volumes?format=mha|nrrd|nii|nii.gz``: the body is one image file; answers
  ``{"id": ...}`` (201). Header checks run before any voxel is allocated; the file only
  passes through the server's private temporary folder.
* ``POST /v1/jobs?wait=S``: a job request (:mod:`wsicl.service`); answers its state (202).
* ``GET /v1/jobs/{id}?wait=S``: its state, once changed or after ``S`` seconds.
* ``GET /v1/jobs/{id}/mask?wait=S``: 200 with the mask (:func:`wsicl.wire.mask_to_bytes`)
  once done; 202 with the state while not; 409 cancelled; 422/500 failed (state JSON).
* ``DELETE /v1/jobs/{id}``: cancel.

Errors are JSON ``{"detail": message}``; a full queue answers 503 with Retry-After.
"""
import asyncio
import hmac
import ipaddress
import itertools
import json
import math
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from . import __version__
from .imageio import read_image
from .service import Busy, Service, ServiceError
from .wire import API, NOTES_HEADER, SECONDS_HEADER, SIZE_HEADER, UPLOAD_FORMATS

MAX_JSON_BYTES = 16 * 2 ** 20
"""Largest job request (a context set of a few hundred prompts is a few kB)."""
MAX_WAIT_SECONDS = 30.0
"""Longest a request waits for a job to change."""


class Guard:
    """ASGI middleware: the bearer token (constant-time comparison) on every path but the
    health check, and body-size limits declared by Content-Length (uploads are also
    counted as they stream)."""

    def __init__(self, app: Any, token: Optional[str], max_upload_bytes: int) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode() if token else None
        self.max_upload_bytes = max_upload_bytes

    async def __call__(self, scope: Dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        path = scope["path"]
        if self.expected is not None and path != f"{API}/health" and not hmac.compare_digest(
                headers.get(b"authorization", b""), self.expected):
            return await JSONResponse(
                {"detail": "missing or wrong bearer token"}, 401,
                {"WWW-Authenticate": "Bearer"})(scope, receive, send)
        limit = self.max_upload_bytes if path == f"{API}/volumes" else MAX_JSON_BYTES
        length = headers.get(b"content-length", b"0")
        if not length.isdigit() or int(length) > limit:
            return await JSONResponse({"detail": too_large(limit)}, 413)(scope, receive, send)
        await self.app(scope, receive, send)


def too_large(limit: int) -> str:
    return (f"the request is larger than the server accepts ({limit / 2 ** 20:.0f} MB; "
            "--max-upload-mb on the server)")


def wait_seconds(wait: float) -> float:
    """A client's ``wait`` query, as seconds within [0, :data:`MAX_WAIT_SECONDS`]."""
    return min(max(wait, 0.0), MAX_WAIT_SECONDS) if math.isfinite(wait) else 0.0


def create_app(service: Service, token: Optional[str], max_upload_bytes: int,
               folder: Path) -> Any:
    """The ASGI application: ``service``'s endpoints behind :class:`Guard`; uploads pass
    through ``folder`` (private to this process)."""
    app = FastAPI(title="WSICL inference server", version=__version__, docs_url=None,
                  redoc_url=None)
    uploads = itertools.count()

    @app.exception_handler(ServiceError)
    async def refused(request: Request, error: ServiceError) -> JSONResponse:
        headers = {"Retry-After": str(error.retry_after)} if isinstance(error, Busy) else None
        return JSONResponse({"detail": str(error)}, error.status, headers)

    @app.get(f"{API}/health")
    def health() -> Dict[str, str]:
        return {"status": "ok", "version": __version__}

    @app.get(f"{API}/info")
    def info() -> Dict[str, Any]:
        return {**service.info(), "max_upload_mb": max_upload_bytes / 2 ** 20}

    @app.post(f"{API}/volumes", status_code=201)
    async def upload(request: Request, format: str = "mha") -> Dict[str, Any]:
        if format not in UPLOAD_FORMATS:
            raise ServiceError(422, f"format must be one of {', '.join(UPLOAD_FORMATS)}")
        path = folder / f"upload-{next(uploads)}.{format}"
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
            image = await run_in_threadpool(_read_upload, path)
        finally:
            path.unlink(missing_ok=True)
        return {"id": service.volumes.add(image), "size": list(image.GetSize()),
                "bytes": received}

    @app.post(f"{API}/jobs", status_code=202)
    def submit(request_json: Dict[str, Any], wait: float = 0.0) -> Dict[str, Any]:
        job = service.submit(request_json)
        return service.wait(job.id, wait_seconds(wait)).describe()

    @app.get(f"{API}/jobs/{{job_id}}")
    def state(job_id: str, wait: float = 0.0, seen_state: str = "",
              seen_progress: float = -1.0) -> Dict[str, Any]:
        return service.wait(job_id, wait_seconds(wait),
                            (seen_state, seen_progress) if seen_state else None).describe()

    @app.get(f"{API}/jobs/{{job_id}}/mask")
    def mask(job_id: str, wait: float = 0.0, seen_state: str = "",
             seen_progress: float = -1.0) -> Response:
        job = service.wait(job_id, wait_seconds(wait),
                           (seen_state, seen_progress) if seen_state else None)
        if job.state == "done":
            payload, size = job.result
            return Response(payload, 200, {SIZE_HEADER: size,
                                           NOTES_HEADER: json.dumps(job.notes),
                                           SECONDS_HEADER: f"{job.seconds:.6f}"},
                            media_type="application/octet-stream")
        status = {"cancelled": 409, "failed": 500 if job.error_kind == "internal" else 422
                  }.get(job.state, 202)
        return JSONResponse(job.describe(), status)

    @app.delete(f"{API}/jobs/{{job_id}}")
    def cancel(job_id: str) -> Dict[str, Any]:
        return service.cancel(job_id).describe()

    return Guard(app, token, max_upload_bytes)


def _read_upload(path: Path):
    try:
        image = read_image(path)
    except (ValueError, FileNotFoundError) as error:
        raise ServiceError(422, str(error).replace(str(path), "the uploaded volume")) from None
    if image.GetDimension() != 3:
        raise ServiceError(422, f"the uploaded volume is {image.GetDimension()}D; WSICL "
                                "segments 3D volumes")
    return image


def listening_socket(host: str, port: int, token: Optional[str]) -> socket.socket:
    """A socket bound to ``host``:``port`` (0: a free port) and listening, or a ValueError
    that says why not; an address that is not loopback needs a ``token`` (anyone who can
    reach it could use the server otherwise)."""
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except OSError as error:
        raise ValueError(f"cannot listen on {host}:{port} ({error.strerror or error}); choose "
                         "another --host") from None
    if token is None and not ipaddress.ip_address(address[0].split("%")[0]).is_loopback:
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


def serve(service: Service, sock: socket.socket, token: Optional[str],
          max_upload_bytes: int, say: Callable[[str], None] = print) -> None:
    """Serves ``service`` on ``sock`` (from :func:`listening_socket`, which the caller
    closes) until interrupted (Ctrl-C or SIGTERM); says ``listening on URL`` once
    requests are accepted."""
    import uvicorn
    folder = Path(tempfile.mkdtemp(prefix="wsicl-serve-"))      # mode 0700
    try:
        app = create_app(service, token, max_upload_bytes, folder)
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off",
                                               timeout_keep_alive=30))

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

        asyncio.run(run())
    finally:
        service.close()
        shutil.rmtree(folder, ignore_errors=True)
