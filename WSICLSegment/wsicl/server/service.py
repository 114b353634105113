"""The inference service behind ``wsicl serve``, without HTTP: uploaded volumes in a bounded
cache, jobs in a bounded queue, one worker thread that runs them serially on the device.

Volumes are kept in memory (never written anywhere, no header metadata kept) under random
ids, evicted least recently used beyond ``volume_bytes``, beyond :data:`MAX_VOLUMES` and
after ``volume_ttl`` seconds unused. A job names its volumes by id; it holds the images it
needs from submission until it finishes, so evicting a volume never breaks a queued job,
and what jobs hold counts against ``volume_bytes``, as does the memory the running job
works in (:data:`JOB_BYTES_PER_VOXEL` per target voxel; a job that would need more than
the budget is refused). A full queue refuses with :class:`Busy` (HTTP 503 with
Retry-After) instead of waiting. Finished jobs are kept (the newest :data:`KEEP_FINISHED`)
with their results only, so a client may fetch a result again.

A job request is JSON (see :func:`parse_job`)::

    {"model": "box", "mode": "context" | "interactive", "target": VOLUME_ID,
     "name": "case7.nii.gz",                       # names the target in messages
     "context": {"name": "liver", "entries": [{"image": ID, "boxes": [...], "points": [...],
                                               "mask": ID, "name": "..."}]},
     "boxes": [...], "points": [...],              # interactive: prompts on the target
     "refine": null | true | false, "prompt_kinds": null | ["box"]}

with boxes and points as in :mod:`wsicl.server.wire`.
"""
import dataclasses
import logging
import math
import queue
import re
import secrets
import threading
import time
import warnings
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import SimpleITK as sitk

from .. import __version__
from ..confidence import Evidence, calibration
from ..context import ContextEntry, ContextSet, check_kinds
from ..contextfile import check_object
from ..predictor import Cancelled, Predictor, Segmentation
from .wire import boxes_from_json, mask_to_bytes, points_from_json

KEEP_FINISHED = 64
"""Finished jobs remembered (results fetched again after a dropped connection)."""
LOG = logging.getLogger("wsicl.serve")


class ServiceError(Exception):
    """A request the service refuses: ``status`` is the HTTP status that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Busy(ServiceError):
    """The queue is full; ``retry_after`` seconds is a fair wait before trying again."""

    def __init__(self, retry_after: int, queue_size: int) -> None:
        super().__init__(503, f"the server is busy ({queue_size} jobs waiting); try again in "
                              f"{retry_after} s")
        self.retry_after = retry_after


def image_bytes(image: sitk.Image) -> int:
    """Memory an image's voxels take, in bytes."""
    return image.GetNumberOfPixels() * image.GetNumberOfComponentsPerPixel() * \
        image.GetSizeOfPixelComponent()


MAX_VOLUMES = 256
"""Volumes cached at most, whatever their size (each costs memory beyond its voxels)."""


JOB_BYTES_PER_VOXEL = 20
"""Memory a job works in per target voxel, in bytes, beyond the images it holds: 18.3
measured on a uint8 volume of 16 million voxels, interactive and in context alike
(``benchmarks/server_memory.py``), rounded up. Jobs are admitted and the cache makes room
by it."""


def job_bytes(target: sitk.Image) -> int:
    """The memory a job on ``target`` works in (see :data:`JOB_BYTES_PER_VOXEL`)."""
    return target.GetNumberOfPixels() * JOB_BYTES_PER_VOXEL


class VolumeStore:
    """Images by random id, bounded in bytes, in number (:data:`MAX_VOLUMES`) and in idle
    time (seconds of ``clock``); least recently used go first."""

    def __init__(self, max_bytes: int, ttl_seconds: float,
                 clock: Callable[[], float] = time.monotonic,
                 max_volumes: int = MAX_VOLUMES,
                 held: Callable[[], List[sitk.Image]] = list) -> None:
        self.max_bytes, self.ttl, self.clock = max_bytes, ttl_seconds, clock
        self.max_volumes, self.held = max_volumes, held
        self.reserved = 0         # bytes the running job works in
        self._images: "OrderedDict[str, Tuple[sitk.Image, float]]" = OrderedDict()
        self._lock = threading.Lock()

    def add(self, image: sitk.Image) -> str:
        """Stores ``image`` and returns its new id; a 413 if it alone exceeds the bound."""
        if image_bytes(image) > self.max_bytes:
            raise ServiceError(413, f"the volume takes {image_bytes(image) / 2 ** 20:.0f} MB in "
                                    f"memory; the server keeps at most "
                                    f"{self.max_bytes / 2 ** 20:.0f} MB (--cache-mb)")
        volume_id = secrets.token_urlsafe(16)
        with self._lock:
            self._images[volume_id] = (image, self.clock())
            self._evict()
        return volume_id

    def get(self, volume_id: Any) -> sitk.Image:
        """The image stored as ``volume_id`` (its idle clock restarts); a 404 if unknown."""
        with self._lock:
            self._evict()
            if not isinstance(volume_id, str) or volume_id not in self._images:
                raise ServiceError(404, f"unknown volume id {str(volume_id)[:40]!r} (expired "
                                        "or the server restarted); upload the volume again")
            image, _ = self._images.pop(volume_id)
            self._images[volume_id] = (image, self.clock())
            return image

    def reserve(self, nbytes: int) -> None:
        """Sets the memory the running job works in (0 when none runs) and makes room for
        it by evicting cached volumes."""
        with self._lock:
            self.reserved = nbytes
            self._evict()

    def _evict(self) -> None:
        """Drops volumes unused for longer than the idle time, then the least recently used
        while the cache, the images that jobs hold outside it and the running job's memory
        exceed the budget, or the volumes their number."""
        now = self.clock()
        for key in [k for k, (_, used) in self._images.items() if now - used > self.ttl]:
            del self._images[key]
        cached = {id(image) for image, _ in self._images.values()}
        outside = self.reserved + sum(image_bytes(image) for image in
                                      {id(i): i for i in self.held()}.values()
                                      if id(image) not in cached)
        while self._images and (len(self._images) > self.max_volumes or outside + sum(
                image_bytes(image) for image, _ in self._images.values()) > self.max_bytes):
            self._images.popitem(last=False)

    def __len__(self) -> int:
        return len(self._images)


@dataclasses.dataclass
class Job:
    """One segmentation request and its state (``queued``, ``running``, ``done``,
    ``failed``, ``cancelled``)."""

    id: str
    model: str
    target: Optional[sitk.Image]          # None once finished (:meth:`release`)
    name: str
    context: Optional[ContextSet]
    interactive_entry: Optional[ContextEntry]
    refine: Optional[bool]
    prompt_kinds: Optional[List[str]]
    state: str = "queued"
    progress: float = 0.0
    message: str = "waiting"
    notes: List[str] = dataclasses.field(default_factory=list)
    error: str = ""
    error_kind: str = ""
    result: Optional[Tuple[bytes, str]] = None
    evidence: Optional[Evidence] = None
    cancel_requested: bool = False
    seconds: float = 0.0

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "cancelled")

    def release(self) -> None:
        """Lets go of the job's images once it finished (its result is kept)."""
        self.target = self.context = self.interactive_entry = None

    def observed(self) -> Tuple[str, float]:
        """State and progress as a client sees them (progress to 4 decimals)."""
        return self.state, round(self.progress, 4)

    def describe(self) -> Dict[str, Any]:
        """The job's state as JSON."""
        state, progress = self.observed()
        judged = {}
        if self.evidence is not None:
            confidence = calibration().confidence(self.evidence)
            judged = {"evidence": self.evidence.as_dict(), "confidence": round(confidence, 3),
                      "review": calibration().review(confidence)}
        return {"id": self.id, "state": state, "progress": progress,
                "message": self.message, "notes": self.notes, "error": self.error,
                "error_kind": self.error_kind, "seconds": round(self.seconds, 3), **judged}


class Service:
    """Runs jobs for ``predictors`` (by model name; all on one device) one at a time.

    Args:
        predictors: the loaded models, by the name clients use.
        queue_size: jobs that may wait; more are refused with :class:`Busy`.
        volume_bytes, volume_ttl: bounds of the volume cache (bytes, seconds unused).
    """

    def __init__(self, predictors: Dict[str, Predictor], queue_size: int = 8,
                 volume_bytes: int = 4 * 2 ** 30, volume_ttl: float = 3600.0) -> None:
        if not predictors:
            raise ValueError("the service needs at least one model")
        for predictor in predictors.values():    # clients get masks only: no float copy
            predictor.probability = False
        self.predictors = predictors
        self.volumes = VolumeStore(volume_bytes, volume_ttl, held=self._held_images)
        self.queue_size = queue_size
        self._queue: "queue.Queue[Optional[Job]]" = queue.Queue(maxsize=queue_size)
        self._jobs: "OrderedDict[str, Job]" = OrderedDict()
        self._lock = threading.Lock()      # guards the jobs table and job fields
        self._mean_seconds = 1.0
        self._worker = threading.Thread(target=self._loop, name="wsicl-inference", daemon=True)
        self._worker.start()

    def info(self) -> Dict[str, Any]:
        """Version, device, precision and models, as JSON."""
        first = next(iter(self.predictors.values()))
        device = first.device
        label = str(device)
        if device.type == "cuda":
            import torch
            label += f" ({torch.cuda.get_device_name(device)})"
        return {"version": __version__, "device": label, "precision": first.precision,
                "queue_size": self.queue_size,
                "models": {name: {"prompt_kinds": p.kinds, "input_size": p.size,
                                  "refine": p.refine,
                                  "source": Path(p.metadata.source).name}
                           for name, p in self.predictors.items()}}

    def submit(self, request: Any) -> Job:
        """Queues a job request (see the module docstring); ServiceError if it is malformed
        (422), names an unknown model or volume (404), would need more memory than the
        budget while it runs (413, see :data:`JOB_BYTES_PER_VOXEL`), or the queue is full
        (503)."""
        job = parse_job(request, self.predictors, self.volumes)
        need = job_bytes(job.target)
        if need > self.volumes.max_bytes:
            raise ServiceError(413, f"segmenting a volume of {job.target.GetNumberOfPixels():,} "
                                    f"voxels needs about {need / 2 ** 20:,.0f} MB while it "
                                    f"runs; the server's memory budget is "
                                    f"{self.volumes.max_bytes / 2 ** 20:,.0f} MB (--cache-mb); "
                                    "crop or downsample the volume, or raise --cache-mb")
        with self._lock:
            try:
                self._queue.put_nowait(job)
            except queue.Full:
                raise Busy(max(1, math.ceil(self._mean_seconds * self.queue_size)),
                           self.queue_size) from None
            self._jobs[job.id] = job
            self._forget_old()
        return job

    def _held_images(self) -> List[sitk.Image]:
        """The images that unfinished jobs hold (targets, context images and masks)."""
        with self._lock:
            jobs = [job for job in self._jobs.values() if not job.finished]
        images = []
        for job in jobs:
            entries = (job.context.entries if job.context is not None else []) + \
                ([job.interactive_entry] if job.interactive_entry is not None else [])
            images += [job.target] + [e.image for e in entries] + \
                [e.mask for e in entries if e.mask is not None]
        return [image for image in images if image is not None]

    def job(self, job_id: str) -> Job:
        with self._lock:
            if job_id not in self._jobs:
                raise ServiceError(404, f"unknown job id {job_id[:40]!r} (finished long ago "
                                        "or the server restarted)")
            return self._jobs[job_id]

    @staticmethod
    def changed(job: Job, seen: Optional[Tuple[str, float]]) -> bool:
        """Whether a client that last saw ``seen`` (state, progress; None: nothing) has
        something new to learn: the job finished or looks different."""
        return job.finished or (seen is not None and seen != job.observed())

    def cancel(self, job_id: str) -> Job:
        """Asks a job to stop: a queued job will not run; a running one stops at its next
        check (between mini-contexts)."""
        job = self.job(job_id)
        with self._lock:
            if not job.finished:
                job.cancel_requested = True
                job.message = "cancelling"
        return job

    def close(self, timeout: float = 10.0) -> None:
        """Stops the worker after the running job (queued jobs are cancelled)."""
        with self._lock:
            for job in self._jobs.values():
                job.cancel_requested = True
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            pass
        self._worker.join(timeout)

    def _forget_old(self) -> None:
        finished = [key for key, job in self._jobs.items() if job.finished]
        for key in finished[:max(0, len(finished) - KEEP_FINISHED)]:
            del self._jobs[key]

    def _update(self, job: Job, **fields: Any) -> None:
        with self._lock:
            for key, value in fields.items():
                setattr(job, key, value)

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            if job.cancel_requested:
                self._update(job, state="cancelled", message="cancelled before it ran")
                job.release()
                continue
            started = time.perf_counter()
            self._update(job, state="running", message="starting")
            self.volumes.reserve(job_bytes(job.target))
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    result = self._run(job)
                job.seconds = time.perf_counter() - started
                self._update(job, state="done", progress=1.0, message="done",
                             result=mask_to_bytes(result.mask), evidence=result.evidence,
                             notes=list(dict.fromkeys(str(w.message) for w in caught)))
            except Cancelled:
                self._update(job, state="cancelled", message="cancelled")
            except (ValueError, OverflowError) as error:   # overflow: absurd coordinates
                self._update(job, state="failed", error=scrub(str(error)), error_kind="input",
                             message="failed")
            except RuntimeError as error:       # out of memory, device errors
                self._update(job, state="failed", error=scrub(str(error)),
                             error_kind="runtime", message="failed")
            except Exception as error:          # a bug: logged here, one line to the client
                LOG.exception("job %s failed", job.id)
                self._update(job, state="failed", error_kind="internal", message="failed",
                             error=f"internal server error ({type(error).__name__}); the "
                                   "server's log has the details")
            job.seconds = job.seconds or time.perf_counter() - started
            self._mean_seconds = 0.8 * self._mean_seconds + 0.2 * job.seconds
            LOG.info("job %s (%s, %s, %s): %s in %.2f s%s", job.id, job.model,
                     "interactive" if job.interactive_entry else "in context",
                     printable(job.name), job.state, job.seconds,
                     f": {printable(job.error)}" if job.error else "")
            job.release()
            self.volumes.reserve(0)

    def _run(self, job: Job) -> Segmentation:
        predictor = self.predictors[job.model]

        def progress(fraction: float, message: str) -> None:
            self._update(job, progress=min(max(fraction, 0.0), 0.999), message=message)

        def cancel() -> bool:
            return job.cancel_requested

        with _options(predictor, job.refine, job.prompt_kinds):
            if job.interactive_entry is not None:
                entry = job.interactive_entry
                return predictor.segment_interactive(job.target, entry.boxes, entry.points,
                                                     cancel, job.name)
            return predictor.segment(job.target, job.context, progress, cancel, job.name)


@contextmanager
def _options(predictor: Predictor, refine: Optional[bool], kinds: Optional[List[str]]
             ) -> Iterator[None]:
    """A job's refine and prompt-kind choices, on the shared predictor for the job's
    duration (jobs run one at a time)."""
    saved = predictor.refine, predictor.kinds
    if refine is not None:
        predictor.refine = refine
    if kinds is not None:
        predictor.kinds = kinds
    try:
        yield
    finally:
        predictor.refine, predictor.kinds = saved


MAX_CONTEXT_ENTRIES = 128
"""Context images one job may name."""
MAX_PROMPTS = 512
"""Boxes and points on one image (a box on every slice of a large organ is a few hundred)."""
JOB_KEYS = {"model", "mode", "target", "name", "context", "boxes", "points", "refine",
            "prompt_kinds"}
ENTRY_KEYS = {"image", "boxes", "points", "mask", "name"}


def parse_job(request: Any, predictors: Dict[str, Predictor], volumes: VolumeStore) -> Job:
    """A :class:`Job` from request JSON, with its volumes looked up; ServiceError (422:
    malformed, 404: unknown model or volume) saying what is wrong."""
    try:
        check_object(request, JOB_KEYS, "job")
        mode = request.get("mode", "context")
        if mode not in ("context", "interactive"):
            raise ValueError(f"job: mode must be 'context' or 'interactive', got {mode!r}")
        refine = request.get("refine")
        if refine is not None and not isinstance(refine, bool):
            raise ValueError(f"job: refine must be true, false or null, got {refine!r}")
        kinds = request.get("prompt_kinds")
        kinds = check_kinds(kinds, "job: prompt_kinds") if kinds is not None else None
        name = _text(request.get("name", "target"), "job: 'name'")[:500]
        model = request.get("model")
        if not isinstance(model, str):
            raise ValueError(f"job: 'model' must be a string naming one of "
                             f"{', '.join(predictors)}")
    except ValueError as error:
        raise ServiceError(422, str(error)) from None
    if model not in predictors:
        raise ServiceError(404, f"this server has no model {str(model)[:60]!r}; it serves "
                                f"{', '.join(predictors)}")
    target = volumes.get(request.get("target"))
    context, entry = None, None
    try:
        if mode == "interactive":
            entry = ContextEntry(target, *_prompts(request, "job"), name)
            if entry.prompt_kind not in ("box", "point"):
                raise ValueError("interactive job: give boxes or points on the target, of "
                                 "one kind")
        else:
            context = _context_set(request.get("context"), volumes)
    except ValueError as error:
        raise ServiceError(422, str(error)) from None
    return Job(secrets.token_urlsafe(12), model, target, name, context, entry, refine, kinds)


def _context_set(raw: Any, volumes: VolumeStore) -> ContextSet:
    if not isinstance(raw, dict) or not isinstance(raw.get("entries"), list) or \
            not raw["entries"]:
        raise ValueError("job: 'context' must be an object with a non-empty 'entries' list")
    check_object(raw, {"name", "entries"}, "context")
    if len(raw["entries"]) > MAX_CONTEXT_ENTRIES:
        raise ValueError(f"context: {len(raw['entries'])} entries; a job takes at most "
                         f"{MAX_CONTEXT_ENTRIES} context images")
    context = ContextSet(name=_text(raw.get("name", "structure"), "context: 'name'")[:200])
    for index, item in enumerate(raw["entries"]):
        where = f"context entry {index}"
        check_object(item, ENTRY_KEYS, where)
        name = _text(item.get("name", f"context[{index}]"), f"{where}: 'name'")[:500]
        mask = volumes.get(item["mask"]) if "mask" in item else None
        context.add(volumes.get(item.get("image")), *_prompts(item, where), name, mask=mask)
    context.kinds()
    return context


def _prompts(raw: Dict[str, Any], where: str) -> Tuple[List[Any], List[Any]]:
    """The boxes and points of a job or context entry, at most :data:`MAX_PROMPTS` in all."""
    boxes, points = boxes_from_json(raw.get("boxes")), points_from_json(raw.get("points"))
    if len(boxes) + len(points) > MAX_PROMPTS:
        raise ValueError(f"{where}: {len(boxes) + len(points)} prompts; an image takes at most "
                         f"{MAX_PROMPTS}")
    return boxes, points


def _text(value: Any, where: str) -> str:
    """A client's text, which must be a string that encodes as UTF-8 (JSON lets a lone
    surrogate such as ``"\\ud800"`` through, which no answer or log line could carry)."""
    if not isinstance(value, str):
        raise ValueError(f"{where} must be a string, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{where} is not valid text (it holds a lone UTF-16 surrogate); "
                         "send the name as UTF-8 text") from None
    return value


def printable(text: str) -> str:
    """``text`` with line breaks and other control characters escaped, for one log line
    (a client's string can never start a line of its own)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


_ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}")
_PATH = re.compile(r"(?<![\w.])(?:/[^/\s:'\"()\[\],]+){2,}/?")


def scrub(text: str) -> str:
    """An error message for a client without the server's internals: memory addresses
    (``0x...``) and absolute paths (``/a/b...``) become ``<address>`` and ``<path>``."""
    return _PATH.sub("<path>", _ADDRESS.sub("<address>", text))
