"""Inference is never silently wrong: a clip shorter than one patch is padded to one patch (the padding seen as
data) with a warning that names it, or refused with the reason (``maeast-predict --short-clips error``); waveforms
embedded without ``sample_rate=`` warn that they are taken to be at the model's rate."""
import csv
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import tiny_core
from test_predict_report import KINDS, save_classifier

from maeast_fairseq.cli import predict as predict_cli
from maeast_fairseq.embed import Pretrained, SampleRateWarning, ShortClipWarning
from maeast_fairseq.frontend import FrontendConfig

SR = 16000
PATCH = 16  # frames of the tiny MAE-AST patch model's 16 x 16 patches
# 5 frames (25 ms window, 10 ms hop): shorter than one patch
SHORT_SAMPLES = 400 + 4 * 160


def tone(samples, freq=440.0, sr=SR):
    return (0.3 * np.sin(2 * np.pi * freq * np.arange(samples) / sr)).astype(np.float32)


def pretrained():
    frontend = FrontendConfig(window_type="povey", subtract_waveform_mean=False, norm="none",
                              length_policy="crop_to_shortest")
    core = tiny_core("mae_ast")
    core.input_norm.running_mean.fill_(-6.0)
    core.input_norm.running_var.fill_(16.0)
    return Pretrained(core, frontend, "mae_ast").eval()


def test_predict_pads_a_clip_shorter_than_a_patch_and_says_so(tmp_path, capsys):
    ckpt = save_classifier(tmp_path / "ft.pt", KINDS)
    short, normal = tmp_path / "short.wav", tmp_path / "normal.wav"
    sf.write(short, tone(SHORT_SAMPLES), SR)
    sf.write(normal, tone(SR), SR)
    assert predict_cli.main([ckpt, str(short), str(normal), "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert f"{short} is shorter than one patch ({PATCH} frames): padded to one patch" in err
    assert str(normal) not in err
    rows = list(csv.DictReader(open(tmp_path / "o" / "predictions.csv")))
    assert [r["padded_to_one_patch"] for r in rows] == ["1", "0"]
    # what the model answers when it sees no token at all (the old behaviour): its head on a zero vector
    model, frontend, _, _ = predict_cli.load_classifier(ckpt)
    blind = torch.softmax(model.head(model.head_norm(torch.zeros(1, model.head.in_features))), -1)[0]
    got = torch.tensor([float(rows[0][f"prob_{c}"]) for c in KINDS])
    # float32 softmax outputs written with 9 digits: a difference far above 1e-6 is a different input
    assert (got - blind).abs().max() > 1e-3, "the short clip's prediction is the blind (no-token) answer"
    # the padded clip's probabilities are those of its log-mel zero-padded to one patch, with no padding mask
    from maeast_fairseq.audio import load_audio
    from maeast_fairseq.frontend import Frontend

    fe = Frontend(frontend)
    mel = fe.log_mel(load_audio(str(short), SR))
    assert mel.shape[0] == 5
    x = fe.normalise(torch.nn.functional.pad(mel, (0, 0, 0, PATCH - 5)))[None]
    expected = model.probabilities(x, torch.zeros(1, PATCH, dtype=torch.bool))[0]
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_predict_can_refuse_short_clips_with_the_reason(tmp_path, capsys):
    ckpt = save_classifier(tmp_path / "ft.pt", KINDS)
    short, normal = tmp_path / "short.wav", tmp_path / "normal.wav"
    sf.write(short, tone(SHORT_SAMPLES), SR)
    sf.write(normal, tone(SR), SR)
    rc = predict_cli.main([ckpt, str(short), str(normal), "--short-clips", "error", "--out", str(tmp_path / "o")])
    assert rc == 1
    err = capsys.readouterr().err
    assert f"shorter than one patch ({PATCH} frames" in err and f"{short} (5 frames)" in err
    rows = list(csv.DictReader(open(tmp_path / "o" / "predictions.csv")))
    assert [r["file"] for r in rows] == [str(normal)]


def test_embed_pads_a_short_clip_to_one_patch_with_a_warning():
    model = pretrained()
    with pytest.warns(ShortClipWarning, match=r"1 clip\(s\) shorter than one patch \(16 frames\): clip 1 \(5 frames\)"):
        out = model.embed([torch.from_numpy(tone(SR)), torch.from_numpy(tone(SHORT_SAMPLES))], SR)
    assert out["padded_to_one_patch"].tolist() == [False, True]
    assert out["frame_lengths"].tolist()[1] == 1 and torch.isfinite(out["clip"]).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = model.embed([torch.from_numpy(tone(SR))], SR)  # no short clip: no warning
    assert again["padded_to_one_patch"].tolist() == [False]


def test_embed_without_a_sample_rate_warns_and_the_rate_changes_the_result():
    model = pretrained()
    wav = torch.from_numpy(tone(44100, freq=3000.0, sr=44100))
    with pytest.warns(SampleRateWarning, match=r"no sample_rate given.*16000 Hz.*pass sample_rate="):
        assumed = model.embed([wav])["clip"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        given = model.embed([wav], 44100)["clip"]
    # the same 1 s of a 3 kHz tone read as 2.76 s of a 1.09 kHz tone: a different input, a different embedding
    assert not torch.allclose(assumed, given, atol=1e-3)
