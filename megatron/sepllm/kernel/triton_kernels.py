"""Triton kernels of Sep-Attention: one pass over the compact kept-key list plus the window band.

Query i sees two disjoint key sets (W = window, plus one when the diagonal is not excluded):
  * far part:  kept keys j <= i - W, read through `kept_pos` (their positions, in order), so
    the ~15% separators of a row form a dense, causal-like prefix in compact coordinates;
  * band part: keys i - W < j <= i, read in place.
No copy of K or V is made: far keys are gathered row by row inside the kernels.

Metadata (built once per micro-batch by layout.py, shared by all layers):
  KEPT_POS  [B, L]    int32  positions of kept keys (kept and not padding), then padding
  KCOUNT    [B, L+1]  int32  KCOUNT[b, p] = kept keys at positions < p
  DOC       [B, L]    int32  document index (HAS_DOCS)
  DOC_START [B, L]    int32  first position of each token's document (HAS_DOCS)
  DOC_END   [B, L]    int32  one past the last position of each token's document (HAS_DOCS)
  VALID     [B, L]    int8   key is real, not padding (HAS_VALID)

LSE is kept in log2 units (m + log2 l), the scores as s * scale * log2(e), so exp2 applies.
Block loops are split into masked and mask-free ranges; a masked block uses -inf scores and a
guarded running max so that rows with no visible key yet stay finite. Sequence length, window,
head counts and group size are not specialized on: one compile serves every model layer and batch.
"""
import triton
import triton.language as tl


@triton.jit
def _rows(base, rows, stride, offs_d, row_ok, D: tl.constexpr, BLOCK_D: tl.constexpr, CHECK_ROWS: tl.constexpr):
    """Load [len(rows), BLOCK_D] from base + rows * stride (rows may be gathered positions).

    Offsets inside one head stay int32 (the launcher checks they fit): int64 offset tensors
    cost registers in every pipelined load.
    """
    ptrs = base + (rows[:, None] * stride + offs_d[None, :])
    if CHECK_ROWS:
        if BLOCK_D == D:
            x = tl.load(ptrs, mask=row_ok[:, None], other=0.0)
        else:
            x = tl.load(ptrs, mask=row_ok[:, None] & (offs_d < D)[None, :], other=0.0)
    else:
        if BLOCK_D == D:
            x = tl.load(ptrs)
        else:
            x = tl.load(ptrs, mask=(offs_d < D)[None, :], other=0.0)
    return x


@triton.jit
def _store_rows(base, rows, stride, offs_d, row_ok, x, D: tl.constexpr, BLOCK_D: tl.constexpr):
    ptrs = base + (rows[:, None] * stride + offs_d[None, :])
    if BLOCK_D == D:
        tl.store(ptrs, x, mask=row_ok[:, None])
    else:
        tl.store(ptrs, x, mask=row_ok[:, None] & (offs_d < D)[None, :])


@triton.jit
def _online_softmax_step(acc, m_i, l_i, qk, vis, v, qk_scale, MASKED: tl.constexpr):
    """Fold one key block (raw scores qk; m_i, l_i in log2 units) into the running softmax state."""
    if MASKED:
        qk = tl.where(vis, qk, float("-inf"))
    # The max is taken on raw scores (qk_scale > 0) so that exp2 below gets one fused multiply-add
    # instead of a separate scaling pass over the tile. (Lazy rescaling, FlashAttention-4's skip
    # of the acc rescale while the max grows little, measured 6% slower here: Triton needs a
    # block-wide reduction and a branch per key block for it.)
    m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
    if MASKED:
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    else:
        m_use = m_new
    p = tl.math.exp2(qk * qk_scale - m_use[:, None])
    alpha = tl.math.exp2(m_i - m_use)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    acc = tl.dot(p.to(v.dtype), v, acc)
    return acc, m_new, l_i


@triton.jit
def _query_block_ranges(KCOUNT, DOC_START, krow, row, q0, q_last, W,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, WIDE: tl.constexpr,
                        HAS_DOCS: tl.constexpr, HAS_VALID: tl.constexpr):
    """Key-block ranges of one query block [q0, q_last]: far blocks (compact) and band blocks.

    Each part has one mask-free run of blocks and up to two masked runs around it (far blocks
    are BLOCK_N compact keys; the mask-free far run takes them WIDE at a time); the masked
    runs are walked by one loop (see _masked_far_start / _masked_band_start) to keep the
    kernels small.
    """
    if HAS_DOCS:
        first_start = tl.load(DOC_START + row + q0)
        last_start = tl.load(DOC_START + row + q_last)
        c_lo = tl.load(KCOUNT + krow + first_start)
        c_full_lo = tl.load(KCOUNT + krow + last_start)
    else:
        first_start = 0
        c_lo = 0
        c_full_lo = 0
    # kept keys with pos <= q_last - W are seen by someone in the block, pos <= q0 - W by all
    c_hi = tl.load(KCOUNT + krow + tl.maximum(q_last - W + 1, 0))
    c_full_hi = tl.load(KCOUNT + krow + tl.maximum(q0 - W + 1, 0))
    n_far = tl.cdiv(tl.maximum(c_hi - c_lo, 0), BLOCK_N)
    k1 = tl.minimum(tl.cdiv(tl.maximum(c_full_lo - c_lo, 0), BLOCK_N), n_far)
    k2 = tl.maximum(tl.minimum(tl.maximum(c_full_hi - c_lo, 0) // BLOCK_N, n_far), k1)
    # the mask-free run is walked WIDE blocks at a time; a remainder joins the masked blocks
    k2 = k1 + ((k2 - k1) // WIDE) * WIDE

    lo = tl.maximum(q0 - W + 1, first_start)
    lo = (lo // BLOCK_N) * BLOCK_N
    hi = q_last + 1
    if HAS_DOCS or HAS_VALID:
        fs = lo
        fe = lo
    else:
        # mask-free band blocks [s, s+BN): s + BN - 1 <= q0 and s >= q0 + BM - W
        t = tl.maximum(q0 + BLOCK_M - W, lo)
        fs = tl.minimum(tl.cdiv(t, BLOCK_N) * BLOCK_N, q0)
        fs = tl.maximum(fs, lo)
        fe = tl.maximum(q0, fs)
    # masked blocks: compact kb in [0, k1) and [k2, n_far); band s in [lo, fs) and [fe, hi)
    n_far_masked = k1 + (n_far - k2)
    n_lo = (fs - lo) // BLOCK_N
    n_band_masked = n_lo + tl.cdiv(hi - fe, BLOCK_N)
    return c_lo, c_hi, k1, k2, n_far_masked, lo, fs, fe, n_lo, n_band_masked


@triton.jit
def _masked_far_start(t, c_lo, k1, k2, BLOCK_N: tl.constexpr):
    """Start of the t-th masked far block: blocks 0..k1-1, then k2, k2+1, ..."""
    kb = tl.where(t < k1, t, t - k1 + k2)
    return c_lo + kb * BLOCK_N


@triton.jit
def _masked_band_start(t, lo, fe, n_lo, BLOCK_N: tl.constexpr):
    """Start of the t-th masked band block: [lo, fs) (window edge), then [fe, hi) (diagonal)."""
    return tl.where(t < n_lo, lo + t * BLOCK_N, fe + (t - n_lo) * BLOCK_N)


@triton.jit(do_not_specialize=["L", "W", "H", "GROUP"])
def _fwd_kernel(
    Q, K, V, O, LSE,
    KEPT_POS, KCOUNT, DOC, DOC_START, VALID,
    s_qb, s_qh, s_ql, s_kb, s_kh, s_kl, s_vb, s_vh, s_vl, s_ob, s_oh, s_ol,
    L, W, H, qk_scale,
    GROUP, D: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, WIDE: tl.constexpr,
    HAS_DOCS: tl.constexpr, HAS_VALID: tl.constexpr,
):
    n_m = tl.cdiv(L, BLOCK_M)
    # Programs start in grid order, heads fastest: the longest query blocks of every head go
    # first (measured 1-4% faster on an H100 than head by head; the dQ kernel is not, see there).
    pid_m = n_m - 1 - tl.program_id(1)
    pid_bh = tl.program_id(0)
    b = pid_bh // H
    h = pid_bh % H
    hk = h // GROUP
    b64 = b.to(tl.int64)
    row = b64 * L
    krow = b64 * (L + 1)
    q0 = pid_m * BLOCK_M
    q_last = tl.minimum(q0 + BLOCK_M, L) - 1
    offs_m = q0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < L

    q = _rows(Q + b64 * s_qb + h.to(tl.int64) * s_qh, offs_m, s_ql, offs_d, m_ok, D, BLOCK_D, True)
    k_base = K + b64 * s_kb + hk.to(tl.int64) * s_kh
    v_base = V + b64 * s_vb + hk.to(tl.int64) * s_vh
    if HAS_DOCS:
        doc_q = tl.load(DOC + row + offs_m, mask=m_ok, other=-1)
    else:
        doc_q = offs_m  # unused

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    c_lo, c_hi, k1, k2, n_far_masked, lo, fs, fe, n_lo, n_band_masked = _query_block_ranges(
        KCOUNT, DOC_START, krow, row, q0, q_last, W, BLOCK_M, BLOCK_N, WIDE, HAS_DOCS, HAS_VALID)

    # far part: the mask-free run, then the masked blocks (last ones, other documents)
    acc, m_i, l_i = _fwd_far_run(acc, m_i, l_i, q, k_base, v_base, s_kl, s_vl, KEPT_POS, row, c_lo, k1, k2,
                                 offs_d, qk_scale, D, BLOCK_D, BLOCK_N, WIDE)
    for t in range(0, n_far_masked):
        acc, m_i, l_i = _fwd_far_block(acc, m_i, l_i, q, k_base, v_base, s_kl, s_vl, KEPT_POS, DOC, row,
                                       _masked_far_start(t, c_lo, k1, k2, BLOCK_N), c_hi, offs_n, offs_m, offs_d,
                                       doc_q, W, qk_scale, D, BLOCK_D, HAS_DOCS)
    # band part: the mask-free middle of the window, then its edge and the diagonal
    for s in range(fs, fe, BLOCK_N):
        acc, m_i, l_i = _fwd_band_block(acc, m_i, l_i, q, k_base, v_base, s_kl, s_vl, DOC, VALID, row,
                                        s, offs_n, offs_m, offs_d, doc_q, L, W, qk_scale,
                                        False, D, BLOCK_D, HAS_DOCS, HAS_VALID)
    for t in range(0, n_band_masked):
        acc, m_i, l_i = _fwd_band_block(acc, m_i, l_i, q, k_base, v_base, s_kl, s_vl, DOC, VALID, row,
                                        _masked_band_start(t, lo, fe, n_lo, BLOCK_N), offs_n, offs_m, offs_d,
                                        doc_q, L, W, qk_scale, True, D, BLOCK_D, HAS_DOCS, HAS_VALID)

    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_safe[:, None]
    _store_rows(O + b64 * s_ob + h.to(tl.int64) * s_oh, offs_m, s_ol, offs_d, m_ok, out.to(O.dtype.element_ty), D, BLOCK_D)
    tl.store(LSE + pid_bh.to(tl.int64) * L + offs_m, m_i + tl.math.log2(l_safe), mask=m_ok)


@triton.jit
def _fwd_far_run(acc, m_i, l_i, q, k_base, v_base, s_kl, s_vl, KEPT_POS, row, c_lo, k1, k2, offs_d, qk_scale,
                 D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, WIDE: tl.constexpr):
    """The mask-free far blocks [k1, k2), WIDE at a time.

    Each tile's key positions are loaded one iteration ahead, so its gathered K/V loads wait on no
    index load: with 4 pipeline stages, 4% faster at 8k and 32k tokens and 7% at 131k on an H100
    (benchmarks/RESULTS.md, fifth round). The dQ kernel measured slower with the same change.
    """
    offs_nw = tl.arange(0, BLOCK_N * WIDE)
    pos_next = tl.load(KEPT_POS + row + c_lo + k1 * BLOCK_N + offs_nw, mask=(offs_nw >= 0) & (k1 < k2), other=0)
    for kb in range(k1, k2, WIDE):
        pos = pos_next
        pos_next = tl.load(KEPT_POS + row + c_lo + (kb + WIDE) * BLOCK_N + offs_nw,
                           mask=(offs_nw >= 0) & (kb + WIDE < k2), other=0)
        k = _rows(k_base, pos, s_kl, offs_d, pos >= 0, D, BLOCK_D, False)
        v = _rows(v_base, pos, s_vl, offs_d, pos >= 0, D, BLOCK_D, False)
        qk = tl.dot(q, tl.trans(k))
        acc, m_i, l_i = _online_softmax_step(acc, m_i, l_i, qk, None, v, qk_scale, False)
    return acc, m_i, l_i


@triton.jit
def _fwd_far_block(acc, m_i, l_i, q, k_base, v_base, s_kl, s_vl, KEPT_POS, DOC, row,
                   cs, c_hi, offs_n, offs_m, offs_d, doc_q, W, qk_scale,
                   D: tl.constexpr, BLOCK_D: tl.constexpr, HAS_DOCS: tl.constexpr):
    """One masked far block: the last ones of a query block's far part, or blocks of other documents."""
    offs_c = cs + offs_n
    c_ok = offs_c < c_hi
    pos = tl.load(KEPT_POS + row + offs_c, mask=c_ok, other=0)
    k = _rows(k_base, pos, s_kl, offs_d, c_ok, D, BLOCK_D, False)
    v = _rows(v_base, pos, s_vl, offs_d, c_ok, D, BLOCK_D, False)
    qk = tl.dot(q, tl.trans(k))
    vis = c_ok[None, :] & ((pos[None, :] + W) <= offs_m[:, None])
    if HAS_DOCS:
        doc_k = tl.load(DOC + row + pos)
        vis = vis & (doc_k[None, :] == doc_q[:, None])
    return _online_softmax_step(acc, m_i, l_i, qk, vis, v, qk_scale, True)


@triton.jit
def _band_visible(offs_m, keys, DOC, VALID, row, doc_q, L, W, HAS_DOCS: tl.constexpr, HAS_VALID: tl.constexpr):
    """[BM, BN] bool: key `keys[n]` lies in the window of query `offs_m[m]` (and passes doc/padding)."""
    diff = offs_m[:, None] - keys[None, :]
    vis = (diff >= 0) & (diff < W) & (keys < L)[None, :]
    if HAS_VALID:
        valid = tl.load(VALID + row + keys, mask=keys < L, other=0)
        vis = vis & ((valid != 0)[None, :] | (diff == 0))
    if HAS_DOCS:
        doc_k = tl.load(DOC + row + keys, mask=keys < L, other=-2)
        vis = vis & (doc_k[None, :] == doc_q[:, None])
    return vis


@triton.jit
def _fwd_band_block(acc, m_i, l_i, q, k_base, v_base, s_kl, s_vl, DOC, VALID, row,
                    s, offs_n, offs_m, offs_d, doc_q, L, W, qk_scale,
                    MASKED: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr,
                    HAS_DOCS: tl.constexpr, HAS_VALID: tl.constexpr):
    keys = s + offs_n
    k_ok = keys < L
    k = _rows(k_base, keys, s_kl, offs_d, k_ok, D, BLOCK_D, MASKED)
    v = _rows(v_base, keys, s_vl, offs_d, k_ok, D, BLOCK_D, MASKED)
    qk = tl.dot(q, tl.trans(k))
    if MASKED:
        vis = _band_visible(offs_m, keys, DOC, VALID, row, doc_q, L, W, HAS_DOCS, HAS_VALID)
    else:
        vis = k_ok[None, :]
    return _online_softmax_step(acc, m_i, l_i, qk, vis, v, qk_scale, MASKED)


@triton.jit
def _dq_step(dq, q, do, k, v, lse, delta, vis, qk_scale, MASKED: tl.constexpr):
    qk = tl.dot(q, tl.trans(k)) * qk_scale
    p = tl.math.exp2(qk - lse[:, None])
    if MASKED:
        p = tl.where(vis, p, 0.0)
    dp = tl.dot(do, tl.trans(v))
    ds = p * (dp - delta[:, None])
    return tl.dot(ds.to(k.dtype), k, dq)


@triton.jit
def _dq_far_block(dq, q, do, lse, delta, k_base, v_base, s_kl, s_vl, KEPT_POS, DOC, row,
                  cs, c_hi, offs_n, offs_m, offs_d, doc_q, W, qk_scale,
                  MASKED: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr, HAS_DOCS: tl.constexpr):
    offs_c = cs + offs_n
    if MASKED:
        c_ok = offs_c < c_hi
        pos = tl.load(KEPT_POS + row + offs_c, mask=c_ok, other=0)
    else:
        c_ok = offs_c >= 0
        pos = tl.load(KEPT_POS + row + offs_c)
    k = _rows(k_base, pos, s_kl, offs_d, c_ok, D, BLOCK_D, False)
    v = _rows(v_base, pos, s_vl, offs_d, c_ok, D, BLOCK_D, False)
    vis = c_ok[None, :]
    if MASKED:
        vis = vis & ((pos[None, :] + W) <= offs_m[:, None])
        if HAS_DOCS:
            doc_k = tl.load(DOC + row + pos)
            vis = vis & (doc_k[None, :] == doc_q[:, None])
    return _dq_step(dq, q, do, k, v, lse, delta, vis, qk_scale, MASKED)


@triton.jit
def _dq_band_block(dq, q, do, lse, delta, k_base, v_base, s_kl, s_vl, DOC, VALID, row,
                   s, offs_n, offs_m, offs_d, doc_q, L, W, qk_scale,
                   MASKED: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr,
                   HAS_DOCS: tl.constexpr, HAS_VALID: tl.constexpr):
    keys = s + offs_n
    k_ok = keys < L
    k = _rows(k_base, keys, s_kl, offs_d, k_ok, D, BLOCK_D, MASKED)
    v = _rows(v_base, keys, s_vl, offs_d, k_ok, D, BLOCK_D, MASKED)
    if MASKED:
        vis = _band_visible(offs_m, keys, DOC, VALID, row, doc_q, L, W, HAS_DOCS, HAS_VALID)
    else:
        vis = k_ok[None, :]
    return _dq_step(dq, q, do, k, v, lse, delta, vis, qk_scale, MASKED)


@triton.jit(do_not_specialize=["L", "W", "H", "GROUP"])
def _bwd_dq_kernel(
    Q, K, V, O, DO, DQ, LSE, DELTA,
    KEPT_POS, KCOUNT, DOC, DOC_START, VALID,
    s_qb, s_qh, s_ql, s_kb, s_kh, s_kl, s_vb, s_vh, s_vl, s_ob, s_oh, s_ol, s_db, s_dh, s_dl, s_gb, s_gh, s_gl,
    L, W, H, qk_scale, sm_scale,
    GROUP, D: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, WIDE: tl.constexpr,
    HAS_DOCS: tl.constexpr, HAS_VALID: tl.constexpr,
):
    n_m = tl.cdiv(L, BLOCK_M)
    # Head by head, longest query blocks first: longest-first over all heads (as the forward
    # does) measured up to 10% slower here at 32k-131k tokens on an H100.
    pid_m = n_m - 1 - tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    hk = h // GROUP
    b64 = b.to(tl.int64)
    row = b64 * L
    krow = b64 * (L + 1)
    q0 = pid_m * BLOCK_M
    q_last = tl.minimum(q0 + BLOCK_M, L) - 1
    offs_m = q0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < L

    q = _rows(Q + b64 * s_qb + h.to(tl.int64) * s_qh, offs_m, s_ql, offs_d, m_ok, D, BLOCK_D, True)
    do = _rows(DO + b64 * s_db + h.to(tl.int64) * s_dh, offs_m, s_dl, offs_d, m_ok, D, BLOCK_D, True)
    lse = tl.load(LSE + pid_bh.to(tl.int64) * L + offs_m, mask=m_ok, other=0.0)
    # DELTA = rowsum(O * dO), the softmax-gradient row term; the dK/dV kernels (launched after
    # this one) read it back.
    o = _rows(O + b64 * s_ob + h.to(tl.int64) * s_oh, offs_m, s_ol, offs_d, m_ok, D, BLOCK_D, True)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + pid_bh.to(tl.int64) * L + offs_m, delta, mask=m_ok)
    k_base = K + b64 * s_kb + hk.to(tl.int64) * s_kh
    v_base = V + b64 * s_vb + hk.to(tl.int64) * s_vh
    if HAS_DOCS:
        doc_q = tl.load(DOC + row + offs_m, mask=m_ok, other=-1)
    else:
        doc_q = offs_m
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    c_lo, c_hi, k1, k2, n_far_masked, lo, fs, fe, n_lo, n_band_masked = _query_block_ranges(
        KCOUNT, DOC_START, krow, row, q0, q_last, W, BLOCK_M, BLOCK_N, WIDE, HAS_DOCS, HAS_VALID)
    offs_nw = tl.arange(0, BLOCK_N * WIDE)
    for kb in range(k1, k2, WIDE):
        dq = _dq_far_block(dq, q, do, lse, delta, k_base, v_base, s_kl, s_vl, KEPT_POS, DOC, row,
                           c_lo + kb * BLOCK_N, c_hi, offs_nw, offs_m, offs_d, doc_q, W, qk_scale,
                           False, D, BLOCK_D, HAS_DOCS)
    for t in range(0, n_far_masked):
        dq = _dq_far_block(dq, q, do, lse, delta, k_base, v_base, s_kl, s_vl, KEPT_POS, DOC, row,
                           _masked_far_start(t, c_lo, k1, k2, BLOCK_N), c_hi, offs_n, offs_m, offs_d, doc_q, W,
                           qk_scale, True, D, BLOCK_D, HAS_DOCS)
    for s in range(fs, fe, BLOCK_N):
        dq = _dq_band_block(dq, q, do, lse, delta, k_base, v_base, s_kl, s_vl, DOC, VALID, row,
                            s, offs_n, offs_m, offs_d, doc_q, L, W, qk_scale, False, D, BLOCK_D, HAS_DOCS, HAS_VALID)
    for t in range(0, n_band_masked):
        dq = _dq_band_block(dq, q, do, lse, delta, k_base, v_base, s_kl, s_vl, DOC, VALID, row,
                            _masked_band_start(t, lo, fe, n_lo, BLOCK_N), offs_n, offs_m, offs_d, doc_q, L, W,
                            qk_scale, True, D, BLOCK_D, HAS_DOCS, HAS_VALID)
    dq = dq * sm_scale
    _store_rows(DQ + b64 * s_gb + h.to(tl.int64) * s_gh, offs_m, s_gl, offs_d, m_ok, dq.to(DQ.dtype.element_ty), D, BLOCK_D)


@triton.jit
def _dkdv_block(dk, dv, k, v, q_base, do_base, s_ql, s_dl, LSE, DELTA, bh, s, L, offs_mb, offs_d, vis, qk_scale,
                MASKED: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr):
    """Fold query block [s, s + BLOCK_M) into a key block's dK, dV (transposed [keys, queries] tiles)."""
    offs_m = s + offs_mb
    m_ok = offs_m < L
    q = _rows(q_base, offs_m, s_ql, offs_d, m_ok, D, BLOCK_D, MASKED)
    do = _rows(do_base, offs_m, s_dl, offs_d, m_ok, D, BLOCK_D, MASKED)
    if MASKED:
        lse = tl.load(LSE + bh * L + offs_m, mask=m_ok, other=0.0)
        delta = tl.load(DELTA + bh * L + offs_m, mask=m_ok, other=0.0)
    else:
        lse = tl.load(LSE + bh * L + offs_m)
        delta = tl.load(DELTA + bh * L + offs_m)
    qkT = tl.dot(k, tl.trans(q)) * qk_scale
    pT = tl.math.exp2(qkT - lse[None, :])
    if MASKED:
        pT = tl.where(vis & m_ok[None, :], pT, 0.0)
    dv = tl.dot(pT.to(do.dtype), do, dv)
    dpT = tl.dot(v, tl.trans(do))
    dsT = pT * (dpT - delta[None, :])
    dk = tl.dot(dsT.to(q.dtype), q, dk)
    return dk, dv


@triton.jit(do_not_specialize=["L", "W", "H", "GROUP"])
def _bwd_dkdv_band_kernel(
    Q, K, V, DO, DK, DV, LSE, DELTA, DOC, VALID,
    s_qb, s_qh, s_ql, s_kb, s_kh, s_kl, s_vb, s_vh, s_vl, s_db, s_dh, s_dl,
    s_gkb, s_gkh, s_gkl, s_gvb, s_gvh, s_gvl,
    L, W, H, qk_scale, sm_scale,
    GROUP, D: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_DOCS: tl.constexpr, HAS_VALID: tl.constexpr,
):
    """dK, dV of every key from the queries whose window holds it (writes all of dK, dV).

    One always-masked loop: a band program walks only about (BLOCK_N + W) / BLOCK_M query
    blocks, and a second, mask-free loop measured slower on an H100 (two pipeline prologues).
    """
    pid_n = tl.program_id(0)
    pid_bk = tl.program_id(1)
    Hkv = H // GROUP
    b = pid_bk // Hkv
    hk = pid_bk % Hkv
    b64 = b.to(tl.int64)
    row = b64 * L
    k0 = pid_n * BLOCK_N
    offs_n = k0 + tl.arange(0, BLOCK_N)
    offs_mb = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    n_ok = offs_n < L
    k = _rows(K + b64 * s_kb + hk.to(tl.int64) * s_kh, offs_n, s_kl, offs_d, n_ok, D, BLOCK_D, True)
    v = _rows(V + b64 * s_vb + hk.to(tl.int64) * s_vh, offs_n, s_vl, offs_d, n_ok, D, BLOCK_D, True)
    if HAS_DOCS:
        doc_k = tl.load(DOC + row + offs_n, mask=n_ok, other=-2)
    if HAS_VALID:
        valid_k = tl.load(VALID + row + offs_n, mask=n_ok, other=0) != 0
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    q_lo = (k0 // BLOCK_M) * BLOCK_M
    q_hi = tl.minimum(k0 + BLOCK_N - 1 + W, L)  # the last key's window ends at key + W - 1
    for g in range(GROUP):
        h = hk * GROUP + g
        bh = b64 * H + h
        q_base = Q + b64 * s_qb + h.to(tl.int64) * s_qh
        do_base = DO + b64 * s_db + h.to(tl.int64) * s_dh
        for s in range(q_lo, q_hi, BLOCK_M):
            offs_m = s + offs_mb
            diff = offs_m[None, :] - offs_n[:, None]
            vis = (diff >= 0) & (diff < W)
            if HAS_VALID:
                vis = vis & (valid_k[:, None] | (diff == 0))
            if HAS_DOCS:
                doc_q = tl.load(DOC + row + offs_m, mask=offs_m < L, other=-1)
                vis = vis & (doc_k[:, None] == doc_q[None, :])
            dk, dv = _dkdv_block(dk, dv, k, v, q_base, do_base, s_ql, s_dl, LSE, DELTA, bh,
                                 s, L, offs_mb, offs_d, vis, qk_scale, True, D, BLOCK_D)
    dk = dk * sm_scale
    _store_rows(DK + b64 * s_gkb + hk.to(tl.int64) * s_gkh, offs_n, s_gkl, offs_d, n_ok, dk.to(DK.dtype.element_ty), D, BLOCK_D)
    _store_rows(DV + b64 * s_gvb + hk.to(tl.int64) * s_gvh, offs_n, s_gvl, offs_d, n_ok, dv.to(DV.dtype.element_ty), D, BLOCK_D)


@triton.jit(do_not_specialize=["L", "W", "H", "GROUP"])
def _bwd_dkdv_far_kernel(
    Q, K, V, DO, DK, DV, LSE, DELTA, KEPT_POS, KCOUNT, DOC, DOC_END,
    s_qb, s_qh, s_ql, s_kb, s_kh, s_kl, s_vb, s_vh, s_vl, s_db, s_dh, s_dl,
    s_gkb, s_gkh, s_gkl, s_gvb, s_gvh, s_gvl,
    L, W, H, qk_scale, sm_scale,
    GROUP, D: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, WIDE: tl.constexpr,
    HAS_DOCS: tl.constexpr,
):
    """Adds to dK, dV of kept keys the gradient from queries beyond their window (runs after the band).

    Query blocks past every key's window (most of them) run a mask-free loop, WIDE blocks of
    BLOCK_M queries at a time; the masked one
    takes the first few and the ragged end (and everything when documents are on).
    A program's work falls with its compact block index (its keys see fewer later queries), so
    the grid puts heads fastest: the first compact blocks of every head start first. Head by
    head, the longest programs of the last heads started last and ran alone (0.53 -> 0.41 ms at
    8k tokens, head dim 128, on an H100).
    """
    pid_c = tl.program_id(1)
    pid_bk = tl.program_id(0)
    Hkv = H // GROUP
    b = pid_bk // Hkv
    hk = pid_bk % Hkv
    b64 = b.to(tl.int64)
    row = b64 * L
    krow = b64 * (L + 1)
    cs = pid_c * BLOCK_N
    n_kept = tl.load(KCOUNT + krow + L)
    if cs < n_kept:
        offs_c = cs + tl.arange(0, BLOCK_N)
        c_ok = offs_c < n_kept
        pos = tl.load(KEPT_POS + row + offs_c, mask=c_ok, other=0)
        offs_mb = tl.arange(0, BLOCK_M)
        offs_mw = tl.arange(0, BLOCK_M * WIDE)
        offs_d = tl.arange(0, BLOCK_D)
        k = _rows(K + b64 * s_kb + hk.to(tl.int64) * s_kh, pos, s_kl, offs_d, c_ok, D, BLOCK_D, True)
        v = _rows(V + b64 * s_vb + hk.to(tl.int64) * s_vh, pos, s_vl, offs_d, c_ok, D, BLOCK_D, True)
        pos_first = tl.load(KEPT_POS + row + cs)
        pos_last = tl.load(KEPT_POS + row + tl.minimum(cs + BLOCK_N, n_kept) - 1)
        s0 = ((pos_first + W) // BLOCK_M) * BLOCK_M
        if HAS_DOCS:
            doc_k = tl.load(DOC + row + pos, mask=c_ok, other=-2)
            q_end = tl.load(DOC_END + row + pos_last)
        else:
            q_end = L
        n_blocks = tl.cdiv(tl.maximum(q_end - s0, 0), BLOCK_M)
        # Query blocks [i_fs, i_fe) (from s0) see every key of a full compact block: past the
        # last key's window and before the end of the sequence.
        if HAS_DOCS:
            i_fs = n_blocks
            i_fe = n_blocks
        else:
            i_fs = tl.minimum(tl.cdiv(pos_last + W - s0, BLOCK_M), n_blocks)
            lim = q_end - BLOCK_M - s0
            i_fe = tl.minimum(tl.where(lim >= 0, lim // BLOCK_M + 1, 0), n_blocks)
            i_fe = tl.where(cs + BLOCK_N <= n_kept, tl.maximum(i_fe, i_fs), i_fs)
            # the mask-free run takes WIDE query blocks at a time; a remainder joins the masked ones
            i_fe = i_fs + ((i_fe - i_fs) // WIDE) * WIDE
        n_masked = i_fs + (n_blocks - i_fe)
        dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        for g in range(GROUP):
            h = hk * GROUP + g
            bh = b64 * H + h
            q_base = Q + b64 * s_qb + h.to(tl.int64) * s_qh
            do_base = DO + b64 * s_db + h.to(tl.int64) * s_dh
            for i in range(i_fs, i_fe, WIDE):
                dk, dv = _dkdv_block(dk, dv, k, v, q_base, do_base, s_ql, s_dl, LSE, DELTA, bh,
                                     s0 + i * BLOCK_M, L, offs_mw, offs_d, c_ok[:, None], qk_scale, False, D, BLOCK_D)
            for t in range(0, n_masked):
                # the t-th masked block: blocks 0..i_fs-1, then i_fe, i_fe+1, ...
                s = s0 + tl.where(t < i_fs, t, t - i_fs + i_fe) * BLOCK_M
                offs_m = s + offs_mb
                vis = c_ok[:, None] & ((pos[:, None] + W) <= offs_m[None, :])
                if HAS_DOCS:
                    doc_q = tl.load(DOC + row + offs_m, mask=offs_m < L, other=-1)
                    vis = vis & (doc_k[:, None] == doc_q[None, :])
                dk, dv = _dkdv_block(dk, dv, k, v, q_base, do_base, s_ql, s_dl, LSE, DELTA, bh,
                                     s, L, offs_mb, offs_d, vis, qk_scale, True, D, BLOCK_D)
        dk_ptrs = DK + b64 * s_gkb + hk.to(tl.int64) * s_gkh
        dv_ptrs = DV + b64 * s_gvb + hk.to(tl.int64) * s_gvh
        old_k = _rows(dk_ptrs, pos, s_gkl, offs_d, c_ok, D, BLOCK_D, True)
        old_v = _rows(dv_ptrs, pos, s_gvl, offs_d, c_ok, D, BLOCK_D, True)
        _store_rows(dk_ptrs, pos, s_gkl, offs_d, c_ok, (old_k.to(tl.float32) + dk * sm_scale).to(DK.dtype.element_ty), D, BLOCK_D)
        _store_rows(dv_ptrs, pos, s_gvl, offs_d, c_ok, (old_v.to(tl.float32) + dv).to(DV.dtype.element_ty), D, BLOCK_D)
