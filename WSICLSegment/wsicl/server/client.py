"""Running the network on a ``wsicl serve`` server: :class:`RemotePredictor` does what
:class:`wsicl.Predictor` does (same arguments where they apply, same masks), over HTTP.

Only the standard library speaks HTTP here, so the client works in 3D Slicer's Python
without extra packages. Each image is uploaded once per server (remembered by a digest of
its voxels and geometry, uploaded again if the server forgot it); an interactive update
sends only the prompts.

>>> predictor = RemotePredictor("http://gpu-box:8000", token=read_token("~/.wsicl-token"))
>>> predictor.segment(target, context).mask
"""
import http.client
import json
import socket
import tempfile
import threading
import time
import urllib.parse
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import SimpleITK as sitk

from ..context import Box, ContextSet, Point, check_kinds
from ..geometry import image_digest
from ..predictor import (CancelCheck, Cancelled, Predictor, ProgressCallback, Segmentation,
                        check_cancel)
from .wire import (API, EVIDENCE_HEADER, NOTES_HEADER, SECONDS_HEADER, SIZE_HEADER,
                   boxes_to_json, evidence_from_json, mask_from_bytes, points_to_json)

POLL_SECONDS = 0.5
"""How long one status request may wait on the server for the job to change."""
BUSY_RETRIES = 20
"""How often a request refused with 503 (queue full) is tried again."""
_QUIET_WRITES = threading.Lock()
"""Held while warnings are switched off around an upload's write: the switch is global to
SimpleITK, and two threads toggling it could leave it off."""


class RemoteError(RuntimeError):
    """The server could not be reached, refused the request, or failed."""


class RemoteNote(UserWarning):
    """A note the server's engine raised while segmenting (e.g. a resampled mask)."""


def read_token(path: Union[str, Path]) -> str:
    """The bearer token in a file (surrounding whitespace ignored); a ValueError if the
    file is missing or empty."""
    path = Path(path).expanduser()
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: cannot read the token file ({error}); create it as the "
                         "README shows") from None
    if not token or any(c.isspace() for c in token):
        raise ValueError(f"{path}: the token file must hold one token (no spaces); create "
                         "it as the README shows")
    return token


def served_name(model: str) -> str:
    """The name ``wsicl serve`` gives a model: ``box`` and ``point`` as they are, a weights
    file by its name up to the first dot (``weak_ICL_bbox.ckpt`` -> ``weak_ICL_bbox``)."""
    return model if model in ("box", "point") else Path(model).name.split(".")[0]


class Connection:
    """Requests to one server (``url``: ``http(s)://host:port[/prefix]``), each on a fresh
    connection, with errors as :class:`RemoteError` or ValueError messages that name the
    server and the fix."""

    def __init__(self, url: str, token: Optional[str] = None, timeout: float = 60.0) -> None:
        parsed = urllib.parse.urlsplit(url.strip())
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"server URL {url!r}: expected http://HOST:PORT or "
                             "https://HOST:PORT")
        self.url = url.strip().rstrip("/")
        self._parsed = parsed
        self.prefix = parsed.path.rstrip("/")
        self.token = token
        self.timeout = timeout

    def request(self, method: str, path: str, body: Optional[bytes] = None,
                query: Optional[Dict[str, Any]] = None, timeout: Optional[float] = None,
                content_type: str = "application/json",
                accept: Sequence[int] = (200, 201, 202)) -> Tuple[int, Dict[str, str], bytes]:
        """``(status, headers, body)`` for a status in ``accept``; otherwise connection
        failures, 401 and 5xx are RemoteError, other refusals ValueError with the server's
        reason. A full queue (503) is tried again after Retry-After (:data:`BUSY_RETRIES`
        times)."""
        target = self.prefix + API + path + (
            "?" + urllib.parse.urlencode(query) if query else "")
        headers: Dict[str, Any] = {"Content-Type": content_type} if body is not None else {}
        if self.token:              # UTF-8, as the server reads it (http.client: Latin-1)
            headers["Authorization"] = f"Bearer {self.token}".encode("utf-8")
        for attempt in range(BUSY_RETRIES + 1):
            status, answer, payload = self._once(method, target, body, headers,
                                                 timeout or self.timeout)
            if status != 503 or attempt == BUSY_RETRIES:
                break
            time.sleep(min(float(answer.get("retry-after", "1") or 1), 30.0))
        if status == 401:
            raise RemoteError(f"the server refused the token ({self.url}); check the token "
                              "file: it must hold the token the server was started with")
        if status not in accept:
            raise (RemoteError if status >= 500 else ValueError)(
                _detail(payload, status, self.url))
        return status, answer, payload

    def _once(self, method: str, target: str, body: Optional[bytes], headers: Dict[str, Any],
              timeout: float) -> Tuple[int, Dict[str, str], bytes]:
        kind = http.client.HTTPSConnection if self._parsed.scheme == "https" else \
            http.client.HTTPConnection
        connection = kind(self._parsed.hostname, self._parsed.port, timeout=timeout)
        try:
            connection.request(method, target, body, headers)
            response = connection.getresponse()
            return (response.status, {k.lower(): v for k, v in response.getheaders()},
                    response.read())
        except socket.timeout:
            raise RemoteError(f"the server at {self.url} did not answer within {timeout:.0f} s; "
                              "it may be overloaded or gone") from None
        except (ConnectionRefusedError, socket.gaierror) as error:
            raise RemoteError(f"cannot reach the WSICL server at {self.url} "
                              f"({getattr(error, 'strerror', None) or error}); check that "
                              "`wsicl serve` runs there and the URL (or SSH tunnel)") from None
        except (http.client.HTTPException, OSError) as error:
            raise RemoteError(f"the connection to the server at {self.url} broke "
                              f"({type(error).__name__}: {error}); the server may have "
                              "stopped or restarted; nothing was written, run again") from None
        finally:
            connection.close()

    def json(self, method: str, path: str, document: Any = None,
             query: Optional[Dict[str, Any]] = None, timeout: Optional[float] = None) -> Any:
        body = None if document is None else json.dumps(document).encode()
        status, _, payload = self.request(method, path, body, query, timeout)
        return _parse(payload, status, self.url)


def _parse(payload: bytes, status: int, url: str) -> Any:
    try:
        return json.loads(payload)
    except ValueError:
        raise RemoteError(f"{url} answered HTTP {status} with something that is not a WSICL "
                          "server's answer; check the URL") from None


def _detail(payload: bytes, status: int, url: str) -> str:
    """The server's one-line reason for a refusal."""
    document = _parse(payload, status, url)
    detail = document.get("detail") if isinstance(document, dict) else None
    if isinstance(detail, list):        # request validation: [{"loc": ..., "msg": ...}]
        detail = "; ".join(f"{'.'.join(str(p) for p in d.get('loc', []))}: {d.get('msg')}"
                           for d in detail if isinstance(d, dict))
    return f"server: {detail or f'HTTP {status}'}"


def check_server(url: str, token: Optional[str] = None) -> str:
    """One line saying what the server at ``url`` runs (raises RemoteError / ValueError
    if it cannot be used): the "Test connection" button."""
    info = Connection(url, token, timeout=10.0).json("GET", "/info")
    return (f"WSICL {info.get('version')} on {info.get('device')} "
            f"({info.get('precision')}); models: {', '.join(info.get('models', {}))}")


class RemoteContext:
    """A context set whose images live on the server (see
    :meth:`RemotePredictor.prepare_context`), with the digests of each entry's image and
    mask (computed once: hashing large volumes for every target would cost seconds)."""

    def __init__(self, context_set: ContextSet,
                 keys: Sequence[Tuple[bytes, Optional[bytes]]]) -> None:
        self.context_set = context_set
        self.name = context_set.name
        self.keys = list(keys)


class RemotePredictor:
    """A :class:`wsicl.Predictor` whose network runs on a ``wsicl serve`` server.

    Args:
        url: ``http://HOST:PORT`` of the server.
        token: its bearer token (:func:`read_token`), None if it has none.
        model: a model name the server serves (``wsicl serve --model``).
        refine, prompt_kinds: as for :class:`wsicl.Predictor` (None: the model's).
        timeout: longest wait, in seconds, for one job.

    The device, precision and mini-context are the server's. Results carry the mask;
    ``probability`` is None (it does not travel).
    """

    def __init__(self, url: str, token: Optional[str] = None, model: str = "box",
                 refine: Optional[bool] = None, prompt_kinds: Optional[Sequence[str]] = None,
                 timeout: float = 3600.0) -> None:
        self.connection = Connection(url, token)
        self.server = self.connection.json("GET", "/info")
        models = self.server.get("models", {})
        if model not in models:
            raise ValueError(f"the server at {self.connection.url} serves "
                             f"{', '.join(models) or 'no model'}, not {model!r}; choose one of "
                             "those (--model)")
        self.model = model
        served = models[model]
        self.kinds = list(served["prompt_kinds"]) if prompt_kinds is None else \
            check_kinds(prompt_kinds, "prompt_kinds")
        self.refine = bool(served["refine"]) if refine is None else bool(refine)
        self.size = int(served["input_size"])
        self.precision = str(self.server.get("precision"))
        self.device = f"{self.server.get('device')} at {self.connection.url}"
        self.timeout = timeout
        self._prompt_kinds = None if prompt_kinds is None else self.kinds
        self._ids: Dict[bytes, str] = {}
        self.last_server_seconds = float("nan")
        """Seconds the server computed the last job for (wall time minus this is the
        network, queue and transfer overhead)."""

    def prepare_context(self, context_set: ContextSet, cancel: Optional[CancelCheck] = None
                        ) -> RemoteContext:
        """Uploads the context images (and masks) the server does not hold yet."""
        context_set.kinds()
        keys = []
        for entry in context_set.entries:
            check_cancel(cancel)
            image_key = image_digest(entry.image)
            self._volume(entry.image, image_key)
            mask_key = None
            if entry.mask is not None:
                mask_key = image_digest(entry.mask)
                self._volume(entry.mask, mask_key)
            keys.append((image_key, mask_key))
        return RemoteContext(context_set, keys)

    def segment(self, target: sitk.Image, context: Union[ContextSet, RemoteContext],
                progress: Optional[ProgressCallback] = None,
                cancel: Optional[CancelCheck] = None, name: str = "target") -> Segmentation:
        """As :meth:`wsicl.Predictor.segment`, on the server."""
        if isinstance(context, ContextSet):
            context = self.prepare_context(context, cancel)
        entries = list(zip(context.context_set.entries, context.keys))
        target_key = image_digest(target)

        def request() -> Dict[str, Any]:
            return {"mode": "context", "target": self._volume(target, target_key),
                    "name": name, "context": {"name": context.name, "entries": [
                        {"image": self._volume(e.image, image_key), "name": e.name,
                         "boxes": boxes_to_json(e.boxes), "points": points_to_json(e.points),
                         **({"mask": self._volume(e.mask, mask_key)}
                            if e.mask is not None else {})}
                        for e, (image_key, mask_key) in entries]}}

        return self._run(request, target, progress, cancel)

    segment_many = Predictor.segment_many     # through this class's prepare_context, segment

    def segment_interactive(self, image: sitk.Image, boxes: Sequence[Box] = (),
                            points: Sequence[Point] = (), cancel: Optional[CancelCheck] = None,
                            name: str = "the image") -> Segmentation:
        """As :meth:`wsicl.Predictor.segment_interactive`: the image is uploaded once; each
        update sends only the prompts."""
        key = image_digest(image)

        def request() -> Dict[str, Any]:
            return {"mode": "interactive", "target": self._volume(image, key), "name": name,
                    "boxes": boxes_to_json(boxes), "points": points_to_json(points)}

        return self._run(request, image, None, cancel)

    def _volume(self, image: sitk.Image, key: Optional[bytes] = None) -> str:
        """The server's id for ``image`` (``key``: its digest, when known), uploading it
        (as MetaImage) if needed."""
        key = key or image_digest(image)
        if key not in self._ids:
            with tempfile.TemporaryDirectory(prefix="wsicl-upload-") as folder:
                path = Path(folder) / "volume.mha"
                with _QUIET_WRITES:     # silences MetaImage's notes on NIfTI header fields
                    showing = sitk.ProcessObject.GetGlobalWarningDisplay()
                    sitk.ProcessObject.SetGlobalWarningDisplay(False)
                    try:
                        sitk.WriteImage(image, str(path), True)
                    finally:
                        sitk.ProcessObject.SetGlobalWarningDisplay(showing)
                body = path.read_bytes()
            answer = _parse(self.connection.request(
                "POST", "/volumes", body, {"format": "mha"}, timeout=600.0,
                content_type="application/octet-stream")[2], 201, self.connection.url)
            self._ids[key] = answer["id"]
        return self._ids[key]

    def _run(self, request: Callable[[], Dict[str, Any]], like: sitk.Image,
             progress: Optional[ProgressCallback], cancel: Optional[CancelCheck]
             ) -> Segmentation:
        """Submits a job (uploading again what the server forgot), follows it to the end
        and returns its mask on ``like``'s grid with the output's evidence about itself;
        Ctrl-C or ``cancel`` cancels it."""
        document = {**request(), "model": self.model, "refine": self.refine,
                    "prompt_kinds": self._prompt_kinds}
        try:
            job = self.connection.json("POST", "/jobs", document)
        except ValueError as error:
            if "unknown volume id" not in str(error):
                raise
            self._ids.clear()              # the server restarted or expired our volumes
            job = self.connection.json("POST", "/jobs", {**document, **request()})
        try:
            return self._follow(job, like, progress, cancel)
        except BaseException:              # Ctrl-C, cancel, timeout: stop the server's work
            try:
                self.connection.request("DELETE", f"/jobs/{job['id']}", timeout=5.0)
            except (RemoteError, ValueError):
                pass
            raise

    def _follow(self, job: Dict[str, Any], like: sitk.Image,
                progress: Optional[ProgressCallback], cancel: Optional[CancelCheck]
                ) -> Segmentation:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            check_cancel(cancel)
            status, headers, payload = self.connection.request(
                "GET", f"/jobs/{job['id']}/mask",
                query={"wait": POLL_SECONDS, "seen_state": job["state"],
                       "seen_progress": job["progress"]}, timeout=POLL_SECONDS + 60.0,
                accept=(200, 202, 409, 422, 500))
            if status == 200:
                self.last_server_seconds = float(headers.get(SECONDS_HEADER.lower(), "nan"))
                for note in json.loads(headers.get(NOTES_HEADER.lower(), "[]")):
                    warnings.warn(note, RemoteNote, stacklevel=4)
                return Segmentation(
                    mask_from_bytes(payload, headers.get(SIZE_HEADER.lower(), ""), like), None,
                    evidence_from_json(headers.get(EVIDENCE_HEADER.lower(), "null")))
            job = _parse(payload, status, self.connection.url)
            if job["state"] == "cancelled":
                raise Cancelled("cancelled")
            if job["state"] == "failed":
                raise (ValueError if job["error_kind"] == "input" else RemoteError)(
                    job["error"])
            if progress is not None and job["state"] == "running":
                progress(job["progress"], job["message"])
        raise RemoteError(f"the server's job took longer than {self.timeout:.0f} s; it is "
                          "cancelled")
