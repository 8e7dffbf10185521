"""Exports: safetensors + JSON (no pickle, bit-exact round trip, encoder only) and ONNX (onnxruntime within 1e-4)."""
import json
import os
import pickle

import pytest
import torch
from test_embed import registered, save_fake, wave  # noqa: F401  (fixture)

from maeast_fairseq import checkpoint as C
from maeast_fairseq.checkpoint import load_pretrained

pytest.importorskip("safetensors")


@pytest.mark.parametrize("kind", ["mae_ast_patch", "eat"])
def test_safetensors_round_trip_is_bit_exact_and_pickle_free(tmp_path, registered, monkeypatch, kind):  # noqa: F811
    from safetensors import safe_open

    from maeast_fairseq.export import export_safetensors

    if kind == "eat" and "eat" not in C.CORE_MODELS:
        pytest.skip("no eat core")
    pre = load_pretrained(save_fake(tmp_path / "m.pt", kind)[0])
    paths = export_safetensors(pre, str(tmp_path / "exp"))
    assert sorted(os.listdir(tmp_path / "exp")) == ["config.json", "model.safetensors"]
    with safe_open(paths["weights"], "pt") as f:
        keys = set(f.keys())
        assert f.metadata()["model_name"] == pre.name
    assert not any(k.startswith(("teacher.", "decoder", "reconstruction_head", "classification_head", "cpred",
                                 "gpred")) for k in keys)
    assert keys == set(pre.model.state_dict())
    cfg = json.load(open(paths["config"]))
    assert cfg["format"] == "maeast-fairseq-export" and cfg["model_name"] == pre.name
    assert cfg["frontend"]["window_type"] == pre.frontend.window_type
    assert cfg["frontend"]["norm_mean"] == pre.frontend.norm_mean
    assert cfg["embedding"]["default_pooling"] == pre.default_pooling

    def no_pickle(*a, **k):
        raise AssertionError("pickle used while reading an export")

    monkeypatch.setattr(torch, "load", no_pickle)
    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    back = load_pretrained(str(tmp_path / "exp"))
    monkeypatch.undo()

    a, b = pre.model.state_dict(), back.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    assert back.frontend == pre.frontend and back.default_pooling == pre.default_pooling
    assert back.chunk_frames == pre.chunk_frames and back.name == pre.name
    wavs = [wave(0.7), wave(3.0, seed=1)]
    x, y = pre.embed(wavs), back.embed(wavs)
    for k in ("clip", "frames", "x"):
        assert torch.equal(x[k], y[k]), k
    assert all(torch.equal(h1, h2) for h1, h2 in zip(x["hidden_states"], y["hidden_states"]))


def test_exported_files_get_the_usual_permissions(tmp_path, registered):  # noqa: F811
    """model.safetensors is created 0600 by safetensors: the export gives it 0666 minus the umask, like config.json."""
    from maeast_fairseq.export import export_safetensors

    pre = load_pretrained(save_fake(tmp_path / "m.pt", "mae_ast_patch")[0])
    old = os.umask(0o022)
    try:
        paths = export_safetensors(pre, str(tmp_path / "exp"))
    finally:
        os.umask(old)
    assert oct(os.stat(paths["weights"]).st_mode & 0o777) == oct(0o644)
    assert oct(os.stat(paths["config"]).st_mode & 0o777) == oct(0o644)


def test_export_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(C.CheckpointError, match="config.json"):
        load_pretrained(str(tmp_path / "empty"))


@pytest.mark.parametrize("kind,frames", [("mae_ast_patch", 1024), ("ssast", 256), ("eat", 256)])
def test_onnx_matches_torch(tmp_path, registered, kind, frames):  # noqa: F811
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from maeast_fairseq.export import check_onnx, export_onnx

    if kind in ("ssast", "eat") and kind not in C.CORE_MODELS:
        pytest.skip(f"no {kind} core")
    pre = load_pretrained(save_fake(tmp_path / "m.pt", kind)[0])
    path = str(tmp_path / "enc.onnx")
    res = export_onnx(pre, path, frames=frames)
    assert res["dynamic_batch"] and res["max_abs_diff"] <= 1e-4
    assert res["outputs"][:2] == ["last_hidden_state", "frames"] and ("cls" in res["outputs"]) == pre.has_cls
    if kind != "ssast":  # SSAST's position crop branches on the length: its time axis is fixed
        assert res["dynamic_time"]
    side = json.load(open(path + ".json"))
    assert side["frontend"]["window_type"] == pre.frontend.window_type and side["onnx"]["frames"] == frames
    # end to end: the front end of the checkpoint + onnxruntime == Pretrained.embed's time sequence
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    t = frames if not res["dynamic_time"] else min(frames, 300) - 3  # within one window: no chunking in embed
    n = (t - 1) * 160 + 400
    w = wave(n / 16000, seed=2)[:n]
    feats, _ = pre.features([w])
    got = sess.run(["frames"], {"fbank": feats.numpy()})[0]
    want = pre.embed([w])["frames"].numpy()
    assert got.shape == want.shape
    assert abs(got - want).max() <= 1e-4
    if res["dynamic_time"]:
        assert check_onnx(pre, path, lengths=(16, 333), batch=3) <= 1e-4
