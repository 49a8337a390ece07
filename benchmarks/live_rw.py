"""Readers and writers against one running server (issue 17, item 6).

Phase 1: ``--readers`` search clients alone for ``--seconds``. Phase 2: the same readers plus
``--writers`` clients upserting new documents (each with a unique phrase) and deleting some of their
own. Reports search p50/p99 per phase, write throughput (docs/s), errors, and then checks that
every acknowledged upsert that was not deleted is fetchable and is the BM25 top hit for its phrase
(0 lost writes), and every acknowledged delete is gone.

    python benchmarks/live_rw.py --url http://127.0.0.1:8000 --seconds 60 --readers 16 --writers 2
"""
from __future__ import annotations

import argparse
import json
import random
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np

QUERIES = Path(__file__).resolve().parent.parent / "data" / "demo" / "scifact-demo" / "queries.jsonl"


def _phrase(rng: random.Random) -> str:
    return " ".join(f"zq{rng.randrange(36**5):x}" for _ in range(3))


def run(url: str, seconds: float, readers: int, writers: int, batch: int, mode: str) -> dict:
    queries = [json.loads(line)["text"] for line in QUERIES.open()][:200]
    stop = threading.Event()
    lat: list[list[float]] = [[] for _ in range(readers)]
    errors: list[str] = []
    acked: dict[str, str] = {}
    deleted: set[str] = set()
    written = [0] * max(writers, 1)
    lock = threading.Lock()

    def reader(i: int) -> None:
        rng = random.Random(i)
        with httpx.Client(base_url=url, timeout=60) as c:
            while not stop.is_set():
                t = time.perf_counter()
                r = c.post("/v1/search", json={"query": rng.choice(queries), "mode": mode, "k": 10,
                                               "include_text": False})
                if r.status_code != 200:
                    with lock:
                        errors.append(f"search {r.status_code}: {r.text[:200]}")
                    continue
                lat[i].append((time.perf_counter() - t) * 1e3)

    def writer(w: int) -> None:
        rng = random.Random(1000 + w)
        with httpx.Client(base_url=url, timeout=120) as c:
            while not stop.is_set():
                docs = []
                for _ in range(batch):
                    doc_id = f"bench-{w}-{uuid.uuid4().hex[:12]}"
                    docs.append({"_id": doc_id, "title": "bench", "text": _phrase(rng)})
                r = c.post("/v1/documents", params={"refresh": "wait_for"}, json={"documents": docs})
                if r.status_code != 200:
                    with lock:
                        errors.append(f"write {r.status_code}: {r.text[:200]}")
                    continue
                with lock:
                    acked.update({d["_id"]: d["text"] for d in docs})
                    written[w] += len(docs)
                if rng.random() < 0.2:  # delete one of ours now and then
                    victim = docs[0]["_id"]
                    r = c.delete(f"/v1/documents/{victim}", params={"refresh": "wait_for"})
                    if r.status_code == 200:
                        with lock:
                            deleted.add(victim)
                    else:
                        with lock:
                            errors.append(f"delete {r.status_code}: {r.text[:200]}")

    def phase(with_writers: int) -> dict:
        stop.clear()
        for lst in lat:
            lst.clear()
        threads = [threading.Thread(target=reader, args=(i,)) for i in range(readers)]
        threads += [threading.Thread(target=writer, args=(w,)) for w in range(with_writers)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        time.sleep(seconds)
        stop.set()
        for t in threads:
            t.join()
        took = time.perf_counter() - start
        all_lat = np.array([x for lst in lat for x in lst]) if any(lat) else np.zeros(1)
        return {"searches": int(sum(len(x) for x in lat)), "search_qps": round(sum(len(x) for x in lat) / took, 1),
                "p50_ms": round(float(np.percentile(all_lat, 50)), 1),
                "p99_ms": round(float(np.percentile(all_lat, 99)), 1), "seconds": round(took, 1)}

    alone = phase(0)
    before = sum(written)
    mixed = phase(writers)
    docs_written = sum(written) - before
    # verification: nothing acknowledged is lost
    lost, resurrected = [], []
    with httpx.Client(base_url=url, timeout=60) as c:
        for doc_id, text in acked.items():
            got = c.get(f"/v1/documents/{doc_id}")
            if doc_id in deleted:
                if got.status_code != 404:
                    resurrected.append(doc_id)
                continue
            if got.status_code != 200:
                lost.append(doc_id)
                continue
            hits = c.post("/v1/search", json={"query": text, "mode": "bm25", "k": 1, "include_text": False})
            if hits.status_code != 200 or [h["id"] for h in hits.json()["hits"]] != [doc_id]:
                lost.append(doc_id)
    return {"readers": readers, "writers": writers, "batch": batch, "mode": mode,
            "search_alone": alone, "search_with_writers": mixed,
            "write_docs_per_s": round(docs_written / mixed["seconds"], 1), "acknowledged": len(acked),
            "deleted": len(deleted), "lost": len(lost), "deleted_but_found": len(resurrected),
            "errors": len(errors), "error_examples": errors[:5]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--readers", type=int, default=16)
    ap.add_argument("--writers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8, help="Documents per write request.")
    ap.add_argument("--mode", default="hybrid")
    a = ap.parse_args()
    print(json.dumps(run(a.url, a.seconds, a.readers, a.writers, a.batch, a.mode), indent=2))


if __name__ == "__main__":
    main()
