"""Builds through the service (issue 17, item 7): ``POST /v1/admin/builds`` runs the batch build
job in the background into the served path; on success the build is published there atomically
(``indexers.publish``) and swapped in hot by the server's reload, with no failed search between.

* The corpus is a path the server can read, inside ``TRIDENT_BUILD_ROOT`` (a path outside it, or any
  path when it is unset, is refused), or a JSONL body streamed with ``Content-Type:
  application/x-ndjson`` (spooled beside the index first).
* ``GET /v1/admin/builds/{id}`` shows the stage, documents done, docs/s and ETA: the figures of the
  CLI's progress bar (``indexers.progress``). ``DELETE`` cancels: the job stops at its next progress
  tick and the served index is untouched (the build works in ``<index>.building``).
* One build at a time (409-like 422 otherwise). The routes sit under ``/v1``: API key when set.
* Live writes taken by the served index since its build are not in the new one: a build replaces
  the index with the given corpus.

(No ``from __future__ import annotations``: FastAPI must see the annotations as objects.)
"""
import asyncio
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from trident_search.errors import InvalidRequestError, NotFoundError, TridentError
from trident_search.indexers.progress import Progress, StageTicker
from trident_search.settings import Settings

log = logging.getLogger(__name__)
ROOT_ENV = "TRIDENT_BUILD_ROOT"


class BuildCancelled(TridentError):
    """The build was cancelled by ``DELETE /v1/admin/builds/{id}``."""


class BuildRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    corpus: str | None = Field(None, description=f"Corpus path the server can read, inside ${ROOT_ENV}.")
    retrievers: list[str] | None = None
    device: str = "cpu"
    batch_size: int = Field(32, ge=1)
    params: dict[str, dict[str, Any]] = Field(default_factory=dict)


class BuildStatus(BaseModel):
    id: str
    state: str = Field(description="queued, running, succeeded, failed, cancelled")
    stage: str | None = None
    docs_done: int = 0
    docs_total: int | None = None
    docs_per_s: float = 0.0
    eta_s: float | None = None
    stages: dict[str, dict[str, float]] = Field(default_factory=dict)
    error: str | None = None
    started_at: float
    finished_at: float | None = None
    generation: int | None = Field(None, description="The serving generation after the hot swap.")


@dataclass(slots=True)
class _Ticker(StageTicker):
    cancel: threading.Event | None = None

    def update(self, n: int) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise BuildCancelled("the build was cancelled")
        StageTicker.update(self, n)


class JobProgress(Progress):
    """A :class:`Progress` whose current stage the status route reads, and that a cancel stops
    (at the stage's next progress tick)."""

    def __init__(self, cancel: threading.Event) -> None:
        super().__init__(tty=False)
        self.cancel = cancel
        self.current: StageTicker | None = None

    @contextmanager
    def stage(self, name: str, total: int | None = None) -> Iterator[StageTicker]:
        if self.cancel.is_set():
            raise BuildCancelled("the build was cancelled")
        ticker = _Ticker(name, total, None, self.log_every_s, cancel=self.cancel)
        self.current = ticker
        log.info("%s: started", name)
        yield ticker
        seconds = time.perf_counter() - ticker.start
        self.stages[name] = {"docs": ticker.done, "seconds": round(seconds, 3),
                             "docs_per_s": round(ticker.done / seconds, 1) if seconds > 0 else 0.0}
        if ticker.model_seconds:
            self.stages[name]["model_seconds"] = round(ticker.model_seconds, 3)


class BuildJob:
    def __init__(self, corpus: Path, spool: Path | None, config: Any) -> None:
        self.id = uuid.uuid4().hex[:12]
        self.corpus, self.spool, self.config = corpus, spool, config
        self.cancel = threading.Event()
        self.progress = JobProgress(self.cancel)
        self.state = "queued"
        self.error: str | None = None
        self.started_at = time.time()
        self.finished_at: float | None = None
        self.generation: int | None = None

    def status(self) -> BuildStatus:
        t = self.progress.current
        done, total, rate, eta = 0, None, 0.0, None
        if t is not None:
            elapsed = time.perf_counter() - t.start
            done, total = t.done, t.total
            rate = done / elapsed if elapsed > 0 else 0.0
            eta = max(total - done, 0) / rate if total and rate > 0 else None
        return BuildStatus(id=self.id, state=self.state, stage=t.name if t else None, docs_done=done,
                           docs_total=total, docs_per_s=round(rate, 1), eta_s=None if eta is None else round(eta, 1),
                           stages=dict(self.progress.stages), error=self.error, started_at=self.started_at,
                           finished_at=self.finished_at, generation=self.generation)


def builds_router(settings: Settings, reload: Callable[[Request], Awaitable[Any]]) -> APIRouter:
    router = APIRouter(tags=["admin"])
    jobs: dict[str, BuildJob] = {}
    lock = threading.Lock()

    def running() -> BuildJob | None:
        return next((j for j in jobs.values() if j.state in ("queued", "running")), None)

    def work(job: BuildJob, loop: asyncio.AbstractEventLoop, request: Request) -> None:
        from trident_search.indexers.build import build_index

        job.state = "running"
        try:
            build_index(job.corpus, settings.server.index, job.config, progress=job.progress)
            gen = asyncio.run_coroutine_threadsafe(reload(request), loop).result()
            job.generation = getattr(gen, "number", None)
            job.state = "succeeded"
        except BuildCancelled:
            job.state = "cancelled"
        except BaseException as exc:  # noqa: BLE001 - reported in the job's status
            job.state = "failed"
            job.error = exc.message if isinstance(exc, TridentError) else f"{type(exc).__name__}: {exc}"
            log.exception("build %s failed", job.id)
        finally:
            job.finished_at = time.time()
            if job.spool is not None:
                shutil.rmtree(job.spool, ignore_errors=True)

    def corpus_path(raw: str) -> Path:
        root = os.environ.get(ROOT_ENV, "").strip()
        if not root:
            raise InvalidRequestError(f"builds from a server path need {ROOT_ENV} (the folder corpora may come "
                                      "from); or stream the JSONL as the request body", field="corpus")
        path = Path(raw).resolve()
        if not path.is_relative_to(Path(root).resolve()):
            raise InvalidRequestError(f"corpus {raw!r} is outside {ROOT_ENV}", field="corpus")
        if not path.exists():
            raise InvalidRequestError(f"corpus {raw!r} does not exist", field="corpus")
        return path

    @router.post("/admin/builds", response_model=BuildStatus, status_code=202, openapi_extra={
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": BuildRequest.model_json_schema()},
            "application/x-ndjson": {"schema": {"type": "string",
                                                "description": "The corpus, one JSON document a line."}},
        }}})
    async def start_build(request: Request) -> BuildStatus:
        """Start a build of the served index from a corpus path (JSON body) or a JSONL body."""
        from trident_search.indexers.build import BuildConfig, BuildError

        spool: Path | None = None
        if request.headers.get("content-type", "").startswith("application/x-ndjson"):
            body = BuildRequest(**{k: v for k, v in request.query_params.items() if k in ("device",)})
            spool = Path(tempfile.mkdtemp(prefix=".trident-build-", dir=Path(settings.server.index).parent))
            corpus = spool / "corpus.jsonl"
            with corpus.open("wb") as fh:
                async for chunk in request.stream():
                    fh.write(chunk)
        else:
            try:
                raw = json.loads(await request.body())
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise InvalidRequestError('the body must be JSON like {"corpus": "<path>"}, or the corpus as JSONL '
                                          "with Content-Type: application/x-ndjson", field="body") from None
            body = BuildRequest.model_validate(raw)
            if not body.corpus:
                raise InvalidRequestError("give corpus (a path) or stream JSONL", field="corpus")
            corpus = corpus_path(body.corpus)
        try:
            kwargs: dict[str, Any] = {"device": body.device, "batch_size": body.batch_size, "params": body.params}
            if body.retrievers:
                kwargs["retrievers"] = tuple(body.retrievers)
            config = BuildConfig(**kwargs)
        except BuildError as exc:
            if spool is not None:
                shutil.rmtree(spool, ignore_errors=True)
            raise InvalidRequestError(str(exc), field="params") from None
        with lock:
            if running() is not None:
                if spool is not None:
                    shutil.rmtree(spool, ignore_errors=True)
                raise InvalidRequestError(f"build {running().id} is running; one build at a time", field="corpus")
            job = BuildJob(corpus, spool, config)
            jobs[job.id] = job
        threading.Thread(target=work, args=(job, asyncio.get_running_loop(), request),
                         name=f"trident-build-{job.id}", daemon=True).start()
        return job.status()

    @router.get("/admin/builds/{job_id}", response_model=BuildStatus)
    async def build_status(job_id: str) -> BuildStatus:
        job = jobs.get(job_id)
        if job is None:
            raise NotFoundError(f"no build {job_id!r}", field="job_id")
        return job.status()

    @router.delete("/admin/builds/{job_id}", response_model=BuildStatus)
    async def cancel_build(job_id: str) -> BuildStatus:
        """Cancel a build; the served index is untouched."""
        job = jobs.get(job_id)
        if job is None:
            raise NotFoundError(f"no build {job_id!r}", field="job_id")
        job.cancel.set()
        return job.status()

    return router
