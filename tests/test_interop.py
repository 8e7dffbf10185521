"""Interop: the s3prl upstream (with s3prl's own Featurizer when installed), the HEAR functions, maeast-embed."""
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO
from test_embed import registered, save_fake, wave  # noqa: F401  (fixture)

from maeast_fairseq import checkpoint as C
from maeast_fairseq.checkpoint import load_pretrained
from maeast_fairseq.interop import hear
from maeast_fairseq.interop.s3prl import S3prlUpstream

LENGTHS = (16000, 11200, 36800, 4000)  # 1 s, 0.7 s, 2.3 s, 0.25 s


def featurizer_slices(upstream, wavs, out):
    """What s3prl's Featurizer does with an upstream's output, without s3prl."""
    rate = upstream.get_downsample_rates("hidden_states")
    hs = out["hidden_states"]
    assert len({h.shape for h in hs}) == 1 and hs[0].dim() == 3
    t = hs[0].shape[1]
    assert abs(t - round(max(len(w) for w in wavs) / rate)) < 5
    w = torch.softmax(torch.zeros(len(hs)), 0)
    summed = sum(wi * h for wi, h in zip(w, hs))
    return [f[: round(len(x) / rate)] for f, x in zip(summed, wavs)]


@pytest.mark.parametrize("kind", ["mae_ast_patch", "mae_ast_frame", "ssast"])
def test_s3prl_upstream_contract(tmp_path, registered, kind):  # noqa: F811
    if kind == "ssast" and "ssast" not in C.CORE_MODELS:
        pytest.skip("no ssast core")
    up = S3prlUpstream(save_fake(tmp_path / "m.pt", kind)[0])
    pre = up.pretrained
    assert up.get_downsample_rates("hidden_states") == pre.tokenizer.stride_time * 160
    wavs = [wave(n / 16000, seed=i)[:n] for i, n in enumerate(LENGTHS)]
    # layer drop is off even in train mode: the number of hidden states never varies
    up.train()
    counts = {len(up(wavs)["hidden_states"]) for _ in range(5)}
    up.eval()
    assert counts == {pre.num_hidden_states}
    with torch.no_grad():
        out = up(wavs)
    assert torch.equal(out["last_hidden_state"], out["hidden_states"][-1])
    feats = featurizer_slices(up, wavs, out)
    emb = pre.embed(wavs)
    rate = up.get_downsample_rates("hidden_states")
    for i, (f, w) in enumerate(zip(feats, wavs)):
        n = round(len(w) / rate)
        assert f.shape == (n, pre.frame_dim)
        valid = int(emb["frame_lengths"][i])
        k = min(n, valid)
        want = sum(h[i, :k] for h in emb["hidden_states"]) / len(emb["hidden_states"])
        torch.testing.assert_close(f[:k], want, atol=1e-4, rtol=0)
        if n > valid:  # past the last whole patch: the last step repeated, never padding zeros
            torch.testing.assert_close(f[valid:], f[valid - 1: valid].expand(n - valid, -1), atol=0, rtol=0)


def test_s3prl_featurizer(tmp_path):
    interfaces = pytest.importorskip("s3prl.upstream.interfaces")
    up = S3prlUpstream(save_fake(tmp_path / "m.pt", "mae_ast_frame")[0])
    feat = interfaces.Featurizer(up, upstream_device="cpu")
    assert feat.downsample_rate == 320 and feat.layer_num == up.pretrained.num_hidden_states
    assert feat.output_dim == up.pretrained.frame_dim
    wavs = [wave(n / 16000, seed=i)[:n] for i, n in enumerate(LENGTHS)]
    with torch.no_grad():
        out = up(wavs)
        feats = feat(wavs, out)
    assert [len(f) for f in feats] == [round(len(w) / 320) for w in wavs]
    ref = featurizer_slices(up, wavs, out)
    for a, b in zip(feats, ref):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    # the patch model too (6.25 Hz, 2560 samples per step)
    up2 = S3prlUpstream(save_fake(tmp_path / "p.pt", "mae_ast_patch")[0])
    feat2 = interfaces.Featurizer(up2, upstream_device="cpu")
    with torch.no_grad():
        feats2 = feat2(wavs, up2(wavs))
    assert feat2.downsample_rate == 2560 and [len(f) for f in feats2] == [round(len(w) / 2560) for w in wavs]


@pytest.mark.parametrize("kind,hop,repeat", [("mae_ast_patch", 40.0, 4), ("mae_ast_frame", 20.0, 1)])
def test_hear_api(tmp_path, kind, hop, repeat):
    path, _ = save_fake(tmp_path / "m.pt", kind)
    model = hear.load_model(path)
    assert isinstance(model.sample_rate, int) and model.sample_rate == 16000
    assert isinstance(model.scene_embedding_size, int) and model.scene_embedding_size == 32
    assert isinstance(model.timestamp_embedding_size, int)
    assert model.timestamp_embedding_size == model.pretrained.frame_dim
    audio = torch.stack([wave(2.0, seed=i) for i in range(3)])
    emb, ts = hear.get_timestamp_embeddings(audio, model)
    steps = model.pretrained.embed([audio[0]])["frames"].shape[1]
    assert emb.shape == (3, steps * repeat, model.timestamp_embedding_size) and emb.dtype == torch.float32
    assert ts.shape == (3, steps * repeat) and ts.dtype == torch.float32
    d = np.diff(ts.numpy(), axis=1)
    assert np.allclose(d, hop, atol=1e-3) and hop <= 50.0
    assert (ts >= 0).all() and torch.equal(ts[0], ts[2])
    # the first step's centre: (patch_time - 1) / 2 frame hops + half a 25 ms window
    p = model.pretrained.tokenizer.patch_time
    centre = ((p - 1) * 10.0 + 25.0) / 2.0
    assert float(ts[0, :repeat].mean()) == pytest.approx(centre, abs=1e-3)
    scene = hear.get_scene_embeddings(audio, model)
    assert scene.shape == (3, 32) and scene.dtype == torch.float32
    torch.testing.assert_close(scene, model.pretrained.embed(list(audio))["clip"], atol=1e-5, rtol=0)
    # each repeated step carries its step's embedding
    frames = model.pretrained.embed(list(audio))["frames"]
    torch.testing.assert_close(emb[:, ::repeat], frames, atol=1e-5, rtol=0)
    # long audio (chunked) works too, numpy in
    e2, t2 = hear.get_timestamp_embeddings(np.stack([wave(25.0).numpy()]), model)
    assert e2.shape[1] == t2.shape[1] and float(t2[0, -1]) < 25000


# --------------------------------------------------------------------------------------------------- the CLI
@pytest.fixture
def audio_folder(tmp_path):
    import soundfile as sf

    root = tmp_path / "audio"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    sf.write(root / "a" / "one.wav", wave(1.0).numpy(), 16000)
    sf.write(root / "a" / "two.flac", wave(2.5, seed=1, sr=22050).numpy(), 22050)
    stereo = np.stack([wave(0.8, seed=2).numpy(), wave(0.8, seed=3).numpy()], axis=1)
    sf.write(root / "b" / "three.wav", stereo, 16000)
    (root / "b" / "notes.txt").write_text("not audio")
    return root


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "maeast_fairseq.cli.embed", *map(str, args)], capture_output=True,
                          text=True, cwd=REPO)


@pytest.mark.slow
def test_maeast_embed_cli(tmp_path, audio_folder):
    from maeast_fairseq.audio import load_audio

    path, _ = save_fake(tmp_path / "m.pt", "mae_ast_patch")
    out = tmp_path / "emb.npz"
    proc = run_cli(path, audio_folder, "--out", out, "--frames", "--batch-size", "2")
    assert proc.returncode == 0, proc.stderr
    assert "3/3 files (100 %)" in proc.stderr and "wrote" in proc.stderr
    d = np.load(out)  # no pickle needed
    assert list(d["paths"]) == ["a/one.wav", "a/two.flac", "b/three.wav"]
    assert d["clip"].shape == (3, 32) and d["clip"].dtype == np.float32
    assert float(d["frame_rate"]) == 6.25 and int(d["layer"]) == 2 and str(d["pooling"]) == "mean"
    pre = load_pretrained(path)
    wavs = [load_audio(audio_folder / p, 16000) for p in d["paths"]]
    ref = pre.embed(wavs)
    np.testing.assert_allclose(d["clip"], ref["clip"].numpy(), atol=1e-4, rtol=0)
    off = d["frame_offsets"]
    assert off.tolist() == [0] + np.cumsum(ref["frame_lengths"].numpy()).tolist()
    for i in range(3):
        t = int(ref["frame_lengths"][i])
        np.testing.assert_allclose(d["frames"][off[i]: off[i + 1]], ref["frames"][i, :t].numpy(), atol=1e-4,
                                   rtol=0)

    # a manifest, another layer
    tsv = tmp_path / "list.tsv"
    tsv.write_text(f"{audio_folder}\na/one.wav\t16000\nb/three.wav\t12800\n")
    proc = run_cli(path, tsv, "--out", tmp_path / "m.npz", "--layer", "0")
    assert proc.returncode == 0, proc.stderr
    d = np.load(tmp_path / "m.npz")
    assert list(d["paths"]) == ["a/one.wav", "b/three.wav"] and int(d["layer"]) == 0 and "frames" not in d
    np.testing.assert_allclose(d["clip"][0], pre.embed([wavs[0]], layer=0)["clip"][0].numpy(), atol=1e-4, rtol=0)

    # clear errors
    proc = run_cli(path, audio_folder, "--out", tmp_path / "x.npz", "--pooling", "cls")
    assert proc.returncode != 0 and "no CLS token" in proc.stderr
    (audio_folder / "b" / "broken.wav").write_bytes(b"RIFF....garbage")
    proc = run_cli(path, audio_folder, "--out", tmp_path / "y.npz")
    assert proc.returncode != 0 and "broken.wav" in proc.stderr and "--skip-errors" in proc.stderr
    proc = run_cli(path, audio_folder, "--out", tmp_path / "y.npz", "--skip-errors")
    assert proc.returncode == 0, proc.stderr
    d = np.load(tmp_path / "y.npz")
    assert list(d["skipped"]) == ["b/broken.wav"] and len(d["paths"]) == 3
