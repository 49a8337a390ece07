"""The server's life around the requests: engine generations (hot swap), admission (load shedding)
and draining (graceful shutdown).

* **Generations.** :class:`Generations` holds the serving engine as a numbered generation with a
  count of requests in flight. A request leases the current generation for its whole life
  (:meth:`Generations.lease`), so a swap between requests never changes the engine under one. A new
  index is opened and warmed on a daemon thread while the old one keeps serving; the swap is one
  assignment under a lock; the old generation is closed (on a daemon thread) when its last request
  ends. A failed open keeps the old generation serving and logs why. Lucene readers and mmaps keep
  the old files' inodes alive, so a build that publishes by renaming directories over the served
  path is safe.
* **Watcher.** :func:`index_key` identifies what is published at the served path (the directory's and
  ``manifest.json``'s inode and mtime); the app polls it every ``watch_s`` seconds and reloads when it
  changes.
* **Admission.** :class:`Admission` bounds the searches running at once (``max_inflight``) and those
  waiting for a slot (``max_queue``); past both, :class:`~trident_search.errors.OverloadedError`
  (429) with a ``Retry-After`` estimated from recent search latency.
* **Draining.** :func:`watch_signals` chains a "draining" flag onto the SIGTERM/SIGINT handlers
  uvicorn installs (``/readyz`` then answers 503), and re-asserts them after the JVM starts: HotSpot
  installs its own SIGTERM/SIGINT handlers, which would otherwise exit (or hang) the process with a
  request in flight.
"""
from __future__ import annotations

import asyncio
import logging
import math
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from trident_search.errors import OverloadedError

log = logging.getLogger(__name__)
T = TypeVar("T")

SHUTDOWN_SIGNALS = (signal.SIGTERM, signal.SIGINT)


async def on_daemon_thread(fn: Callable[..., T], *args: Any, name: str = "trident-lifecycle") -> T:
    """Run ``fn`` on a fresh daemon thread and await its result: process exit never waits for it
    (a JVM call or a long index load cannot hold the process past its drain deadline)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if future.done():
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def target() -> None:
        try:
            result = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            loop.call_soon_threadsafe(settle, False, exc)
        else:
            try:
                loop.call_soon_threadsafe(settle, True, result)
            except RuntimeError:  # the loop closed while we ran (shutdown); nothing awaits us
                pass

    threading.Thread(target=target, name=name, daemon=True).start()
    return await future


# -- generations ---------------------------------------------------------------------------------
@dataclass(eq=False)
class Generation:
    """One opened engine and the requests using it."""

    engine: Any
    number: int
    key: Any = None
    inflight: int = 0
    retired: bool = False
    closed: bool = False
    loaded_at: float = field(default_factory=time.time)
    owner: Generations | None = field(default=None, repr=False)

    def bound(self, fn: Callable[..., T]) -> Callable[..., T]:
        """``fn`` holding this generation until it returns, for a worker thread: when the request
        awaiting it is cancelled (drain deadline passed), the thread still runs, and the generation
        must not close under it."""
        owner = self.owner
        if owner is None:
            return fn
        owner.hold(self)

        def call(*args: Any, **kwargs: Any) -> T:
            try:
                return fn(*args, **kwargs)
            finally:
                owner.release(self)

        return call


class Generations:
    """The serving generation, leased per request; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.current: Generation | None = None
        self._count = 0

    @property
    def number(self) -> int:
        return self.current.number if self.current else 0

    def acquire(self) -> Generation | None:
        with self._lock:
            gen = self.current
            if gen is not None:
                gen.inflight += 1
            return gen

    def hold(self, gen: Generation) -> None:
        with self._lock:
            gen.inflight += 1

    def release(self, gen: Generation) -> None:
        with self._lock:
            gen.inflight -= 1
            close = gen.retired and gen.inflight == 0 and not gen.closed
            if close:
                gen.closed = True
        if close:
            _close_in_background(gen)

    @asynccontextmanager
    async def lease(self, not_ready: Callable[[], Exception]) -> AsyncIterator[Generation]:
        """The current generation for one request; raises ``not_ready()`` when none is loaded."""
        gen = self.acquire()
        if gen is None:
            raise not_ready()
        try:
            yield gen
        finally:
            self.release(gen)

    def install(self, engine: Any, key: Any = None) -> Generation:
        """Make ``engine`` the serving generation; the previous one closes after its last request."""
        with self._lock:
            self._count += 1
            new = Generation(engine, self._count, key, owner=self)
            old, self.current = self.current, new
            close = False
            if old is not None:
                old.retired = True
                close = old.inflight == 0 and not old.closed
                if close:
                    old.closed = True
        if old is not None:
            if close:
                _close_in_background(old)
            else:
                log.info("index generation %d retired; closes after its %d request(s) in flight",
                         old.number, old.inflight)
        return new

    def take(self) -> Generation | None:
        """Stop serving (shutdown): the current generation, now retired, for the caller to close."""
        with self._lock:
            gen, self.current = self.current, None
            if gen is not None:
                gen.retired = True
            return gen


def _close_in_background(gen: Generation) -> None:
    def close() -> None:
        try:
            gen.engine.close()
            log.info("index generation %d closed", gen.number)
        except Exception:  # noqa: BLE001 - a failed close must not take the server down
            log.exception("closing index generation %d failed", gen.number)

    threading.Thread(target=close, name=f"trident-close-{gen.number}", daemon=True).start()


def close_within(gen: Generation, deadline_s: float) -> bool:
    """Close ``gen`` on a daemon thread, waiting at most ``deadline_s``; True when it closed."""
    done = threading.Event()

    def close() -> None:
        try:
            gen.engine.close()
        except Exception:  # noqa: BLE001
            log.exception("closing index generation %d failed", gen.number)
        finally:
            done.set()

    threading.Thread(target=close, name=f"trident-close-{gen.number}", daemon=True).start()
    return done.wait(max(0.0, deadline_s))


def index_key(path: Path) -> tuple[int, ...] | None:
    """What is published at ``path`` now: the directory's and its manifest's identity (None when
    there is no complete index there). A build publishes by renaming directories, so watch the path."""
    try:
        d = path.stat()
        m = (path / "manifest.json").stat()
    except OSError:
        return None
    return (d.st_dev, d.st_ino, m.st_ino, m.st_mtime_ns, m.st_size)


# -- admission -----------------------------------------------------------------------------------
class Admission:
    """At most ``max_inflight`` searches run and ``max_queue`` wait; more get 429 + Retry-After.

    Used from the event loop only (no lock needed). Waiting is FIFO on an asyncio semaphore.
    """

    def __init__(self, max_inflight: int, max_queue: int) -> None:
        self.max_inflight = max_inflight
        self.max_queue = max_queue
        self._sem = asyncio.Semaphore(max_inflight)
        self.running = 0
        self.waiting = 0
        self._latency_s = 0.1  # EWMA of admitted requests' time, for Retry-After

    def retry_after(self) -> int:
        backlog = (self.waiting + self.running) / max(1, self.max_inflight)
        return max(1, math.ceil(self._latency_s * backlog))

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self.running >= self.max_inflight and self.waiting >= self.max_queue:
            exc = OverloadedError(
                f"server busy: {self.running} searches running and {self.waiting} queued "
                f"(TRIDENT_MAX_INFLIGHT={self.max_inflight}, TRIDENT_MAX_QUEUE={self.max_queue}); "
                "retry after the Retry-After delay")
            exc.retry_after = self.retry_after()  # type: ignore[attr-defined]
            raise exc
        self.waiting += 1
        try:
            await self._sem.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        start = time.perf_counter()
        try:
            yield
        finally:
            self.running -= 1
            self._sem.release()
            self._latency_s = 0.8 * self._latency_s + 0.2 * (time.perf_counter() - start)


# -- signals -------------------------------------------------------------------------------------
def watch_signals(on_signal: Callable[[int], None]) -> Callable[[], None]:
    """Chain ``on_signal`` before the current SIGTERM/SIGINT handlers (uvicorn's). Returns a function
    that re-asserts the chained handlers (call it after the JVM starts). A no-op off the main thread
    (the test client runs the app's lifespan on another thread)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    chained: dict[int, Any] = {}
    for sig in SHUTDOWN_SIGNALS:
        previous = signal.getsignal(sig)
        if getattr(previous, "_trident_chained", False):
            chained[sig] = previous
            continue

        def handler(signum: int, frame: Any, previous: Any = previous) -> None:
            on_signal(signum)
            if callable(previous):
                previous(signum, frame)
            elif previous == signal.SIG_DFL:
                signal.signal(signum, signal.SIG_DFL)
                signal.raise_signal(signum)

        handler._trident_chained = True  # type: ignore[attr-defined]
        chained[sig] = handler
        signal.signal(sig, handler)

    def reassert() -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, handler in chained.items():
            signal.signal(sig, handler)

    return reassert
