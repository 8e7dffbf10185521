"""Numerics (issue 7, part 4): low precision, extreme input levels and EAT teacher-target collapse.

* **bf16 / fp16**: the three core models (tiny) run forward + backward under ``torch.autocast`` on CPU (bfloat16
  always; float16 where this torch's CPU autocast supports it) and with half-precision weights (fairseq
  ``--bf16`` / ``--fp16`` cast the model); the losses come out float32, finite and close to float32, with finite
  gradients close to float32's. The objectives (InfoNCE, MSE, EAT targets / UFO terms / ``target_var``) compute in
  float32 whatever the autocast state, and EAT's teacher runs in float32. The same comparison runs on CUDA when
  there is one (skipped otherwise).
* **quiet / silent / loud audio**: digital silence, 1e-7 amplitude, full-scale clipping (square wave, clipped noise)
  and float audio that was not scaled down from int16 / int32 give finite fbank features and finite normalised
  inputs, and finite losses and gradients in all three models (float32 and bfloat16 autocast).
* **EAT collapse**: a teacher whose targets no longer vary (its FFN outputs zeroed) is detected from ``target_var``,
  logged as a rate-limited warning and counted in the ``target_collapsed`` metric; healthy models (also on a batch
  of silence) do not warn.

Tolerances (relative to the float32 run of the same model, input, mask and noise):
the loss within ``LOSS_RTOL`` and the gradient (all parameters, flattened) within ``GRAD_RTOL`` in relative L2 norm.
They are a few times the format's machine epsilon (bfloat16 2**-7 = 7.8e-3, float16 2**-10 = 9.8e-4): the tiny
models have two layers, so activations carry a few roundings, while the losses themselves are float32. Measured on
CPU (torch 2.13): loss <= 1.3e-3 (bf16) / 1.1e-4 (fp16), gradient <= 8.7e-3 (bf16) / 2.7e-3 (fp16).
"""
import contextlib
import logging
import math

import pytest
import torch
from conftest import NO_DROPOUT, SSAST_PATCH, tiny_core

from maeast_fairseq.core.losses import (
    eat_frame_loss,
    eat_targets,
    eat_utterance_loss,
    info_nce,
    masked_mse,
    regression_var,
    ufo_loss,
)
from maeast_fairseq.core.rng import MaskRNG
from maeast_fairseq.fbank import Fbank, FbankConfig

MODELS = ("mae_ast", "ssast", "eat")
FRAMES = 256  # 16 time patches x 8 frequency patches
LOSS_RTOL = {torch.bfloat16: 1e-2, torch.float16: 2e-3}
GRAD_RTOL = {torch.bfloat16: 5e-2, torch.float16: 1.5e-2}
EAT_LOGGER = "maeast_fairseq.criterions.eat_ufo"  # the criterion owns the collapse monitor


# ------------------------------------------------------------------------------------------------------- helpers
TINY_OVERRIDES = {"mae_ast": NO_DROPOUT, "ssast": dict(SSAST_PATCH, target_frames=FRAMES), "eat": {}}


def tiny(name, **kw):
    """The tiny models of conftest (as test_mae_ast / test_ssast / test_eat), without dropout or layerdrop."""
    return tiny_core(name, **{**TINY_OVERRIDES[name], **kw})


def objective(name, out):
    """The loss the criterion optimises: MAE-AST / SSAST ``1 x InfoNCE + 10 x MSE``, EAT's UFO / sample_size."""
    if name == "eat":
        total, _, _, m = ufo_loss(out)
        return total / m
    terms = out.get("terms")
    a, b = (terms["nce"], terms["mse"]) if terms else (out, out)
    nce, _ = info_nce(a["nce_pred"], a["target"], a["target_valid"])
    return nce + 10.0 * masked_mse(b["pred"], b["target"], b["target_valid"])


def run(name, model, x, *, autocast=None, device="cpu"):
    """Forward + objective (under autocast to ``autocast`` if given, as fairseq's --amp does) + backward.

    Returns (model output, loss, flattened float32 gradient of every parameter that got one)."""
    torch.manual_seed(123)  # EAT's decoder noise comes from the global generator
    rng = MaskRNG.from_ids(1, 1, torch.arange(x.shape[0]))
    ctx = torch.autocast(device, dtype=autocast) if autocast is not None else contextlib.nullcontext()
    model.train()
    with ctx:
        out = model(x, None, rng)
        loss = objective(name, out)
    model.zero_grad(set_to_none=True)
    loss.backward()
    grad = torch.cat([p.grad.detach().float().flatten() for p in model.parameters() if p.grad is not None])
    return out, loss.detach(), grad


def rel_l2(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30))


def cpu_autocast_supports(dtype) -> bool:
    """True if CPU autocast really computes matmuls in ``dtype`` (old torch: bfloat16 only, with a warning)."""
    try:
        with torch.autocast("cpu", dtype=dtype):
            return torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == dtype
    except (RuntimeError, ValueError):
        return False


def low_precision(dtype):
    if dtype == torch.float16 and not cpu_autocast_supports(dtype):
        pytest.skip(f"CPU autocast of this torch ({torch.__version__}) does not support float16")
    return dtype


LOW = [pytest.param(torch.bfloat16, id="bf16"), pytest.param(torch.float16, id="fp16")]


def spectrogram(batch=2, seed=1):
    return torch.randn(batch, FRAMES, 128, generator=torch.Generator().manual_seed(seed))


def assert_close_to_float32(name, dtype, ref, got):
    (_, loss32, grad32), (_, loss, grad) = ref, got
    assert loss.dtype == torch.float32, f"{name}: the loss is {loss.dtype}, not float32"
    assert torch.isfinite(loss) and torch.isfinite(grad).all(), f"{name}: non-finite loss or gradient"
    assert grad.numel() == grad32.numel()
    assert abs(float(loss - loss32)) <= LOSS_RTOL[dtype] * abs(float(loss32)), \
        f"{name}: loss {float(loss):.6f} vs float32 {float(loss32):.6f}"
    assert rel_l2(grad, grad32) <= GRAD_RTOL[dtype], f"{name}: gradient rel. error {rel_l2(grad, grad32):.2e}"


# ------------------------------------------------------------------------------------------------ bf16 / fp16
@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("name", MODELS)
def test_cpu_autocast_forward_backward_is_finite_and_close_to_float32(name, dtype):
    dtype = low_precision(dtype)
    x = spectrogram()
    ref = run(name, tiny(name), x)
    got = run(name, tiny(name), x, autocast=dtype)
    # autocast really ran: the heads' outputs are in the low precision (the losses cast them to float32)
    head = got[0]["pred"]
    assert head.dtype == dtype
    assert_close_to_float32(name, dtype, ref, got)


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("name", MODELS)
def test_half_precision_weights_forward_backward_is_finite_and_close_to_float32(name, dtype):
    """fairseq --bf16 / --fp16 cast the model and the input (no autocast); EAT's teacher stays float32."""
    if dtype == torch.float16:
        low_precision(dtype)
    x = spectrogram()
    ref = run(name, tiny(name), x)
    model = tiny(name).to(dtype)
    got = run(name, model, x.to(dtype))
    if name == "eat":
        assert all(p.dtype == torch.float32 for p in model.teacher.parameters())
        assert got[0]["target"].dtype == torch.float32
    assert_close_to_float32(name, dtype, ref, got)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA autocast needs a GPU")
@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("name", MODELS)
def test_cuda_autocast_forward_backward_is_finite_and_close_to_float32(name, dtype, monkeypatch):
    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)  # a float32 reference, not TF32
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    x = spectrogram().cuda()
    ref = run(name, tiny(name).cuda(), x, device="cuda")
    got = run(name, tiny(name).cuda(), x, autocast=dtype, device="cuda")
    head = got[0]["pred"]
    assert head.dtype == dtype
    assert_close_to_float32(name, dtype, ref, got)


OBJECTIVES = {
    "info_nce[targets]": lambda p, t, v: info_nce(p, t, v, orientation="targets")[0],
    "info_nce[predictions]": lambda p, t, v: info_nce(p, t, v, orientation="predictions")[0],
    "info_nce accuracy": lambda p, t, v: info_nce(p, t, v)[1],
    "masked_mse": lambda p, t, v: masked_mse(p, t, v),
    "eat_frame_loss": lambda p, t, v: eat_frame_loss(p[v], t[v]),
    "eat_utterance_loss": lambda p, t, v: eat_utterance_loss(p[:, 0], t[:, 0], 78_720),
    "eat_targets": lambda p, t, v: eat_targets([p, t], 2),
    "eat_targets (padding)": lambda p, t, v: eat_targets([p, t], 2, padding_mask=~v),
    "regression_var": lambda p, t, v: regression_var(p),
}


@pytest.mark.parametrize("dtype", LOW)
def test_objectives_compute_in_float32_under_autocast(dtype):
    """Low-precision inputs under autocast give exactly the float32 result on the same (representable) values:
    the logits, squared errors, normalisations and statistics are float32 (a bfloat16 matmul would round the
    InfoNCE logits by ~4e-3 relative)."""
    dtype = low_precision(dtype)
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(3, 40, 32, generator=g).to(dtype)
    target = (3.0 * torch.randn(3, 40, 32, generator=g)).to(dtype)
    valid = torch.ones(3, 40, dtype=torch.bool)
    valid[1, 30:] = False
    with torch.autocast("cpu", dtype=dtype):
        # control: autocast is active, so a plain matmul of the float32 values would be low precision
        assert torch.bmm(pred.float(), target.float().transpose(1, 2)).dtype == dtype
        got = {k: f(pred, target, valid) for k, f in OBJECTIVES.items()}
    for k, f in OBJECTIVES.items():
        ref = f(pred.float(), target.float(), valid)
        assert got[k].dtype == torch.float32, k
        torch.testing.assert_close(got[k], ref, rtol=1e-6, atol=1e-6, msg=k)


def test_objectives_stay_finite_beyond_the_float16_range():
    """Half-precision activations whose products / squares exceed float16's 65504 (InfoNCE logits of 256-dim
    predictions ~20, errors of 300) give the finite float32 losses, with and without autocast."""
    g = torch.Generator().manual_seed(0)
    pred = (20.0 + torch.randn(2, 8, 256, generator=g)).half()
    target = (20.0 + torch.randn(2, 8, 256, generator=g)).half()
    assert not torch.isfinite(torch.bmm(pred, target.transpose(1, 2))).all()  # what half precision would give
    far = torch.full((16, 64), 300.0, dtype=torch.float16)
    zero = torch.zeros(16, 64, dtype=torch.float16)
    cases = {
        "info_nce": (lambda: info_nce(pred, target)[0], lambda: info_nce(pred.float(), target.float())[0]),
        "masked_mse": (lambda: masked_mse(far, zero), lambda: torch.tensor(90_000.0)),
        "eat_frame_loss": (lambda: eat_frame_loss(far, zero), lambda: torch.tensor(16 * 64 * 90_000.0 / 8)),
        "eat_utterance_loss": (lambda: eat_utterance_loss(far, zero, 78_720),
                               lambda: torch.tensor(78_720 * 16 * 64 * 90_000.0 / 8)),
    }
    autocast_fp16 = cpu_autocast_supports(torch.float16)
    for k, (fn, ref) in cases.items():
        for ctx in ([contextlib.nullcontext(), torch.autocast("cpu", dtype=torch.float16)] if autocast_fp16
                    else [contextlib.nullcontext()]):
            with ctx:
                v = fn()
            assert v.dtype == torch.float32 and torch.isfinite(v), k
            torch.testing.assert_close(v, ref(), rtol=1e-5, atol=1e-5, msg=k)


@pytest.mark.parametrize("teacher_autocast", [True, False], ids=["teacher_autocast", "teacher_float32"])
@pytest.mark.parametrize("dtype", LOW)
def test_eat_teacher_and_targets_under_autocast(dtype, teacher_autocast):
    """Default: the teacher's matmuls follow the autocast dtype (float32 weights), its targets are float32 and close
    to the float32 teacher's; teacher_autocast=false: a float32 teacher and the very same targets."""
    dtype = low_precision(dtype)
    m = tiny("eat", teacher_autocast=teacher_autocast)
    seen = {}
    for who, enc in (("student", m.encoder), ("teacher", m.teacher)):
        for i, block in enumerate(enc.transformer.blocks):
            block.ffn.register_forward_hook(lambda mod, inp, out, key=(who, i): seen.__setitem__(key, out.dtype))
    x = spectrogram()
    ref, _, _ = run("eat", tiny("eat"), x)
    out, _, _ = run("eat", m, x, autocast=dtype)
    assert {v for (who, _), v in seen.items() if who == "teacher"} == {dtype if teacher_autocast else torch.float32}
    assert {v for (who, _), v in seen.items() if who == "student"} == {dtype}
    assert next(m.teacher.parameters()).dtype == torch.float32
    for k in ("target", "cls_target", "target_var"):
        assert out[k].dtype == torch.float32, k
    if not teacher_autocast:  # same input, same masks, float32 teacher: the very same targets
        torch.testing.assert_close(out["target"], ref["target"], rtol=0, atol=0)
        torch.testing.assert_close(out["cls_target"], ref["cls_target"], rtol=0, atol=0)
    else:
        # the targets are layer-normalised (unit scale per token), built from matmuls whose inputs are rounded to
        # the low precision (unit roundoff u = 2^-8 bf16, 2^-11 fp16) through the tiny teacher's layers: a relative
        # error of a few u per layer; bound 8 u x layers
        u = {torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11}[dtype]
        layers = len(m.teacher.transformer.blocks)
        err = rel_l2(out["target"], ref["target"])
        assert err <= 8 * u * layers, f"targets rel. error {err:.2e} > {8 * u * layers:.2e}"


# ----------------------------------------------------------------------------------------- quiet / loud audio
SR = 16000
SAMPLES = 400 + (FRAMES - 1) * 160  # exactly FRAMES fbank frames


def _noise(seed):
    return torch.rand(SAMPLES, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _square(seed):
    t = torch.arange(SAMPLES) / SR
    s = torch.sign(torch.sin(2 * math.pi * (220.0 + 110 * seed) * t))
    return torch.where(s == 0, torch.ones_like(s), s)


SIGNALS = {  # name -> clip of seed s, in [-1, 1] unless said otherwise
    "silence": lambda s: torch.zeros(SAMPLES),
    "quiet_1e-7": lambda s: 1e-7 * _noise(s),
    "clipped_square": _square,  # +-1.0: full-scale square wave
    "clipped_noise": lambda s: (4 * _noise(s)).clamp(-1.0, 1.0),  # noise hard-clipped at full scale
    "int16_scale": lambda s: 32767.0 * _noise(s),  # int16 samples read as float without / 32768
    "int32_scale": lambda s: 2.0 ** 31 * _noise(s),  # int32 samples read as float without / 2**31
    "silence+int16": lambda s: torch.zeros(SAMPLES) if s == 0 else 32767.0 * _square(s),  # one batch, both
}
LOG_FLOOR = math.log(torch.finfo(torch.float32).eps)  # Kaldi's log floor: -15.94
NORM_MEAN, NORM_STD = -4.2677393, 4.5689974  # AudioSet statistics of the configs' dataset norm


@pytest.fixture(scope="module")
def features():
    """signal name -> (raw log-mel (2, FRAMES, 128), dataset-normalised log-mel): 2 clips per signal."""
    fb = Fbank(FbankConfig(window_type="hanning"))
    out = {}
    for k, make in SIGNALS.items():
        feats, lengths = fb(torch.stack([make(0), make(1)]))
        assert lengths.tolist() == [FRAMES, FRAMES]
        out[k] = (feats, (feats - NORM_MEAN) / (2.0 * NORM_STD))
    return out


@pytest.mark.parametrize("signal", list(SIGNALS))
def test_fbank_and_normalised_input_are_finite(signal, features):
    raw, norm = features[signal]
    assert torch.isfinite(raw).all() and torch.isfinite(norm).all()
    assert float(raw.min()) >= LOG_FLOOR - 1e-4  # nothing below Kaldi's floor
    assert float(norm.abs().max()) < 15.0  # int32-scaled audio: ~ +41 in log-mel, still O(10) normalised
    if signal in ("silence", "quiet_1e-7"):
        # -140 dBFS is below the floor (a power of float32 eps per mel bin): indistinguishable from silence
        torch.testing.assert_close(raw, torch.full_like(raw, LOG_FLOOR), rtol=0, atol=1e-4)
    if signal in ("clipped_square", "clipped_noise", "int16_scale", "int32_scale"):
        assert float(raw.max()) > 0.0


@pytest.mark.parametrize("autocast", [None, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("signal", list(SIGNALS))
def test_losses_and_gradients_are_finite_on_quiet_silent_and_loud_input(signal, name, autocast, features):
    """What each model gets in its configs: MAE-AST the raw log-mel (its BatchNorm x 0.5 normalises; a batch of
    silence has zero variance), SSAST / EAT the dataset-normalised log-mel."""
    raw, norm = features[signal]
    model = tiny(name)
    out, loss, grad = run(name, model, raw if name == "mae_ast" else norm, autocast=autocast)
    assert torch.isfinite(loss), f"{name} on {signal}: loss {float(loss)}"
    assert torch.isfinite(grad).all(), f"{name} on {signal}: non-finite gradient"
    if name == "mae_ast":
        assert torch.isfinite(out["target"]).all()  # the BatchNorm-normalised patches
    if name == "eat":
        # the positions keep even silent tokens apart: no false collapse alarm
        assert float(out["target_var"]) > 0.5


# --------------------------------------------------------------------------------------------- EAT collapse
def collapse_teacher(model):
    """Zero the teacher's FFN output projections: every layer's FFN output (the target source) becomes 0, so
    the targets no longer vary over the tokens (the student is untouched)."""
    with torch.no_grad():
        for block in model.teacher.transformer.blocks:
            block.ffn.fc2.weight.zero_()
            block.ffn.fc2.bias.zero_()
    return model


def warnings_of(caplog, word):
    return [r for r in caplog.records if r.name == EAT_LOGGER and r.levelno == logging.WARNING
            and word in r.getMessage()]


def test_collapse_monitor_threshold_rate_limit_and_recovery(caplog):
    pytest.importorskip("fairseq")
    from maeast_fairseq.criterions.eat_ufo import TargetCollapseMonitor

    caplog.set_level(logging.WARNING, logger=EAT_LOGGER)
    mon = TargetCollapseMonitor(min_target_var=0.1, warn_interval=10)
    assert not any(mon.update(v, s) for s, v in enumerate([1.0, 0.9, 0.1]))  # the floor itself is healthy
    assert not caplog.records
    flags = [mon.update(torch.tensor(1e-3), s) for s in range(3, 28)]  # collapsed at updates 3..27
    assert all(flags) and mon.collapsed_forwards == 25
    warned = warnings_of(caplog, "have collapsed")
    assert [r.args[3] for r in warned] == [3, 13, 23]  # first at once, then once per 10 updates
    assert "target_var=0.001 < min_target_var=0.1" in warned[0].getMessage()
    assert "(10 collapsed forward(s) since the last warning, 21 in all" in warned[2].getMessage()
    assert not mon.update(0.8, 28)
    assert len(warnings_of(caplog, "recovered")) == 1
    assert not mon.update(0.9, 29) and len(warnings_of(caplog, "recovered")) == 1  # once
    assert mon.update(0.0, 30) and len(warnings_of(caplog, "have collapsed")) == 4  # a new collapse warns at once
    last = warnings_of(caplog, "have collapsed")[3].getMessage()
    assert "(1 collapsed forward(s) since the last warning, 26 in all" in last  # the count restarts
    assert mon.update(float("nan"), 31)  # NaN statistics count as collapsed (warning rate-limited)
    # without steps the calls are counted; 0 disables the check
    mon = TargetCollapseMonitor(0.1, warn_interval=2)
    caplog.clear()
    for _ in range(5):
        mon.update(0.0)
    assert len(warnings_of(caplog, "have collapsed")) == 3
    off = TargetCollapseMonitor(0.0)
    assert not off.update(0.0) and off.collapsed_forwards == 0


def test_collapsed_teacher_gives_near_zero_target_var():
    x = spectrogram()
    healthy, _, _ = run("eat", tiny("eat"), x)
    collapsed, loss, grad = run("eat", collapse_teacher(tiny("eat")), x)
    assert float(healthy["target_var"]) > 0.9
    assert float(collapsed["target_var"]) < 0.01  # sqrt(1e-6) = 1e-3: the targets are ~0
    assert float(collapsed["target"].abs().max()) < 1e-3
    assert torch.isfinite(loss) and torch.isfinite(grad).all()  # still finite: only the alarm tells


def _fairseq_eat(collapsed, interval):
    pytest.importorskip("fairseq")
    from maeast_fairseq.criterions.eat_ufo import EatUfoConfig, EatUfoCriterion
    from maeast_fairseq.models.eat import EatModel, EatModelConfig

    torch.manual_seed(0)
    # decay 1: the EMA leaves the (collapsed) teacher as it is over the run
    model = EatModel(EatModelConfig(embed_dim=64, encoder_layers=2, ffn_dim=256, num_heads=4, clones=4,
                                    decoder_embed_dim=64, decoder_layers=2, average_top_k_layers=2, ema_decay=1.0,
                                    ema_end_decay=1.0))
    if collapsed:
        collapse_teacher(model)
    crit = EatUfoCriterion(EatUfoConfig(collapse_warn_interval=interval), None)
    return model.train(), crit


def _train_logs(model, crit, updates):
    x = spectrogram()
    logs = []
    for step in range(updates):
        model.set_num_updates(step)  # what fairseq's task does before every forward
        sample = {"net_input": {"fbank": x, "frame_padding": None,
                                "mask_rng": MaskRNG.from_ids(1, step, torch.arange(2))}}
        _, _, log = crit(model, sample)
        logs.append(log)
    return logs


def _reduce(logs):
    from fairseq.logging import metrics

    from maeast_fairseq.criterions.eat_ufo import EatUfoCriterion

    with metrics.aggregate() as agg:
        EatUfoCriterion.reduce_metrics(logs)
        return {k: float(v) for k, v in agg.get_smoothed_values().items()}


def test_eat_criterion_detects_logs_and_counts_a_teacher_collapse(caplog):
    caplog.set_level(logging.WARNING, logger=EAT_LOGGER)
    model, crit = _fairseq_eat(collapsed=True, interval=10)
    assert crit.cfg.min_target_var == 0.1  # the default floor (data2vec 2.0 / EAT)
    logs = _train_logs(model, crit, 25)
    warned = warnings_of(caplog, "have collapsed")
    assert len(warned) == 3, [r.getMessage() for r in warned]  # updates 0, 10, 20: rate-limited, not every step
    assert [r.args[3] for r in warned] == [0, 10, 20]
    assert "EAT teacher targets have collapsed" in warned[0].getMessage()
    assert all(log["target_collapsed"] == 1 for log in logs)
    # the train log: target_collapsed is the count of collapsed forwards in the interval, target_var its mean
    stats = _reduce(logs[:5])
    assert stats["target_collapsed"] == 5 and stats["target_var"] < 0.01


def test_eat_criterion_does_not_warn_for_a_healthy_teacher(caplog):
    caplog.set_level(logging.WARNING, logger=EAT_LOGGER)
    model, crit = _fairseq_eat(collapsed=False, interval=10)
    logs = _train_logs(model, crit, 3)
    assert not [r for r in caplog.records if r.name == EAT_LOGGER]
    stats = _reduce(logs)
    assert stats["target_collapsed"] == 0 and stats["target_var"] > 0.9


def test_cpu_attention_dropout_recomputed_in_backward_gives_the_same_values_and_gradients(monkeypatch):
    """Attention dropout on CPU runs under activation checkpointing (no (B, H, N, N) probabilities kept): the output
    and gradients equal the plain CPU dropout attention with the same RNG state, and the dropout is really applied."""
    from maeast_fairseq.core import blocks
    from maeast_fairseq.core.blocks import SelfAttention

    monkeypatch.setattr(blocks, "CPU_DROPOUT_RECOMPUTE", True)
    calls = []
    monkeypatch.setattr(blocks, "checkpoint",
                        lambda *a, **k: calls.append(1) or torch.utils.checkpoint.checkpoint(*a, **k))
    attn = SelfAttention(32, 4, attention_dropout=0.3).train()
    x = torch.randn(2, 40, 32, requires_grad=True)
    torch.manual_seed(5)
    y = attn(x)
    y.pow(2).sum().backward()
    grads = [x.grad.clone()] + [p.grad.clone() for p in attn.parameters()]

    x2 = x.detach().clone().requires_grad_(True)
    attn.zero_grad()
    b, n, d = x2.shape
    torch.manual_seed(5)
    q, k, v = attn.qkv(x2).view(b, n, 3, 4, d // 4).permute(2, 0, 3, 1, 4)
    ref = attn.proj(blocks.cpu_dropout_attention(q, k, v, None, 0.3).transpose(1, 2).reshape(b, n, d))
    ref.pow(2).sum().backward()
    assert torch.allclose(y, ref, atol=1e-6)
    for g, r in zip(grads, [x2.grad] + [p.grad for p in attn.parameters()]):
        assert torch.allclose(g, r, atol=1e-5)
    assert calls == [1]  # the recomputing path ran
    assert not torch.allclose(y, attn.eval()(x), atol=1e-3)  # dropout was on in training mode


def test_cpu_attention_dropout_in_batch_chunks_matches_its_own_recomputation(monkeypatch):
    """With a batch larger than one chunk, the chunked CPU dropout path is the same computation with and without
    activation checkpointing (same seed): forward values and every gradient equal; padding masks per clip are
    sliced with their chunk."""
    from maeast_fairseq.core import blocks

    monkeypatch.setattr(blocks, "CPU_DROPOUT_CHUNK_BYTES", 4 * 40 * 40 * 4 * 2)  # 2 clips per chunk
    q, k, v = (torch.randn(5, 4, 40, 8, requires_grad=True) for _ in range(3))
    mask = torch.ones(5, 1, 1, 40, dtype=torch.bool)
    mask[1, ..., 30:] = False  # clip 1 is padded
    torch.manual_seed(3)
    y = blocks.checkpoint(blocks._chunked_dropout_attention, q, k, v, mask, 0.25, use_reentrant=False)
    y.sum().backward()
    g = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    torch.manual_seed(3)
    ref = blocks._chunked_dropout_attention(q, k, v, mask, 0.25)
    ref.sum().backward()
    assert torch.allclose(y, ref, atol=1e-6)
    for a, b in zip(g, (q.grad, k.grad, v.grad)):
        assert torch.allclose(a, b, atol=1e-5)
    # the padded keys of clip 1 get no attention (masked before dropout): their values get no gradient
    assert torch.all(v.grad[1, :, 30:] == 0) and v.grad[0, :, 30:].abs().sum() > 0
