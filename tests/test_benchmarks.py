"""Benchmarks (FLOPs counter, train_step.py end to end on tiny models) and the speed switches of the task:
fbank on the training device gives the loader's features; bf16 autocast gives finite losses."""
import json
import os
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import REPO

sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import train_step  # noqa: E402

# -- analytical FLOPs --------------------------------------------------------------------------------------------------
TINY = {"patch_time": 16, "patch_freq": 64, "num_mel_bins": 128, "embed_dim": 8, "ffn_dim": 16,
        "encoder_layers": 2, "mask_ratio": 0.75}


def test_flops_ssast_by_hand():
    # 64 frames / 16 x 128 / 64 = 4 x 2 = 8 tokens, 6 masked (round(8 * .75)), 2 extra tokens, patch 16*64 = 1024
    cfg = dict(TINY, passes="one", num_extra_tokens=2)
    f = train_step.flops_per_clip("ssast", cfg, 64)
    n, d, ffn, p, m = 10, 8, 16, 1024, 6
    layer = 2 * n * d * d * 4 + 4 * n * n * d + 2 * 2 * n * d * ffn  # 5120 + 3200 + 5120
    assert layer == 13440
    enc = 2 * layer
    heads = 2 * (2 * m * d * d + 2 * m * d * p)
    embed = 2 * 8 * p * d
    assert f["forward_encoder"] == enc and f["forward_heads"] == heads and f["forward_patch_embed"] == embed
    assert f["training"] == 3 * (enc + heads + embed)
    two = train_step.flops_per_clip("ssast", dict(cfg, passes="two"), 64)
    assert two["training"] == 3 * (2 * enc + 2 * heads + embed)


def test_flops_mae_ast_and_eat_by_hand():
    cfg = dict(TINY, decoder_layers=1, decoder_embed_dim=8, decoder_ffn_dim=16)
    f = train_step.flops_per_clip("mae_ast", cfg, 64)
    vis, n, d, p = 2, 8, 8, 1024
    layer = lambda t: 2 * t * d * d * 4 + 4 * t * t * d + 4 * t * d * 16  # noqa: E731
    assert f["forward_encoder"] == 2 * layer(vis)
    assert f["forward_decoder"] == layer(n)
    assert f["forward_heads"] == 2 * 2 * 6 * d * p
    eat = {"patch_time": 16, "patch_freq": 64, "num_mel_bins": 128, "embed_dim": 8, "ffn_dim": 16, "encoder_layers": 2,
           "mask_ratio": 0.75, "clones": 3, "decoder_embed_dim": 8, "decoder_layers": 2, "decoder_kernel": 3,
           "decoder_groups": 4}
    e = train_step.flops_per_clip("eat", eat, 64)
    # EAT keeps int(8 * .25) = 2 tokens (+ CLS) per clone; conv: 2 * 8 positions * 9 * (8 / 4) * 8 per layer
    assert e["visible"] == 2
    assert e["forward_encoder"] == 3 * 2 * layer(3)
    assert e["forward_decoder"] == 3 * (2 * (2 * 8 * 9 * 2 * 8) + 2 * 8 * 8 * 8)
    assert e["forward_teacher"] == 2 * 8 * p * d + 2 * layer(9)
    fwd = e["forward_patch_embed"] + e["forward_encoder"] + e["forward_decoder"]
    assert e["training"] == 3 * fwd + e["forward_teacher"]


def test_flops_base_ratios_match_the_issue():
    def total(name):
        core, model, task, _, _ = train_step.load_config(name)
        return train_step.flops_per_clip(core, model, train_step.input_frames(core, model, task, False))["training"]

    mae, one, two, eat = (total(n) for n in ("mae_ast_patch", "ssast_patch", "ssast_patch_two_pass", "eat_base"))
    assert 4.5 < two / mae < 5.5 and 2.2 < one / mae < 2.8 and 1.7 < eat / two < 2.0


@pytest.mark.slow
def test_train_step_tiny_end_to_end(tmp_path):
    out = tmp_path / "ts.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "benchmarks", "train_step.py"), "--tiny", "--batch", "2",
         "--repeats", "2", "--warmup", "1", "--models", "ssast_patch_two_pass,mae_ast_frame,eat_base",
         "--precision", "fp32", "--json", str(out)], capture_output=True, text=True, env=env, cwd=REPO,
        timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    names = ("ssast_patch_two_pass", "mae_ast_frame", "eat_base")
    assert set(res["models"]) == set(names)
    assert all(res["models"][n]["precision"] == "fp32" for n in names)
    assert res["matmul_peak_gflops"]["fp32"] > 0 and res["matmul_peak_gflops"]["bf16"] > 0
    for name, row in res["models"].items():
        assert "error" not in row, row
        for key in train_step.ROW_KEYS:
            assert key in row, (name, key)
        assert row["step_s_median"] > 0 and row["peak_mem_mb"] > 0 and np.isfinite(row["loss"])
    assert res["models"]["eat_base"]["student_views_per_s"] > 0
    assert "mae_ast_frame/ssast_patch_two_pass" in res["ratios"]
    assert "ratio" in proc.stdout and "speed-up" in proc.stdout and "matmul peak" in proc.stdout


def test_train_step_fp32_and_bf16_side_by_side(tmp_path):
    """--precision fp32,bf16: both rows per model (keys name@bf16), what ran is recorded, bf16/fp32 ratios."""
    res = train_step.main(["--tiny", "--interleave", "--batch", "2", "--repeats", "1", "--warmup", "1",
                           "--models", "ssast_patch_two_pass,mae_ast_patch", "--precision", "fp32,bf16",
                           "--json", str(tmp_path / "p.json")])
    names = ("ssast_patch_two_pass", "mae_ast_patch")
    assert set(res["models"]) == set(names) | {f"{n}@bf16" for n in names}
    for n in names:
        assert res["models"][n]["precision"] == "fp32" and res["models"][f"{n}@bf16"]["precision"] == "bf16"
        assert res["precision_ratios"][f"{n}: bf16/fp32"]["speedup"] > 0
    assert "mae_ast_patch@bf16/ssast_patch_two_pass@bf16" in res["ratios"]
    assert "bf16_native" in res["environment"] and "cpu_flags" in res["environment"]


def test_train_step_tiny_interleaved(tmp_path):
    out = tmp_path / "il.json"
    res = train_step.main(["--tiny", "--interleave", "--batch", "2", "--repeats", "2", "--warmup", "1",
                           "--models", "ssast_patch_two_pass,mae_ast_patch", "--precision", "fp32",
                           "--json", str(out)])
    assert json.loads(out.read_text())["mode"] == "interleaved"
    assert set(res["models"]) == {"ssast_patch_two_pass", "mae_ast_patch"}
    assert len(res["models"]["mae_ast_patch"]["step_times_s"]) == 2
    assert res["ratios"]["mae_ast_patch/ssast_patch_two_pass"]["speedup"] > 0


# -- fbank on the training device == the loader's features -------------------------------------------------------------
pytest.importorskip("fairseq")
from maeast_fairseq.data.fbank_dataset import FbankDataset  # noqa: E402
from maeast_fairseq.tasks.pretraining import PretrainingTask, PretrainingTaskConfig  # noqa: E402


def _manifest(tmp_path, seconds):
    rng = np.random.default_rng(3)
    lines = [str(tmp_path)]
    for i, s in enumerate(seconds):
        x = (0.1 * rng.standard_normal(int(s * 16000)) + 0.02).astype(np.float32)
        sf.write(str(tmp_path / f"c{i}.wav"), x, 16000)
        lines.append(f"c{i}.wav\t{len(x)}")
    (tmp_path / "train.tsv").write_text("\n".join(lines) + "\n")
    return str(tmp_path / "train.tsv")


def _cfg(tmp_path, **kw):
    return PretrainingTaskConfig(data=str(tmp_path), patch_frames=16, seed=5, **kw)


@pytest.mark.parametrize("policy", [
    dict(length_policy="fixed", target_frames=256, window_type="hanning", norm="dataset", padding_mask=True),
    dict(length_policy="fixed", target_frames=128, window_type="hanning", norm="dataset", padding_mask=False),
    dict(length_policy="crop_to_shortest", window_type="povey", norm="none", subtract_waveform_mean=False),
    dict(length_policy="crop_to_shortest", max_frames=120, window_type="povey", norm="none"),
])
def test_fbank_on_device_gives_the_loaders_features(tmp_path, policy):
    path = _manifest(tmp_path, [1.0, 2.3, 1.7, 0.6])
    loader = FbankDataset(path, _cfg(tmp_path, **policy), shuffle=False, seed=5, min_frames=16)
    device = FbankDataset(path, _cfg(tmp_path, fbank_on_device=True, **policy), shuffle=False, seed=5, min_frames=16)
    task = PretrainingTask(_cfg(tmp_path, fbank_on_device=True, **policy))
    for ids in ([0, 1, 2, 3], [2, 3]):
        a = loader.collater([loader[i] for i in ids])
        raw = device.collater([device[i] for i in ids])
        assert "wav_bits" in raw["net_input"] and raw["net_input"]["wav_bits"].dtype == torch.int32
        assert raw["ntokens"] == a["ntokens"]
        b = task.device_features(raw)
        xa, xb = a["net_input"]["fbank"], b["net_input"]["fbank"]
        assert xa.shape == xb.shape and xa.dtype == xb.dtype
        torch.testing.assert_close(xb, xa, atol=1e-5, rtol=0)
        pa, pb = a["net_input"]["frame_padding"], b["net_input"]["frame_padding"]
        assert (pa is None) == (pb is None)
        if pa is not None:
            assert torch.equal(pa, pb)
        assert torch.equal(a["net_input"]["mask_rng"].keys, b["net_input"]["mask_rng"].keys)
    # the trainer's half-precision cast happens after the fbank, as on the loader path
    half = task.device_features(device.collater([device[0], device[1]]), torch.float16)
    assert half["net_input"]["fbank"].dtype == torch.float16


def test_loader_path_unchanged_without_the_switch(tmp_path):
    path = _manifest(tmp_path, [1.0, 0.7])
    ds = FbankDataset(path, _cfg(tmp_path, length_policy="fixed", target_frames=128), shuffle=False)
    batch = ds.collater([ds[0], ds[1]])
    assert set(batch["net_input"]) == {"fbank", "frame_padding", "mask_rng"}
    task = PretrainingTask(_cfg(tmp_path))
    assert task.device_features(batch) is batch


# -- bf16 autocast: every core model gives a finite loss on CPU --------------------------------------------------------
@pytest.mark.parametrize("name", ["ssast_patch_two_pass", "mae_ast_patch", "mae_ast_frame", "eat_base"])
def test_bf16_autocast_forward_backward_finite(name):
    from maeast_fairseq.checkpoint import build_core
    from maeast_fairseq.core.rng import MaskRNG

    torch.manual_seed(0)
    core, model_cfg, task_cfg, crit, _ = train_step.load_config(name, tiny=True)
    model = build_core(core, model_cfg).train()
    x = torch.randn(2, train_step.input_frames(core, model_cfg, task_cfg, True), 128)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, None, MaskRNG.from_generator(torch.Generator().manual_seed(0), 2))
        loss = train_step._loss(core, out, crit)
    assert torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_task_train_step_bf16_autocast_on_cpu(tmp_path):
    """task.autocast_bf16 runs the criterion under autocast, weights stay float32, the loss is finite."""
    from maeast_fairseq.criterions.masked_recon_nce import MaskedReconNceConfig, MaskedReconNceCriterion
    from maeast_fairseq.models.mae_ast import MaeAstModel, MaeAstModelConfig

    path = _manifest(tmp_path, [1.0, 1.3])
    cfg = _cfg(tmp_path, length_policy="fixed", target_frames=96, autocast_bf16=True, fbank_on_device=True)
    ds = FbankDataset(path, cfg, shuffle=False, min_frames=16)
    task = PretrainingTask(cfg)
    model = MaeAstModel(MaeAstModelConfig(encoder_layers=1, embed_dim=32, ffn_dim=64, num_heads=4, decoder_layers=1,
                                          decoder_embed_dim=32, decoder_ffn_dim=64, decoder_heads=4))
    crit = MaskedReconNceCriterion(MaskedReconNceConfig(), task)

    @dataclass
    class Opt:
        called: int = 0

        def backward(self, loss):
            self.called += 1
            loss.backward()

    opt = Opt()
    seen = {}
    orig = model.forward

    def spy(*a, **k):
        seen["autocast"] = torch.is_autocast_enabled("cpu")
        return orig(*a, **k)

    model.forward = spy
    loss, size, log = task.train_step(ds.collater([ds[0], ds[1]]), model, crit, opt, 0)
    assert opt.called == 1 and seen["autocast"] and torch.isfinite(loss)
    assert next(model.parameters()).dtype == torch.float32
    assert next(model.parameters()).grad is not None


# -- torch_adamw: fairseq's adam update, with torch's multi-tensor kernels ---------------------------------------------
@pytest.mark.parametrize("impl", ["auto", "foreach", "for_loop"])
def test_torch_adamw_matches_fairseq_adam(impl):
    from fairseq.optim import build_optimizer
    from omegaconf import OmegaConf

    import maeast_fairseq

    maeast_fairseq.register()

    def run(name, **extra):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.GELU(), torch.nn.Linear(5, 2))
        cfg = OmegaConf.create({"_name": name, "adam_betas": "(0.9, 0.98)", "adam_eps": 1e-10, "weight_decay": 0.01,
                                "lr": [1e-2], **extra})
        opt = build_optimizer(cfg, list(model.parameters()))
        for i in range(5):
            opt.zero_grad()
            torch.manual_seed(i)
            loss = model(torch.randn(4, 6)).square().mean()
            opt.backward(loss)
            opt.step()
        return opt, [p.detach().clone() for p in model.parameters()]

    ours, a = run("torch_adamw", implementation=impl)
    from maeast_fairseq.optim.kernels import fused_supported

    cpu_fused = fused_supported([torch.zeros(1)])
    assert ours.implementation == (("fused" if cpu_fused else "foreach") if impl == "auto" else impl)
    assert isinstance(ours.optimizer, torch.optim.AdamW)
    _, b = run("adam", fp16_adam_stats=False, use_old_adam=False, tpu=False)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=0)  # eps placement differs (module docstring)


def test_bf16_weights_mae_ast_batchnorm():
    """common.bf16 casts the whole model (buffers too) to bfloat16: the BatchNorm input norm's running statistics
    must accept the float32 batch statistics (they used to raise in lerp_)."""
    from maeast_fairseq.checkpoint import build_core

    core, model_cfg, _, crit, _ = train_step.load_config("mae_ast_patch", tiny=True)
    model = build_core(core, model_cfg).train().to(torch.bfloat16)
    out = model(torch.randn(2, 128, 128, dtype=torch.bfloat16))
    loss = train_step._loss(core, out, crit)
    assert torch.isfinite(loss.float())
    loss.backward()
