"""The embedding API without fairseq: loading (strict, weights_only), shapes / frame rates, chunking, padded batches,
resampling, layers and pooling, fine-tuned wrappers, and a real checkpoint from fairseq-hydra-train."""
import dataclasses
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import BLOCK_FAIRSEQ, REPO

from maeast_fairseq import checkpoint as C
from maeast_fairseq.audio import resample
from maeast_fairseq.checkpoint import CheckpointError, load_pretrained
from maeast_fairseq.core.mae_ast import MaeAst, MaeAstConfig
from maeast_fairseq.fbank import FbankConfig, num_frames

SR = 16000
MAE_AST_TASK = dict(_name="maeast_pretraining", data="/nowhere", sample_rate=16000, num_mel_bins=128,
                    window_type="povey", subtract_waveform_mean=False, norm="none", length_policy="crop_to_shortest",
                    target_frames=1024, max_frames=0, padding_mask=True, min_sample_size=8000)
FIXED_TASK = dict(_name="maeast_pretraining", data="/nowhere", sample_rate=16000, num_mel_bins=128,
                  window_type="hanning", subtract_waveform_mean=True, norm="dataset", norm_mean=-4.27,
                  norm_std=4.57, length_policy="fixed", target_frames=256, padding_mask=True)


# ------------------------------------------------------------------------------------------------------ helpers
def _core(name):
    """(core class, config class) of a method, skipping when its core is not importable in this tree."""
    if name == "mae_ast":
        return MaeAst, MaeAstConfig
    try:
        if name == "ssast":
            from maeast_fairseq.core.ssast import Ssast, SsastConfig
            return Ssast, SsastConfig
        from maeast_fairseq.core.eat import Eat, EatConfig
        return Eat, EatConfig
    except ImportError as err:  # pragma: no cover
        pytest.skip(f"{name} core not available: {err}")


def make_model(kind: str, seed: int = 0):
    """A tiny core model of ``kind`` (mae_ast_patch, mae_ast_frame, ssast, eat) with non-trivial weights."""
    torch.manual_seed(seed)
    if kind.startswith("mae_ast"):
        frame = kind == "mae_ast_frame"
        m = MaeAst(MaeAstConfig(patch_time=2 if frame else 16, patch_freq=128 if frame else 16,
                                mask_type="random" if frame else "cluster", encoder_layers=2, embed_dim=32,
                                ffn_dim=64, num_heads=4, decoder_layers=1, decoder_embed_dim=32, decoder_ffn_dim=64,
                                decoder_heads=4, dropout=0.1, attention_dropout=0.1, encoder_layerdrop=0.05))
        m.input_norm.running_mean.fill_(-6.0)
        m.input_norm.running_var.fill_(16.0)
        return "mae_ast", m
    cls, cfg_cls = _core(kind)
    if kind == "ssast":
        m = cls(cfg_cls(target_frames=256, encoder_layers=2, embed_dim=32, ffn_dim=64, num_heads=2))
    else:
        m = cls(cfg_cls(encoder_layers=2, embed_dim=32, ffn_dim=128, num_heads=2, decoder_embed_dim=16, decoder_layers=1,
                        decoder_groups=4, average_top_k_layers=2, clones=2))
        with torch.no_grad():  # a teacher that differs from the student: loading the wrong one would show
            for p in m.teacher.parameters():
                p.add_(0.5)
    return kind, m


def task_for(kind):
    return dict(MAE_AST_TASK) if kind.startswith("mae_ast") else dict(FIXED_TASK)


def save_fake(path, kind, seed=0, *, state=None, model_cfg=None, task=None):
    """A fairseq-format checkpoint dict written with torch.save: {"cfg": {"model", "task"}, "model": state_dict}."""
    name, m = make_model(kind, seed)
    cfg = {"model": dict(dataclasses.asdict(m.cfg), _name=name), "task": task_for(kind) if task is None else task}
    if model_cfg is not None:
        cfg["model"] = model_cfg
    torch.save({"cfg": cfg, "model": m.state_dict() if state is None else state, "optimizer_history": []},
               str(path))
    return str(path), m


@pytest.fixture
def registered(monkeypatch):
    """Make sure ssast / eat are in CORE_MODELS (idempotent once the project registers them itself)."""
    for name in ("ssast", "eat"):
        if name not in C.CORE_MODELS:
            try:
                monkeypatch.setitem(C.CORE_MODELS, name, _core(name))
            except pytest.skip.Exception:
                pass


def wave(seconds, seed=0, sr=SR):
    g = torch.Generator().manual_seed(seed)
    n = int(round(seconds * sr))
    t = torch.arange(n) / sr
    return 0.1 * torch.randn(n, generator=g) + 0.3 * torch.sin(2 * math.pi * (300 + 100 * seed) * t)


def n_steps(pre, n_samples):
    frames = max(num_frames(n_samples, FbankConfig()), pre.tokenizer.patch_time)
    return pre.tokenizer.n_time(frames)


# ------------------------------------------------------------------------------------------- shapes and rates
@pytest.mark.parametrize("kind,rate,n_freq", [("mae_ast_patch", 6.25, 8), ("mae_ast_frame", 50.0, 1)])
def test_shapes_and_frame_rates(tmp_path, kind, rate, n_freq):
    path, _ = save_fake(tmp_path / "m.pt", kind)
    pre = load_pretrained(path)
    assert pre.frame_rate == rate and pre.downsample_rate == SR / rate and pre.tokenizer.n_freq == n_freq
    for seconds in (0.5, 1.0, 10.0, 30.0):
        w = wave(seconds)
        out = pre.embed([w])
        t = n_steps(pre, len(w))
        assert abs(t - seconds * rate) <= 2, (seconds, t)
        assert out["frames"].shape == (1, t, n_freq * 32) and out["frame_rate"] == rate
        assert out["clip"].shape == (1, 32) and out["x"].shape == (1, t * n_freq, 32)
        assert len(out["hidden_states"]) == 3 and all(h.shape == (1, t, n_freq * 32) for h in out["hidden_states"])
        assert out["frame_lengths"].tolist() == [t] and not out["frame_padding"].any()
        assert torch.isfinite(out["frames"]).all()
        if seconds == 30.0:  # longer than the 1024-frame training length: chunked
            assert len(pre.chunk_plan(num_frames(len(w), FbankConfig()))) == 3


def test_chunks_continue_each_other(tmp_path):
    """A 30 s clip is encoded in 1024-frame windows: its time steps equal those of the windows' audio alone."""
    path, _ = save_fake(tmp_path / "m.pt", "mae_ast_patch")
    pre = load_pretrained(path)
    w = wave(30.0, seed=3)
    out = pre.embed([w])
    span = 1023 * 160 + 400  # samples of exactly 1024 fbank frames
    first = pre.embed([w[:span]])["frames"][0]
    second = pre.embed([w[1024 * 160: 1024 * 160 + span]])["frames"][0]
    assert first.shape[0] == second.shape[0] == 64
    torch.testing.assert_close(out["frames"][0, :64], first, atol=1e-5, rtol=0)
    torch.testing.assert_close(out["frames"][0, 64:128], second, atol=1e-5, rtol=0)
    # with a smaller window the steps stay regular and the count is unchanged
    small = pre.embed([w], chunk_frames=300)
    assert small["frames"].shape == out["frames"].shape


def test_chunk_plan_with_overlapping_patches(tmp_path):
    """Windows hop a whole number of time steps, so overlapping patches (stride < patch) stay regular."""
    path, _ = save_fake(tmp_path / "m.pt", "mae_ast_patch")
    pre = load_pretrained(path)
    tok = pre.tokenizer
    tok.stride_time = 10  # as SSAST fine-tuning (patch 16, stride 10): only the plan is exercised here
    try:
        for total in (16, 100, 1024, 1030, 3000):
            plan = pre.chunk_plan(total, 1024)
            steps = [tok.n_time(length) for _, length, _ in plan]
            assert sum(steps) == tok.n_time(total)
            for (start, length, first), n in zip(plan, steps):
                assert start == first * 10 and length <= 1024 and n >= 1
    finally:
        tok.stride_time = 16


@pytest.mark.parametrize("kind", ["mae_ast_patch", "mae_ast_frame", "ssast", "eat"])
def test_padded_batch_equals_one_by_one(tmp_path, registered, kind):
    path, _ = save_fake(tmp_path / "m.pt", kind)
    pre = load_pretrained(path)
    wavs = [wave(s, seed=i) for i, s in enumerate((0.5, 1.0, 3.3, 12.0, 0.05))]
    batch = pre.embed(wavs)
    for i, w in enumerate(wavs):
        one = pre.embed([w])
        t = one["frames"].shape[1]
        assert batch["frame_lengths"][i] == t
        torch.testing.assert_close(batch["frames"][i, :t], one["frames"][0], atol=1e-4, rtol=0)
        assert (batch["frames"][i, t:] == 0).all() and batch["frame_padding"][i, t:].all()
        torch.testing.assert_close(batch["clip"][i], one["clip"][0], atol=1e-4, rtol=0)
        for hb, ho in zip(batch["hidden_states"], one["hidden_states"]):
            torch.testing.assert_close(hb[i, :t], ho[0], atol=1e-4, rtol=0)
        if "cls" in one:
            torch.testing.assert_close(batch["cls"][i], one["cls"][0], atol=1e-4, rtol=0)


def test_other_sample_rates_are_resampled(tmp_path):
    path, _ = save_fake(tmp_path / "m.pt", "mae_ast_patch")
    pre = load_pretrained(path)
    w44 = wave(2.0, sr=44100)
    out = pre.embed([w44.numpy()], sample_rate=44100)
    ref = pre.embed([resample(w44, 44100, 16000)])
    assert torch.equal(out["frames"], ref["frames"]) and out["frames"].shape[1] == 12


def test_layers_and_pooling(tmp_path, registered):
    path, _ = save_fake(tmp_path / "m.pt", "mae_ast_patch")
    pre = load_pretrained(path)
    wavs = [wave(1.0), wave(2.5, seed=1)]
    out = pre.embed(wavs)
    assert pre.default_pooling == "mean" and out["pooling"] == "mean" and out["layer"] == 2
    assert torch.equal(out["frames"], out["hidden_states"][-1])
    l0 = pre.embed(wavs, layer=0)
    assert torch.equal(l0["frames"], out["hidden_states"][0]) and l0["layer"] == 0
    assert torch.equal(pre.embed(wavs, layer=-1)["frames"], out["frames"])
    # mean over valid tokens = mean over valid steps of the per-step token mean
    for i in range(2):
        t = int(out["frame_lengths"][i])
        manual = out["frames"][i, :t].reshape(t, 8, 32).mean((0, 1))
        torch.testing.assert_close(out["clip"][i], manual, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="no CLS token"):
        pre.embed(wavs, pooling="cls")
    with pytest.raises(ValueError, match="out of range"):
        pre.embed(wavs, layer=3)
    with pytest.raises(ValueError, match="pooling must be"):
        pre.embed(wavs, pooling="max")
    if "eat" in C.CORE_MODELS:
        eat = load_pretrained(save_fake(tmp_path / "eat.pt", "eat")[0])
        o = eat.embed(wavs)
        assert eat.default_pooling == "cls" and torch.equal(o["clip"], o["cls"]) and not torch.equal(o["clip"],
                                                                                                      o["mean"])
        assert torch.equal(eat.embed(wavs, pooling="mean")["clip"], o["mean"])
        with pytest.raises(ValueError, match="last layer"):
            eat.embed(wavs, layer=0, pooling="cls")


def test_cls_of_chunked_clip_is_step_weighted_mean(tmp_path, registered):
    if "eat" not in C.CORE_MODELS:
        pytest.skip("no eat core")
    pre = load_pretrained(save_fake(tmp_path / "eat.pt", "eat")[0])
    w = wave(4.0)  # 398 frames: windows of 256 + 142 frames (16 + 8 steps)
    parts = [pre.embed([w[:255 * 160 + 400]]), pre.embed([w[256 * 160:]])]
    assert [p["frames"].shape[1] for p in parts] == [16, 8]
    out = pre.embed([w])
    torch.testing.assert_close(out["cls"][0], (16 * parts[0]["cls"][0] + 8 * parts[1]["cls"][0]) / 24,
                               atol=1e-5, rtol=0)


def test_short_and_empty_inputs(tmp_path):
    pre = load_pretrained(save_fake(tmp_path / "m.pt", "mae_ast_patch")[0])
    out = pre.embed([torch.zeros(0), wave(0.1), wave(0.4)])
    assert out["frame_lengths"].tolist() == [1, 1, 2] and torch.isfinite(out["clip"]).all()


def test_student_weights_loaded_and_pretraining_parts_dropped(tmp_path, registered):
    if "eat" not in C.CORE_MODELS:
        pytest.skip("no eat core")
    path, m = save_fake(tmp_path / "eat.pt", "eat")
    pre = load_pretrained(path)
    sd = pre.model.state_dict()
    assert not any(k.startswith(("teacher.", "decoder.")) for k in sd)
    for k, v in m.encoder.state_dict().items():
        assert torch.equal(sd["encoder." + k], v)
    assert any(k.startswith("teacher.") for k in pre.load_report["pretraining_only_in_file"])


# ----------------------------------------------------------------------------------------------- strictness
def test_missing_unexpected_and_mismatched_keys_raise(tmp_path):
    _, m = make_model("mae_ast_patch")
    sd = m.state_dict()
    missing = {k: v for k, v in sd.items() if k != "encoder.blocks.1.ffn.fc1.weight"}
    with pytest.raises(CheckpointError, match="missing.*encoder.blocks.1.ffn.fc1.weight"):
        load_pretrained(save_fake(tmp_path / "a.pt", "mae_ast_patch", state=missing)[0])
    extra = dict(sd, **{"encoder.blocks.2.attn.qkv.weight": torch.zeros(96, 32)})
    with pytest.raises(CheckpointError, match="unexpected.*encoder.blocks.2"):
        load_pretrained(save_fake(tmp_path / "b.pt", "mae_ast_patch", state=extra)[0])
    cfg = dict(dataclasses.asdict(m.cfg), _name="mae_ast", ffn_dim=48)  # the config lies about a size
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_pretrained(save_fake(tmp_path / "c.pt", "mae_ast_patch", model_cfg=cfg)[0])
    cfg = dict(dataclasses.asdict(m.cfg), _name="mae_ast", encoder_layers=3)  # or about the depth
    with pytest.raises(CheckpointError, match="missing"):
        load_pretrained(save_fake(tmp_path / "d.pt", "mae_ast_patch", model_cfg=cfg)[0])
    # an encoder-only state (pretraining parts absent) is fine
    enc = {k: v for k, v in sd.items() if not k.startswith(("decoder", "reconstruction", "classification"))}
    pre = load_pretrained(save_fake(tmp_path / "e.pt", "mae_ast_patch", state=enc)[0])
    assert "decoder_mask_embed" in pre.load_report["pretraining_only_not_in_file"]


def test_front_end_must_come_from_the_checkpoint(tmp_path):
    from maeast_fairseq.frontend import FrontendConfig

    path, _ = save_fake(tmp_path / "m.pt", "mae_ast_patch", task={"_name": "maeast_pretraining"})
    with pytest.raises(CheckpointError, match="front end"):
        load_pretrained(path)
    fe = FrontendConfig(window_type="povey", norm="none", length_policy="crop_to_shortest",
                        subtract_waveform_mean=False)
    assert load_pretrained(path, frontend=fe).frontend.window_type == "povey"
    pre = load_pretrained(save_fake(tmp_path / "f.pt", "ssast" if "ssast" in C.CORE_MODELS else "mae_ast_patch",
                                    task=dict(FIXED_TASK))[0])
    assert pre.frontend.norm_mean == -4.27 and pre.frontend.window_type == "hanning" and pre.chunk_frames == 256


def test_omegaconf_config_loads_and_foreign_classes_are_refused(tmp_path):
    omegaconf = pytest.importorskip("omegaconf")
    _, m = make_model("mae_ast_patch")
    cfg = omegaconf.OmegaConf.create({"model": dict(dataclasses.asdict(m.cfg), _name="mae_ast"),
                                      "task": MAE_AST_TASK, "common": {"user_dir": "${oc.env:HOME}"}})
    torch.save({"cfg": cfg, "model": m.state_dict()}, tmp_path / "oc.pt")
    pre = load_pretrained(str(tmp_path / "oc.pt"))
    assert pre.frontend.window_type == "povey" and pre.model.cfg.embed_dim == 32

    torch.save({"cfg": {"model": {"_name": "mae_ast"}}, "model": m.state_dict(), "extra": Foreign()},
               tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refusing to unpickle.*Foreign"):
        load_pretrained(str(tmp_path / "evil.pt"))


class Foreign:
    """A class a checkpoint must not be allowed to instantiate."""


def test_fine_tuned_wrapper_checkpoints(tmp_path):
    _, m = make_model("mae_ast_patch")
    inner = dict(dataclasses.asdict(m.cfg), _name="mae_ast")
    state = {"encoder.model." + k: v for k, v in m.state_dict().items() if not k.startswith("decoder")}
    state.update({"head.weight": torch.randn(5, 32), "head.bias": torch.zeros(5)})
    path = tmp_path / "ft.pt"
    torch.save({"cfg": {"model": {"_name": "some_classifier", "encoder": inner, "pooling": "mean",
                                  "num_classes": 5}, "task": MAE_AST_TASK}, "model": state}, path)
    pre = load_pretrained(str(path))
    ref = load_pretrained(save_fake(tmp_path / "m.pt", "mae_ast_patch")[0])
    assert pre.load_report["prefix"] == "encoder.model."
    assert pre.load_report["outside_encoder_ignored"] == ["head.bias", "head.weight"]
    w = [wave(1.0)]
    assert torch.equal(pre.embed(w)["clip"], ref.embed(w)["clip"])

    # a wrapper that only names its pretraining checkpoint
    torch.save({"cfg": {"model": {"_name": "other_classifier", "pretrained_path": str(tmp_path / "m.pt")},
                        "task": {"_name": "x"}}, "model": state}, tmp_path / "ft2.pt")
    pre2 = load_pretrained(str(tmp_path / "ft2.pt"))
    assert torch.equal(pre2.embed(w)["clip"], ref.embed(w)["clip"]) and pre2.frontend.window_type == "povey"

    # an explicitly registered wrapper
    C.register_wrapper("my_cls", lambda mc, tc: ("mae_ast", mc["enc"], "encoder.model."))
    try:
        torch.save({"cfg": {"model": {"_name": "my_cls", "enc": inner}, "task": MAE_AST_TASK}, "model": state},
                   tmp_path / "ft3.pt")
        assert torch.equal(load_pretrained(str(tmp_path / "ft3.pt")).embed(w)["clip"], ref.embed(w)["clip"])
    finally:
        C.WRAPPERS.pop("my_cls")

    torch.save({"cfg": {"model": {"_name": "unknown"}, "task": MAE_AST_TASK}, "model": state}, tmp_path / "u.pt")
    with pytest.raises(CheckpointError, match="not one of ours"):
        load_pretrained(str(tmp_path / "u.pt"))


@pytest.mark.parametrize("kind,strides", [("mae_ast_patch", (8, 0)), ("ssast", (10, 10)), ("eat", (0, 0))])
def test_fine_tuned_classifier_checkpoints(tmp_path, registered, kind, strides):  # noqa: F811
    """maeast_classifier checkpoints (the fine-tuning model): the encoder with its fine-tuning patch strides and
    re-gridded positions, the head ignored, the classifier's pooling as the default; exports keep the geometry."""
    classifier = pytest.importorskip("maeast_fairseq.core.classifier")
    if kind in ("ssast", "eat") and kind not in C.CORE_MODELS:
        pytest.skip(f"no {kind} core")
    path, _ = save_fake(tmp_path / "pre.pt", kind)
    state = torch.load(path, weights_only=True)
    cfg = classifier.ClassifierConfig(model_path=path, num_classes=3, pooling="auto", target_frames=256,
                                      patch_stride_time=strides[0], patch_stride_freq=strides[1])
    model = C.classifier_from_pretrained(cfg, state, path).eval()
    with torch.no_grad():
        for p in model.encoder.parameters():  # "fine-tuned": the encoder moved away from the pretrained weights
            p.add_(0.01 * torch.randn_like(p))
    ft = tmp_path / "ft.pt"
    torch.save({"cfg": {"model": dict(dataclasses.asdict(cfg), _name="maeast_classifier"), "task": task_for(kind)},
                "model": model.state_dict()}, ft)
    pre = load_pretrained(str(ft))
    assert pre.load_report["prefix"] == "encoder."
    assert set(pre.load_report["outside_encoder_ignored"]) == {"head.weight", "head.bias", "head_norm.weight",
                                                               "head_norm.bias"}
    tok = pre.tokenizer
    assert tok.stride_time == (strides[0] or tok.patch_time)
    assert tok.n_freq == classifier._tokenizers(model.encoder)[0].n_freq
    assert pre.frame_rate == 100.0 / tok.stride_time
    assert pre.default_pooling == ("cls" if kind == "eat" else "mean")
    x = torch.randn(2, 200, 128)
    with torch.no_grad():
        a, b = pre.model.extract_features(x), model.encoder.extract_features(x)
    assert torch.equal(a["x"], b["x"])
    w = [wave(1.3), wave(4.0, seed=1)]
    out = pre.embed(w)
    assert out["frames"].shape[1] == tok.n_time(max(num_frames(len(v), FbankConfig()) for v in w))
    # the export keeps the geometry
    pytest.importorskip("safetensors")
    from maeast_fairseq.export import export_safetensors
    export_safetensors(pre, str(tmp_path / "exp"))
    back = load_pretrained(str(tmp_path / "exp"))
    assert back.tokenizer.stride_time == tok.stride_time and back.tokenizer.n_freq == tok.n_freq
    assert torch.equal(back.embed(w)["frames"], out["frames"])


# --------------------------------------------------------------------------------------------- no fairseq
def test_embedding_api_works_where_fairseq_cannot_be_imported(tmp_path):
    path, _ = save_fake(tmp_path / "m.pt", "mae_ast_patch")
    code = BLOCK_FAIRSEQ + (
        "import numpy as np, torch\n"
        "from maeast_fairseq.checkpoint import load_pretrained\n"
        "from maeast_fairseq.interop import hear, s3prl\n"
        f"pre = load_pretrained({path!r})\n"
        "out = pre.embed([np.random.randn(16000).astype('float32'), torch.randn(40000)], sample_rate=16000)\n"
        "up = s3prl.S3prlUpstream(pre)\n"
        "hs = up([torch.randn(16000)])['hidden_states']\n"
        "try:\n"
        "    from maeast_fairseq.export import export_safetensors\n"
        f"    export_safetensors(pre, {str(tmp_path / 'exp')!r})\n"
        f"    assert load_pretrained({str(tmp_path / 'exp')!r}).embed([torch.randn(9000)])['clip'].shape == (1, 32)\n"
        "except ImportError as err:\n"
        "    assert 'safetensors' in str(err), err\n"
        "assert not any(m == 'fairseq' or m.startswith('fairseq.') for m in sys.modules)\n"
        "print('ok', tuple(out['clip'].shape), tuple(out['frames'].shape), len(hs))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("ok (2, 32) (2, 15, 256) 3"), proc.stdout


# ------------------------------------------------------------------------------------------ real checkpoint
@pytest.fixture(scope="module")
def real_checkpoint(tmp_path_factory):
    """A 3-update MAE-AST patch checkpoint from fairseq-hydra-train (examples/pretrain/mae_ast_patch_tiny)."""
    pytest.importorskip("fairseq")
    from conftest import console, fairseq_env

    from maeast_fairseq.data.synthetic import make_corpus

    root = tmp_path_factory.mktemp("real")
    make_corpus(str(root / "audio"), 6, seed=0, rates=(16000,), kinds=("tone", "chirp"))
    subprocess.run([sys.executable, "-m", "manifests", str(root / "audio"), "--dest", str(root / "data"), "--ext",
                    "wav", "--valid-percent", "0.34", "--seed", "1"], check=True, capture_output=True)
    cmd = [console("fairseq-hydra-train"), "--config-dir", os.path.join(REPO, "examples/pretrain"),
           "--config-name", "mae_ast_patch_tiny", f"task.data={root / 'data'}", "optimization.max_update=3",
           f"checkpoint.save_dir={root / 'ckpt'}", f"hydra.run.dir={root / 'hydra'}"]
    proc = subprocess.run(cmd, cwd=root, env=fairseq_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return root / "ckpt" / "checkpoint_last.pt"


@pytest.mark.slow
def test_real_checkpoint_loads_without_fairseq_code(real_checkpoint):
    pre = load_pretrained(str(real_checkpoint))
    assert pre.name == "mae_ast" and pre.frontend.window_type == "povey" and pre.frontend.norm == "none"
    assert not pre.frontend.subtract_waveform_mean and pre.chunk_frames == 1024
    rep = pre.load_report
    assert rep["prefix"] == "" and rep["encoder_tensors"] == len(pre.model.state_dict())
    assert "decoder_mask_embed" in rep["pretraining_only_in_file"] and not rep["pretraining_only_not_in_file"]
    state = torch.load(str(real_checkpoint), weights_only=True)["model"]
    for k, v in pre.model.state_dict().items():
        assert torch.equal(v, state[k]), k
    out = pre.embed([wave(0.5), wave(1.0), wave(10.0)])
    assert out["frames"].shape == (3, 62, 8 * 64) and out["frame_lengths"].tolist() == [3, 6, 62]
    assert np.isfinite(out["clip"].numpy()).all()
