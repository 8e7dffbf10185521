"""Kaldi filterbank: parity with kaldi-native-fbank and torchaudio, batching, edge cases."""

from __future__ import annotations

import json
import os

import kaldi_native_fbank as knf
import numpy as np
import pytest
import torch

from maeast_fairseq.fbank import Fbank, FbankConfig, fbank, mel_banks, num_frames

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "kaldi_fbank_ref.npz")
SR = 16000


def _test_signal(seconds: float = 1.5, sr: int = SR, seed: int = 0) -> np.ndarray:
    """Chirp + noise + a drum-like decaying burst (float32 in [-1, 1])."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    t = np.arange(n) / sr
    x = 0.4 * np.sin(2 * np.pi * (60.0 * t + 0.5 * (7500.0 - 60.0) / seconds * t**2))
    x += 0.03 * rng.standard_normal(n)
    onset = 0.6
    m = t >= onset
    tau = t[m] - onset
    x[m] += np.exp(-tau / 0.05) * (0.5 * rng.standard_normal(m.sum()) + 0.3 * np.sin(2 * np.pi * 80 * tau))
    return np.clip(x, -1, 1).astype(np.float32)


def _knf_fbank(x: np.ndarray, cfg: FbankConfig) -> np.ndarray:
    """kaldi-native-fbank with options matching ``cfg``; it uses the float samples as given (no scaling)."""
    opts = knf.FbankOptions()
    fo = opts.frame_opts
    fo.samp_freq = float(cfg.sample_rate)
    fo.frame_length_ms = cfg.frame_length_ms
    fo.frame_shift_ms = cfg.frame_shift_ms
    fo.dither = 0.0
    fo.window_type = cfg.window_type
    fo.remove_dc_offset = cfg.remove_dc_offset
    fo.preemph_coeff = cfg.preemphasis_coefficient
    fo.snip_edges = cfg.snip_edges
    fo.round_to_power_of_two = cfg.round_to_power_of_two
    opts.mel_opts.num_bins = cfg.num_mel_bins
    opts.mel_opts.low_freq = cfg.low_freq
    opts.mel_opts.high_freq = cfg.high_freq
    opts.use_energy = cfg.use_energy
    opts.energy_floor = cfg.energy_floor
    opts.raw_energy = cfg.raw_energy
    opts.htk_compat = cfg.htk_compat
    opts.use_log_fbank = cfg.use_log_fbank
    opts.use_power = cfg.use_power
    f = knf.OnlineFbank(opts)
    f.accept_waveform(float(cfg.sample_rate), x.tolist())
    f.input_finished()
    if f.num_frames_ready == 0:
        return np.zeros((0, cfg.num_features), np.float32)
    return np.stack([np.asarray(f.get_frame(i)) for i in range(f.num_frames_ready)])


# -------------------------------------------------------------------------------------------------
# (a) kaldi-native-fbank (independent C++ implementation)
# -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bins", [80, 120])
@pytest.mark.parametrize("window", ["hanning", "povey"])
def test_parity_kaldi_native_fbank(bins, window):
    x = _test_signal()
    cfg = FbankConfig(num_mel_bins=bins, window_type=window)
    ref = _knf_fbank(x, cfg)
    ours, n = Fbank(cfg)(torch.from_numpy(x))
    assert ours.dtype == torch.float32
    assert ours.shape == ref.shape == (num_frames(len(x), cfg), bins)
    assert int(n) == ref.shape[0]
    diff = np.abs(ours.numpy() - ref)
    # float32 FFT rounding is relative to a frame's total energy, so entries far below the
    # frame's loudest bin (the lowest mel bins after DC removal and pre-emphasis, up to
    # ~1e-9 of it) carry ~1e-3 of rounding noise in *both* implementations (each differs
    # that much from a float64 computation).  Within 70 dB of the peak: 1e-3 (measured
    # ~3e-4); everywhere: 3e-3 (measured 1.5e-3).
    near_peak = ref >= ref.max(axis=1, keepdims=True) - 16.0
    assert near_peak.mean() > 0.9
    assert diff[near_peak].max() < 1e-3
    assert diff.max() < 3e-3


@pytest.mark.parametrize(
    "overrides",
    [
        dict(snip_edges=False),
        dict(use_energy=True),
        dict(use_energy=True, htk_compat=True, window_type="hamming"),
        dict(window_type="blackman", low_freq=60.0, high_freq=-400.0),
        dict(window_type="rectangular", use_power=False),
    ],
)
def test_parity_kaldi_native_fbank_options(overrides):
    x = _test_signal(0.77, seed=1)[:12331]
    cfg = FbankConfig(**{"num_mel_bins": 64, **overrides})
    ref = _knf_fbank(x, cfg)
    ours, n = Fbank(cfg)(torch.from_numpy(x))
    assert ours.shape == ref.shape and int(n) == ref.shape[0]
    assert np.abs(ours.numpy() - ref).max() < 1e-3


# -------------------------------------------------------------------------------------------------
# (b) torchaudio.compliance.kaldi.fbank at the seeds' 128-bin settings (committed fixture)
# -------------------------------------------------------------------------------------------------


def _fixture():
    data = np.load(FIXTURE)
    names = sorted(k.split("/", 1)[1] for k in data.files if k.startswith("wav/"))
    configs = {k.split("/", 1)[1]: json.loads(str(data[k])) for k in data.files if k.startswith("config/")}
    return data, names, configs


def test_fixture_configs_are_the_seeds():
    _, names, configs = _fixture()
    assert len(names) >= 2 and sorted(configs) == ["hanning", "povey"]
    # the project config naming only its window equals the seeds' torchaudio calls
    assert FbankConfig.from_kaldi_kwargs(**configs["hanning"]) == FbankConfig(window_type="hanning", htk_compat=True)
    assert FbankConfig.from_kaldi_kwargs(**configs["povey"]) == FbankConfig(window_type="povey")


@pytest.mark.parametrize("window", ["hanning", "povey"])
def test_parity_torchaudio_fixture(window):
    data, names, configs = _fixture()
    cfg = FbankConfig.from_kaldi_kwargs(**configs[window])
    module = Fbank(cfg)
    wavs = [torch.from_numpy(data[f"wav/{n}"]) for n in names]
    refs = [data[f"fbank/{window}/{n}"] for n in names]
    assert any(len(w) % 2 for w in wavs)  # an odd length is covered
    for wav, ref in zip(wavs, refs):
        ours, n = module(wav)
        assert ours.shape == ref.shape == (int(n), 128)
        assert np.abs(ours.numpy() - ref).max() < 1e-5
    # the same clips as one padded batch
    batch = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True)
    lengths = torch.tensor([len(w) for w in wavs])
    feats, flen = module(batch, lengths)
    for b, ref in enumerate(refs):
        assert int(flen[b]) == ref.shape[0]
        assert np.abs(feats[b, : ref.shape[0]].numpy() - ref).max() < 1e-5
        assert not feats[b, ref.shape[0] :].any()


def test_seed_settings_have_one_empty_mel_bin():
    # 128 bins on a 512-point FFT at 16 kHz: bin 3 gets no FFT bin (Kaldi C++ refuses this,
    # torchaudio and the seeds do not): a constant log(eps) column, in torchaudio's output too.
    data, names, _ = _fixture()
    assert (mel_banks(128, 512, 16000.0, 20.0, 0.0).sum(0) == 0).nonzero().flatten().tolist() == [3]
    log_eps = np.log(np.float32(np.finfo(np.float32).eps))
    for n in names:
        assert np.allclose(data[f"fbank/hanning/{n}"][:, 3], log_eps)


# -------------------------------------------------------------------------------------------------
# (c) batching, frame counts, padding
# -------------------------------------------------------------------------------------------------


def test_ten_seconds_gives_998_frames():
    cfg = FbankConfig()
    assert num_frames(10 * SR, cfg) == 998
    feats, n = fbank(torch.zeros(10 * SR), cfg)
    assert feats.shape == (998, 128) and n.dim() == 0 and int(n) == 998
    counts = num_frames(torch.tensor([10 * SR, 400, 399, 560, 559, 0]), cfg)
    assert torch.equal(counts, torch.tensor([998, 1, 0, 2, 1, 0]))
    assert num_frames(10 * SR, FbankConfig(snip_edges=False)) == 1000


@pytest.mark.parametrize("window", ["hanning", "povey"])
@pytest.mark.parametrize("snip_edges", [True, False])
def test_batched_equals_one_by_one(window, snip_edges):
    torch.manual_seed(0)
    lengths = torch.tensor([16000, 12345, 401, 399, 8000])
    wav = torch.randn(len(lengths), int(lengths.max())) * 0.2
    # garbage beyond each clip's length must not leak into its frames
    module = Fbank(FbankConfig(window_type=window, snip_edges=snip_edges))
    feats, flen = module(wav, lengths)
    assert feats.shape == (5, int(num_frames(16000, module.cfg)), 128)
    assert torch.equal(flen, num_frames(lengths, module.cfg))
    for b, n in enumerate(lengths.tolist()):
        alone, n_alone = module(wav[b, :n])
        assert int(n_alone) == int(flen[b]) == alone.shape[0]
        assert torch.equal(feats[b, : alone.shape[0]], alone)
        assert torch.all(feats[b, alone.shape[0] :] == 0.0)


def test_module_buffers_and_autocast():
    module = Fbank(FbankConfig())
    assert module.state_dict() == {}  # window / mel matrix are not checkpointed
    assert module.mel_matrix.shape == (257, 128) and torch.all(module.mel_matrix[-1] == 0)
    x = torch.randn(2, 4000) * 0.1
    ref, _ = module(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = module(x)
    assert out.dtype == torch.float32 and torch.equal(out, ref)
    out16, _ = module(x.double())
    assert out16.dtype == torch.float32 and torch.equal(out16, ref)
    module.half()  # a model cast to half keeps float32 filterbank constants
    assert module.window.dtype == module.mel_matrix.dtype == torch.float32
    out_h, _ = module(x.half())
    ref_h, _ = module(x.half().float())
    assert out_h.dtype == torch.float32 and torch.equal(out_h, ref_h)


@pytest.mark.parametrize("bins", [23, 80, 120])
def test_mel_banks_match_kaldi_native_fbank(bins):
    opts = knf.MelBanksOptions()
    opts.num_bins = bins
    ref = np.asarray(knf.MelBanks(opts, knf.FrameExtractionOptions(), 1.0).get_matrix())  # (bins, 257)
    ours = mel_banks(bins, 512, 16000.0, 20.0, 0.0).numpy()  # (257, bins)
    assert ours.shape == (257, bins) and ref.shape == (bins, 257)
    assert np.abs(ours.T - ref).max() < 1e-4
    assert np.all(ours[-1] == 0) and np.all(ours.sum(0) > 0)


# -------------------------------------------------------------------------------------------------
# (d) edge cases and errors
# -------------------------------------------------------------------------------------------------


def test_shorter_than_one_window_gives_zero_frames():
    feats, n = fbank(torch.randn(399))
    assert feats.shape == (0, 128) and int(n) == 0
    feats, n = fbank(torch.randn(3, 100), lengths=torch.tensor([100, 50, 0]))
    assert feats.shape == (3, 0, 128) and n.tolist() == [0, 0, 0]
    feats, n = fbank(torch.zeros(0))
    assert feats.shape == (0, 128) and int(n) == 0


def test_silence_hits_the_log_floor():
    feats, _ = fbank(torch.zeros(1000))
    assert torch.allclose(feats, torch.full_like(feats, float(np.log(np.finfo(np.float32).eps))))


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="window_type"):
        FbankConfig(window_type="hann")
    with pytest.raises(ValueError, match="lengths"):
        fbank(torch.zeros(2, 1000), lengths=torch.tensor([1000, 1001]))
    with pytest.raises(ValueError, match="shape"):
        fbank(torch.zeros(1, 2, 1000))
    with pytest.raises(NotImplementedError, match="VTLN"):
        FbankConfig.from_kaldi_kwargs(vtln_warp=0.9)


def test_dither_is_random_but_small():
    torch.manual_seed(0)
    x = torch.randn(8000) * 0.1
    a, _ = fbank(x, FbankConfig(dither=1e-4))
    b, _ = fbank(x, FbankConfig())
    assert not torch.equal(a, b) and (a - b).abs().mean() < 5e-3
