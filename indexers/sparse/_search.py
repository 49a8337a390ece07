"""Numba kernels of the query path: top-k heap, approximate (Seismic) search and exact search.

Every kernel works on one query at a time, single-threaded, and takes its scratch memory from the
caller: the query as a term -> slot map (``qmap8``/``qmap32``, zero between queries) with slot
weights ``qv``, a stamped ``visited`` array (a
document is visited in the current query iff ``visited[d] == stamp``, so it is never cleared), and
small per-list buffers. Batch entry points loop over a contiguous range of queries and release the
GIL, so a thread pool runs them in parallel, each thread with its own scratch.

Candidates are scored from the forward index's bfloat16 values (4 bytes an entry: half the memory
traffic of float32); the final top-k of every query is then rescored exactly (float32 weights rebuilt
from bf16 + 16-bit remainder), accumulated in float32 in the order the forward index stores a
document's terms, so approximate and exact mode report bit-identical scores for the same document.
Exact mode is term-at-a-time over full posting lists (rebuilt from the forward index on first use).
Ties are broken by the smaller internal id, which makes results independent of visiting order.
Documents that share no term with the query (score 0) are never returned; missing results are padded with id -1.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.experimental import structref
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


@intrinsic
def _as_f32(typingctx, bits):  # noqa: ANN001, ANN202
    """Reinterpret the low 32 bits of an integer as a float32 (bf16 -> f32 is ``hi << 16``)."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
        x = args[0]
        i32 = ir.IntType(32)
        if x.type.width > 32:
            x = builder.trunc(x, i32)
        elif x.type.width < 32:
            x = builder.zext(x, i32)
        return builder.bitcast(x, ir.FloatType())

    return types.float32(bits), codegen


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
    """Write the best min(n, len(out)) hits of the heap best-first into the output row (padded with
    -1 / 0); returns how many were written. The heap may hold a few more than k candidates."""
    order = np.empty(n, dtype=np.int64)
    for i in range(n):
        order[i] = i
    # insertion sort: n is about k (small)
    for i in range(1, n):
        j = i
        while j > 0 and _worse(hs[order[j - 1]], hd[order[j - 1]], hs[order[j]], hd[order[j]]):
            t = order[j]
            order[j] = order[j - 1]
            order[j - 1] = t
            j -= 1
    m = min(n, out_ids.shape[0])
    for i in range(m):
        out_ids[i] = hd[order[i]]
        out_scores[i] = hs[order[i]]
    for i in range(m, out_ids.shape[0]):
        out_ids[i] = -1
        out_scores[i] = 0.0
    return m


@njit(cache=True, inline="always")
def heap_size(k):  # noqa: ANN001, ANN202
    """Candidates kept per query: k plus a margin, so that hits whose bf16 (approximate) score falls
    just below the k-th still reach the exact rescoring that orders the final top k."""
    return k + (k >> 3) + 2


@njit(cache=True, inline="always")
def _doc_score(o, fwd16, fwd32, fwd_t, tshift, qmap, qv):  # noqa: ANN001, ANN202
    """Approximate dot product of the query with the record at u16 offset `o`, from bf16 values.

    Record: [n: u32][n term ids (u16, or u32 when tshift=1)][n bf16 values]; one record is contiguous,
    so scoring a document costs one cache miss, not one per array. The query is a term -> slot map
    (`qmap`, 0 = not in the query) and slot weights `qv` (qv[0] = 0): with up to 255 query terms the
    map is uint8, 30 KB for a BERT vocabulary, so its lookups hit the L1 cache."""
    n = np.int64(fwd32[o >> 1])
    tb = (o + 2) >> tshift
    vb = o + 2 + (n << tshift)
    s0 = np.float32(0.0)
    s1 = np.float32(0.0)
    s2 = np.float32(0.0)
    s3 = np.float32(0.0)
    n4 = n & ~3
    for j in range(0, n4, 4):
        s0 += qv[qmap[fwd_t[tb + j]]] * _as_f32(np.uint32(fwd16[vb + j]) << 16)
        s1 += qv[qmap[fwd_t[tb + j + 1]]] * _as_f32(np.uint32(fwd16[vb + j + 1]) << 16)
        s2 += qv[qmap[fwd_t[tb + j + 2]]] * _as_f32(np.uint32(fwd16[vb + j + 2]) << 16)
        s3 += qv[qmap[fwd_t[tb + j + 3]]] * _as_f32(np.uint32(fwd16[vb + j + 3]) << 16)
    for j in range(n4, n):
        s0 += qv[qmap[fwd_t[tb + j]]] * _as_f32(np.uint32(fwd16[vb + j]) << 16)
    return (s0 + s1) + (s2 + s3)


@njit(cache=True, inline="always")
def _exact_score(d, fwd_ptr, fwd16, fwd32, fwd_t, tshift, lo_ptr, lo, qmap, qv):  # noqa: ANN001, ANN202
    """Exact float32 dot product of the query with document d (weights = bf16 << 16 + remainder),
    accumulated in storage order: the one definition of a document's score in both modes."""
    o = np.int64(fwd_ptr[d])
    n = np.int64(fwd32[o >> 1])
    tb = (o + 2) >> tshift
    vb = o + 2 + (n << tshift)
    l0 = np.int64(lo_ptr[d])
    s = np.float32(0.0)
    for j in range(n):
        w = qv[qmap[fwd_t[tb + j]]]
        if w != 0.0:
            s += w * _as_f32((np.int64(fwd16[vb + j]) << 16) + np.int64(lo[l0 + j]))
    return s


@njit(cache=True, inline="always")
def _scan_block(p0, p1, block_docs, fwd_ptr, fwd16, fwd32, fwd_t, tshift, pf_lines, qmap, qv,
                visited, cur, allowed, use_allowed, hs, hd, n, k):  # noqa: ANN001, ANN202
    """Score the unvisited, allowed documents of postings [p0, p1) into the heap; returns its size.
    A posting is a document id alone: its record is found through ``fwd_ptr`` (small enough to stay
    in cache), which saves the 2-4 bytes a posting an explicit record offset would cost."""
    for p in range(p0, p1):
        if p + PREFETCH_AHEAD < p1:
            _prefetch_record(fwd16, np.int64(fwd_ptr[np.int64(block_docs[p + PREFETCH_AHEAD])]), pf_lines)
        d = np.int64(block_docs[p])
        if visited[d] == cur:
            continue
        visited[d] = cur
        if use_allowed and not allowed[d]:
            continue
        s = _doc_score(np.int64(fwd_ptr[d]), fwd16, fwd32, fwd_t, tshift, qmap, qv)
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
def _prefetch_record(fwd16, o, lines):  # noqa: ANN001, ANN202
    for i in range(lines):
        _prefetch(fwd16, o + 32 * i)


@njit(cache=True, inline="always")
def _prefetch_list(t, list_block_ptr, sum_ptr, sum_terms, sum_vals):  # noqa: ANN001, ANN202
    """Prefetch the block summaries of list t (what _score_blocks reads first)."""
    g0 = np.int64(list_block_ptr[t])
    g1 = np.int64(list_block_ptr[t + 1])
    e0 = np.int64(sum_ptr[g0])
    e1 = np.int64(sum_ptr[g1])
    for e in range(e0, min(e1, e0 + 4096), 32):
        _prefetch(sum_terms, e)
    for e in range(e0, min(e1, e0 + 4096), 64):
        _prefetch(sum_vals, e)


@njit(cache=True)
def _next_stamp(visited, stamp):  # noqa: ANN001, ANN202
    """Stamps are uint8: the visited array stays small enough for the L2 cache; it is cleared once
    every 255 queries."""
    stamp[0] += 1
    if stamp[0] > 255:
        visited[:] = 0
        stamp[0] = 1
    return np.uint8(stamp[0])


@njit(cache=True, inline="always")
def _score_blocks(t, list_block_ptr, sum_ptr, sum_terms, sum_vals, block_scale, qmap, qv, bscore):  # noqa: ANN001, ANN202
    """Summary scores of every block of list t: each summary is a short sparse vector (term ids,
    8-bit values, one scale per block) stored contiguously, so a list's summaries are one
    sequential read. Blocks without a summary score +inf."""
    b0 = np.int64(list_block_ptr[t])
    nb = np.int64(list_block_ptr[t + 1]) - b0
    for b in range(nb):
        g = b0 + b
        s0 = np.float32(0.0)
        s1 = np.float32(0.0)
        e0 = np.int64(sum_ptr[g])
        e1 = np.int64(sum_ptr[g + 1])
        e2 = e0 + ((e1 - e0) & ~1)
        for e in range(e0, e2, 2):
            s0 += qv[qmap[sum_terms[e]]] * np.float32(sum_vals[e])
            s1 += qv[qmap[sum_terms[e + 1]]] * np.float32(sum_vals[e + 1])
        if e2 < e1:
            s0 += qv[qmap[sum_terms[e2]]] * np.float32(sum_vals[e2])
        # a block without a summary (too small to need one) is always scanned
        bscore[b] = (s0 + s1) * block_scale[g] if e1 > e0 else np.float32(np.inf)
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


@njit(cache=True, inline="always")
def _rescore(n, hs, hd, fwd_ptr, fwd16, fwd32, fwd_t, tshift, lo_ptr, lo, qmap, qv):  # noqa: ANN001, ANN202
    """Replace the heap's scores by exact ones (its order is restored by _heap_emit's sort)."""
    for i in range(n):
        hs[i] = _exact_score(hd[i], fwd_ptr, fwd16, fwd32, fwd_t, tshift, lo_ptr, lo, qmap, qv)


@njit(cache=True)
def _search_q(q_terms, q_vals, k, query_cut, heap_factor, n_knn,
              fwd_ptr, fwd16, fwd32, fwd_t, tshift, pf_lines, lo_ptr, lo,
              list_block_ptr, block_doc_ptr, block_docs, block_scale, sum_ptr, sum_terms, sum_vals,
              knn, allowed, use_allowed, qmap, qv, visited, cur, bscore, border, hs, hd):  # noqa: ANN001, ANN202
    nq = q_terms.shape[0]
    by_weight = np.argsort(-q_vals, kind="mergesort")  # heaviest query terms first (ties: ascending term)
    n = 0
    nl = min(query_cut, nq)
    for r in range(nl):
        t = q_terms[by_weight[r]]
        if r + 1 < nl:  # fetch the next list's summaries while this list is scored and scanned
            _prefetch_list(q_terms[by_weight[r + 1]], list_block_ptr, sum_ptr, sum_terms, sum_vals)
        nb = _score_blocks(t, list_block_ptr, sum_ptr, sum_terms, sum_vals, block_scale, qmap, qv, bscore)
        if nb == 0:
            continue
        b0 = np.int64(list_block_ptr[t])
        # lazy max-heap over blocks: pop the best remaining block until one can be skipped
        for b in range(nb):
            border[b] = b
        for i in range((nb >> 1) - 1, -1, -1):
            _sift_down_blocks(border, nb, i, bscore)
        g = b0 + border[0]
        pg = np.int64(block_doc_ptr[g])
        for p in range(pg, min(np.int64(block_doc_ptr[g + 1]), pg + PREFETCH_AHEAD)):
            _prefetch_record(fwd16, np.int64(fwd_ptr[np.int64(block_docs[p])]), pf_lines)
        m = nb
        while m > 0:
            b = border[0]
            if n == k and bscore[b] < heap_factor * hs[0]:
                break  # every remaining block scores no higher
            m -= 1
            border[0] = border[m]
            _sift_down_blocks(border, m, 0, bscore)
            g = b0 + b
            p0 = np.int64(block_doc_ptr[g])
            p1 = np.int64(block_doc_ptr[g + 1])
            if m > 0:  # the next block is likely scanned too: start fetching its first records
                gn = b0 + border[0]
                pn = np.int64(block_doc_ptr[gn])
                for p in range(pn, min(np.int64(block_doc_ptr[gn + 1]), pn + PREFETCH_AHEAD)):
                    _prefetch_record(fwd16, np.int64(fwd_ptr[np.int64(block_docs[p])]), pf_lines)
            n = _scan_block(p0, p1, block_docs, fwd_ptr, fwd16, fwd32, fwd_t, tshift, pf_lines, qmap, qv,
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
                s = _doc_score(np.int64(fwd_ptr[d]), fwd16, fwd32, fwd_t, tshift, qmap, qv)
                if s > 0.0:
                    n = _heap_push(hs, hd, n, k, s, d)
    _rescore(n, hs, hd, fwd_ptr, fwd16, fwd32, fwd_t, tshift, lo_ptr, lo, qmap, qv)
    return n


@njit(cache=True, inline="always")
def _taat(qt, qw, k, col_ptr, col_docs, col_vals, allowed, use_allowed, acc, touched, hs, hd):  # noqa: ANN001, ANN202
    """Term-at-a-time over the full posting lists: accumulate into `acc` (zero between queries),
    then select the top k of the touched documents and clear what was used."""
    nt = 0
    for j in range(qt.shape[0]):
        t = qt[j]
        w = qw[j]
        for p in range(col_ptr[t], col_ptr[t + 1]):
            d = col_docs[p]
            if acc[d] == 0.0:
                touched[nt] = d
                nt += 1
            acc[d] += w * col_vals[p]
    n = 0
    for i in range(nt):
        d = touched[i]
        s = acc[d]
        acc[d] = 0.0
        if s > 0.0 and (not use_allowed or allowed[d]):
            if n < k or not _worse(s, d, hs[0], hd[0]):
                n = _heap_push(hs, hd, n, k, s, d)
    return n



# ---------------------------------------------------------------------------------------------- state
# One object per (index, thread) holds every array a query needs, the index's and the thread's
# scratch: numba unboxes it as one argument, where the flat signature cost ~40 array arguments
# (about 5 us of dispatch per call, most of an empty search).
STATE_FIELDS = (
    "fwd_ptr", "fwd16", "fwd32", "fwd_t", "tshift", "pf_lines", "lo_ptr", "lo",
    "list_block_ptr", "block_doc_ptr", "block_docs", "block_scale", "sum_ptr", "sum_terms", "sum_vals", "knn",
    "col_ptr", "col_docs", "col_vals", "vocab", "n_docs",
    "qmap8", "qmap32", "qv", "visited", "stamp", "bscore", "border", "acc", "touched",
)


@structref.register
class StateType(types.StructRef):
    def preprocess_fields(self, fields):  # noqa: ANN001, ANN201
        return tuple((name, types.unliteral(t)) for name, t in fields)


class State(structref.StructRefProxy):
    """Index arrays plus one thread's query scratch (see STATE_FIELDS), built once per thread."""


structref.define_proxy(State, StateType, list(STATE_FIELDS))


@njit(cache=True, inline="always")
def _one_approx(st, qt, qw, k, query_cut, heap_factor, n_knn, allowed, use_allowed, cur, hs, hd):  # noqa: ANN001, ANN202
    if _set_query(qt, qw, st.qmap8, st.qmap32, st.qv, True):
        n = _search_q(qt, qw, k, query_cut, heap_factor, n_knn, st.fwd_ptr, st.fwd16, st.fwd32, st.fwd_t, st.tshift,
                      st.pf_lines, st.lo_ptr, st.lo, st.list_block_ptr, st.block_doc_ptr, st.block_docs,
                      st.block_scale, st.sum_ptr, st.sum_terms, st.sum_vals, st.knn, allowed, use_allowed,
                      st.qmap32, st.qv, st.visited, cur, st.bscore, st.border, hs, hd)
    else:
        n = _search_q(qt, qw, k, query_cut, heap_factor, n_knn, st.fwd_ptr, st.fwd16, st.fwd32, st.fwd_t, st.tshift,
                      st.pf_lines, st.lo_ptr, st.lo, st.list_block_ptr, st.block_doc_ptr, st.block_docs,
                      st.block_scale, st.sum_ptr, st.sum_terms, st.sum_vals, st.knn, allowed, use_allowed,
                      st.qmap8, st.qv, st.visited, cur, st.bscore, st.border, hs, hd)
    _set_query(qt, qw, st.qmap8, st.qmap32, st.qv, False)
    return n


@njit(cache=True, inline="always")
def _one_exact(st, qt, qw, k, allowed, use_allowed, hs, hd):  # noqa: ANN001, ANN202
    n = _taat(qt, qw, k, st.col_ptr, st.col_docs, st.col_vals, allowed, use_allowed, st.acc, st.touched, hs, hd)
    if _set_query(qt, qw, st.qmap8, st.qmap32, st.qv, True):
        _rescore(n, hs, hd, st.fwd_ptr, st.fwd16, st.fwd32, st.fwd_t, st.tshift, st.lo_ptr, st.lo, st.qmap32, st.qv)
    else:
        _rescore(n, hs, hd, st.fwd_ptr, st.fwd16, st.fwd32, st.fwd_t, st.tshift, st.lo_ptr, st.lo, st.qmap8, st.qv)
    _set_query(qt, qw, st.qmap8, st.qmap32, st.qv, False)
    return n


@njit(cache=True, nogil=True)
def search_range(st, q_ptr, q_terms, q_vals, start, stop, k, query_cut, heap_factor, n_knn, exact,
                 allowed, use_allowed, out_ids, out_scores):  # noqa: ANN001, ANN202
    """Queries [start, stop) of a CSR batch (already canonical) into the same rows of
    out_ids/out_scores, approximate (Seismic) or exact (term-at-a-time over full lists, then the k best
    rescored in storage order: the same float32 sum as approximate mode); returns the last query's
    hit count. One call into numba per batch; releases the GIL."""
    kh = heap_size(k)
    hs = np.empty(kh, dtype=np.float32)
    hd = np.empty(kh, dtype=np.int64)
    n = 0
    for i in range(start, stop):
        a = q_ptr[i]
        z = q_ptr[i + 1]
        qt = q_terms[a:z]
        qw = q_vals[a:z]
        if exact:
            n = _one_exact(st, qt, qw, kh, allowed, use_allowed, hs, hd)
        else:
            cur = _next_stamp(st.visited, st.stamp)
            n = _one_approx(st, qt, qw, kh, query_cut, heap_factor, n_knn, allowed, use_allowed, cur, hs, hd)
        n = _heap_emit(hs, hd, n, out_ids[i], out_scores[i])
    return n


@njit(cache=True, nogil=True)
def search_one(st, q_ptr, q_terms, q_vals, k, query_cut, heap_factor, n_knn, exact, allowed, use_allowed):  # noqa: ANN001, ANN202
    """One query row, checked here rather than in Python: returns (code, ids, scores) with code 0,
    or -1 when the row is not canonical (term ids ascending and unique, in the vocabulary, weights
    finite and > 0) or -2 when an option is out of range; the caller then takes its slow path."""
    empty_i = np.empty(0, dtype=np.int64)
    empty_s = np.empty(0, dtype=np.float32)
    if k < 1 or query_cut < 1 or not heap_factor >= 0.0 or n_knn < 0:
        return -2, empty_i, empty_s
    if q_ptr.shape[0] != 2:
        return -1, empty_i, empty_s
    a = q_ptr[0]
    z = q_ptr[1]
    prev = -1
    for j in range(a, z):
        t = q_terms[j]
        w = q_vals[j]
        if t <= prev or t >= st.vocab or not (w > 0.0 and w < np.inf):
            return -1, empty_i, empty_s
        prev = t
    kk = min(k, max(st.n_docs, 1))
    ids = np.empty((1, kk), dtype=np.int64)
    scores = np.empty((1, kk), dtype=np.float32)
    n = search_range(st, q_ptr, q_terms, q_vals, 0, 1, kk, query_cut, heap_factor, n_knn, exact,
                     allowed, use_allowed, ids, scores)
    return 0, ids[0, :n], scores[0, :n]
