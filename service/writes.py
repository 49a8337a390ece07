"""Live writes over REST: upsert, bulk upsert and delete documents, merge, and the live counters.

Every write is durable before its answer (the write-ahead log in the docstore, ``core/live.py``)
and visible to every retriever when it is answered: ``refresh=wait_for`` (OpenSearch's name) is
accepted and always holds, so the refresh interval is 0. Documents are encoded on a worker thread,
never on the event loop, so searches keep being served while writes encode. The routes sit under
``/v1`` and so need the API key when one is configured.

(No ``from __future__ import annotations``: FastAPI must see the annotations as objects.)
"""
import os
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from trident_search.core.live import validate
from trident_search.errors import InvalidRequestError
from trident_search.indexers.retriever import WritesUnsupportedError
from trident_search.service.errors import ErrorResponse
from trident_search.service.routes import Lease

MAX_BULK_ENV = "TRIDENT_MAX_BULK_DOCS"
DEFAULT_MAX_BULK = 1000

Refresh = Annotated[
    Literal["wait_for", "true", "false"] | None,
    Query(description="`wait_for`: answer once the write is visible to search. Every write is "
          "visible when answered, so all values behave the same (refresh interval 0)."),
]


class DocumentBody(BaseModel):
    """One document's content for ``PUT /v1/documents/{id}``."""

    model_config = ConfigDict(extra="forbid")
    title: str = ""
    text: str = ""
    metadata: dict[str, Any] = Field(default_factory=dict)


class BulkBody(BaseModel):
    """``POST /v1/documents``: documents as corpus lines (``_id``, ``title``, ``text``, ``metadata``)."""

    model_config = ConfigDict(extra="forbid")
    documents: list[Any] = Field(description="Validated like corpus lines; a bad item is a 422 "
                                 "naming its index, and nothing of the request is applied.")


class WriteResponse(BaseModel):
    seq: int = Field(description="Log sequence number of the request's last write.")
    upserted: int
    created: int
    deleted: int
    visible: bool = True


class LiveInfo(BaseModel):
    seq: int
    committed_seq: int
    internal_ids: int
    live_documents: int
    deleted_documents: int
    delta: dict[str, int] = Field(description="Rows in each retriever's delta (written since the last merge).")
    last_merge: float | None = Field(None, description="Unix time of the last merge in this process.")
    merges: int = 0
    generations: dict[str, str] = Field(default_factory=dict, description="Each retriever's serving "
                                        "generation folder (`build`: the batch build's).")


ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "No such document (delete)."},
}


def max_bulk() -> int:
    return int(os.environ.get(MAX_BULK_ENV, DEFAULT_MAX_BULK))


def _writer(gen: Any) -> Any:
    """The served index's live writer; a clear 422 where the backend cannot take writes (shards)."""
    backend = getattr(gen.engine, "backend", None)
    make = getattr(backend, "writer", None)
    if make is None:
        raise WritesUnsupportedError("this server cannot take writes (sharded or read-only serving)")
    return make()


def writes_router(lease: Lease) -> APIRouter:
    router = APIRouter(tags=["documents"])

    async def run(request: Request, upserts: list[Any], deletes: list[str]) -> WriteResponse:
        async with lease(request) as gen:
            writer = _writer(gen)
            result = await run_in_threadpool(writer.write, upserts, deletes)
            return WriteResponse(**result.to_dict())

    @router.put("/documents/{doc_id:path}", response_model=WriteResponse, responses=ERRORS)
    async def put_document(doc_id: str, body: DocumentBody, request: Request,
                           refresh: Refresh = None) -> WriteResponse:
        """Insert or replace one document; durable and searchable when answered."""
        docs = validate([{"_id": doc_id, **body.model_dump()}])
        return await run(request, docs, [])

    @router.post("/documents", response_model=WriteResponse, responses=ERRORS)
    async def post_documents(body: BulkBody, request: Request, refresh: Refresh = None) -> WriteResponse:
        """Bulk upsert (at most ``TRIDENT_MAX_BULK_DOCS`` documents, default 1000), all or nothing."""
        if len(body.documents) > max_bulk():
            raise InvalidRequestError(f"documents holds {len(body.documents)} items, over the limit of "
                                      f"{max_bulk()} ({MAX_BULK_ENV})", field="documents")
        return await run(request, validate(body.documents), [])

    @router.delete("/documents/{doc_id:path}", response_model=WriteResponse, responses=ERRORS)
    async def delete_document(doc_id: str, request: Request, refresh: Refresh = None) -> WriteResponse:
        """Delete one document (404 if absent); gone from every retriever when answered."""
        return await run(request, [], [doc_id])

    @router.get("/index/live", response_model=LiveInfo)
    async def live_info(request: Request) -> LiveInfo:
        """Live-write counters: log sequence numbers, live and deleted documents, delta sizes, last merge."""
        async with lease(request) as gen:
            return LiveInfo(**_writer(gen).stats())

    @router.post("/index/merge")
    async def merge(request: Request) -> dict[str, Any]:
        """Expunge deleted documents from BM25's statistics and commit (exact BM25 after it)."""
        async with lease(request) as gen:
            writer = _writer(gen)
            return await run_in_threadpool(writer.merge)

    return router
