"""Audio loading (soundfile) and the windowed-sinc polyphase resampler."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch

from maeast_fairseq.audio import AudioError, audio_info, load_audio, num_resampled, resample

NEW_SR = 16000


def _tone(freq: float, sr: int, seconds: float = 1.0, amp: float = 0.5, dtype=torch.float32) -> torch.Tensor:
    t = torch.arange(int(round(seconds * sr)), dtype=torch.float64) / sr
    return (amp * torch.sin(2 * math.pi * freq * t)).to(dtype)


def _amplitude_at(y: torch.Tensor, freq: float, sr: int, trim: int) -> float:
    """Least-squares amplitude of a sinusoid of ``freq`` Hz in ``y`` (edges trimmed)."""
    y = y.double()[trim:-trim]
    t = torch.arange(trim, trim + len(y), dtype=torch.float64) / sr
    basis = torch.stack([torch.sin(2 * math.pi * freq * t), torch.cos(2 * math.pi * freq * t)], dim=1)
    coef = torch.linalg.lstsq(basis, y.unsqueeze(1)).solution.squeeze(1)
    return float(coef.norm())


def _peak_freq(y: torch.Tensor, sr: int) -> float:
    y = y.double()
    spec = torch.fft.rfft(y * torch.hann_window(len(y), dtype=torch.float64)).abs()
    return float(spec.argmax()) * sr / len(y)


def _rms(y: torch.Tensor, trim: int) -> float:
    return float(y.double()[trim:-trim].pow(2).mean().sqrt())


# -------------------------------------------------------------------------------------------------
# resample
# -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("orig_sr", [8000, 22050, 44100, 48000])
@pytest.mark.parametrize("freq", [440.0, 1000.0, 3000.0])
def test_tone_frequency_and_amplitude_preserved(orig_sr, freq):
    x = _tone(freq, orig_sr)
    y = resample(x, orig_sr, NEW_SR)
    assert y.dtype == x.dtype and y.shape == (num_resampled(len(x), orig_sr, NEW_SR),)
    assert abs(_peak_freq(y, NEW_SR) - freq) <= 1.0  # 1 Hz bins for 1 s
    amp = _amplitude_at(y, freq, NEW_SR, trim=NEW_SR // 10)
    assert abs(amp - 0.5) < 0.005  # within 1 %


@pytest.mark.parametrize("orig_sr", [22050, 44100, 48000])
def test_passband_is_flat_below_six_khz(orig_sr):
    for freq in (100.0, 2000.0, 5000.0, 6000.0):
        y = resample(_tone(freq, orig_sr, 0.5), orig_sr, NEW_SR)
        assert abs(_amplitude_at(y, freq, NEW_SR, trim=1600) - 0.5) < 0.005, freq


@pytest.mark.parametrize("orig_sr,freq", [(48000, 10000.0), (44100, 10000.0), (44100, 15000.0), (22050, 10500.0)])
def test_tones_above_new_nyquist_are_removed(orig_sr, freq):
    x = _tone(freq, orig_sr, amp=1.0)
    y = resample(x, orig_sr, NEW_SR)
    # the alias would land at |freq - 16000|; its level must be below -40 dB (measured ~ -90 dB)
    level_db = 20 * math.log10(_rms(y, 1600) / _rms(x, 1600) + 1e-12)
    assert level_db < -40.0


def test_upsampling_leaves_no_images():
    x = _tone(3000.0, 8000)
    y = resample(x, 8000, NEW_SR)
    assert abs(_amplitude_at(y, 3000.0, NEW_SR, trim=1600) - 0.5) < 0.005
    image = _amplitude_at(y, 5000.0, NEW_SR, trim=1600)  # mirror of 3 kHz about 4 kHz
    assert 20 * math.log10(image / 0.5 + 1e-12) < -40.0


@pytest.mark.parametrize("orig_sr", [8000, 11025, 22050, 44100, 48000, 32000])
def test_output_length(orig_sr):
    for n in (0, 1, 2, 3, 159, 441, 1000, 12347):
        y = resample(torch.randn(n), orig_sr, NEW_SR)
        assert y.shape == (num_resampled(n, orig_sr, NEW_SR),) == (math.ceil(n * NEW_SR / orig_sr),)


def test_batch_equals_one_by_one():
    torch.manual_seed(0)
    x = torch.randn(3, 2, 9001)
    y = resample(x, 44100, NEW_SR)
    assert y.shape == (3, 2, num_resampled(9001, 44100, NEW_SR))
    for i in range(3):
        for j in range(2):
            torch.testing.assert_close(resample(x[i, j], 44100, NEW_SR), y[i, j], rtol=0, atol=1e-6)


def test_identity_dtype_and_dc():
    x = torch.randn(2, 1000)
    assert resample(x, NEW_SR, NEW_SR) is x
    x64 = torch.ones(4000, dtype=torch.float64)
    y = resample(x64, 48000, NEW_SR)
    assert y.dtype == torch.float64
    assert torch.allclose(y[200:-200], torch.ones_like(y[200:-200]), atol=1e-3)  # DC gain 1
    assert resample(torch.ones(100, dtype=torch.int16), 8000, NEW_SR).dtype == torch.float32


def test_bad_rates_raise():
    with pytest.raises(ValueError, match="orig_sr"):
        resample(torch.zeros(10), 0, NEW_SR)
    with pytest.raises(ValueError, match="whole number"):
        resample(torch.zeros(10), 44100.5, NEW_SR)


# -------------------------------------------------------------------------------------------------
# load_audio / audio_info
# -------------------------------------------------------------------------------------------------


def test_load_stereo_downmix(tmp_path):
    sr = NEW_SR
    left = _tone(440.0, sr, 0.5).numpy()
    right = _tone(1000.0, sr, 0.5, amp=0.25).numpy()
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), sr, subtype="FLOAT")
    assert audio_info(path) == (len(left), sr, 2)
    wav = load_audio(path)
    assert wav.shape == (len(left),) and wav.dtype == torch.float32
    torch.testing.assert_close(wav, torch.from_numpy((left + right) / 2), rtol=0, atol=1e-7)
    both = load_audio(str(path), mono=False)
    assert both.shape == (2, len(left))
    torch.testing.assert_close(both[1], torch.from_numpy(right))


def test_load_resamples_to_target(tmp_path):
    sr = 44100
    x = _tone(1000.0, sr, 0.7, amp=0.3)
    path = tmp_path / "tone.flac"
    sf.write(path, x.numpy(), sr, subtype="PCM_24")
    wav = load_audio(path, target_sr=NEW_SR)
    assert wav.shape == (num_resampled(len(x), sr, NEW_SR),)
    assert abs(_amplitude_at(wav, 1000.0, NEW_SR, trim=1600) - 0.3) < 0.003
    assert load_audio(path, target_sr=None).shape == (len(x),)
    assert load_audio(path, dtype=torch.float64).dtype == torch.float64


def test_missing_file_raises_audio_error(tmp_path):
    path = tmp_path / "nope" / "missing.wav"
    with pytest.raises(AudioError, match="missing.wav") as err:
        load_audio(path)
    assert "Fix" in str(err.value) and isinstance(err.value, ValueError)
    with pytest.raises(AudioError, match="missing.wav"):
        audio_info(path)


def test_garbage_file_raises_audio_error(tmp_path):
    path = tmp_path / "garbage.wav"
    path.write_bytes(b"this is not audio at all \x00\x01\x02" * 50)
    with pytest.raises(AudioError, match="garbage.wav") as err:
        load_audio(path)
    assert "cannot read" in str(err.value) and "Fix" in str(err.value)
    with pytest.raises(AudioError, match="garbage.wav"):
        audio_info(path)


def test_empty_file_raises_audio_error(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros((0, 1), np.float32), NEW_SR)
    with pytest.raises(AudioError, match="empty.wav"):
        load_audio(path)
    with pytest.raises(AudioError, match="empty"):
        audio_info(path)
