"""Numba kernels of the query path: top-k heap, approximate (Seismic) search and exact search.

Every kernel works on one query at a time, single-threaded, and takes its scratch memory from the
caller: a dense query vector (``qdense``, zero between queries), a stamped ``visited`` array (a
document is visited in the current query iff ``visited[d] == stamp``, so it is never cleared), and
small per-list buffers. Batch entry points loop over a contiguous range of queries and release the
GIL, so a thread pool runs them in parallel, each thread with its own scratch.

Scores are accumulated in float32 in the order the forward index stores a document's terms, so
approximate and exact mode give bit-identical scores for the same document. Ties are broken by the
smaller internal id, which makes results independent of visiting order. Documents that share no term
with the query (score 0) are never returned; missing results are padded with id -1.
"""
from __future__ import annotations

import numpy as np
from numba import njit

STAMP_LIMIT = np.int64(2**31 - 2)


@njit(cache=True, inline="always")
def _worse(s1: float, d1: int, s2: float, d2: int) -> bool:
    """(s1, d1) ranks below (s2, d2): lower score, or equal score and larger id."""
    return s1 < s2 or (s1 == s2 and d1 > d2)


@njit(cache=True)
def _heap_push(hs, hd, n, k, s, d):  # noqa: ANN001, ANN202
    """Offer (s, d) to a size-k min-heap whose root is the worst kept hit; return the new size."""
    if n < k:
        i = n
        n += 1
        while i > 0:
            p = (i - 1) >> 1
            if _worse(s, d, hs[p], hd[p]):
                hs[i] = hs[p]
                hd[i] = hd[p]
                i = p
            else:
                break
        hs[i] = s
        hd[i] = d
        return n
    if not _worse(hs[0], hd[0], s, d):
        return n
    i = 0
    while True:
        c = 2 * i + 1
        if c >= n:
            break
        if c + 1 < n and _worse(hs[c + 1], hd[c + 1], hs[c], hd[c]):
            c += 1
        if _worse(hs[c], hd[c], s, d):
            hs[i] = hs[c]
            hd[i] = hd[c]
            i = c
        else:
            break
    hs[i] = s
    hd[i] = d
    return n


@njit(cache=True)
def _heap_emit(hs, hd, n, out_ids, out_scores):  # noqa: ANN001, ANN202
    """Write the heap best-first into the output row (padded with -1 / 0)."""
    order = np.empty(n, dtype=np.int64)
    for i in range(n):
        order[i] = i
    # insertion sort: n is k (small)
    for i in range(1, n):
        j = i
        while j > 0 and _worse(hs[order[j - 1]], hd[order[j - 1]], hs[order[j]], hd[order[j]]):
            t = order[j]
            order[j] = order[j - 1]
            order[j - 1] = t
            j -= 1
    for i in range(n):
        out_ids[i] = hd[order[i]]
        out_scores[i] = hs[order[i]]
    for i in range(n, out_ids.shape[0]):
        out_ids[i] = -1
        out_scores[i] = 0.0


@njit(cache=True, inline="always")
def _doc_score(d, fwd_ptr, fwd_terms, fwd_vals, qdense):  # noqa: ANN001, ANN202
    s = np.float32(0.0)
    for p in range(fwd_ptr[d], fwd_ptr[d + 1]):
        s += qdense[fwd_terms[p]] * fwd_vals[p]
    return s


@njit(cache=True)
def _next_stamp(visited, stamp):  # noqa: ANN001, ANN202
    stamp[0] += 1
    if stamp[0] >= STAMP_LIMIT:
        visited[:] = 0
        stamp[0] = 1
    return np.int32(stamp[0])


@njit(cache=True)
def _score_blocks(t, q_terms, q_vals, list_block_ptr, list_dict_ptr, dict_terms, dict_ent_ptr,
                  ent_block, ent_val, block_scale, bscore):  # noqa: ANN001, ANN202
    """Summary scores of every block of list t, by intersecting the sorted query terms with the
    list's summary dictionary (term -> (block, 8-bit value)); only matching entries are touched."""
    b0 = list_block_ptr[t]
    nb = list_block_ptr[t + 1] - b0
    for b in range(nb):
        bscore[b] = 0.0
    lo = list_dict_ptr[t]
    hi = list_dict_ptr[t + 1]
    for j in range(q_terms.shape[0]):
        if lo >= hi:
            break
        qt = q_terms[j]
        # lower bound of qt in dict_terms[lo:hi]
        a = lo
        z = hi
        while a < z:
            m = (a + z) >> 1
            if dict_terms[m] < qt:
                a = m + 1
            else:
                z = m
        lo = a
        if a < hi and dict_terms[a] == qt:
            w = q_vals[j]
            for e in range(dict_ent_ptr[a], dict_ent_ptr[a + 1]):
                bscore[ent_block[e]] += w * np.float32(ent_val[e])
            lo = a + 1
    for b in range(nb):
        bscore[b] *= block_scale[b0 + b]
    return nb


@njit(cache=True, inline="always")
def _sift_down_blocks(order, n, i, bscore):  # noqa: ANN001, ANN202
    """Max-heap (by block score) sift-down over block indices in order[:n]."""
    x = order[i]
    sx = bscore[x]
    while True:
        c = 2 * i + 1
        if c >= n:
            break
        if c + 1 < n and bscore[order[c + 1]] > bscore[order[c]]:
            c += 1
        if bscore[order[c]] > sx:
            order[i] = order[c]
            i = c
        else:
            break
    order[i] = x


@njit(cache=True)
def _search_one(q_terms, q_vals, k, query_cut, heap_factor, n_knn,
                fwd_ptr, fwd_terms, fwd_vals,
                list_block_ptr, block_doc_ptr, block_docs, block_scale,
                list_dict_ptr, dict_terms, dict_ent_ptr, ent_block, ent_val,
                knn, allowed, use_allowed,
                qdense, visited, stamp, bscore, border, hs, hd, out_ids, out_scores):  # noqa: ANN001, ANN202
    """Approximate top-k of one query (terms sorted ascending, unique, weights > 0)."""
    nq = q_terms.shape[0]
    cur = _next_stamp(visited, stamp)
    for j in range(nq):
        qdense[q_terms[j]] = q_vals[j]
    # heaviest query terms first (stable: ties keep ascending term order)
    by_weight = np.argsort(-q_vals, kind="mergesort")
    n = 0
    for r in range(min(query_cut, nq)):
        t = q_terms[by_weight[r]]
        nb = _score_blocks(t, q_terms, q_vals, list_block_ptr, list_dict_ptr, dict_terms,
                           dict_ent_ptr, ent_block, ent_val, block_scale, bscore)
        if nb == 0:
            continue
        b0 = list_block_ptr[t]
        # lazy max-heap over blocks: pop the best remaining block until one can be skipped
        for b in range(nb):
            border[b] = b
        for i in range((nb >> 1) - 1, -1, -1):
            _sift_down_blocks(border, nb, i, bscore)
        m = nb
        while m > 0:
            b = border[0]
            if n == k and bscore[b] < heap_factor * hs[0]:
                break  # every remaining block scores no higher
            m -= 1
            border[0] = border[m]
            _sift_down_blocks(border, m, 0, bscore)
            g = b0 + b
            for p in range(block_doc_ptr[g], block_doc_ptr[g + 1]):
                d = block_docs[p]
                if visited[d] == cur:
                    continue
                visited[d] = cur
                if use_allowed and not allowed[d]:
                    continue
                s = _doc_score(d, fwd_ptr, fwd_terms, fwd_vals, qdense)
                if s > 0.0:
                    n = _heap_push(hs, hd, n, k, s, d)
    if n_knn > 0 and knn.shape[1] > 0 and n > 0:
        # kNN refinement (Bruch et al., CIKM 2024): score the neighbours of the current results
        base_n = n
        base = hd[:base_n].copy()
        for i in range(base_n):
            src = base[i]
            for j in range(min(n_knn, knn.shape[1])):
                d = knn[src, j]
                if d < 0:
                    break
                if visited[d] == cur:
                    continue
                visited[d] = cur
                if use_allowed and not allowed[d]:
                    continue
                s = _doc_score(d, fwd_ptr, fwd_terms, fwd_vals, qdense)
                if s > 0.0:
                    n = _heap_push(hs, hd, n, k, s, d)
    for j in range(nq):
        qdense[q_terms[j]] = 0.0
    _heap_emit(hs, hd, n, out_ids, out_scores)


@njit(cache=True, nogil=True)
def search_range(q_ptr, q_terms, q_vals, start, stop, k, query_cut, heap_factor, n_knn,
                 fwd_ptr, fwd_terms, fwd_vals,
                 list_block_ptr, block_doc_ptr, block_docs, block_scale,
                 list_dict_ptr, dict_terms, dict_ent_ptr, ent_block, ent_val,
                 knn, allowed, use_allowed,
                 qdense, visited, stamp, bscore, border, out_ids, out_scores):  # noqa: ANN001, ANN202
    """Approximate search of queries [start, stop) of a CSR batch into rows of out_ids/out_scores."""
    hs = np.empty(k, dtype=np.float32)
    hd = np.empty(k, dtype=np.int64)
    for i in range(start, stop):
        a = q_ptr[i]
        z = q_ptr[i + 1]
        _search_one(q_terms[a:z], q_vals[a:z], k, query_cut, heap_factor, n_knn,
                    fwd_ptr, fwd_terms, fwd_vals,
                    list_block_ptr, block_doc_ptr, block_docs, block_scale,
                    list_dict_ptr, dict_terms, dict_ent_ptr, ent_block, ent_val,
                    knn, allowed, use_allowed,
                    qdense, visited, stamp, bscore, border, hs, hd, out_ids[i], out_scores[i])


@njit(cache=True, nogil=True)
def exact_range(q_ptr, q_terms, q_vals, start, stop, k, fwd_ptr, fwd_terms, fwd_vals,
                allowed, use_allowed, qdense, out_ids, out_scores):  # noqa: ANN001, ANN202
    """Brute force over the forward index: the ground truth the approximate search is judged by."""
    hs = np.empty(k, dtype=np.float32)
    hd = np.empty(k, dtype=np.int64)
    n_docs = fwd_ptr.shape[0] - 1
    for i in range(start, stop):
        a = q_ptr[i]
        z = q_ptr[i + 1]
        for j in range(a, z):
            qdense[q_terms[j]] = q_vals[j]
        n = 0
        for d in range(n_docs):
            if use_allowed and not allowed[d]:
                continue
            s = _doc_score(d, fwd_ptr, fwd_terms, fwd_vals, qdense)
            if s > 0.0:
                n = _heap_push(hs, hd, n, k, s, d)
        for j in range(a, z):
            qdense[q_terms[j]] = 0.0
        _heap_emit(hs, hd, n, out_ids[i], out_scores[i])
