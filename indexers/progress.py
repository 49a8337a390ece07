"""Per-stage progress for long jobs: a bar on a terminal, periodic log lines elsewhere.

Each stage also records how many documents it handled and how long it took; the build writes these
timings into the manifest and the benchmarks read them from there.
"""
from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from tqdm import tqdm

log = logging.getLogger(__name__)


@dataclass(slots=True)
class StageTicker:
    """Counts documents for one stage and reports progress."""

    name: str
    total: int | None
    bar: tqdm | None
    log_every_s: float
    done: int = 0
    model_seconds: float = 0.0  # time spent inside an encoder, so pipeline overhead can be measured
    start: float = field(default_factory=time.perf_counter)
    _last_log: float = field(default_factory=time.perf_counter)

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.perf_counter()
        if now - self._last_log >= self.log_every_s:
            self._last_log = now
            log.info("%s: %s", self.name, self.status())

    def timings(self) -> dict[str, float]:
        """What the stage has done so far, in the form the manifest records."""
        return {"docs": self.done, "seconds": time.perf_counter() - self.start, "model_seconds": self.model_seconds}

    def status(self) -> str:
        elapsed = time.perf_counter() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        text = f"{self.done}" + (f"/{self.total}" if self.total else "") + f" docs, {rate:.1f} docs/s"
        if self.total and rate > 0:
            text += f", ETA {max(self.total - self.done, 0) / rate:.0f}s"
        return text


class Progress:
    """Creates stage tickers and keeps their timings: ``{stage: {docs, seconds, docs_per_s[, model_seconds]}}``."""

    def __init__(self, *, tty: bool | None = None, log_every_s: float = 10.0) -> None:
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.log_every_s = log_every_s
        self.stages: dict[str, dict[str, float]] = {}

    @contextmanager
    def stage(self, name: str, total: int | None = None) -> Iterator[StageTicker]:
        bar = tqdm(total=total, desc=name, unit="doc", dynamic_ncols=True) if self.tty else None
        ticker = StageTicker(name, total, bar, self.log_every_s)
        log.info("%s: started", name)
        try:
            yield ticker
        finally:
            if bar is not None:
                bar.close()
        seconds = time.perf_counter() - ticker.start
        self.stages[name] = {
            "docs": ticker.done,
            "seconds": round(seconds, 3),
            "docs_per_s": round(ticker.done / seconds, 1) if seconds > 0 else 0.0,
        }
        if ticker.model_seconds:
            self.stages[name]["model_seconds"] = round(ticker.model_seconds, 3)
        log.info("%s: done, %s in %.1fs", name, ticker.status(), seconds)
