"""bf16 as a precision of its own: the auto rule, bf16 embeddings against fp32 ones, the precision recorded by
maeast-embed / maeast-evaluate (and in the feature-cache key), bf16 vs fp32 pretraining loss curves, and the
extraction benchmark."""
import dataclasses
import json
import math
import os
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import NO_DROPOUT, REPO, tiny_core

from maeast_fairseq import precision as P
from maeast_fairseq.core.losses import nce_mse_loss, ufo_loss
from maeast_fairseq.core.rng import MaskRNG
from maeast_fairseq.embed import Pretrained
from maeast_fairseq.frontend import FrontendConfig

sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import extraction  # noqa: E402

SR = 16000
#: unit roundoff of bfloat16 (8 significant bits): a value rounded to bf16 is off by at most 2^-8 relative
U_BF16 = 2.0 ** -8

MAE_AST_FRONTEND = FrontendConfig(window_type="povey", subtract_waveform_mean=False, norm="none",
                                  length_policy="crop_to_shortest")
FIXED_FRONTEND = FrontendConfig(window_type="hanning", subtract_waveform_mean=True, norm="dataset", norm_mean=-4.27,
                                norm_std=4.57, length_policy="fixed", target_frames=256)
MAE_AST_TASK = dict(_name="maeast_pretraining", data="/nowhere", **dataclasses.asdict(MAE_AST_FRONTEND))


def tiny_model(name: str, **overrides):
    """A tiny core model (conftest's configuration, dropout off) with MAE-AST input statistics of log-mels."""
    m = tiny_core(name, **({**NO_DROPOUT, **overrides} if name == "mae_ast" else overrides))
    if name == "mae_ast":
        m.input_norm.running_mean.fill_(-6.0)
        m.input_norm.running_var.fill_(16.0)
    return m


def tiny_pretrained(name: str, **overrides) -> Pretrained:
    m = tiny_model(name, **overrides)
    m.remove_pretraining_modules()
    fe = MAE_AST_FRONTEND if name == "mae_ast" else FIXED_FRONTEND
    return Pretrained(m.eval(), fe, name, default_pooling=m.default_pooling)


def save_checkpoint(path, seed: int = 0) -> str:
    """A fairseq-format MAE-AST checkpoint of a tiny model (32 wide: ``auto`` is fp32 on every CPU)."""
    m = tiny_model("mae_ast", seed=seed)
    torch.save({"cfg": {"model": dict(dataclasses.asdict(m.cfg), _name="mae_ast"), "task": MAE_AST_TASK},
                "model": m.state_dict(), "optimizer_history": []}, str(path))
    return str(path)


def waves(seconds=(1.0, 2.5, 0.7), seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, s in enumerate(seconds):
        t = torch.arange(int(s * SR)) / SR
        out.append(0.1 * torch.randn(len(t), generator=g) + 0.3 * torch.sin(2 * math.pi * (300 + 100 * i) * t))
    return out


# ------------------------------------------------------------------------------------------- the auto rule
@pytest.fixture
def cpu(monkeypatch):
    """Set the CPU flags bf16_support sees (cpu_flags is lru_cached: the module's function is replaced)."""
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: True)

    def set_flags(*flags):
        monkeypatch.setattr(P, "cpu_flags", lambda: frozenset(flags))
    return set_flags


@pytest.mark.parametrize("flag", ["amx_bf16", "avx512_bf16"])
def test_auto_is_bf16_on_a_cpu_with_bf16_units_for_wide_models(cpu, flag):
    cpu("avx512f", flag)
    assert P.bf16_support("cpu").native
    assert P.resolve_precision("auto", "cpu", width=768).name == "bf16"
    assert P.resolve_precision("auto", "cpu").name == "bf16"  # width unknown: no floor
    # the width floor: narrower models stay in float32 on a CPU
    assert P.resolve_precision("auto", "cpu", width=P.AUTO_MIN_WIDTH).name == "bf16"
    narrow = P.resolve_precision("auto", "cpu", width=P.AUTO_MIN_WIDTH - 1)
    assert narrow.name == "fp32" and f"{P.AUTO_MIN_WIDTH - 1} wide" in narrow.describe()
    # explicit choices are kept whatever the width
    assert P.resolve_precision("bf16", "cpu", width=32).name == "bf16"
    assert P.resolve_precision("fp32", "cpu", width=768).name == "fp32"


def test_auto_is_fp32_on_a_cpu_without_bf16_units(cpu):
    cpu("avx2", "avx512f")  # AVX-512 without its BF16 extension: oneDNN would emulate bf16
    sup = P.bf16_support("cpu")
    assert not sup.native and sup.units == ()
    auto = P.resolve_precision("auto", "cpu", width=768)
    assert auto.name == "fp32" and not auto.bf16 and "no native bf16" in auto.describe()
    forced = P.resolve_precision("bf16", "cpu", width=768)
    assert forced.name == "bf16" and "NOT native" in forced.describe() and "forced" in forced.describe()
    assert P.resolve_precision("fp32", "cpu").name == "fp32"


def test_bad_precision_names_the_choices():
    with pytest.raises(ValueError, match=r"'auto', 'fp32', 'bf16'.*'float16'"):
        P.resolve_precision("float16", "cpu")


def test_autocast_context_and_model_width():
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with P.resolve_precision("fp32", "cpu").autocast("cpu"):
        assert torch.mm(a, b).dtype == torch.float32
    with P.resolve_precision("bf16", "cpu").autocast("cpu"):
        assert torch.mm(a, b).dtype == torch.bfloat16
    assert P.model_width(tiny_core("ssast")) == 32 and P.model_width(tiny_core("eat")) == 64
    assert P.model_width(torch.nn.Linear(2, 2)) is None


# ----------------------------------------------------------------------------------- bf16 embeddings
# Bound: under autocast every matmul input is rounded to bf16 (relative error <= u = 2^-8 per element, float32
# accumulation), so each layer adds an O(u) relative error to its output; errors of different layers are
# independent roundings and add like a random walk, so after the encoder input and l blocks the relative Frobenius
# error of hidden state l grows like u * sqrt(l + 1). Measured on these tiny models (2 and 6 blocks, all three
# methods): err_l / (u * sqrt(l + 1)) <= 0.95 (largest at layer 0 of EAT, 0.0037; last layer of the 6-block models
# 0.008 = 0.78 u sqrt(7)), so the bound 4 u sqrt(l + 1) keeps a margin of > 4x. (The randomly initialised base
# models, 12 x 768, measured <= 0.97 u sqrt(l + 1) as well: 0.010-0.012 at the last layer.) Clip embeddings:
# measured cosine similarity >= 0.99994; asserted > 0.99.
EMBED_BOUND_CONSTANT = 4.0


@pytest.mark.parametrize("layers", [2, 6])
@pytest.mark.parametrize("name", ["mae_ast", "ssast", "eat"])
def test_bf16_embeddings_are_float32_and_close_to_fp32(name, layers):
    pre = tiny_pretrained(name, encoder_layers=layers)
    wavs = waves()
    ref = pre.embed(wavs, SR, precision="fp32")
    out = pre.embed(wavs, SR, precision="bf16")
    assert ref["precision"] == "fp32" and out["precision"] == "bf16"
    tensors = [out[k] for k in ("clip", "mean", "frames", "x") + (("cls",) if "cls" in out else ())]
    assert all(t.dtype == torch.float32 for t in tensors + out["hidden_states"])
    assert len(out["hidden_states"]) == layers + 1
    errors = [float((h - r).norm() / r.norm()) for h, r in zip(out["hidden_states"], ref["hidden_states"])]
    bounds = [EMBED_BOUND_CONSTANT * U_BF16 * math.sqrt(l + 1) for l in range(layers + 1)]
    assert all(e <= b for e, b in zip(errors, bounds)), f"relative errors {errors} vs bounds {bounds}"
    assert errors[-1] > 0, "bf16 made no difference: autocast did not reach the encoder"
    assert torch.equal(out["frame_padding"], ref["frame_padding"])
    cos = torch.nn.functional.cosine_similarity(out["clip"], ref["clip"], dim=-1)
    assert float(cos.min()) > 0.99, cos


def test_default_is_fp32_and_auto_keeps_narrow_models_in_fp32():
    pre = tiny_pretrained("ssast")
    wavs = waves((1.2,))
    ref = pre.embed(wavs, SR, precision="fp32")
    default = pre.embed(wavs, SR)
    auto = pre.embed(wavs, SR, precision="auto")  # 32 wide < AUTO_MIN_WIDTH: float32 on any CPU
    assert default["precision"] == auto["precision"] == "fp32"
    assert torch.equal(default["clip"], ref["clip"]) and torch.equal(auto["clip"], ref["clip"])
    with pytest.raises(ValueError, match="precision must be one of"):
        pre.embed(wavs, SR, precision="half")


# ------------------------------------------------------------------------------------- maeast-embed
def test_maeast_embed_prints_and_stores_the_precision(tmp_path, capsys):
    from maeast_fairseq.cli import embed as embed_cli

    ckpt = save_checkpoint(tmp_path / "m.pt")
    (tmp_path / "audio").mkdir()
    for i, w in enumerate(waves((1.0, 0.6))):
        sf.write(str(tmp_path / "audio" / f"{i}.wav"), w.numpy(), SR)
    results = {}
    for prec in ("auto", "bf16"):
        out = tmp_path / f"{prec}.npz"
        assert embed_cli.main([ckpt, str(tmp_path / "audio"), "--out", str(out), "--precision", prec]) == 0
        err = capsys.readouterr().err
        data = np.load(out)
        results[prec] = data["clip"]
        expected = "bf16" if prec == "bf16" else "fp32"  # a 32-wide model: auto is fp32 on a CPU
        assert str(data["precision"]) == expected
        assert data["clip"].dtype == np.float32
        line = [ln for ln in err.splitlines() if "precision:" in ln]
        assert len(line) == 1, err
        assert ("bfloat16 autocast" if expected == "bf16" else "float32") in line[0]
    a, b = results["auto"], results["bf16"]
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert not np.array_equal(a, b) and cos.min() > 0.99


# ------------------------------------------------------------------------------------- maeast-evaluate
@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """Tones of 2 pitch classes, train / valid / test manifests with labels (4 clips each, 0.5-0.8 s)."""
    from maeast_fairseq.data.manifest import write_label_list, write_labels, write_manifest

    root = tmp_path_factory.mktemp("tones")
    (root / "audio").mkdir()
    rng = np.random.default_rng(0)
    for split in ("train", "valid", "test"):
        entries, labels = [], []
        for i in range(4):
            label = ("low", "high")[i % 2]
            t = np.arange(int(rng.uniform(0.5, 0.8) * SR)) / SR
            x = 0.5 * np.sin(2 * np.pi * (220.0 if label == "low" else 880.0) * t) + 1e-2 * rng.standard_normal(len(t))
            rel = f"audio/{split}_{i}.wav"
            sf.write(str(root / rel), x.astype(np.float32), SR)
            entries.append((rel, len(t)))
            labels.append([label])
        write_manifest(root / f"{split}.tsv", str(root), entries)
        write_labels(root / f"{split}.lbl", labels)
    write_label_list(root / "labels.txt", ["low", "high"])
    return root


def run_evaluate(tmp_path, upstream, data, precision, name):
    from maeast_fairseq.cli import evaluate as cli

    out = tmp_path / f"{name}.json"
    rc = cli.main([upstream, "--data", str(data), "--cache", str(tmp_path / "cache"), "--json", str(out), "--png",
                   str(tmp_path / f"{name}.png"), "--quiet", "--threads", "1", "--steps", "2", "--eval-every", "1",
                   "--seeds", "0", "--precision", precision])
    assert rc == 0
    return json.loads(out.read_text())


def test_evaluate_precision_is_recorded_and_keys_the_feature_cache(labelled, tmp_path, capsys):
    from maeast_fairseq.evaluation import features

    ckpt = save_checkpoint(tmp_path / "m.pt")

    def cache_paths(out):
        return {k: v["path"] for k, v in out["features"]["cache"].items()}

    before = dict(features.STATS)
    fp32 = run_evaluate(tmp_path, ckpt, labelled, "fp32", "fp32")
    assert "precision: float32" in capsys.readouterr().out  # the report prints the choice even with --quiet
    bf16 = run_evaluate(tmp_path, ckpt, labelled, "bf16", "bf16")
    assert "precision: bfloat16 autocast" in capsys.readouterr().out
    auto = run_evaluate(tmp_path, ckpt, labelled, "auto", "auto")  # a 32-wide model: fp32 on a CPU
    for out, name in ((fp32, "fp32"), (bf16, "bf16"), (auto, "fp32")):
        assert out["upstream"]["precision"] == out["features"]["precision"] == name
    assert auto["features"]["precision_requested"] == "auto"
    # bf16 features are stored apart from fp32 ones; auto resolved to fp32 is served the fp32 features
    assert set(cache_paths(fp32).values()).isdisjoint(cache_paths(bf16).values())
    assert cache_paths(auto) == cache_paths(fp32)
    assert all(v["source"] == "extracted" for v in bf16["features"]["cache"].values())
    assert all(v["source"] == "cache" for v in auto["features"]["cache"].values())
    assert features.STATS["extracted"] - before["extracted"] == 6
    assert features.STATS["cache_hits"] - before["cache_hits"] == 3
    for path in cache_paths(bf16).values():  # the cache's own record names the precision
        with open(path[:-3] + ".json") as f:
            assert json.load(f)["upstream"]["precision"] == "bf16"
    a = torch.load(cache_paths(fp32)["train"], weights_only=True)["means"]
    b = torch.load(cache_paths(bf16)["train"], weights_only=True)["means"]
    assert not torch.equal(a, b) and float((a - b).norm() / a.norm()) < EMBED_BOUND_CONSTANT * U_BF16 * math.sqrt(3)

    # random:CKPT: the same rule
    rnd32 = run_evaluate(tmp_path, f"random:{ckpt}", labelled, "fp32", "rnd32")
    rnd16 = run_evaluate(tmp_path, f"random:{ckpt}", labelled, "bf16", "rnd16")
    assert rnd32["upstream"]["kind"] == rnd16["upstream"]["kind"] == "random"
    assert (rnd32["upstream"]["precision"], rnd16["upstream"]["precision"]) == ("fp32", "bf16")
    assert set(cache_paths(rnd32).values()).isdisjoint(cache_paths(rnd16).values())
    assert set(cache_paths(rnd16).values()).isdisjoint(cache_paths(bf16).values())


def test_logmel_upstream_is_float32_whatever_is_asked(labelled, tmp_path):
    from maeast_fairseq.evaluation.features import load_upstream

    fp32 = run_evaluate(tmp_path, "logmel", labelled, "fp32", "fp32")
    bf16 = run_evaluate(tmp_path, "logmel", labelled, "bf16", "bf16")
    assert bf16["upstream"]["precision"] == bf16["features"]["precision"] == "fp32"
    assert bf16["features"]["precision_requested"] == "bf16"
    assert "no encoder" in bf16["upstream"]["precision_reason"]
    assert {k: v["path"] for k, v in fp32["features"]["cache"].items()} == \
        {k: v["path"] for k, v in bf16["features"]["cache"].items()}
    assert all(v["source"] == "cache" for v in bf16["features"]["cache"].values())
    with pytest.raises(ValueError, match="precision must be one of"):
        load_upstream("logmel", precision="fp16")


# ----------------------------------------------------------------------- bf16 vs fp32 training curves
CURVE_STEPS, CURVE_WINDOW, CURVE_BATCH, CURVE_FRAMES, CURVE_BATCHES = 300, 50, 4, 64, 4
# Tolerance of the window means: bf16 changes every forward by O(2^-8) relative, so after some updates the bf16
# trajectory decorrelates from the fp32 one and is worth another fp32 run (other rounding, same statistics); what
# must agree is the loss level along the way. Windows of 50 updates average the per-step noise (masks, batches).
# Measured (300 updates, these settings): bf16 vs fp32 window means differ by <= 0.33 % (worst: SSAST's last
# window); two fp32 runs with different mask seeds by <= 1.1 %, the scale of a fully decorrelated trajectory.
# 3 % is ~3x that spread (~9x the bf16 gap) and still fails a loss that is biased by a few percent (a bf16 loss
# scaled by 1.1 fails every window by ~10 %).
CURVE_REL_TOL = 0.03


def curve_batches():
    """A few fixed log-mel-like batches: drifting sinusoidal spectro-temporal patterns + noise (learnable)."""
    g = torch.Generator().manual_seed(1)
    t = torch.arange(CURVE_FRAMES, dtype=torch.float32)[:, None]
    f = torch.arange(128, dtype=torch.float32)[None]
    out = []
    for _ in range(CURVE_BATCHES):
        a = 0.05 + 0.3 * torch.rand(CURVE_BATCH, 1, 1, generator=g)
        c = 0.02 + 0.2 * torch.rand(CURVE_BATCH, 1, 1, generator=g)
        ph = 2 * math.pi * torch.rand(CURVE_BATCH, 1, 1, generator=g)
        k = 1 + torch.rand(CURVE_BATCH, 1, 1, generator=g)
        x = torch.sin(a * f + c * t + ph) + 0.5 * torch.cos(0.05 * f * k)
        out.append(x + 0.1 * torch.randn(CURVE_BATCH, CURVE_FRAMES, 128, generator=g))
    return out


def pretraining_loss(core: str, out: dict) -> torch.Tensor:
    """The objective as the trainer forms it (see benchmarks/train_step.py::_loss)."""
    if core == "eat":
        return ufo_loss(out, 1.0)[0] / out["num_masked"].clamp(min=1)  # divided by sample_size = masked tokens
    return nce_mse_loss(out, 1.0, 10.0, "targets")[0]


def loss_curve(core: str, bf16: bool):
    model = tiny_model(core, seed=0, **({"clones": 2} if core == "eat" else {})).train()  # 2 clones: half the time
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, betas=(0.9, 0.98),
                            eps=1e-6, weight_decay=0.01)
    gen = torch.Generator().manual_seed(2)  # the same masks for both precisions
    batches, losses = curve_batches(), []
    for i in range(CURVE_STEPS):
        rng = MaskRNG.from_generator(gen, CURVE_BATCH)
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = pretraining_loss(core, model(batches[i % len(batches)], None, rng))
        loss.backward()
        opt.step()
        if core == "eat":
            model.ema_step(i + 1)
        losses.append(float(loss.detach()))
    return losses


def window_means(losses):
    return [sum(losses[i:i + CURVE_WINDOW]) / CURVE_WINDOW for i in range(0, len(losses), CURVE_WINDOW)]


def check_curves(fp32, bf16):
    a, b = window_means(fp32), window_means(bf16)
    for name, w in (("fp32", a), ("bf16", b)):
        # a clear decrease: the tiny MAE-AST (the slowest learner here) ends ~12 % below its start
        assert w[-1] < 0.95 * w[0], f"{name} loss did not decrease: window means {w}"
    rel = [abs(x - y) / abs(x) for x, y in zip(a, b)]
    assert max(rel) <= CURVE_REL_TOL, (f"bf16 window means {b} vs fp32 {a}: worst relative difference "
                                       f"{max(rel):.4f} > {CURVE_REL_TOL}")
    return max(rel)


@pytest.mark.slow  # ~4-8 s per method on one busy core (2 x 300 updates)
@pytest.mark.parametrize("core", ["mae_ast", "ssast", "eat"])
def test_bf16_and_fp32_training_loss_curves_agree(core):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fp32, bf16 = loss_curve(core, False), loss_curve(core, True)
    finally:
        torch.set_num_threads(threads)
    worst = check_curves(fp32, bf16)
    print(f"{core}: worst relative difference of 50-update window means bf16 vs fp32: {worst:.4f}")
    # the check can fail: a loss biased by 10 % trips it (AdamW is scale-invariant: same updates, loss x 1.1)
    with pytest.raises(AssertionError, match="worst relative difference"):
        check_curves(fp32, [v * 1.1 for v in bf16])


# ----------------------------------------------------------------------------------- the benchmark
@pytest.mark.parametrize("method", ["mae_ast_patch", "ssast_patch", "eat_base"])
def test_extraction_benchmark_measures_each_method(method):
    row = extraction.measure(method, "bf16", "evaluate", batch=2, batches=1, seconds=1.5, device="cpu", tiny=True)
    assert set(extraction.ROW_KEYS) <= set(row)
    assert row["precision"] == "bf16" and row["clips_per_s"] > 0 and row["peak_mem_mb"] > 0
    assert row["layers"] == 2 and row["batch_times_s"] and len(row["batch_times_s"]) == 1


@pytest.mark.slow  # two subprocesses
def test_extraction_benchmark_tiny_run(tmp_path, capsys):
    out = tmp_path / "ex.json"
    result = extraction.main(["--tiny", "--batches", "1", "--methods", "ssast_patch", "--batch", "2", "--seconds", "2",
                              "--json", str(out)])
    table = capsys.readouterr().out
    assert "bf16 support:" in table and "clips/s" in table
    rows = result["rows"]
    assert [(r["method"], r["precision"]) for r in rows] == [("ssast_patch", "fp32"), ("ssast_patch", "bf16")]
    assert all("error" not in r for r in rows), rows
    assert set(result["ratios"]) == {"ssast_patch/embed"} and result["ratios"]["ssast_patch/embed"]["speedup"] > 0
    assert json.loads(out.read_text())["environment"]["bf16_support"]["detail"] == P.bf16_support("cpu").detail
