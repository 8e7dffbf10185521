"""The CPU dropout and the CPU attention-with-dropout path of core/blocks.py (the fast path of MAE-AST's training)."""
import math

import pytest
import torch
import torch.nn.functional as F

from maeast_fairseq.core import blocks
from maeast_fairseq.core.blocks import Dropout, SelfAttention, cpu_dropout, cpu_dropout_attention


def test_cpu_dropout_rate_scale_and_gradient():
    torch.manual_seed(0)
    n, p = 1_000_003, 0.1  # odd size: the last 64-bit word is only partly used
    x = torch.randn(n, requires_grad=True)
    y = cpu_dropout(x, p)
    dropped = y == 0
    rate = dropped.double().mean().item()
    # binomial: 6 standard deviations of the observed rate around the 16-bit-rounded p
    p16 = round(p * 2 ** 16) / 2 ** 16
    assert abs(rate - p16) < 6 * math.sqrt(p16 * (1 - p16) / n), rate
    kept = ~dropped
    eps = torch.finfo(torch.float32).eps  # x * (1 / (1 - p)) vs x / (1 - p): one rounding apart
    torch.testing.assert_close(y[kept], x[kept] / (1 - p), rtol=2 * eps, atol=0)
    (y * 3.0).sum().backward()
    # gradient: the same mask and scale
    torch.testing.assert_close(x.grad, kept.float() * 3.0 / (1 - p), rtol=2 * eps, atol=0)


def test_cpu_dropout_each_16_bit_draw_is_used_and_independent():
    """All four 16-bit parts of a 64-bit word drive elements: the rate is right at every position mod 4 and
    neighbours are not correlated (a wrong cut of the words would show here)."""
    torch.manual_seed(1)
    y = cpu_dropout(torch.ones(400_000), 0.5).view(-1, 4) == 0
    for j in range(4):
        assert abs(y[:, j].double().mean().item() - 0.5) < 6 * math.sqrt(0.25 / y.shape[0])
    both = (y[:, 0] & y[:, 1]).double().mean().item()
    assert abs(both - 0.25) < 6 * math.sqrt(0.25 * 0.75 / y.shape[0])


def test_cpu_dropout_is_reproducible_with_the_global_seed_and_off_in_eval():
    torch.manual_seed(5)
    a = cpu_dropout(torch.ones(1000), 0.3)
    torch.manual_seed(5)
    b = cpu_dropout(torch.ones(1000), 0.3)
    assert torch.equal(a, b)
    d = Dropout(0.3).eval()
    x = torch.randn(10)
    assert d(x) is x
    assert cpu_dropout(x, 0.0) is x


@pytest.mark.parametrize("masked", [False, True])
def test_cpu_dropout_attention_without_dropout_equals_sdpa(monkeypatch, masked):
    """With the dropout made the identity, the unfused path is SDPA's attention (float32 rounding: a softmax of
    64-dim dot products, values of unit scale; bound 1e-5 absolute, ~100 ulps)."""
    monkeypatch.setattr(blocks, "cpu_dropout", lambda x, p, training=True: x)
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 3, 20, 16, generator=g) for _ in range(3))
    mask = None
    if masked:
        valid = torch.arange(20)[None] < torch.tensor([20, 13])[:, None]
        mask = valid[:, None, None, :]
    ours = cpu_dropout_attention(q, k, v, mask, 0.1)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)


def test_attention_module_takes_the_cpu_path_in_training_and_sdpa_in_eval(monkeypatch):
    calls = []
    real = blocks.cpu_dropout_attention
    monkeypatch.setattr(blocks, "cpu_dropout_attention", lambda *a: calls.append(1) or real(*a))
    attn = SelfAttention(32, 4, attention_dropout=0.1)
    x = torch.randn(2, 10, 32)
    attn.train()(x).sum().backward()
    assert calls == [1]
    with torch.no_grad():
        attn.eval()(x)
    assert calls == [1]
    # the dropped probabilities really are dropped: training outputs vary with the seed, eval outputs do not
    torch.manual_seed(0)
    a = attn.train()(x)
    torch.manual_seed(1)
    b = attn.train()(x)
    assert not torch.allclose(a, b)


def test_cpu_dropout_attention_under_bf16_autocast_is_finite_and_close():
    """bf16 autocast: matmuls in bf16 (relative error a few 2^-8), the probabilities' dropout unchanged."""
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 3, 20, 16, generator=g) for _ in range(3))
    torch.manual_seed(0)
    ref = cpu_dropout_attention(q, k, v, None, 0.1)
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = cpu_dropout_attention(q, k, v, None, 0.1)
    assert low.dtype == torch.bfloat16
    err = (low.float() - ref).norm() / ref.norm()
    assert err < 8 * 2.0 ** -8, float(err)
