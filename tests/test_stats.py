"""maeast-stats: corpus log-mel mean / std (maeast_fairseq.cli.stats)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import soundfile as sf
import torch

from maeast_fairseq.audio import load_audio
from maeast_fairseq.cli.stats import main
from maeast_fairseq.data.manifest import read_manifest, write_manifest
from maeast_fairseq.fbank import Fbank, FbankConfig

#: (relative path, sample rate, seconds, channels)
CLIPS = [
    ("a.wav", 16000, 0.20, 1),
    ("b.flac", 16000, 0.45, 1),
    ("sub/c.wav", 22050, 0.30, 2),
    ("sub/d.flac", 8000, 0.25, 1),
    ("e.wav", 16000, 0.12, 1),
]


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "audio"
    entries = []
    for i, (rel, sr, seconds, channels) in enumerate(CLIPS):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        n = int(sr * seconds)
        t = np.arange(n) / sr
        tone = 0.3 * np.sin(2 * np.pi * (300 + 200 * i) * t) + 0.05  # a DC offset, removed by default
        noise = np.random.default_rng(i).standard_normal((n, channels)) * 0.05
        sf.write(str(path), (tone[:, None] + noise).astype(np.float32), sr)
        entries.append((rel, n))
    data = tmp_path / "data"
    data.mkdir()
    write_manifest(data / "train.tsv", str(root), entries)
    return data


def reference(tsv, *, window="hanning", bins=128, subtract_mean=True, target_frames=None):
    """Mean / std over the concatenated fbank values, computed directly (float64 numpy)."""
    fbank = Fbank(FbankConfig(sample_rate=16000, num_mel_bins=bins, window_type=window))
    values = []
    for entry in read_manifest(tsv)[1]:
        wav = load_audio(entry.path, 16000)
        if subtract_mean:
            wav = wav - wav.mean()
        feats = fbank(wav)[0].numpy().astype(np.float64)
        assert feats.shape[0] > 0
        if target_frames is not None:
            if feats.shape[0] >= target_frames:
                feats = feats[:target_frames]
            else:
                feats = np.concatenate([feats, np.zeros((target_frames - feats.shape[0], bins))])
        values.append(feats.reshape(-1))
    allv = np.concatenate(values)
    return allv.mean(), allv.std()


def run_stats(capsys, *argv):
    rc = main([*map(str, argv), "--progress-every", "2"])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_stats_match_direct_computation(corpus, tmp_path, capsys):
    out_json = tmp_path / "stats.json"
    rc, out, err = run_stats(capsys, corpus, "--json", out_json)
    assert rc == 0, err
    mean, std = reference(corpus / "train.tsv")
    result = json.loads(out_json.read_text())
    assert result["mean"] == pytest.approx(mean, abs=1e-4)
    assert result["std"] == pytest.approx(std, abs=1e-4)
    assert result["num_clips"] == len(CLIPS) and result["num_skipped"] == 0
    assert result["num_values"] == result["num_real_frames"] * 128
    assert result["window"] == "hanning" and result["target_frames"] is None
    assert result["override"] == f"task.norm_mean={result['mean']:.8g} task.norm_std={result['std']:.8g}"
    assert result["override"] in out.splitlines()
    assert "5/5 clips" in err  # progress


def test_stats_options_povey_bins_no_mean_removal(corpus, capsys, tmp_path):
    out_json = tmp_path / "s.json"
    rc, _, err = run_stats(capsys, corpus / "train.tsv", "--window", "povey", "--num-mel-bins", 40,
                           "--no-subtract-waveform-mean", "--json", out_json)
    assert rc == 0, err
    mean, std = reference(corpus / "train.tsv", window="povey", bins=40, subtract_mean=False)
    result = json.loads(out_json.read_text())
    assert result["mean"] == pytest.approx(mean, abs=1e-4)
    assert result["std"] == pytest.approx(std, abs=1e-4)


def test_stats_target_frames_pads_and_crops(corpus, capsys, tmp_path):
    out_json = tmp_path / "s.json"
    rc, _, err = run_stats(capsys, corpus, "--target-frames", 25, "--json", out_json)
    assert rc == 0, err
    mean, std = reference(corpus / "train.tsv", target_frames=25)  # clips have 10..43 frames
    result = json.loads(out_json.read_text())
    assert result["num_values"] == len(CLIPS) * 25 * 128
    assert result["mean"] == pytest.approx(mean, abs=1e-4)
    assert result["std"] == pytest.approx(std, abs=1e-4)


def test_stats_max_clips_is_a_seeded_subset(corpus, capsys, tmp_path):
    results = []
    for name in ("one.json", "two.json"):
        rc, _, err = run_stats(capsys, corpus, "--max-clips", 2, "--seed", 3, "--json", tmp_path / name)
        assert rc == 0, err
        results.append(json.loads((tmp_path / name).read_text()))
    assert results[0]["num_clips"] == 2
    assert results[0]["mean"] == results[1]["mean"] and results[0]["std"] == results[1]["std"]


def test_stats_skips_and_reports_unreadable_clips(corpus, capsys):
    root, entries = read_manifest(corpus / "train.tsv")
    with open(os.path.join(root, "broken.wav"), "wb") as f:
        f.write(b"not audio" * 30)
    write_manifest(corpus / "train.tsv", root, [(e.rel, e.num_samples) for e in entries] + [("broken.wav", 100)])
    rc, out, err = run_stats(capsys, corpus)
    assert rc == 0
    assert "skipped 1 clip(s)" in err and f"{corpus / 'train.tsv'}:{len(entries) + 2}:" in err
    assert f"clips: {len(entries)} (skipped 1)" in out


def test_stats_bad_manifest_is_a_clear_error(tmp_path, capsys):
    tsv = tmp_path / "train.tsv"
    tsv.write_text(f"{tmp_path}\na.wav 100\n")
    rc, _, err = run_stats(capsys, tsv)
    assert rc == 1
    assert f"{tsv}: line 2: expected 'path<TAB>num_samples', found no tab" in err
    rc, _, err = run_stats(capsys, tmp_path, "--split", "valid")
    assert rc == 1 and "no manifest for split 'valid'" in err and "available splits: train" in err


def test_moments_merge_is_exact():
    from maeast_fairseq.cli.stats import Moments

    rng = np.random.default_rng(0)
    chunks = [rng.normal(-5, 3, size=n) for n in (1, 7, 1000, 33)]
    moments = Moments()
    for chunk in chunks:
        moments.add(torch.from_numpy(chunk))
    allv = np.concatenate(chunks)
    assert moments.count == allv.size
    assert moments.mean == pytest.approx(allv.mean(), rel=1e-12)
    assert moments.std == pytest.approx(allv.std(), rel=1e-12)
