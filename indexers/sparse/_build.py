"""Numba kernels of the index build: posting-list pruning, block clustering, quantised summaries.

Lists are independent once pruned, so they are built in chunks by a thread pool (the kernels release
the GIL); each chunk returns its own arrays, which are concatenated in list order.
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def cap_lists(col_ptr, col_vals, cap):  # noqa: ANN001, ANN202
    """Mask keeping at most `cap` heaviest postings of each list (ties: lower doc id first)."""
    keep = np.ones(col_vals.shape[0], dtype=np.bool_)
    for t in range(col_ptr.shape[0] - 1):
        a = col_ptr[t]
        z = col_ptr[t + 1]
        if z - a <= cap:
            continue
        order = np.argsort(-col_vals[a:z], kind="mergesort")
        for r in range(cap, z - a):
            keep[a + order[r]] = False
    return keep


@njit(cache=True, nogil=True)
def top_terms(fwd_ptr, fwd_terms, fwd_vals, doc_cut):  # noqa: ANN001, ANN202
    """Each document's `doc_cut` heaviest terms (padded with -1): the cheap clustering key."""
    n = fwd_ptr.shape[0] - 1
    terms = np.full((n, doc_cut), -1, dtype=np.int32)
    vals = np.zeros((n, doc_cut), dtype=np.float32)
    for d in range(n):
        a = fwd_ptr[d]
        z = fwd_ptr[d + 1]
        order = np.argsort(-fwd_vals[a:z], kind="mergesort")
        for r in range(min(doc_cut, z - a)):
            terms[d, r] = fwd_terms[a + order[r]]
            vals[d, r] = fwd_vals[a + order[r]]
    return terms, vals


@njit(cache=True, inline="always")
def _grow(arr, n, need):  # noqa: ANN001, ANN202
    if n + need <= arr.shape[0]:
        return arr
    out = np.empty(max(2 * arr.shape[0], n + need), dtype=arr.dtype)
    out[:n] = arr[:n]
    return out


@njit(cache=True)
def _cluster(docs, n_centroids, fwd_ptr, fwd_terms, fwd_vals, top_t, top_v, head, head_stamp, cur):  # noqa: ANN001, ANN202
    """Assign each doc of a list to the centroid (a random member) with the highest dot product over
    the doc's top terms. Centroids are put in a small inverted index (linked lists keyed by term in
    the `head` scratch), so the cost is proportional to matching entries, not to docs x centroids."""
    m = docs.shape[0]
    perm = np.arange(m)
    for i in range(n_centroids):  # partial Fisher-Yates
        j = np.random.randint(i, m)
        x = perm[i]
        perm[i] = perm[j]
        perm[j] = x
    n_ent = 0
    for i in range(n_centroids):
        c = docs[perm[i]]
        n_ent += fwd_ptr[c + 1] - fwd_ptr[c]
    ent_c = np.empty(n_ent, dtype=np.int32)
    ent_w = np.empty(n_ent, dtype=np.float32)
    nxt = np.empty(n_ent, dtype=np.int32)
    e = 0
    for i in range(n_centroids):
        c = docs[perm[i]]
        for p in range(fwd_ptr[c], fwd_ptr[c + 1]):
            t = fwd_terms[p]
            ent_c[e] = i
            ent_w[e] = fwd_vals[p]
            if head_stamp[t] == cur:
                nxt[e] = head[t]
            else:
                nxt[e] = -1
                head_stamp[t] = cur
            head[t] = e
            e += 1
    assign = np.empty(m, dtype=np.int32)
    score = np.zeros(n_centroids, dtype=np.float32)
    touched = np.empty(n_centroids, dtype=np.int32)
    for i in range(m):
        d = docs[i]
        nt = 0
        for r in range(top_t.shape[1]):
            t = top_t[d, r]
            if t < 0:
                break
            if head_stamp[t] != cur:
                continue
            w = top_v[d, r]
            e = head[t]
            while e >= 0:
                ci = ent_c[e]
                if score[ci] == 0.0:
                    touched[nt] = ci
                    nt += 1
                score[ci] += w * ent_w[e]
                e = nxt[e]
        best = 0
        best_s = np.float32(-1.0)
        for r in range(nt):
            ci = touched[r]
            if score[ci] > best_s or (score[ci] == best_s and ci < best):
                best_s = score[ci]
                best = ci
            score[ci] = 0.0
        assign[i] = best
    return assign


_HIST_BINS = 256
# Blocks of fewer documents get no summary: scoring their documents costs about what scoring a summary
# would, and is exact; they are always scanned.
SUMMARY_MIN_DOCS = 3


@njit(cache=True)
def _energy_cut(vals, top, target, hist):  # noqa: ANN001, ANN202
    """Smallest value v such that the values >= v sum to at least `target` (the summary energy cut).

    A histogram over [0, top] finds the bin where the running sum from the top crosses the target;
    only that bin's values are sorted. O(n) instead of sorting every block's values."""
    if vals.shape[0] == 0 or top <= 0:
        return np.float32(0.0)
    nbins = hist.shape[0]
    hist[:] = 0.0
    for v in vals:
        hist[min(nbins - 1, int(v / top * nbins))] += v
    acc = 0.0
    b = nbins - 1
    while b > 0 and acc + hist[b] < target:
        acc += hist[b]
        b -= 1
    m = 0
    for v in vals:
        if min(nbins - 1, int(v / top * nbins)) == b:
            m += 1
    inbin = np.empty(m, dtype=vals.dtype)
    m = 0
    for v in vals:
        if min(nbins - 1, int(v / top * nbins)) == b:
            inbin[m] = v
            m += 1
    inbin.sort()
    cut = inbin[m - 1] if m > 0 else top
    for r in range(m - 1, -1, -1):
        acc += inbin[r]
        cut = inbin[r]
        if acc >= target:
            break
    return cut


@njit(cache=True, nogil=True)
def build_lists(lists, post_ptr, post_docs, fwd_ptr, fwd_terms, fwd_vals, top_t, top_v, vocab,
                centroid_fraction, summary_energy, max_summary, seed):  # noqa: ANN001, ANN202
    """Blocks and block summaries of the given lists (ascending ids).

    A summary is a short sparse vector: the component-wise max of the block's documents, cut to its
    heaviest entries holding `summary_energy` of the L1 mass (at most `max_summary` entries), term ids
    ascending, values quantised to 8 bits (rounded up, so a summary never under-estimates) with one
    float32 scale per block.

    Returns per list: block count; per block: size, scale, summary length; per posting: document;
    per summary entry: term and 8-bit value.
    """
    nl = lists.shape[0]
    list_nblocks = np.zeros(nl, dtype=np.int64)
    n_post = 0
    for li in range(nl):
        t = lists[li]
        n_post += post_ptr[t + 1] - post_ptr[t]
    block_docs = np.empty(n_post, dtype=np.int32)
    block_size = np.empty(n_post, dtype=np.int64)  # at most one block per posting
    block_scale = np.empty(n_post, dtype=np.float32)
    block_nsum = np.empty(n_post, dtype=np.int64)
    sum_terms = np.empty(4096, dtype=np.int32)
    sum_vals = np.empty(4096, dtype=np.uint8)
    ns = 0
    nbk = 0
    npst = 0
    head = np.empty(vocab, dtype=np.int32)
    head_stamp = np.zeros(vocab, dtype=np.int32)
    maxv = np.zeros(vocab, dtype=np.float32)
    touched = np.empty(vocab, dtype=np.int32)
    vals = np.empty(vocab, dtype=np.float32)
    keep_t = np.empty(vocab, dtype=np.int32)
    hist = np.zeros(_HIST_BINS, dtype=np.float64)
    cur = 0
    for li in range(nl):
        t = lists[li]
        a = post_ptr[t]
        z = post_ptr[t + 1]
        m = z - a
        if m == 0:
            continue
        docs = post_docs[a:z]
        np.random.seed(seed * 1000003 + t)
        n_cent = max(1, min(m, int(np.ceil(centroid_fraction * m))))
        cur += 1
        assign = _cluster(docs, n_cent, fwd_ptr, fwd_terms, fwd_vals, top_t, top_v, head, head_stamp, cur)
        # group docs by cluster (stable: ascending doc id inside a block), drop empty clusters
        cnt = np.zeros(n_cent + 1, dtype=np.int64)
        for i in range(m):
            cnt[assign[i] + 1] += 1
        for c in range(n_cent):
            cnt[c + 1] += cnt[c]
        pos = cnt[:n_cent].copy()
        grouped = np.empty(m, dtype=np.int32)
        for i in range(m):
            grouped[pos[assign[i]]] = docs[i]
            pos[assign[i]] += 1
        nb = 0
        for c in range(n_cent):
            s0 = cnt[c]
            s1 = cnt[c + 1]
            if s1 == s0:
                continue
            cur += 1
            n_touch = 0
            for i in range(s0, s1):
                d = grouped[i]
                block_docs[npst] = d
                npst += 1
                for p in range(fwd_ptr[d], fwd_ptr[d + 1]):
                    u = fwd_terms[p]
                    v = fwd_vals[p]
                    if head_stamp[u] != cur:
                        head_stamp[u] = cur
                        maxv[u] = v
                        touched[n_touch] = u
                        n_touch += 1
                    elif v > maxv[u]:
                        maxv[u] = v
            total = 0.0
            top = np.float32(0.0)
            for i in range(n_touch):
                vals[i] = maxv[touched[i]]
                total += vals[i]
                top = max(top, vals[i])
            cut = _energy_cut(vals[:n_touch], top, summary_energy * total, hist)
            nk = 0
            if s1 - s0 >= SUMMARY_MIN_DOCS:  # smaller blocks are scanned without a summary
                for i in range(n_touch):
                    if vals[i] >= cut:
                        keep_t[nk] = touched[i]
                        nk += 1
            corr = np.float32(1.0)
            if nk > max_summary:  # keep the heaviest max_summary entries
                order = np.argsort(-maxv[keep_t[:nk]], kind="mergesort")
                mass_cut = 0.0
                for i in range(nk):
                    mass_cut += maxv[keep_t[i]]
                sel = keep_t[:nk][order[:max_summary]].copy()
                nk = max_summary
                keep_t[:nk] = sel
                mass_kept = 0.0
                for i in range(nk):
                    mass_kept += maxv[keep_t[i]]
                # the dropped entries would have added to the score: scale the kept ones up so the
                # summary keeps the energy cut's L1 mass (a heuristic, like the energy cut itself)
                corr = np.float32(mass_cut / mass_kept)
            kt = np.sort(keep_t[:nk])
            scale = np.float32(top / 255.0) if top > 0 else np.float32(1.0)
            sum_terms = _grow(sum_terms, ns, nk)
            sum_vals = _grow(sum_vals, ns, nk)
            for i in range(nk):
                u = kt[i]
                # round up so a kept entry never under-estimates its document maximum
                q = np.ceil(maxv[u] / scale)
                sum_terms[ns] = u
                sum_vals[ns] = np.uint8(min(255.0, max(1.0, q)))
                ns += 1
            block_size[nbk] = s1 - s0
            block_scale[nbk] = scale * corr
            block_nsum[nbk] = nk
            nbk += 1
            nb += 1
        list_nblocks[li] = nb
    return (list_nblocks, block_size[:nbk].copy(), block_docs[:npst].copy(), block_scale[:nbk].copy(),
            block_nsum[:nbk].copy(), sum_terms[:ns].copy(), sum_vals[:ns].copy())


@njit(cache=True, nogil=True)
def home_order(block_docs, block_doc_ptr, block_list, top_t, n_docs):  # noqa: ANN001, ANN202
    """Storage order of the forward records: each document is placed with the other documents of
    its *home block*, its block in the list of its heaviest term that kept it. A query scans the
    blocks of its heaviest terms first, and their documents then sit in a few contiguous runs of
    memory instead of one random cache miss each. Documents without a home go last."""
    rank = np.full(n_docs, top_t.shape[1], dtype=np.int32)
    home = np.full(n_docs, block_list.shape[0], dtype=np.int64)
    for g in range(block_list.shape[0]):
        t = block_list[g]
        for p in range(block_doc_ptr[g], block_doc_ptr[g + 1]):
            d = block_docs[p]
            for r in range(rank[d]):
                if top_t[d, r] == t:
                    rank[d] = r
                    home[d] = g
                    break
    return np.argsort(home * n_docs + np.arange(n_docs), kind="mergesort")


@njit(cache=True, nogil=True)
def forward_records(indptr, indices, data, narrow, order):  # noqa: ANN001, ANN202
    """Pack CSR rows into one uint16 buffer of records, written in the given document order:

        [n: 2 x u16][term ids: n x u16 (narrow) or n x u32 (wide)][bf16 values: n x u16][pad to 2 u16]

    A record starts at an offset that is a multiple of 2 (so wide ids read as aligned uint32). The
    value is the float32 weight rounded to its top 16 bits (bfloat16); the exact float32 is
    ``(hi << 16) + lo`` with the signed remainders ``lo`` kept apart in CSR (document id) order, so
    the approximate path reads 4 bytes per entry and exact scores stay exact.
    Returns (u16 offset of each document's record plus the buffer size; buffer; remainders)."""
    n_docs = indptr.shape[0] - 1
    ptr = np.zeros(n_docs + 1, dtype=np.int64)
    o = 0
    for i in range(n_docs):
        d = order[i]
        n = indptr[d + 1] - indptr[d]
        ptr[d] = o
        rec = 2 + (n if narrow else 2 * n) + n
        o += rec + (rec & 1)
    ptr[n_docs] = o
    buf = np.zeros(o + (o & 1), dtype=np.uint16)
    b32 = buf.view(np.uint32)
    bits = data.view(np.int32)
    lo = np.empty(data.shape[0], dtype=np.int16)
    for d in range(n_docs):
        a = indptr[d]
        n = indptr[d + 1] - a
        o = ptr[d]
        b32[o >> 1] = n
        vb = o + 2 + (n if narrow else 2 * n)
        for j in range(n):
            if narrow:
                buf[o + 2 + j] = indices[a + j]
            else:
                b32[(o >> 1) + 1 + j] = indices[a + j]
            x = np.int64(bits[a + j])
            hi = (x + 0x8000) >> 16
            buf[vb + j] = np.uint16(hi)
            lo[a + j] = np.int16(x - (hi << 16))
    return ptr, buf, lo


@njit(cache=True, nogil=True)
def exact_lists(fwd_ptr, fwd16, fwd32, fwd_t, tshift, lo_ptr, lo, vocab):  # noqa: ANN001, ANN202
    """Full (unpruned) posting lists with exact float32 weights, rebuilt from the forward index:
    (list pointers, document ids ascending, weights). Built on the first exact search only."""
    n_docs = fwd_ptr.shape[0] - 1
    cnt = np.zeros(vocab + 1, dtype=np.int64)
    for d in range(n_docs):
        o = np.int64(fwd_ptr[d])
        n = np.int64(fwd32[o >> 1])
        tb = (o + 2) >> tshift
        for j in range(n):
            cnt[np.int64(fwd_t[tb + j]) + 1] += 1
    for t in range(vocab):
        cnt[t + 1] += cnt[t]
    nnz = cnt[vocab]
    docs = np.empty(nnz, dtype=np.int32)
    vals = np.empty(nnz, dtype=np.float32)
    bits = vals.view(np.int32)
    pos = cnt[:vocab].copy()
    for d in range(n_docs):
        o = np.int64(fwd_ptr[d])
        n = np.int64(fwd32[o >> 1])
        tb = (o + 2) >> tshift
        vb = o + 2 + (n << tshift)
        l0 = np.int64(lo_ptr[d])
        for j in range(n):
            t = np.int64(fwd_t[tb + j])  # type: ignore[assignment]  # numba: one int64 type in the loop
            p = pos[t]
            pos[t] = p + 1
            docs[p] = d
            bits[p] = np.int32((np.int64(fwd16[vb + j]) << 16) + np.int64(lo[l0 + j]))
    return cnt, docs, vals
