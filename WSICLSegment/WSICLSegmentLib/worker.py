"""One persistent inference thread with cancel, progress and main-thread delivery.

The panel submits work; the thread runs it (CUDA and cuDNN caches are per thread, so one
long-lived thread keeps them warm). Callbacks never run in the worker: they are queued and
run by :meth:`InferenceWorker.deliver`, which the panel calls from a timer on the main
thread, where MRML may be touched.
"""
import enum
import queue
import threading
import traceback
from typing import Any, Callable, Optional, Tuple

from wsicl.device import OutOfMemory
from wsicl.server.client import RemoteError


class State(enum.Enum):
    """What the worker is doing, for the panel's progress bar and Apply/Cancel button."""

    IDLE = "idle"
    RUNNING = "running"
    CANCELLING = "cancelling"


def describe_failure(error: BaseException) -> Tuple[str, str]:
    """What to tell the user about a failed job, and the full traceback for the log.

    Problems with the input, the files, the machine or the server (the engine's errors
    derive from ValueError, OSError, :class:`wsicl.device.OutOfMemory` or
    :class:`wsicl.server.client.RemoteError`) carry their own sentence with the remedy; anything
    else is a bug, said as such.
    """
    details = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    if isinstance(error, (ValueError, OSError, OutOfMemory, RemoteError)):
        return str(error), details
    return (f"WSICL stopped on an unexpected {type(error).__name__}: {error}. This is a bug; "
            "the traceback is in the Python console, please include it in a report."), details


class InferenceWorker:
    """Runs ``work(progress, cancelled)`` calls one at a time in a background thread."""

    def __init__(self) -> None:
        self._jobs: "queue.Queue[Optional[tuple]]" = queue.Queue()
        self._outbox: "queue.Queue[Callable[[], None]]" = queue.Queue()
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self._pending = 0
        self.state = State.IDLE
        self._thread = threading.Thread(target=self._loop, name="WSICL inference", daemon=True)
        self._thread.start()

    def submit(self, work: Callable[[Callable[[float, str], None], Callable[[], bool]], Any],
               on_done: Callable[[Any], None], on_error: Callable[[BaseException], None],
               on_progress: Optional[Callable[[float, str], None]] = None) -> None:
        """Queues ``work``; its result goes to ``on_done``, an exception to ``on_error``."""
        with self._lock:
            self._pending += 1
            self.state = State.RUNNING
        self._jobs.put((work, on_done, on_error, on_progress))

    def cancel(self) -> None:
        """Asks running and queued work to stop at the next check."""
        with self._lock:
            if self._pending:
                self.state = State.CANCELLING
                self._cancel.set()

    @property
    def busy(self) -> bool:
        return self._pending > 0

    def deliver(self) -> int:
        """Runs queued callbacks on the calling (main) thread; returns how many ran."""
        count = 0
        while True:
            try:
                callback = self._outbox.get_nowait()
            except queue.Empty:
                return count
            callback()
            count += 1

    def shutdown(self, timeout: float = 5.0) -> None:
        """Cancels work and stops the thread."""
        self.cancel()
        self._jobs.put(None)
        self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            work, on_done, on_error, on_progress = job

            def progress(fraction: float, message: str) -> None:
                if on_progress is not None:
                    self._outbox.put(lambda: on_progress(fraction, message))

            try:
                result = work(progress, self._cancel.is_set)
                self._outbox.put(lambda: on_done(result))
            except BaseException as error:
                self._outbox.put(lambda error=error: on_error(error))
            finally:
                with self._lock:
                    self._pending -= 1
                    if self._pending == 0:
                        self.state = State.IDLE
                        self._cancel.clear()
