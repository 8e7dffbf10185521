"""Token masking strategies of SSAST, MAE-AST and EAT (pure torch, vectorised, device-agnostic).

Conventions
-----------
* Every strategy returns a ``BoolTensor (B, T)`` with ``True`` = masked (hidden from the encoder).
* Randomness comes only from a :class:`~maeast_fairseq.core.rng.MaskRNG` (one key per row), so a clip's mask
  is a function of ``(seed, epoch, clip id)`` and never of the batch it is in (exception: ``same_for_batch``
  masks, which by definition depend on the whole batch — there the key is a hash of the multiset of keys).
* ``padding_mask`` (``True`` = padding) is optional.  Padded tokens are never masked; the counts are computed
  on the ``n_valid`` valid tokens of each row with MAE-AST's rule ``num_kept = max(1, int((1 - p) * n_valid))``
  (see :func:`mask_counts`), and **every row has exactly its count** (no "approximately p" masks).
  512 tokens: p=0.75 -> 384 masked; p=400/512 (SSAST) -> 400; p=0.8 (EAT) -> 410 masked / 102 kept.
* Grids are given as ``(n_time, n_freq)``.  Token order ``'time_major'``: index = ``t * n_freq + f`` (MAE-AST,
  EAT); ``'freq_major'``: index = ``f * n_time + t`` (SSAST).  Masks are returned in that flattened order.
"""

from __future__ import annotations

import math
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch

from .rng import MaskRNG

__all__ = [
    "mask_counts",
    "random_mask",
    "cluster_mask",
    "inverse_block_mask",
    "multi_mask",
    "gather_visible",
    "scatter_back",
]

_INT64_MAX = torch.iinfo(torch.long).max


# ----------------------------------------------------------------------------------------------- helpers
def mask_counts(
    padding_mask: Optional[torch.Tensor],
    T: int,
    mask_ratio: float,
    device=None,
    batch: int = 1,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-row ``(num_masked, num_kept)`` as ``LongTensor (B,)``.

    ``n_valid = T - #padding`` (``T`` when ``padding_mask`` is None, then ``B = batch``);
    ``num_kept = clamp(floor((1 - mask_ratio) * n_valid + 1e-6), min=1)`` (capped at ``n_valid``, so a fully
    padded row gives 0/0); ``num_masked = n_valid - num_kept``.
    """
    if padding_mask is not None:
        device = padding_mask.device
        n_valid = (~padding_mask).sum(dim=1).to(torch.long)
    else:
        n_valid = torch.full((batch,), int(T), dtype=torch.long, device=device)
    keep_frac = 1.0 - float(mask_ratio)
    num_kept = torch.floor(n_valid.to(torch.float64) * keep_frac + 1e-6).to(torch.long)
    num_kept = torch.minimum(num_kept.clamp(min=1), n_valid)
    return n_valid - num_kept, num_kept


def _valid_mask(padding_mask: Optional[torch.Tensor], B: int, T: int, device) -> torch.Tensor:
    if padding_mask is None:
        return torch.ones(B, T, dtype=torch.bool, device=device)
    if padding_mask.shape != (B, T):
        raise ValueError(f"padding_mask must have shape {(B, T)}, got {tuple(padding_mask.shape)}")
    return ~padding_mask.to(device=device, dtype=torch.bool)


def _valid_and_counts(rng: MaskRNG, T: int, mask_ratio: float, padding_mask: Optional[torch.Tensor]
                      ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The valid tokens ``(B, T)`` of ``rng``'s rows and each row's ``(num_masked, num_kept)`` (:func:`mask_counts`)."""
    valid = _valid_mask(padding_mask, rng.batch, T, rng.device)
    num_masked, num_kept = mask_counts(None if padding_mask is None else ~valid, T, mask_ratio, rng.device,
                                       batch=rng.batch)
    return valid, num_masked, num_kept


def _select_lowest(score: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Bool (B, T): True for the ``k[b]`` entries with the smallest ``score`` in each row (stable ties)."""
    B, T = score.shape
    order = torch.argsort(score, dim=1, stable=True)
    ranks = torch.empty_like(order).scatter_(
        1, order, torch.arange(T, device=score.device, dtype=order.dtype).expand(B, T)
    )
    return ranks < k.view(B, 1)


def _grid_to_tokens(x: torch.Tensor, token_order: str) -> torch.Tensor:
    """(B, n_time, n_freq) -> (B, T) in the requested flattened token order."""
    if token_order == "time_major":
        return x.reshape(x.shape[0], -1)
    if token_order == "freq_major":
        return x.transpose(1, 2).reshape(x.shape[0], -1)
    raise ValueError(f"token_order must be 'time_major' or 'freq_major', got {token_order!r}")


def _tokens_to_grid(x: torch.Tensor, grid: Tuple[int, int], token_order: str) -> torch.Tensor:
    """(B, T) in token order -> (B, n_time, n_freq)."""
    n_t, n_f = grid
    if token_order == "time_major":
        return x.reshape(x.shape[0], n_t, n_f)
    if token_order == "freq_major":
        return x.reshape(x.shape[0], n_f, n_t).transpose(1, 2)
    raise ValueError(f"token_order must be 'time_major' or 'freq_major', got {token_order!r}")


def _token_index(t: torch.Tensor, f: torch.Tensor, grid: Tuple[int, int], token_order: str) -> torch.Tensor:
    n_t, n_f = grid
    return t * n_f + f if token_order == "time_major" else f * n_t + t


def _draw_valid_cells(
    rng: MaskRNG, valid_grid: torch.Tensor, n: int, all_valid: bool = False
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Draw ``n`` cells per row uniformly (with replacement) among the valid cells of ``valid_grid (B, n_t, n_f)``.

    The r-th valid cell is counted in time-major order, so with trailing time padding a draw does not depend
    on the padded length.  Rows without any valid cell get cell (0, 0) (their tokens are all padding anyway).
    Returns ``(t, f)`` LongTensors of shape (B, n).
    """
    B, n_t, n_f = valid_grid.shape
    if all_valid:  # fast path, same values as the general one
        cell = rng.randint(n_t * n_f, n)
        return torch.div(cell, n_f, rounding_mode="floor"), cell % n_f
    flat = valid_grid.reshape(B, -1)
    n_valid = flat.sum(dim=1).clamp(min=1)
    order = torch.argsort((~flat).to(torch.int8), dim=1, stable=True)  # valid cells first, in order
    r = rng.randint(n_valid, n)  # (B, n)
    cell = order.gather(1, r)
    return torch.div(cell, n_f, rounding_mode="floor"), cell % n_f


# ----------------------------------------------------------------------------------------------- random
def random_mask(
    rng: MaskRNG,
    batch: Optional[int],
    num_tokens: int,
    mask_ratio: float,
    padding_mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Uniform masking without replacement (SSAST frame masking, MAE-AST ``random_mask``).

    Per row, exactly ``num_masked`` of the valid tokens are masked: the tokens with the smallest random
    keys (``argsort`` of the rng noise; padded positions get +inf and are never chosen).  ``batch`` must equal
    ``rng.batch`` (``None`` = take it from ``rng``).
    """
    B = rng.batch if batch is None else int(batch)
    if B != rng.batch:
        raise ValueError(f"batch={B} but rng has {rng.batch} rows")
    T = int(num_tokens)
    valid, num_masked, _ = _valid_and_counts(rng, T, mask_ratio, padding_mask)
    noise = rng.bits(T).masked_fill(~valid, _INT64_MAX)
    return _select_lowest(noise, num_masked)


# ----------------------------------------------------------------------------------------------- cluster
def cluster_mask(
    rng: MaskRNG,
    grid: Tuple[int, int],
    mask_ratio: float,
    token_order: str = "time_major",
    cluster_sizes: Sequence[int] = (3, 4, 5),
    padding_mask: Optional[torch.Tensor] = None,
    same_for_batch: bool = False,
) -> torch.Tensor:
    """SSAST patch "cluster" masking / MAE-AST ``chunk_mask``, vectorised over the batch.

    Algorithm (per row, or once for the batch with ``same_for_batch=True`` — MAE-AST's official behaviour):
    draw one cluster size ``c`` uniformly from ``cluster_sizes``; place square ``c x c`` clusters (``c`` patches
    in time x ``c`` in frequency) one after another at random positions, clipped at the grid edges, until
    their union covers at least ``num_masked`` valid tokens; then mask exactly ``num_masked`` tokens giving
    priority to earlier clusters — i.e. "add clusters until there are enough, truncate the last one" (the
    cells of the last cluster that are kept are chosen at random).

    Placement: the top-left ``(t0, f0)`` is uniform over ``[-(c-1), E_t-1] x [-(c-1), E_f-1]`` (``E`` = the
    row's extent: grid size, or last non-padded index + 1), i.e. every ``c x c`` window that intersects the
    grid is equally likely and is clipped to it.  Each cell is then covered by the same number of windows,
    so the per-position masking probability is flat.  (Drawing the top-left only inside the grid — which is
    what SSAST does along frequency — covers cells near index 0 of an axis by fewer windows: with 2-D
    clipping on the 8-wide frequency axis at 75 % that masks frequency row 0 ~39 % of the time against ~85 %
    for the middle rows.)

    Vectorised form: ``K`` candidate clusters are drawn per row at once (``K =
    ceil(2 * T * ln(1 / (1 - p)) / a) + 16`` with ``a`` the smallest expected in-grid cluster area: ``n``
    random windows cover about ``1 - exp(-n a / T)`` of the grid, so this is twice the number needed and the
    union reaches the count with overwhelming probability: K = 220 at 64x8, p = 0.75, sizes 3-5, and no
    fallback was seen in 10,000 rows); each cell's priority is the index of the first cluster covering it
    (a scatter-``amin``), ties broken by per-cell random bits, and the ``num_masked`` valid cells with the
    lowest priority are masked.  Cells no candidate covers get priority ``K``, so if the union is still
    short the remainder is filled uniformly at random among the uncovered valid cells; counts are always
    exact.

    Deliberate differences from the official codes (documented decisions, not bugs we replicate):

    * Clusters are clipped in 2-D.  SSAST and MAE-AST add offsets in flattened index space, so a cluster
      wraps across the end of a row (SSAST: across the time edge into the next frequency row; MAE-AST:
      across the frequency edge into the next time step); and both draw the start inside the grid (edge
      bias, see above).
    * SSAST never masks token 0 (``cand > 0``); we do.
    * Both codes truncate ``list(set)`` to the count, which keeps mostly the lowest indices; we truncate
      only the last cluster, randomly, giving priority to earlier clusters.

    Args:
        rng: one row per clip (``B = rng.batch``).
        grid: ``(n_time, n_freq)`` patch grid, ``T = n_time * n_freq``.
        token_order: ``'time_major'`` (index ``t*n_freq+f``) or ``'freq_major'`` (index ``f*n_time+t``).
        padding_mask: ``(B, T)`` True = padding, in ``token_order``; never masked.
        same_for_batch: one cluster sequence for the whole batch (rows then differ only by their padding);
            its key is a hash of the multiset of the batch's keys.
    Returns:
        ``BoolTensor (B, T)`` (True = masked).
    """
    mask, _ = _cluster_mask_and_sizes(rng, grid, mask_ratio, token_order, cluster_sizes, padding_mask, same_for_batch)
    return mask


def _num_candidates(n_t: int, n_f: int, mask_ratio: float, cluster_sizes: Sequence[int]) -> int:
    """``K`` of :func:`cluster_mask`: twice the expected number of clipped windows covering the masked share."""

    def _eff(n: int, c: int) -> float:  # expected in-grid length of a clipped window
        return n * c / (n + c - 1)

    T = n_t * n_f
    area_min = min(_eff(n_t, int(c)) * _eff(n_f, int(c)) for c in cluster_sizes)
    # n random windows cover ~1 - exp(-n * a / T) of the grid: take twice the number needed, plus 16
    r_eff = min(max(float(mask_ratio), 0.0), 1.0 - 1.0 / T)
    return math.ceil(2.0 * T * -math.log1p(-r_eff) / area_min) + 16


def _cluster_mask_and_sizes(
    rng: MaskRNG,
    grid: Tuple[int, int],
    mask_ratio: float,
    token_order: str,
    cluster_sizes: Sequence[int],
    padding_mask: Optional[torch.Tensor],
    same_for_batch: bool,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`cluster_mask` and the cluster size each row drew (``LongTensor (B,)``)."""
    n_t, n_f = int(grid[0]), int(grid[1])
    T, B, dev = n_t * n_f, rng.batch, rng.device
    valid, num_masked, _ = _valid_and_counts(rng, T, mask_ratio, padding_mask)

    host_sizes = [int(c) for c in cluster_sizes]  # checked on the host: no device read
    if not host_sizes or min(host_sizes) < 1:
        raise ValueError(f"cluster_sizes must be positive, got {cluster_sizes}")
    sizes = torch.as_tensor(host_sizes, dtype=torch.long, device=dev)
    c_max = max(host_sizes)
    K = int(_num_candidates(n_t, n_f, mask_ratio, cluster_sizes))

    valid_grid = _tokens_to_grid(valid, (n_t, n_f), token_order)  # (B, n_t, n_f)
    if same_for_batch:
        r = rng.fold()
        valid_grid_r = valid_grid.any(dim=0, keepdim=True)
    else:
        r = rng
        valid_grid_r = valid_grid
    Br = r.batch

    c = sizes[r.randint(sizes.numel())]  # (Br,)
    if padding_mask is None:
        ext_t = torch.full((Br,), n_t, dtype=torch.long, device=dev)
        ext_f = torch.full((Br,), n_f, dtype=torch.long, device=dev)
    else:  # extent = last valid index + 1 along each axis (0 for an all-padding row)
        any_t = valid_grid_r.any(dim=2)
        any_f = valid_grid_r.any(dim=1)
        ext_t = torch.where(any_t, torch.arange(1, n_t + 1, device=dev), 0).amax(dim=1)
        ext_f = torch.where(any_f, torch.arange(1, n_f + 1, device=dev), 0).amax(dim=1)
    t0 = r.randint(ext_t + c - 1, K) - (c - 1).view(Br, 1)  # (Br, K)
    f0 = r.randint(ext_f + c - 1, K) - (c - 1).view(Br, 1)
    tie = _grid_to_tokens(r.bits(n_t, n_f), token_order)  # (Br, T) per-cell random tie-break bits
    if same_for_batch:
        rng.stream = r.stream

    off = torch.arange(c_max, device=dev)
    dt = off.view(1, 1, c_max, 1)
    df = off.view(1, 1, 1, c_max)
    t = t0.view(Br, K, 1, 1) + dt
    f = f0.view(Br, K, 1, 1) + df
    cc = c.view(Br, 1, 1, 1)
    inside = (t >= 0) & (t < n_t) & (f >= 0) & (f < n_f) & (dt < cc) & (df < cc)
    idx = torch.where(inside, _token_index(t, f, (n_t, n_f), token_order), torch.full_like(t, T))
    kk = torch.arange(K, device=dev).view(1, K, 1, 1).expand_as(idx)
    first = torch.full((Br, T + 1), K, dtype=torch.long, device=dev)
    first = first.scatter_reduce(1, idx.reshape(Br, -1), kk.reshape(Br, -1), reduce="amin", include_self=True)
    score = (first[:, :T] << 32) | tie  # priority: first covering cluster, then random
    if same_for_batch:
        score = score.expand(B, T)
        c = c.expand(B)
    score = score.masked_fill(~valid, _INT64_MAX)
    mask = _select_lowest(score, num_masked)
    return mask, c


# ----------------------------------------------------------------------------------------------- EAT
def _normalise_blocks(block) -> List[Tuple[int, int]]:
    if isinstance(block, int):
        return [(block, block)]
    block = list(block)
    if len(block) == 2 and all(isinstance(b, int) for b in block):
        return [(int(block[0]), int(block[1]))]
    out = []
    for b in block:
        if isinstance(b, int):
            out.append((b, b))
        else:
            bh, bw = b
            out.append((int(bh), int(bw)))
    return out


def inverse_block_mask(
    rng: MaskRNG,
    grid: Tuple[int, int] = (64, 8),
    mask_ratio: float = 0.8,
    mask_prob_adjust: float = 0.07,
    block: Union[Tuple[int, int], Sequence[Tuple[int, int]], int] = (5, 5),
    padding_mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """EAT / data2vec 2.0 inverse 2-D block mask, time-major tokens (``t * n_freq + f``).

    Per row: keep probability ``p = 1 - mask_ratio``; ``int(n_valid * (p + mask_prob_adjust) / (bh * bw))``
    block centres drawn uniformly *with replacement* among the valid cells (5 at 512 tokens, 0.2 + 0.07,
    5x5); each centre keeps a ``bh x bw`` block (time offsets ``-(bh//2) .. (bh-1)//2``, same in frequency)
    whose indices are CLAMPED to the grid, so near the 8-wide frequency edge a block collapses onto the edge
    columns (as EAT does; with ``padding_mask`` the clamp is to the row's extent, i.e. its last non-padded
    time / frequency index, so trailing padding behaves like the end of the clip); then exactly
    ``num_kept`` kept cells are forced (random kept cells dropped if too many, uniformly random other valid
    cells added if too few — same distribution as EAT's ``torch.multinomial`` fix-up) and
    ``masked = valid & ~kept``.  The centre count uses EAT's float expression and truncation.

    ``block`` is ``(bh, bw)`` = (time, freq) patches, an int (square), or a list of shapes from which each
    row draws one uniformly (EAT ``flexible_mask``: ``[(6, 4), (5, 5), (8, 3)]``).
    Returns ``BoolTensor (B, T)`` (True = masked).
    """
    mask, _ = _inverse_block_mask_and_shapes(rng, grid, mask_ratio, mask_prob_adjust, block, padding_mask)
    return mask


def _inverse_block_mask_and_shapes(
    rng: MaskRNG,
    grid: Tuple[int, int],
    mask_ratio: float,
    mask_prob_adjust: float,
    block: Union[Tuple[int, int], Sequence[Tuple[int, int]], int],
    padding_mask: Optional[torch.Tensor],
) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`inverse_block_mask` and the index into ``block`` of the shape each row drew (``LongTensor (B,)``)."""
    n_t, n_f = int(grid[0]), int(grid[1])
    T, B, dev = n_t * n_f, rng.batch, rng.device
    valid, _, num_kept = _valid_and_counts(rng, T, mask_ratio, padding_mask)
    n_valid = valid.sum(dim=1)

    blocks = _normalise_blocks(block)
    S = len(blocks)
    bh_all = torch.tensor([b[0] for b in blocks], dtype=torch.long, device=dev)
    bw_all = torch.tensor([b[1] for b in blocks], dtype=torch.long, device=dev)
    if S > 1:
        s = rng.randint(S)
    else:
        s = torch.zeros(B, dtype=torch.long, device=dev)
    bh, bw = bh_all[s], bw_all[s]  # (B,)

    keep_frac = (1.0 - float(mask_ratio)) + float(mask_prob_adjust)
    n_centres = torch.floor(n_valid.to(torch.float64) * keep_frac / (bh * bw).to(torch.float64)).to(torch.long)
    n_max = max(int(T * keep_frac / (b[0] * b[1])) for b in blocks)
    n_max = max(n_max, 1)
    tc, fc = _draw_valid_cells(rng, valid.view(B, n_t, n_f), n_max, all_valid=padding_mask is None)  # (B, n_max)

    mh, mw = max(b[0] for b in blocks), max(b[1] for b in blocks)  # from the host list: no device read
    oh = torch.arange(mh, device=dev).view(1, 1, mh, 1)
    ow = torch.arange(mw, device=dev).view(1, 1, 1, mw)
    if padding_mask is None:
        hi_t = torch.full((B,), n_t - 1, dtype=torch.long, device=dev)
        hi_f = torch.full((B,), n_f - 1, dtype=torch.long, device=dev)
    else:  # clamp to the row's extent (last valid index), so trailing padding behaves like the clip's end
        vg = valid.view(B, n_t, n_f)
        hi_t = torch.where(vg.any(dim=2), torch.arange(n_t, device=dev), 0).amax(dim=1)
        hi_f = torch.where(vg.any(dim=1), torch.arange(n_f, device=dev), 0).amax(dim=1)
    t = tc.view(B, n_max, 1, 1) + oh - (bh // 2).view(B, 1, 1, 1)
    f = fc.view(B, n_max, 1, 1) + ow - (bw // 2).view(B, 1, 1, 1)
    t = torch.minimum(t.clamp(min=0), hi_t.view(B, 1, 1, 1))
    f = torch.minimum(f.clamp(min=0), hi_f.view(B, 1, 1, 1))
    active = (
        (torch.arange(n_max, device=dev).view(1, n_max, 1, 1) < n_centres.view(B, 1, 1, 1))
        & (oh < bh.view(B, 1, 1, 1))
        & (ow < bw.view(B, 1, 1, 1))
    )
    idx = torch.where(active, t * n_f + f, torch.full_like(t, T)).reshape(B, -1)
    kept = torch.zeros(B, T + 1, dtype=torch.bool, device=dev).scatter_(1, idx, True)[:, :T] & valid

    tie = rng.bits(n_t, n_f).reshape(B, T)
    score = ((~kept).to(torch.long) << 32) | tie
    score = score.masked_fill(~valid, _INT64_MAX)
    keep = _select_lowest(score, num_kept)
    mask = valid & ~keep
    return mask, s


# ----------------------------------------------------------------------------------------------- clones
def multi_mask(
    strategy_fn: Callable[..., torch.Tensor],
    rng: MaskRNG,
    clones: int,
    *args,
    padding_mask: Optional[torch.Tensor] = None,
    **kwargs,
) -> torch.Tensor:
    """``clones`` independent masks per clip: ``(B * clones, T)``, row ``b * clones + c`` belongs to clip ``b``.

    Calls ``strategy_fn(rng.clones(clones), *args, padding_mask=padding_mask.repeat_interleave(clones, 0),
    **kwargs)``.  For :func:`random_mask` the ``batch`` argument (positional or keyword) is the number of
    clips and is multiplied by ``clones`` here.
    """
    crng = rng.clones(clones)
    if strategy_fn is random_mask:
        if "batch" in kwargs:
            if kwargs["batch"] is not None:
                kwargs["batch"] = int(kwargs["batch"]) * clones
        elif args:
            args = ((None if args[0] is None else int(args[0]) * clones),) + tuple(args[1:])
    if padding_mask is not None:
        padding_mask = padding_mask.repeat_interleave(clones, dim=0)
    return strategy_fn(crng, *args, padding_mask=padding_mask, **kwargs)


# ----------------------------------------------------------------------------------------------- gather / scatter
def gather_visible(
    x: torch.Tensor,
    mask: torch.Tensor,
    padding_mask: Optional[torch.Tensor] = None,
):
    """MAE-style removal of masked (and padded) tokens.

    Args:
        x: ``(B, T, D)``; mask: ``BoolTensor (B, T)`` True = masked; padding_mask: ``(B, T)`` True = padding.
    Returns:
        ``x_vis (B, L, D)``: the visible (unmasked, non-padded) tokens of each row in their original order,
        ``L`` = max number of visible tokens over rows;
        ``ids_keep (B, L)``: their original indices (slots past a row's count hold masked/padded tokens);
        ``vis_padding (B, L)`` bool: True for those extra slots — attention must ignore them;
        ``ids_restore (B, T)``: slot of each original token in the visible-first permutation (MAE convention:
        token ``t`` is visible iff ``ids_restore[b, t] < n_visible[b]``).
    Computing ``L`` needs one host read (``n_vis.max()``), as any variable-length gather does.
    """
    B, T = mask.shape
    visible = ~mask.to(torch.bool)
    if padding_mask is not None:
        visible = visible & ~padding_mask.to(torch.bool)
    n_vis = visible.sum(dim=1)
    ids_shuffle = torch.argsort((~visible).to(torch.int8), dim=1, stable=True)  # visible first, stable
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    L = int(n_vis.max()) if B > 0 else 0
    ids_keep = ids_shuffle[:, :L]
    vis_padding = torch.arange(L, device=mask.device).view(1, L) >= n_vis.view(B, 1)
    x_vis = x.gather(1, ids_keep.unsqueeze(-1).expand(B, L, x.shape[-1]))
    return x_vis, ids_keep, vis_padding, ids_restore


def scatter_back(
    x_vis: torch.Tensor,
    ids_keep: torch.Tensor,
    vis_padding: torch.Tensor,
    T: int,
    fill: torch.Tensor,
) -> torch.Tensor:
    """Inverse of :func:`gather_visible`: ``(B, T, D)`` with visible tokens at their original positions and
    ``fill`` (``(D,)``, e.g. a mask embedding, or a full ``(B, T, D)`` tensor, e.g. noise) elsewhere.

    Slots flagged in ``vis_padding`` are ignored (``ids_keep`` must come from :func:`gather_visible`, i.e. hold
    distinct indices).  Differentiable w.r.t. ``x_vis`` and ``fill``; deterministic (no duplicate indices).
    """
    B, L, D = x_vis.shape
    fill = fill.to(dtype=x_vis.dtype, device=x_vis.device)
    if fill.dim() == 1:
        base = fill.view(1, 1, D).expand(B, T, D)
    else:
        base = fill.expand(B, T, D)
    # ids_keep is a slice of a permutation, so indices are unique; ignored slots write their fill value back
    idx = ids_keep.unsqueeze(-1).expand(B, L, D)
    src = torch.where(vis_padding.unsqueeze(-1), base.gather(1, idx), x_vis)
    return base.scatter(1, idx, src)
