"""Clips shorter than one patch, at any sample rate: every one reported in one pass (in seconds), or dropped and
counted (``task.short_clip_policy``); small corpora through fairseq's batching; the argparse path on 3 clips."""
import logging
import os
import re
import subprocess

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import REPO, console, fairseq_env

pytest.importorskip("fairseq")

from maeast_fairseq.core.losses import info_nce  # noqa: E402
from maeast_fairseq.data.fbank_dataset import FbankDataset, min_samples_for_frames  # noqa: E402
from maeast_fairseq.data.manifest import write_manifest  # noqa: E402
from maeast_fairseq.fbank import FbankConfig, num_frames  # noqa: E402
from maeast_fairseq.frontend import FrontendConfig  # noqa: E402


def clip(folder, name, samples, rate):
    path = os.path.join(folder, name)
    sf.write(path, (np.random.default_rng(samples).standard_normal(samples) * 0.1).astype(np.float32), rate)
    return name, samples


# (name, samples at the file's own rate, rate): short = fewer than 16 frames (0.175 s) once at 16 kHz
CLIPS = [
    ("long16k.wav", 16000, 16000),
    ("short16k.wav", 1600, 16000),        # 0.100 s: short at 16 kHz
    ("long44k.flac", 44100, 44100),
    ("tabla_ke1.flac", 1915, 44100),      # 0.043 s: 2 frames
    ("short48k.wav", 5000, 48000),        # 0.104 s: 5000 samples would be 29 frames *at 16 kHz*, but it is 48 kHz
    ("long48k.wav", 48000, 48000),
    ("ok8k.wav", 1500, 8000),             # 0.1875 s: 1500 samples would be 7 frames at 16 kHz, but it is 8 kHz
]
SHORT = {"short16k.wav": (3, "0.100 s"), "tabla_ke1.flac": (5, "0.043 s"), "short48k.wav": (6, "0.104 s")}


@pytest.fixture
def mixed_rates(tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    entries = [clip(str(audio), name, n, rate) for name, n, rate in CLIPS]
    path = str(tmp_path / "train.tsv")
    write_manifest(path, str(audio), entries)
    return path


def test_min_samples_for_frames_is_the_exact_threshold():
    cfg = FbankConfig()
    for frames in (1, 2, 16, 1024):
        n = min_samples_for_frames(frames, cfg)
        assert num_frames(n, cfg) >= frames > num_frames(n - 1, cfg)
    assert min_samples_for_frames(16, cfg) == 15 * 160 + 400  # 2800 samples = 0.175 s at 16 kHz


def test_every_short_clip_is_reported_in_one_pass_in_seconds(mixed_rates):
    with pytest.raises(ValueError) as err:
        FbankDataset(mixed_rates, FrontendConfig(), min_frames=16)
    msg = str(err.value)
    assert "3 clip(s) shorter than one patch" in msg
    assert "one patch (16 frames) needs 0.175 s of audio at any sample rate (2800 samples at 16000 Hz)" in msg
    for name, (line, seconds) in SHORT.items():
        assert re.search(rf"train\.tsv:{line}: \S*{re.escape(name)} has \d+ samples at \d+ Hz \({seconds}\)", msg), msg
    for name in ("long16k.wav", "long44k.flac", "long48k.wav", "ok8k.wav"):
        assert name not in msg
    assert "task.short_clip_policy=drop" in msg
    assert "tabla_ke1.flac has 1915 samples at 44100 Hz (0.043 s) = 2 frames, fewer than one patch (16 frames)" in msg


def test_drop_policy_drops_and_counts_exactly_the_short_clips(mixed_rates, caplog):
    with caplog.at_level(logging.INFO, logger="maeast_fairseq.data.fbank_dataset"):
        ds = FbankDataset(mixed_rates, FrontendConfig(), min_frames=16, short_clip_policy="drop", shuffle=False)
    assert sorted(os.path.basename(e.path) for e in ds.entries) == ["long16k.wav", "long44k.flac", "long48k.wav",
                                                                    "ok8k.wav"]
    assert "dropped 3 clip(s) shorter than one patch" in caplog.text
    for i in range(len(ds)):  # every kept clip decodes to at least one patch
        assert ds[i]["fbank"].shape[0] >= 16
    with pytest.raises(ValueError, match="short_clip_policy must be one of error, drop"):
        FbankDataset(mixed_rates, FrontendConfig(), short_clip_policy="skip")


def test_a_split_smaller_than_required_batch_size_multiple_is_not_emptied(mixed_rates):
    ds = FbankDataset(mixed_rates, FrontendConfig(), min_frames=1, shuffle=False)
    for max_tokens, max_sentences in ((1_400_000, None), (None, 4)):
        batches = ds.batch_by_size(ds.ordered_indices(), max_tokens=max_tokens, max_sentences=max_sentences,
                                   required_batch_size_multiple=8)
        covered = sorted(int(i) for b in batches for i in b)
        assert covered == list(range(len(ds)))  # fairseq alone would give no batch at all


def test_info_nce_with_nothing_masked_is_zero_and_differentiable():
    pred = torch.zeros(2, 0, 8, requires_grad=True)
    target = torch.zeros(2, 0, 8)
    for valid in (None, torch.zeros(2, 0, dtype=torch.bool)):
        loss, acc = info_nce(pred, target, valid)
        assert loss.item() == 0 and acc.item() == 0
        loss.backward()  # part of the graph: fairseq's backward on such a batch does not fail


# -- fairseq-train --user-dir (the README's argparse example) on a 3-clip corpus --------------------------------------

ARGPARSE = [
    "--user-dir", os.path.join(REPO, "maeast_fairseq"), "--task", "maeast_pretraining", "--arch", "mae_ast",
    "--criterion", "masked_recon_nce", "--window-type", "povey", "--norm", "none", "--length-policy",
    "crop_to_shortest", "--patch-freq", "128", "--mask-type", "random",
    "--optimizer", "adam", "--adam-betas", "(0.9,0.98)", "--lr", "1e-4", "--lr-scheduler", "polynomial_decay",
    "--warmup-updates", "32000", "--total-num-update", "400000", "--max-tokens", "1400000",
    # test-sized: a 1-layer model, 2 updates, nothing saved
    "--encoder-layers", "1", "--decoder-layers", "1", "--embed-dim", "64", "--ffn-dim", "128", "--num-heads", "4",
    "--decoder-embed-dim", "64", "--decoder-ffn-dim", "128", "--decoder-heads", "4", "--max-update", "2",
    "--no-save", "--num-workers", "0", "--log-format", "simple", "--log-interval", "1",
]


@pytest.fixture(scope="module")
def three_clips(tmp_path_factory):
    """The README's data preparation on 3 clips: 1 s at 16 kHz, 1 s at 44.1 kHz, a 1915-sample tabla hit at 44.1 kHz
    (2 frames: one patch of the frame model, less than one patch of a 16-frame model); --valid-percent 0.01 puts one
    clip in valid.tsv (fewer than fairseq's default required_batch_size_multiple of 8)."""
    root = tmp_path_factory.mktemp("three")
    audio = root / "audio"
    audio.mkdir()
    for name, n, rate in (CLIPS[0], CLIPS[2], CLIPS[3]):
        clip(str(audio), name, n, rate)
    subprocess.run([console("maeast-manifest"), str(audio), "--dest", str(root / "data"), "--valid-percent", "0.01"],
                   check=True, capture_output=True)  # valid.tsv: the tabla hit
    subprocess.run([console("maeast-manifest"), str(audio), "--dest", str(root / "data0"), "--valid-percent", "0.01",
                    "--seed", "0"], check=True, capture_output=True)  # valid.tsv: a 1 s clip; the tabla hit trains
    return root


def fairseq_train(root, *extra, data="data"):
    proc = subprocess.run([console("fairseq-train"), str(root / data), *ARGPARSE, *extra], cwd=root,
                          env=fairseq_env(), capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.slow
def test_argparse_example_trains_on_three_clips(three_clips):
    rc, log = fairseq_train(three_clips, "--patch-time", "2")
    assert rc == 0, log[-4000:]
    assert "IndexError" not in log and "The dataset is empty" not in log
    assert re.search(r"valid on 'valid' subset .*\bbsz 1\b", log), log[-3000:]  # the 1-clip valid set is not emptied
    assert "num_updates 2" in log


@pytest.mark.slow
def test_argparse_example_short_clip_error_then_drop_policy(three_clips):
    rc, log = fairseq_train(three_clips, "--patch-time", "16")
    assert rc != 0
    assert "IndexError" not in log
    assert re.search(r"tabla_ke1\.flac has 1915 samples at 44100 Hz \(0\.043 s\) = 2 frames, fewer than one patch "
                     r"\(16 frames\)", log), log[-3000:]
    assert "--short-clip-policy drop" in log
    # the drop policy: a split left with no clip is a clear error too ...
    rc, log = fairseq_train(three_clips, "--patch-time", "16", "--short-clip-policy", "drop")
    assert rc != 0 and "IndexError" not in log
    assert re.search(r"valid\.tsv: every clip is shorter than one patch .*Fix: ", log), log[-3000:]
    # ... and where clips are left, they are counted in the log and training runs
    rc, log = fairseq_train(three_clips, "--patch-time", "16", "--short-clip-policy", "drop", data="data0")
    assert rc == 0, log[-4000:]
    assert re.search(r"train\.tsv: dropped 1 clip\(s\) shorter than one patch", log), log[-3000:]
    assert "num_updates 2" in log and "valid on 'valid' subset" in log
