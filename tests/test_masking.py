"""Tests for maeast_fairseq.core.rng and maeast_fairseq.core.masking (CPU, fast)."""

import math
import random
from collections import Counter

import pytest
import torch

from maeast_fairseq.core import masking
from maeast_fairseq.core.masking import (
    cluster_mask,
    gather_visible,
    inverse_block_mask,
    mask_counts,
    multi_mask,
    random_mask,
    scatter_back,
)
from maeast_fairseq.core.rng import MaskRNG


# ============================================================================ test helpers
def cluster_mask_with_sizes(rng, grid, mask_ratio, same_for_batch=False):
    """cluster_mask (sizes 3-5, time-major, no padding) and the cluster size each row drew."""
    return masking._cluster_mask_and_sizes(rng, grid, mask_ratio, "time_major", (3, 4, 5), None, same_for_batch)


def inverse_block_mask_with_shapes(rng, block):
    """inverse_block_mask (64 x 8, EAT's 0.8 / 0.07) and the index into ``block`` of the shape each row drew."""
    return masking._inverse_block_mask_and_shapes(rng, (64, 8), 0.8, 0.07, block, None)


# ============================================================================ slow loop references
def n_kept_of(n_valid, ratio):
    return min(n_valid, max(1, math.floor((1 - ratio) * n_valid + 1e-6)))


def ref_cluster(rnd, grid, ratio, sizes=(3, 4, 5)):
    """Spec description, one cluster at a time: square c x c windows at uniformly random top-left positions
    in [-(c-1), n) on each axis, clipped to the grid, until >= num_masked cells; truncate the last one."""
    n_t, n_f = grid
    T = n_t * n_f
    num_masked = T - n_kept_of(T, ratio)
    c = rnd.choice(sizes)
    first = {}
    k = 0
    while len(first) < num_masked:
        t0 = rnd.randrange(-(c - 1), n_t)
        f0 = rnd.randrange(-(c - 1), n_f)
        for dt in range(c):
            for df in range(c):
                t, f = t0 + dt, f0 + df
                if 0 <= t < n_t and 0 <= f < n_f and (t, f) not in first:
                    first[(t, f)] = k
        k += 1
    last = k - 1
    earlier = [cell for cell, i in first.items() if i < last]
    last_cells = [cell for cell, i in first.items() if i == last]
    chosen = earlier + rnd.sample(last_cells, num_masked - len(earlier))
    m = [[False] * n_f for _ in range(n_t)]
    for t, f in chosen:
        m[t][f] = True
    return m


def ref_eat(rnd, grid=(64, 8), ratio=0.8, adjust=0.07, block=(5, 5)):
    """EAT compute_block_mask_2d (inverse) written with loops: returns the KEPT grid."""
    n_t, n_f = grid
    T = n_t * n_f
    bh, bw = block
    n = int(T * ((1 - ratio) + adjust) / (bh * bw))
    kept = set()
    for _ in range(n):
        tc, fc = divmod(rnd.randrange(T), n_f)
        for dt in range(-(bh // 2), bh - bh // 2):
            for df in range(-(bw // 2), bw - bw // 2):
                kept.add((min(max(tc + dt, 0), n_t - 1), min(max(fc + df, 0), n_f - 1)))
    target = n_kept_of(T, ratio)
    if len(kept) > target:
        kept = set(rnd.sample(sorted(kept), target))
    elif len(kept) < target:
        others = [(t, f) for t in range(n_t) for f in range(n_f) if (t, f) not in kept]
        kept |= set(rnd.sample(others, target - len(kept)))
    return [[(t, f) in kept for f in range(n_f)] for t in range(n_t)]


def components(m):
    """Sizes of the 4-connected components of True cells of a 2-D list."""
    n_t, n_f = len(m), len(m[0])
    seen = [[False] * n_f for _ in range(n_t)]
    sizes = []
    for t in range(n_t):
        for f in range(n_f):
            if m[t][f] and not seen[t][f]:
                stack = [(t, f)]
                seen[t][f] = True
                s = 0
                while stack:
                    a, b = stack.pop()
                    s += 1
                    for da, db in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                        x, y = a + da, b + db
                        if 0 <= x < n_t and 0 <= y < n_f and m[x][y] and not seen[x][y]:
                            seen[x][y] = True
                            stack.append((x, y))
                sizes.append(s)
    return sizes


def n_with_neighbour(m):
    n_t, n_f = len(m), len(m[0])
    cnt = 0
    for t in range(n_t):
        for f in range(n_f):
            if m[t][f] and any(
                0 <= t + a < n_t and 0 <= f + b < n_f and m[t + a][f + b]
                for a, b in ((1, 0), (-1, 0), (0, 1), (0, -1))
            ):
                cnt += 1
    return cnt


def column_rate(ms):
    n_t, n_f = len(ms[0]), len(ms[0][0])
    return [sum(m[t][f] for m in ms for t in range(n_t)) / (len(ms) * n_t) for f in range(n_f)]


def time_bin_rate(ms, bins=8):
    n_t, n_f = len(ms[0]), len(ms[0][0])
    w = n_t // bins
    return [
        sum(m[t][f] for m in ms for t in range(b * w, (b + 1) * w) for f in range(n_f)) / (len(ms) * w * n_f)
        for b in range(bins)
    ]


def comp_stats(ms):
    comps = [components(m) for m in ms]
    n = sum(len(c) for c in comps)
    return n / len(ms), sum(sum(c) for c in comps) / max(n, 1), comps


# ============================================================================ rng
def test_rng_uniform_statistics():
    rng = MaskRNG.from_ids(123, 4, torch.arange(2048))
    u = rng.uniform(512)
    assert u.shape == (2048, 512) and u.dtype == torch.float32
    assert float(u.min()) >= 0.0 and float(u.max()) < 1.0
    assert abs(float(u.mean()) - 0.5) < 0.002
    assert abs(float(u.var()) - 1 / 12) < 0.001
    # no correlation between neighbouring elements, neighbouring keys (consecutive ids), successive draws
    tol = 5 / math.sqrt(u.numel())
    c_el = torch.corrcoef(torch.stack([u[:, :-1].flatten(), u[:, 1:].flatten()]))[0, 1]
    c_key = torch.corrcoef(torch.stack([u[:-1].flatten(), u[1:].flatten()]))[0, 1]
    v = rng.uniform(512)
    c_draw = torch.corrcoef(torch.stack([u.flatten(), v.flatten()]))[0, 1]
    assert abs(float(c_el)) < tol and abs(float(c_key)) < tol and abs(float(c_draw)) < tol
    # chi-square over 16 bins, 15 dof: 99.99 % quantile ~ 44
    h = torch.histc(u, bins=16, min=0.0, max=1.0)
    e = u.numel() / 16
    assert float(((h - e) ** 2 / e).sum()) < 44
    # every output bit balanced
    b = rng.bits(4096)
    for i in range(32):
        assert abs(float(((b >> i) & 1).float().mean()) - 0.5) < 0.01


def test_rng_2d_draws_and_neighbour_cells():
    rng = MaskRNG.from_generator(torch.Generator().manual_seed(0), 512)
    u = rng.uniform(64, 8)
    assert u.shape == (512, 64, 8)
    tol = 5 / math.sqrt(u.numel())
    for a, b in ((u[:, :-1], u[:, 1:]), (u[:, :, :-1], u[:, :, 1:])):
        assert abs(float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])) < tol
    # values are a function of the multi-index, not of the shape
    rng2 = MaskRNG(rng.keys, stream=rng.stream - 1)
    assert torch.equal(rng2.uniform(32, 8), u[:, :32])


def test_rng_randint_and_per_row_high():
    rng = MaskRNG.from_ids(0, 0, torch.arange(1000))
    x = rng.randint(5, 200)
    assert int(x.min()) == 0 and int(x.max()) == 4
    cnt = torch.bincount(x.flatten(), minlength=5).float() / x.numel()
    assert torch.allclose(cnt, torch.full((5,), 0.2), atol=0.005)
    high = torch.arange(1, 1001)
    y = rng.randint(high, 50)
    assert bool((y < high[:, None]).all()) and bool((y >= 0).all())
    assert rng.randint(7).shape == (1000,)


def test_rng_from_ids_reproducible_and_distinct():
    a = MaskRNG.from_ids(1, 2, torch.tensor([0, 1, 2, 3]))
    b = MaskRNG.from_ids(1, 2, torch.tensor([3, 1]))
    assert torch.equal(a.keys[[3, 1]], b.keys)
    assert len(set(MaskRNG.from_ids(1, 2, torch.arange(100000)).keys.tolist())) == 100000
    assert not torch.equal(MaskRNG.from_ids(1, 3, torch.arange(4)).keys, a.keys)
    assert not torch.equal(MaskRNG.from_ids(2, 2, torch.arange(4)).keys, a.keys)
    assert bool((a.keys >= 0).all())
    # large ids and negative-free keys
    big = MaskRNG.from_ids(1, 2, torch.tensor([2**40 + 5, 5]))
    assert big.keys[0] != big.keys[1]


def test_rng_streams_advance_and_clones():
    rng = MaskRNG.from_ids(0, 0, torch.arange(3))
    u1, u2 = rng.uniform(10), rng.uniform(10)
    assert not torch.equal(u1, u2)
    rng_again = MaskRNG.from_ids(0, 0, torch.arange(3))
    assert torch.equal(rng_again.uniform(10), u1)
    c = MaskRNG.from_ids(0, 0, torch.arange(3)).clones(4)
    assert c.batch == 12 and len(set(c.keys.tolist())) == 12
    c_sub = MaskRNG.from_ids(0, 0, torch.tensor([2])).clones(4)
    assert torch.equal(c.keys[8:12], c_sub.keys)  # row b*n + c depends only on clip b


def test_rng_fold_is_order_independent():
    a = MaskRNG.from_ids(0, 0, torch.tensor([4, 9, 1]))
    b = MaskRNG.from_ids(0, 0, torch.tensor([1, 4, 9]))
    c = MaskRNG.from_ids(0, 0, torch.tensor([1, 4, 8]))
    assert torch.equal(a.fold().keys, b.fold().keys)
    assert not torch.equal(a.fold().keys, c.fold().keys)


# ============================================================================ counts
def test_mask_counts_anchor_values():
    for ratio, masked in ((0.75, 384), (400 / 512, 400), (0.8, 410), (0.0, 0)):
        m, k = mask_counts(None, 512, ratio, "cpu", batch=3)
        assert m.tolist() == [masked] * 3 and k.tolist() == [512 - masked] * 3
    pad = torch.zeros(3, 512, dtype=torch.bool)
    pad[1, 500:] = True
    pad[2, :] = True  # fully padded row: nothing to mask
    m, k = mask_counts(pad, 512, 0.75, None)
    assert m.tolist() == [384, 500 - 125, 0] and k.tolist() == [128, 125, 0]
    m, k = mask_counts(None, 10, 0.99, "cpu")
    assert m.tolist() == [9] and k.tolist() == [1]  # at least one token kept


def _trailing_time_padding(B, grid, token_order, gen):
    """Random trailing time padding for each row, in the given token order (row 0 unpadded)."""
    n_t, n_f = grid
    lengths = torch.randint(max(1, n_t // 3), n_t + 1, (B,), generator=gen)
    lengths[0] = n_t
    pad_grid = torch.arange(n_t).view(1, n_t, 1).expand(B, n_t, n_f) >= lengths.view(B, 1, 1)
    if token_order == "time_major":
        return pad_grid.reshape(B, -1)
    return pad_grid.transpose(1, 2).reshape(B, -1)


def _scattered_padding(B, T, gen):
    pad = torch.rand(B, T, generator=gen) < 0.3
    pad[0] = False
    return pad


STRATEGIES = {
    "random": lambda rng, grid, order, ratio, pad: random_mask(rng, rng.batch, grid[0] * grid[1], ratio, pad),
    "cluster": lambda rng, grid, order, ratio, pad: cluster_mask(rng, grid, ratio, order, padding_mask=pad),
    "cluster_batch": lambda rng, grid, order, ratio, pad: cluster_mask(
        rng, grid, ratio, order, padding_mask=pad, same_for_batch=True
    ),
    "eat": lambda rng, grid, order, ratio, pad: inverse_block_mask(rng, grid, ratio, padding_mask=pad),
    "eat_flex": lambda rng, grid, order, ratio, pad: inverse_block_mask(
        rng, grid, ratio, block=[(6, 4), (5, 5), (8, 3)], padding_mask=pad
    ),
}
GRIDS = [((64, 8), "time_major"), ((64, 8), "freq_major"), ((512, 1), "time_major"), ((8, 64), "time_major")]


COUNT_CASES = [
    (name, grid, order)
    for name in STRATEGIES
    for grid, order in GRIDS
    if not (name.startswith("eat") and order != "time_major")  # EAT masks are time-major only
]


@pytest.mark.parametrize("name,grid,order", COUNT_CASES)
@pytest.mark.parametrize("B", [1, 5, 16])
@pytest.mark.parametrize("padding", [None, "trailing", "scattered"])
def test_exact_counts(name, grid, order, B, padding):
    gen = torch.Generator().manual_seed(B * 7 + len(name))
    T = grid[0] * grid[1]
    if padding == "trailing":
        pad = _trailing_time_padding(B, grid, order, gen)
    elif padding == "scattered":
        pad = _scattered_padding(B, T, gen)
    else:
        pad = None
    for ratio in (0.75, 400 / 512, 0.8, 0.3):
        rng = MaskRNG.from_ids(11, 3, torch.arange(B))
        mask = STRATEGIES[name](rng, grid, order, ratio, pad)
        assert mask.shape == (B, T) and mask.dtype == torch.bool
        n_valid = [T] * B if pad is None else (~pad).sum(1).tolist()
        expected = [n - n_kept_of(n, ratio) for n in n_valid]
        assert mask.sum(1).tolist() == expected
        if pad is not None:
            assert not bool((mask & pad).any()), "padding must never be masked"


def test_counts_512_tokens():
    rng = MaskRNG.from_ids(0, 0, torch.arange(8))
    assert random_mask(rng, 8, 512, 0.75).sum(1).eq(384).all()
    assert cluster_mask(rng, (64, 8), 400 / 512, "freq_major").sum(1).eq(400).all()
    m = inverse_block_mask(rng)
    assert m.sum(1).eq(410).all() and (~m).sum(1).eq(102).all()


# ============================================================================ reproducibility
def _multi_eat(rng, pad=None):
    return multi_mask(inverse_block_mask, rng, 16, padding_mask=pad)


REPRO = {
    "random": lambda rng: random_mask(rng, rng.batch, 512, 0.75),
    "cluster_tm": lambda rng: cluster_mask(rng, (64, 8), 0.75),
    "cluster_fm": lambda rng: cluster_mask(rng, (64, 8), 400 / 512, "freq_major"),
    "eat": lambda rng: inverse_block_mask(rng),
    "eat_flex": lambda rng: inverse_block_mask(rng, block=[(6, 4), (5, 5), (8, 3)]),
}


@pytest.mark.parametrize("name", list(REPRO))
def test_reproducible_regardless_of_batch(name):
    fn = REPRO[name]
    full = fn(MaskRNG.from_ids(7, 2, torch.arange(8)))
    sub = fn(MaskRNG.from_ids(7, 2, torch.tensor([5, 3])))
    assert torch.equal(sub[0], full[5]) and torch.equal(sub[1], full[3])
    again = fn(MaskRNG.from_ids(7, 2, torch.arange(8)))
    assert torch.equal(again, full)
    other_epoch = fn(MaskRNG.from_ids(7, 3, torch.arange(8)))
    assert not torch.equal(other_epoch, full)
    other_seed = fn(MaskRNG.from_ids(8, 2, torch.arange(8)))
    assert not torch.equal(other_seed, full)
    # rows of one batch differ from each other
    assert len({tuple(r.tolist()) for r in full}) == 8


def test_reproducible_clones():
    full = _multi_eat(MaskRNG.from_ids(7, 2, torch.arange(8)))
    sub = _multi_eat(MaskRNG.from_ids(7, 2, torch.tensor([5, 3])))
    assert full.shape == (128, 512)
    assert torch.equal(sub[:16], full[5 * 16:6 * 16]) and torch.equal(sub[16:], full[3 * 16:4 * 16])


@pytest.mark.parametrize(
    "name,order",
    [("random", "time_major"), ("cluster", "time_major"), ("cluster", "freq_major"), ("eat", "time_major")],
)
def test_same_mask_whatever_the_padded_length(name, order):
    """A clip with n valid time steps gets the same mask whether the batch is padded to 48 or 64 steps."""
    n_f = 1 if name == "random" else 8
    ids = torch.tensor([3, 17])
    lengths = torch.tensor([40, 48])
    masks = {}
    for n_t in (48, 64):
        grid = (n_t, n_f)
        pad_grid = torch.arange(n_t).view(1, n_t, 1).expand(2, n_t, n_f) >= lengths.view(2, 1, 1)
        pad = pad_grid.reshape(2, -1) if order == "time_major" else pad_grid.transpose(1, 2).reshape(2, -1)
        rng = MaskRNG.from_ids(0, 1, ids)
        if name == "random":
            m = random_mask(rng, 2, n_t, 0.75, pad)
        elif name == "cluster":
            m = cluster_mask(rng, grid, 0.75, order, padding_mask=pad)
        else:
            m = inverse_block_mask(rng, grid, 0.8, padding_mask=pad)
        g = m.view(2, n_t, n_f) if order == "time_major" else m.view(2, n_f, n_t).transpose(1, 2)
        masks[n_t] = g[:, :48]
    assert torch.equal(masks[48], masks[64])


def test_same_for_batch():
    rng = MaskRNG.from_ids(0, 0, torch.tensor([1, 2, 3, 4]))
    m = cluster_mask(rng, (64, 8), 0.75, same_for_batch=True)
    assert bool((m == m[0]).all())
    # order-independent (hash of the multiset of keys), changes with the batch content
    m2 = cluster_mask(MaskRNG.from_ids(0, 0, torch.tensor([4, 2, 3, 1])), (64, 8), 0.75, same_for_batch=True)
    m3 = cluster_mask(MaskRNG.from_ids(0, 0, torch.tensor([4, 2, 3, 5])), (64, 8), 0.75, same_for_batch=True)
    assert torch.equal(m, m2) and not torch.equal(m, m3)
    # with padding the rows share the cluster sequence and differ only by their valid region
    pad = torch.zeros(2, 512, dtype=torch.bool)
    pad[1, 256:] = True
    mp = cluster_mask(MaskRNG.from_ids(0, 0, torch.tensor([1, 2])), (64, 8), 0.5, padding_mask=pad, same_for_batch=True)
    assert mp.sum(1).tolist() == [256, 128] and not bool((mp & pad).any())


# ============================================================================ cluster statistics
def test_cluster_sizes_used_equally():
    rng = MaskRNG.from_ids(5, 0, torch.arange(3000))
    _, sizes = cluster_mask_with_sizes(rng, (64, 8), 0.75)
    frac = torch.bincount(sizes, minlength=6)[3:].float() / 3000
    assert torch.allclose(frac, torch.full((3,), 1 / 3), atol=0.04)
    _, s1 = cluster_mask_with_sizes(MaskRNG.from_ids(5, 0, torch.arange(10)), (64, 8), 0.75, same_for_batch=True)
    assert len(set(s1.tolist())) == 1


@pytest.mark.parametrize("ratio,sizes,N", [(0.75, (3, 4, 5), 400), (0.3, (3, 4, 5), 600), (16 / 512, (4,), 1500)])
def test_cluster_matches_slow_reference(ratio, sizes, N):
    grid = (64, 8)
    rnd = random.Random(1234)
    ref = [ref_cluster(rnd, grid, ratio, sizes) for _ in range(N)]
    ours = cluster_mask(MaskRNG.from_ids(1234, 0, torch.arange(N)), grid, ratio, cluster_sizes=sizes)
    ours = ours.view(N, *grid).tolist()
    # per-position profile (aggregated per frequency row and per block of 8 time steps)
    for a, b in zip(column_rate(ref), column_rate(ours)):
        assert abs(a - b) < 0.04
    for a, b in zip(time_bin_rate(ref), time_bin_rate(ours)):
        assert abs(a - b) < 0.05
    # connected regions: number per mask and mean size
    nc_ref, size_ref, comps_ref = comp_stats(ref)
    nc_our, size_our, comps_our = comp_stats(ours)
    assert abs(nc_ref - nc_our) < 0.1 * nc_ref
    assert abs(size_ref - size_our) < 0.1 * size_ref
    if len(sizes) == 1:  # one 4x4 cluster (possibly clipped) + a piece of the next: compare the histograms
        h_ref = Counter(s for c in comps_ref for s in c)
        h_our = Counter(s for c in comps_our for s in c)
        for s in (1, 4, 8, 12, 16):
            assert abs(h_ref[s] - h_our[s]) < 0.25 * max(h_ref[s], 40), (s, h_ref[s], h_our[s])


def test_cluster_profile_is_flat_and_clusters_are_square():
    N = 2000
    m = cluster_mask(MaskRNG.from_ids(3, 0, torch.arange(N)), (64, 8), 0.75).float().mean(0)
    assert float((m - 0.75).abs().max()) < 0.07  # every position masked ~75 % of the time
    fm = cluster_mask(MaskRNG.from_ids(3, 0, torch.arange(N)), (64, 8), 0.75, "freq_major")
    assert float((fm.float().mean(0) - 0.75).abs().max()) < 0.07
    # with a small count, a single cluster size 3 and no clipping possible on a wide grid: a 3x3 square
    rng = MaskRNG.from_ids(0, 0, torch.arange(200))
    sq = cluster_mask(rng, (32, 32), 9 / 1024, cluster_sizes=(3,)).view(200, 32, 32)
    n_square = 0
    for g in sq:
        idx = g.nonzero()
        (t0, f0), (t1, f1) = idx.min(0).values.tolist(), idx.max(0).values.tolist()
        n_square += int(t1 - t0 == 2 and f1 - f0 == 2)
    assert n_square > 150  # only windows clipped by an edge (~12 %) or pieces of two windows are not squares


def test_cluster_token_orders_agree():
    """freq_major mask = the time_major mask of the same draws, re-flattened."""
    rng_a = MaskRNG.from_ids(0, 0, torch.arange(6))
    rng_b = MaskRNG.from_ids(0, 0, torch.arange(6))
    tm = cluster_mask(rng_a, (64, 8), 0.75, "time_major").view(6, 64, 8)
    fm = cluster_mask(rng_b, (64, 8), 0.75, "freq_major").view(6, 8, 64).transpose(1, 2)
    assert torch.equal(tm, fm)


def test_cluster_fallback_when_candidates_run_out(monkeypatch):
    monkeypatch.setattr(masking, "_num_candidates", lambda *args: 3)  # far too few clusters: random fill
    rng = MaskRNG.from_ids(0, 0, torch.arange(4))
    m = cluster_mask(rng, (64, 8), 0.9)
    assert m.sum(1).eq(512 - n_kept_of(512, 0.9)).all()


# ============================================================================ EAT
def test_eat_counts_and_defaults():
    rng = MaskRNG.from_ids(0, 0, torch.arange(48))
    m = multi_mask(inverse_block_mask, rng, 16)
    assert m.shape == (768, 512)
    assert m.sum(1).eq(410).all() and (~m).sum(1).eq(102).all()
    # the 16 clones of a clip differ from each other
    for b in range(3):
        rows = {tuple(r.tolist()) for r in m[b * 16:(b + 1) * 16]}
        assert len(rows) == 16
    # large model settings: 0.75 / adjust 0.1 -> 128 kept
    m_l = inverse_block_mask(MaskRNG.from_ids(0, 0, torch.arange(4)), mask_ratio=0.75, mask_prob_adjust=0.1)
    assert (~m_l).sum(1).eq(128).all()


def test_eat_drop_and_add_paths():
    rng = MaskRNG.from_ids(0, 0, torch.arange(16))
    many = inverse_block_mask(rng, mask_prob_adjust=0.5)  # blocks cover too much -> drop
    few = inverse_block_mask(rng, mask_prob_adjust=-0.15, block=(2, 2))  # too little -> add random cells
    assert (~many).sum(1).eq(102).all() and (~few).sum(1).eq(102).all()


def test_eat_matches_slow_reference():
    N = 400
    rnd = random.Random(99)
    ref = [ref_eat(rnd) for _ in range(N)]
    kept = (~inverse_block_mask(MaskRNG.from_ids(99, 0, torch.arange(N)))).view(N, 64, 8).tolist()
    col_ref, col_our = column_rate(ref), column_rate(kept)
    for a, b in zip(col_ref, col_our):
        assert abs(a - b) < 0.03
    # edge-collapse: clamped blocks make the edge frequency columns kept less often than the middle ones
    for col in (col_ref, col_our):
        assert col[0] < col[3] - 0.04 and col[7] < col[4] - 0.04
    nb_ref = sum(n_with_neighbour(m) for m in ref) / N
    nb_our = sum(n_with_neighbour(m) for m in kept) / N
    assert abs(nb_ref - nb_our) < 2.0
    nc_ref, _, _ = comp_stats(ref)
    nc_our, _, _ = comp_stats(kept)
    assert abs(nc_ref - nc_our) < 0.1 * nc_ref


def test_eat_flexible_blocks():
    rng = MaskRNG.from_ids(0, 0, torch.arange(600))
    m, shape_idx = inverse_block_mask_with_shapes(rng, block=[(6, 4), (5, 5), (8, 3)])
    assert (~m).sum(1).eq(102).all()
    frac = torch.bincount(shape_idx, minlength=3).float() / 600
    assert torch.allclose(frac, torch.full((3,), 1 / 3), atol=0.07)
    # a one-element list behaves like the tuple
    a = inverse_block_mask(MaskRNG.from_ids(1, 0, torch.arange(8)), block=[(5, 5)])
    b = inverse_block_mask(MaskRNG.from_ids(1, 0, torch.arange(8)), block=(5, 5))
    assert torch.equal(a, b)
    # 8x3 blocks are taller (time) than wide: kept runs along time are longer than with 6x4
    def mean_time_run(mask):
        g = (~mask).view(-1, 64, 8).float()
        return float((g[:, 1:] * g[:, :-1]).sum() / g.sum())

    tall = inverse_block_mask(MaskRNG.from_ids(2, 0, torch.arange(300)), block=(8, 3))
    wide = inverse_block_mask(MaskRNG.from_ids(2, 0, torch.arange(300)), block=(3, 8))
    assert mean_time_run(tall) > mean_time_run(wide)


def test_multi_mask_random_batch_argument():
    rng = MaskRNG.from_ids(0, 0, torch.arange(3))
    m = multi_mask(random_mask, rng, 4, 3, 100, 0.75)
    assert m.shape == (12, 100) and m.sum(1).eq(75).all()
    m2 = multi_mask(random_mask, MaskRNG.from_ids(0, 0, torch.arange(3)), 4, batch=3, num_tokens=100, mask_ratio=0.75)
    assert torch.equal(m, m2)
    pad = torch.zeros(3, 100, dtype=torch.bool)
    pad[2, 50:] = True
    m3 = multi_mask(random_mask, MaskRNG.from_ids(0, 0, torch.arange(3)), 4, 3, 100, 0.75, padding_mask=pad)
    assert m3.sum(1).tolist() == [75] * 8 + [50 - 12] * 4 and not bool((m3[8:] & pad[2]).any())


# ============================================================================ gather / scatter
def test_gather_visible_and_scatter_back_round_trip():
    gen = torch.Generator().manual_seed(0)
    B, T, D = 4, 20, 3
    x = torch.randn(B, T, D, generator=gen, requires_grad=True)
    mask = torch.rand(B, T, generator=gen) < 0.6
    mask[0] = False  # row 0: everything visible
    mask[1] = True  # row 1: nothing visible
    pad = torch.zeros(B, T, dtype=torch.bool)
    pad[2, 15:] = True
    mask[2, 15:] = False  # padded positions reported as unmasked must still be dropped
    x_vis, ids_keep, vis_pad, ids_restore = gather_visible(x, mask, pad)
    visible = ~mask & ~pad
    n_vis = visible.sum(1)
    L = int(n_vis.max())
    assert x_vis.shape == (B, L, D) and ids_keep.shape == (B, L) and vis_pad.shape == (B, L)
    assert L == T
    for b in range(B):
        keep = visible[b].nonzero().flatten()
        n = keep.numel()
        assert torch.equal(ids_keep[b, :n], keep)  # original order
        assert vis_pad[b].tolist() == [False] * n + [True] * (L - n)
        assert torch.equal(x_vis[b, :n], x[b, keep])
        assert bool((ids_restore[b][keep] < n).all()) and bool((ids_restore[b][~visible[b]] >= n).all())
        assert torch.equal(torch.sort(ids_restore[b]).values, torch.arange(T))
    fill = torch.tensor([7.0, 8.0, 9.0], requires_grad=True)
    out = scatter_back(x_vis, ids_keep, vis_pad, T, fill)
    assert out.shape == (B, T, D)
    expected = torch.where(visible.unsqueeze(-1), x, fill.view(1, 1, D).expand(B, T, D))
    assert torch.equal(out, expected)
    # gradients: x only at visible positions, fill once per hidden position
    out.sum().backward()
    assert torch.equal(x.grad, visible.unsqueeze(-1).float().expand(B, T, D))
    assert torch.equal(fill.grad, torch.full((D,), float((~visible).sum())))
    # full (B, T, D) fill (e.g. EAT's noise)
    noise = torch.randn(B, T, D, generator=gen)
    out2 = scatter_back(x_vis.detach(), ids_keep, vis_pad, T, noise)
    assert torch.equal(out2, torch.where(visible.unsqueeze(-1), x.detach(), noise))


def test_gather_visible_equal_counts_with_masks():
    rng = MaskRNG.from_ids(0, 0, torch.arange(6))
    m = inverse_block_mask(rng)
    x = torch.arange(6 * 512, dtype=torch.float32).view(6, 512, 1)
    x_vis, ids_keep, vis_pad, _ = gather_visible(x, m)
    assert x_vis.shape == (6, 102, 1) and not bool(vis_pad.any())
    assert bool((ids_keep[:, 1:] > ids_keep[:, :-1]).all())
    back = scatter_back(x_vis, ids_keep, vis_pad, 512, torch.tensor([-1.0]))
    assert torch.equal(back[~m], x[~m]) and bool((back[m] == -1).all())


def test_masks_under_autocast_and_no_global_rng_use():
    state = torch.random.get_rng_state()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rng = MaskRNG.from_ids(0, 0, torch.arange(4))
        m = cluster_mask(rng, (64, 8), 0.75)
        e = inverse_block_mask(rng)
        r = random_mask(rng, 4, 512, 0.75)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert m.sum(1).eq(384).all() and e.sum(1).eq(410).all() and r.sum(1).eq(384).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_masks_identical_to_cpu():
    ids = torch.arange(12)
    for fn in list(REPRO.values()) + [_multi_eat]:
        cpu = fn(MaskRNG.from_ids(5, 1, ids))
        gpu = fn(MaskRNG.from_ids(5, 1, ids.cuda()))
        assert gpu.device.type == "cuda" and torch.equal(cpu, gpu.cpu())
    pad = torch.zeros(12, 512, dtype=torch.bool)
    pad[3, 300:] = True
    cpu = cluster_mask(MaskRNG.from_ids(5, 1, ids), (64, 8), 0.75, padding_mask=pad)
    gpu = cluster_mask(MaskRNG.from_ids(5, 1, ids.cuda()), (64, 8), 0.75, padding_mask=pad.cuda())
    assert torch.equal(cpu, gpu.cpu())
