"""Numba kernels of the query path: top-k heap, approximate (Seismic) search and exact search.

Every kernel works on one query at a time, single-threaded, and takes its scratch memory from the
caller: the query as a term -> slot map (``qmap8``/``qmap32``, zero between queries) with slot
weights ``qv``, a stamped ``visited`` array (a
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
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

PREFETCH_AHEAD = 4  # postings ahead whose forward record is prefetched while scoring the current one


@intrinsic
def _prefetch(typingctx, arr, idx):  # noqa: ANN001, ANN202
    """LLVM's prefetch hint for &arr[idx]: hides the cache miss of the next documents' records."""
    if not isinstance(arr, types.Array) or not isinstance(idx, types.Integer):
        return None

    def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
        arrty = signature.args[0]
        ary = context.make_array(arrty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer2(
            context, builder, data=ary.data, shape=cgutils.unpack_tuple(builder, ary.shape),
            strides=cgutils.unpack_tuple(builder, ary.strides), layout=arrty.layout, inds=[args[1]],
            wraparound=False, boundscheck=False)
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                            "llvm.prefetch.p0")
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return types.void(arr, idx), codegen


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
    return n


@njit(cache=True, inline="always")
def _doc_score(o, fwd_buf, fwd_t, fwd_v, tshift, qmap, qv):  # noqa: ANN001, ANN202
    """Dot product of the query with the forward record at word `o`: [n][n term ids][n float32 values].

    Term ids are uint16 (two per word, tshift=1) or uint32 (tshift=0); one record is contiguous, so
    scoring a document costs one cache miss, not one per array. The query is a term -> slot map
    (`qmap`, 0 = not in the query) and slot weights `qv` (qv[0] = 0): with up to 255 query terms the
    map is uint8, 30 KB for a BERT vocabulary, so its lookups hit the L1 cache where a float32
    dense query vector (120 KB) would not."""
    n = np.int64(fwd_buf[o])
    tb = (o + 1) << tshift
    vb = o + 1 + ((n + (1 << tshift) - 1) >> tshift)
    # four independent partial sums in a fixed order: not bound by the latency of one float add
    # chain, and still deterministic (exact and approximate mode give bit-identical scores)
    s0 = np.float32(0.0)
    s1 = np.float32(0.0)
    s2 = np.float32(0.0)
    s3 = np.float32(0.0)
    n4 = n & ~3
    for j in range(0, n4, 4):
        s0 += qv[qmap[fwd_t[tb + j]]] * fwd_v[vb + j]
        s1 += qv[qmap[fwd_t[tb + j + 1]]] * fwd_v[vb + j + 1]
        s2 += qv[qmap[fwd_t[tb + j + 2]]] * fwd_v[vb + j + 2]
        s3 += qv[qmap[fwd_t[tb + j + 3]]] * fwd_v[vb + j + 3]
    for j in range(n4, n):
        s0 += qv[qmap[fwd_t[tb + j]]] * fwd_v[vb + j]
    return (s0 + s1) + (s2 + s3)


@njit(cache=True, inline="always")
def _scan_block(p0, p1, block_docs, block_offs, fwd_buf, fwd_t, fwd_v, tshift, pf_lines, qmap, qv,
                visited, cur, allowed, use_allowed, hs, hd, n, k):  # noqa: ANN001, ANN202
    """Score the unvisited, allowed documents of postings [p0, p1) into the heap; returns its size."""
    for p in range(p0, p1):
        if p + PREFETCH_AHEAD < p1:
            _prefetch_record(fwd_buf, block_offs[p + PREFETCH_AHEAD], pf_lines)
        d = block_docs[p]
        if visited[d] == cur:
            continue
        visited[d] = cur
        if use_allowed and not allowed[d]:
            continue
        s = _doc_score(np.int64(block_offs[p]), fwd_buf, fwd_t, fwd_v, tshift, qmap, qv)
        if s > 0.0:
            n = _heap_push(hs, hd, n, k, s, d)
    return n


@njit(cache=True, inline="always")
def _set_query(q_terms, q_vals, qmap8, qmap32, qv, on):  # noqa: ANN001, ANN202
    """Load (on=True) or clear the query's slot map; returns whether the wide map is in use."""
    big = q_terms.shape[0] > 255
    for j in range(q_terms.shape[0]):
        slot = j + 1 if on else 0
        if big:
            qmap32[q_terms[j]] = slot
        else:
            qmap8[q_terms[j]] = slot
        qv[j + 1] = q_vals[j] if on else 0.0
    qv[0] = 0.0
    return big


@njit(cache=True, inline="always")
def _prefetch_record(fwd_buf, o, lines):  # noqa: ANN001, ANN202
    for i in range(lines):
        _prefetch(fwd_buf, o + 16 * i)


@njit(cache=True, inline="always")
def _prefetch_list(t, list_block_ptr, list_dict_ptr, dict_terms, block_scale, block_doc_ptr):  # noqa: ANN001, ANN202
    """Prefetch the summary dictionary and block arrays of list t (what _score_blocks reads first)."""
    d0 = list_dict_ptr[t]
    d1 = list_dict_ptr[t + 1]
    for i in range(d0, d1, 32):
        _prefetch(dict_terms, i)
    g0 = list_block_ptr[t]
    g1 = list_block_ptr[t + 1]
    for g in range(g0, g1, 16):
        _prefetch(block_scale, g)
    for g in range(g0, g1, 8):
        _prefetch(block_doc_ptr, g)


@njit(cache=True)
def _next_stamp(visited, stamp):  # noqa: ANN001, ANN202
    """Stamps are uint8: the visited array stays small enough for the L2 cache; it is cleared once
    every 255 queries."""
    stamp[0] += 1
    if stamp[0] > 255:
        visited[:] = 0
        stamp[0] = 1
    return np.uint8(stamp[0])


@njit(cache=True)
def _score_blocks(t, q_terms, q_vals, list_block_ptr, list_dict_ptr, dict_terms, list_ent_ptr, dict_ent_end,
                  ent, block_scale, bscore):  # noqa: ANN001, ANN202
    """Summary scores of every block of list t, by intersecting the sorted query terms with the
    list's summary dictionary (term -> packed (block << 8 | 8-bit value) entries): only the
    entries of matching terms are read, not every summary entry."""
    b0 = list_block_ptr[t]
    nb = list_block_ptr[t + 1] - b0
    for b in range(nb):
        bscore[b] = 0.0
    d0 = list_dict_ptr[t]
    lo = d0
    hi = list_dict_ptr[t + 1]
    e0 = list_ent_ptr[t]
    for j in range(q_terms.shape[0]):
        if lo >= hi:
            break
        qt = q_terms[j]
        a = lo  # lower bound of qt in dict_terms[lo:hi]
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
            start = e0 + (dict_ent_end[a - 1] if a > d0 else 0)
            for e in range(start, e0 + dict_ent_end[a]):
                x = ent[e]
                bscore[x >> 8] += w * np.float32(x & 255)
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
                fwd_ptr, fwd_buf, fwd_t, fwd_v, tshift, pf_lines,
                list_block_ptr, block_doc_ptr, block_docs, block_offs, block_scale,
                list_dict_ptr, dict_terms, list_ent_ptr, dict_ent_end, ent,
                knn, allowed, use_allowed,
                qmap8, qmap32, qv, visited, stamp, bscore, border, hs, hd, out_ids, out_scores):  # noqa: ANN001, ANN202
    """Approximate top-k of one query (terms sorted ascending, unique, weights > 0)."""
    nq = q_terms.shape[0]
    cur = _next_stamp(visited, stamp)
    big = _set_query(q_terms, q_vals, qmap8, qmap32, qv, True)
    # heaviest query terms first (stable: ties keep ascending term order)
    by_weight = np.argsort(-q_vals, kind="mergesort")
    n = 0
    for r in range(min(query_cut, nq)):
        t = q_terms[by_weight[r]]
        nb = _score_blocks(t, q_terms, q_vals, list_block_ptr, list_dict_ptr, dict_terms, list_ent_ptr,
                           dict_ent_end, ent, block_scale, bscore)
        if nb == 0:
            continue
        if r + 1 < min(query_cut, nq):  # fetch the next list's summary dictionary during this list's scan
            _prefetch_list(q_terms[by_weight[r + 1]], list_block_ptr, list_dict_ptr, dict_terms, block_scale,
                           block_doc_ptr)
        b0 = list_block_ptr[t]
        # lazy max-heap over blocks: pop the best remaining block until one can be skipped
        for b in range(nb):
            border[b] = b
        for i in range((nb >> 1) - 1, -1, -1):
            _sift_down_blocks(border, nb, i, bscore)
        g = b0 + border[0]
        for p in range(block_doc_ptr[g], min(block_doc_ptr[g + 1], block_doc_ptr[g] + PREFETCH_AHEAD)):
            _prefetch_record(fwd_buf, block_offs[p], pf_lines)
        m = nb
        while m > 0:
            b = border[0]
            if n == k and bscore[b] < heap_factor * hs[0]:
                break  # every remaining block scores no higher
            m -= 1
            border[0] = border[m]
            _sift_down_blocks(border, m, 0, bscore)
            g = b0 + b
            p0 = block_doc_ptr[g]
            p1 = block_doc_ptr[g + 1]
            if m > 0:  # the next block is likely scanned too: start fetching its first records
                gn = b0 + border[0]
                pn = block_doc_ptr[gn]
                for p in range(pn, min(block_doc_ptr[gn + 1], pn + PREFETCH_AHEAD)):
                    _prefetch_record(fwd_buf, block_offs[p], pf_lines)
            if big:
                n = _scan_block(p0, p1, block_docs, block_offs, fwd_buf, fwd_t, fwd_v, tshift, pf_lines, qmap32, qv,
                                visited, cur, allowed, use_allowed, hs, hd, n, k)
            else:
                n = _scan_block(p0, p1, block_docs, block_offs, fwd_buf, fwd_t, fwd_v, tshift, pf_lines, qmap8, qv,
                                visited, cur, allowed, use_allowed, hs, hd, n, k)
    if n_knn > 0 and knn.shape[1] > 0 and n > 0:
        # kNN refinement (Bruch et al., CIKM 2024): score the neighbours of the current results
        base = hd[:n].copy()
        for i in range(base.shape[0]):
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
                if big:
                    s = _doc_score(fwd_ptr[d], fwd_buf, fwd_t, fwd_v, tshift, qmap32, qv)
                else:
                    s = _doc_score(fwd_ptr[d], fwd_buf, fwd_t, fwd_v, tshift, qmap8, qv)
                if s > 0.0:
                    n = _heap_push(hs, hd, n, k, s, d)
    _set_query(q_terms, q_vals, qmap8, qmap32, qv, False)
    return _heap_emit(hs, hd, n, out_ids, out_scores)


@njit(cache=True, nogil=True)
def search_range(q_ptr, q_terms, q_vals, start, stop, k, query_cut, heap_factor, n_knn,
                 fwd_ptr, fwd_buf, fwd_t, fwd_v, tshift, pf_lines,
                 list_block_ptr, block_doc_ptr, block_docs, block_offs, block_scale,
                 list_dict_ptr, dict_terms, list_ent_ptr, dict_ent_end, ent,
                 knn, allowed, use_allowed,
                 qmap8, qmap32, qv, visited, stamp, bscore, border, out_ids, out_scores):  # noqa: ANN001, ANN202
    """Approximate search of queries [start, stop) of a CSR batch into the same rows of
    out_ids/out_scores; returns the last query's hit count."""
    hs = np.empty(k, dtype=np.float32)
    hd = np.empty(k, dtype=np.int64)
    n = 0
    for i in range(start, stop):
        a = q_ptr[i]
        z = q_ptr[i + 1]
        n = _search_one(q_terms[a:z], q_vals[a:z], k, query_cut, heap_factor, n_knn,
                    fwd_ptr, fwd_buf, fwd_t, fwd_v, tshift, pf_lines,
                    list_block_ptr, block_doc_ptr, block_docs, block_offs, block_scale,
                    list_dict_ptr, dict_terms, list_ent_ptr, dict_ent_end, ent,
                    knn, allowed, use_allowed,
                    qmap8, qmap32, qv, visited, stamp, bscore, border, hs, hd, out_ids[i], out_scores[i])
    return n


@njit(cache=True, inline="always")
def _exact_scan(order, fwd_ptr, fwd_buf, fwd_t, fwd_v, tshift, qmap, qv, allowed, use_allowed, hs, hd, k):  # noqa: ANN001, ANN202
    n = 0
    for d in order:  # storage order: the scan reads the forward buffer sequentially
        if use_allowed and not allowed[d]:
            continue
        s = _doc_score(fwd_ptr[d], fwd_buf, fwd_t, fwd_v, tshift, qmap, qv)
        if s > 0.0:
            n = _heap_push(hs, hd, n, k, s, d)
    return n


@njit(cache=True, nogil=True)
def exact_range(q_ptr, q_terms, q_vals, start, stop, k, order, fwd_ptr, fwd_buf, fwd_t, fwd_v, tshift,
                allowed, use_allowed, qmap8, qmap32, qv, out_ids, out_scores):  # noqa: ANN001, ANN202
    """Brute force over the forward index: the ground truth the approximate search is judged by."""
    hs = np.empty(k, dtype=np.float32)
    hd = np.empty(k, dtype=np.int64)
    n = 0
    for i in range(start, stop):
        qt = q_terms[q_ptr[i]:q_ptr[i + 1]]
        qw = q_vals[q_ptr[i]:q_ptr[i + 1]]
        if _set_query(qt, qw, qmap8, qmap32, qv, True):
            n = _exact_scan(order, fwd_ptr, fwd_buf, fwd_t, fwd_v, tshift, qmap32, qv, allowed, use_allowed, hs, hd, k)
        else:
            n = _exact_scan(order, fwd_ptr, fwd_buf, fwd_t, fwd_v, tshift, qmap8, qv, allowed, use_allowed, hs, hd, k)
        _set_query(qt, qw, qmap8, qmap32, qv, False)
        n = _heap_emit(hs, hd, n, out_ids[i], out_scores[i])
    return n


@njit(cache=True)
def valid_weights(vals):  # noqa: ANN001, ANN201
    """All weights finite and non-negative (summaries are max-based upper bounds)."""
    for x in vals:
        if not (x >= 0.0 and x < np.inf):
            return False
    return True
