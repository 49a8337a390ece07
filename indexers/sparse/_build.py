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
                centroid_fraction, summary_energy, seed):  # noqa: ANN001, ANN202
    """Blocks, summaries and summary dictionaries of the given lists (ascending ids).

    Returns per list: block count and dictionary size; per block: size, documents, scale; per
    dictionary term: term and entry count; per entry: local block id and 8-bit value.
    """
    nl = lists.shape[0]
    list_nblocks = np.zeros(nl, dtype=np.int64)
    list_ndict = np.zeros(nl, dtype=np.int64)
    n_post = 0
    for li in range(nl):
        t = lists[li]
        n_post += post_ptr[t + 1] - post_ptr[t]
    block_docs = np.empty(n_post, dtype=np.int32)
    block_size = np.empty(n_post, dtype=np.int64)  # at most one block per posting
    block_scale = np.empty(n_post, dtype=np.float32)
    dict_terms = np.empty(1024, dtype=np.int32)
    dict_nent = np.empty(1024, dtype=np.int64)
    ent_block = np.empty(4096, dtype=np.int32)
    ent_val = np.empty(4096, dtype=np.uint8)
    nd = 0
    ne = 0
    nbk = 0
    npst = 0
    head = np.empty(vocab, dtype=np.int32)
    head_stamp = np.zeros(vocab, dtype=np.int32)
    maxv = np.zeros(vocab, dtype=np.float32)
    tcount = np.zeros(vocab, dtype=np.int64)
    tcount_stamp = np.zeros(vocab, dtype=np.int32)
    uniq = np.empty(vocab, dtype=np.int32)
    touched = np.empty(vocab, dtype=np.int32)
    vals = np.empty(vocab, dtype=np.float32)
    trip_t = np.empty(1024, dtype=np.int32)
    trip_b = np.empty(1024, dtype=np.int32)
    trip_q = np.empty(1024, dtype=np.uint8)
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
        # summaries: component-wise max, energy cut, 8-bit quantisation; collect (term, block, q)
        ntr = 0
        nb = 0
        cur += 1
        list_stamp = cur  # marks the list's distinct summary terms in tcount_stamp
        n_uniq = 0
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
            for i in range(n_touch):
                vals[i] = maxv[touched[i]]
                total += vals[i]
            top = np.float32(0.0)
            for i in range(n_touch):
                top = max(top, vals[i])
            cut = _energy_cut(vals[:n_touch], top, summary_energy * total, hist)
            scale = np.float32(top / 255.0) if top > 0 else np.float32(1.0)
            trip_t = _grow(trip_t, ntr, n_touch)
            trip_b = _grow(trip_b, ntr, n_touch)
            trip_q = _grow(trip_q, ntr, n_touch)
            for i in range(n_touch):
                if vals[i] < cut:
                    continue
                u = touched[i]
                # round up so a kept entry never under-estimates its document maximum
                q = np.ceil(vals[i] / scale)
                trip_t[ntr] = u
                trip_b[ntr] = nb
                trip_q[ntr] = np.uint8(min(255.0, max(1.0, q)))
                ntr += 1
                if tcount_stamp[u] != list_stamp:
                    tcount_stamp[u] = list_stamp
                    tcount[u] = 0
                    uniq[n_uniq] = u
                    n_uniq += 1
                tcount[u] += 1
            block_size[nbk] = s1 - s0
            block_scale[nbk] = scale
            nbk += 1
            nb += 1
        list_nblocks[li] = nb
        # transpose the list's summaries into a term-sorted dictionary (bucket by term: blocks stay in
        # ascending order inside a term)
        terms_sorted = np.sort(uniq[:n_uniq])
        dict_terms = _grow(dict_terms, nd, n_uniq)
        dict_nent = _grow(dict_nent, nd, n_uniq)
        ent_block = _grow(ent_block, ne, ntr)
        ent_val = _grow(ent_val, ne, ntr)
        nd0 = nd
        slot = ne
        for r in range(n_uniq):
            u = terms_sorted[r]
            dict_terms[nd] = u
            dict_nent[nd] = tcount[u]
            nd += 1
            tcount[u] = slot  # from here on: the next free entry of term u
            slot += dict_nent[nd - 1]
        for r in range(ntr):
            u = trip_t[r]
            e = tcount[u]
            ent_block[e] = trip_b[r]
            ent_val[e] = trip_q[r]
            tcount[u] = e + 1
        ne += ntr
        list_ndict[li] = nd - nd0
    return (list_nblocks, list_ndict, block_size[:nbk].copy(), block_docs[:npst].copy(),
            block_scale[:nbk].copy(), dict_terms[:nd].copy(), dict_nent[:nd].copy(),
            ent_block[:ne].copy(), ent_val[:ne].copy())


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
    """Pack CSR rows into one uint32 buffer of records [n][term ids][float32 values], written in
    the given document order.

    Term ids take 16 bits when `narrow` (two per word, the last word zero-padded), else 32 bits.
    Returns (word offset of each document's record, plus the buffer size; buffer)."""
    n_docs = indptr.shape[0] - 1
    ptr = np.zeros(n_docs + 1, dtype=np.int64)
    o = 0
    for i in range(n_docs):
        d = order[i]
        n = indptr[d + 1] - indptr[d]
        tw = (n + 1) // 2 if narrow else n
        ptr[d] = o
        o += 1 + tw + n
    ptr[n_docs] = o
    buf = np.zeros(o, dtype=np.uint32)
    t16 = buf.view(np.uint16)
    f32 = buf.view(np.float32)
    for d in range(n_docs):
        a = indptr[d]
        n = indptr[d + 1] - a
        o = ptr[d]
        buf[o] = n
        tw = (n + 1) // 2 if narrow else n
        for j in range(n):
            if narrow:
                t16[2 * (o + 1) + j] = indices[a + j]
            else:
                buf[o + 1 + j] = indices[a + j]
            f32[o + 1 + tw + j] = data[a + j]
    return ptr, buf
