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
# A float64 reference and the float32 rounding bound (for comparisons across CPUs)
# -------------------------------------------------------------------------------------------------
#
# Two float32 computations of the same filterbank do not agree bit for bit across CPUs: the FFT
# library picks its kernels by instruction set (MKL runs its SSE4.2 kernels on AMD EPYC: the
# fixture, made there, matches them to 1e-6; AVX-512 ones on an AMX Xeon; AVX2 ones elsewhere;
# MKL_ENABLE_INSTRUCTIONS picks one), and in a mel bin ~95 dB below the frame's peak the log of
# a power near the FFT's rounding floor then moves by ~1e-3 while the loudest bins move by ~1e-6.
# So no single tolerance is right for every entry.  Instead every float32 result (ours on this
# CPU, torchaudio on the CPU that made the fixture) is compared with the recipe computed in
# float64, entry by entry, against a worst-case bound on float32 rounding derived below.

U32 = 2.0**-24  # unit roundoff of float32


def _mel64(f):
    return 1127.0 * np.log(1.0 + np.asarray(f, np.float64) / 700.0)


def _frames64(x: np.ndarray, cfg: FbankConfig) -> np.ndarray:
    """Kaldi's frames of ``x`` (float64, ``(T, window)``): snipped, or reflected at both edges."""
    w, s, n = cfg.window_size, cfg.window_shift, len(x)
    t = int(num_frames(n, cfg))
    if cfg.snip_edges:
        start = np.arange(t) * s
    else:  # frame t covers samples t*s + s//2 - w//2 ...; outside [0, n): -i-1 below, 2n-1-i above
        start = np.arange(t) * s + s // 2 - w // 2
    idx = start[:, None] + np.arange(w)[None, :]
    idx = np.mod(idx, 2 * n)
    idx = np.where(idx >= n, 2 * n - 1 - idx, idx)
    return x.astype(np.float64)[idx]


def _float64_reference(x: np.ndarray, cfg: FbankConfig):
    """``(log_mel, bound)``, both ``(T, bins)``: the recipe of ``maeast_fairseq.fbank`` computed in
    float64 with numpy (written independently of it, from Kaldi's definitions), and a bound on how
    far a float32 implementation of the same recipe can be from it, entry by entry.

    The bound, per frame ``t`` and mel bin ``m`` (``u = 2**-24``, ``N`` FFT points, ``W`` window samples):

    * FFT: a radix-2 FFT in float32 with twiddles correct to ``u`` has
      ``||dX||_2 <= k ||X||_2``, ``k = log2(N) h / (1 - log2(N) h)``, ``h = u + g4 (sqrt(2) + u)``,
      ``g4 = 4u / (1 - 4u)`` (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed.,
      Thm 24.2); ``k ~= 60u`` for N = 512.  ``||X||_2 = sqrt(N) ||windowed frame||_2``.
    * Frame arithmetic before it (mean, DC removal, pre-emphasis, window values and product):
      at most ``(log2(W) + 9) u a_i`` per sample, ``a_i = w_i (|y_i| + c |y_(i-1)| + (1 + c) mean|x|)``
      with ``y`` the DC-free frame and ``c`` the pre-emphasis; its FFT has norm ``sqrt(N)`` times that.
    * ``sqrt(M)`` of a mel energy ``M = sum_k w_k |X_k|^2`` (weights <= 1) is a weighted 2-norm of
      ``X``, so it moves by at most ``d = k ||X||_2 + (input term)``: ``|d log M| <= -2 log(1 - d / sqrt(M))``
      (unbounded where ``d >= sqrt(M)``: there rounding can reach the signal itself).
    * Mel weights: float32 mel values are within ``~8 u mel_high`` of exact, so every weight within
      ``dw = 8 u mel_high / mel_spacing``; ``M`` moves by ``<= dw S``, ``S`` the power of the FFT
      bins a rounding can bring inside the triangle.
    * Power ``re^2 + im^2``, the positive matmul sum of ``nnz`` terms and the log: ``(nnz + 4) u``
      relative, ``4u |log M|`` absolute.  ``M`` is floored at float32 eps before the log (which
      only shrinks differences), so the bound uses ``max(M, eps)``.
    """
    assert cfg.window_type in ("hanning", "povey") and cfg.use_power and cfg.use_log_fbank
    assert not cfg.use_energy and not cfg.subtract_mean and cfg.dither == 0.0 and cfg.remove_dc_offset
    eps = float(np.finfo(np.float32).eps)
    w, n_fft, c = cfg.window_size, cfg.n_fft, cfg.preemphasis_coefficient
    frames = _frames64(x, cfg)  # (T, W)
    y = frames - frames.mean(axis=1, keepdims=True)
    y_prev = np.concatenate([y[:, :1], y[:, :-1]], axis=1)  # Kaldi: the first sample is its own predecessor
    window = np.hanning(w) ** (0.85 if cfg.window_type == "povey" else 1.0)  # symmetric Hann (povey: ^0.85)
    windowed = (y - c * y_prev) * window
    power = np.abs(np.fft.rfft(windowed, n=n_fft)) ** 2  # (T, N/2 + 1)

    # Kaldi's mel triangles on the FFT bin centres k * sr / N, k < N/2 (the Nyquist bin gets weight 0)
    high = cfg.high_freq + 0.5 * cfg.sample_rate if cfg.high_freq <= 0 else cfg.high_freq
    mel_low, mel_high = _mel64(cfg.low_freq), _mel64(high)
    spacing = (mel_high - mel_low) / (cfg.num_mel_bins + 1)
    left = mel_low + spacing * np.arange(cfg.num_mel_bins)[:, None]
    center, right = left + spacing, left + 2 * spacing
    mel = _mel64(cfg.sample_rate / n_fft * np.arange(n_fft // 2))[None, :]
    weights = np.maximum(0.0, np.minimum((mel - left) / (center - left), (right - mel) / (right - center)))
    mel_tol = 8 * U32 * mel_high
    reachable = (mel > left - mel_tol) & (mel < right + mel_tol)  # bins a rounding can bring inside
    pad = np.zeros((cfg.num_mel_bins, 1))
    weights = np.concatenate([weights, pad], axis=1).T  # (N/2 + 1, bins)
    reachable = np.concatenate([reachable, pad], axis=1).T
    energy = power @ weights
    energy_floored = np.maximum(energy, eps)
    log_mel = np.log(energy_floored)

    log2_n = np.log2(n_fft)
    g4 = 4 * U32 / (1 - 4 * U32)
    h = U32 + g4 * (np.sqrt(2.0) + U32)
    k_fft = log2_n * h / (1 - log2_n * h)
    a = window * (np.abs(y) + c * np.abs(y_prev) + (1 + c) * np.abs(frames).mean(axis=1, keepdims=True))
    d = np.sqrt(n_fft) * (
        k_fft * np.linalg.norm(windowed, axis=1) + (np.log2(w) + 9) * U32 * np.linalg.norm(a, axis=1)
    )[:, None]
    rho = d / np.sqrt(energy_floored)
    with np.errstate(divide="ignore", invalid="ignore"):
        fft_term = np.where(rho < 1.0, -2.0 * np.log1p(-np.minimum(rho, 1.0 - 1e-12)), np.inf)
    weight_term = 8 * U32 * mel_high / spacing * (power @ reachable) / energy_floored
    nnz = reachable.sum(axis=0)[None, :]
    bound = fft_term + weight_term + (nnz + 4) * U32 + 4 * U32 * np.abs(log_mel)
    return log_mel, bound


def _assert_within_rounding(name: str, got: np.ndarray, exact: np.ndarray, bound: np.ndarray) -> None:
    """``got`` is within the float32 rounding ``bound`` of the float64 ``exact`` in every entry."""
    assert got.shape == exact.shape
    if got.size == 0:
        return
    excess = np.abs(got.astype(np.float64) - exact) - bound
    t, m = np.unravel_index(np.argmax(excess), excess.shape)
    assert excess.max() <= 0.0, (
        f"{name}: frame {t} bin {m} is {got[t, m]:.7g}, the float64 recipe gives {exact[t, m]:.7g}; "
        f"float32 rounding allows {bound[t, m]:.3g} there"
    )


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
    # float32 FFT rounding is relative to a frame's total energy, so entries far below the
    # frame's loudest bin (the lowest mel bins after DC removal and pre-emphasis, up to
    # ~1e-9 of it) carry ~1e-3 of rounding noise in *both* implementations: each is held to the
    # float64 recipe within the float32 rounding bound of its entry (see _float64_reference;
    # both stay under a third of it).
    log_mel, bound = _float64_reference(x, cfg)
    assert np.isfinite(bound).mean() > 0.99
    _assert_within_rounding("kaldi-native-fbank", ref, log_mel, bound)
    _assert_within_rounding("Fbank", ours.numpy(), log_mel, bound)


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
# (b) torchaudio.compliance.kaldi.fbank at the official codes' 128-bin settings (committed fixture)
# -------------------------------------------------------------------------------------------------


def _fixture():
    data = np.load(FIXTURE)
    names = sorted(k.split("/", 1)[1] for k in data.files if k.startswith("wav/"))
    configs = {k.split("/", 1)[1]: json.loads(str(data[k])) for k in data.files if k.startswith("config/")}
    return data, names, configs


def test_fixture_configs_are_the_official_calls():
    _, names, configs = _fixture()
    assert len(names) >= 2 and sorted(configs) == ["hanning", "povey"]
    # the project config naming only its window equals the official codes' torchaudio calls
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
    # The fixture holds torchaudio's float32 output on the CPU that made it, ours is float32 on
    # this CPU: each must lie within float32 rounding of the float64 recipe (see _float64_reference;
    # a flat 1e-5 held only where both ran the same FFT kernels).
    exact = {}
    for name, wav, ref in zip(names, wavs, refs):
        ours, n = module(wav)
        assert ours.shape == ref.shape == (int(n), 128)
        log_mel, bound = exact[name] = _float64_reference(wav.numpy(), cfg)
        # a worst-case bound, yet tight where the signal is: < 1e-3 at every frame's loudest bin
        # (1e-4 .. 5e-4 here; a wrong window or mel edge moves such bins by 1e-2 or more), and
        # finite (rounding cannot reach the signal) for > 98% of the entries
        peak_bound = bound[np.arange(len(log_mel)), log_mel.argmax(axis=1)]
        assert peak_bound.max() < 1e-3 and np.isfinite(bound).mean() > 0.98
        _assert_within_rounding(f"torchaudio fixture {window}/{name}", ref, log_mel, bound)
        _assert_within_rounding(f"Fbank {window}/{name}", ours.numpy(), log_mel, bound)
    # the same clips as one padded batch
    batch = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True)
    lengths = torch.tensor([len(w) for w in wavs])
    feats, flen = module(batch, lengths)
    for b, (name, ref) in enumerate(zip(names, refs)):
        assert int(flen[b]) == ref.shape[0]
        _assert_within_rounding(f"Fbank batch {window}/{name}", feats[b, : ref.shape[0]].numpy(), *exact[name])
        assert not feats[b, ref.shape[0] :].any()


def test_official_settings_have_one_empty_mel_bin():
    # 128 bins on a 512-point FFT at 16 kHz: bin 3 gets no FFT bin (Kaldi C++ refuses this,
    # torchaudio and the official codes do not): a constant log(eps) column, in torchaudio's output too.
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
        # Not bit for bit: the FFT library may run other kernels for another batch shape (MKL's
        # AVX2 kernels do), so both are held to the float64 recipe within float32 rounding.
        log_mel, bound = _float64_reference(wav[b, :n].numpy(), module.cfg)
        _assert_within_rounding(f"clip {b} alone", alone.numpy(), log_mel, bound)
        _assert_within_rounding(f"clip {b} in the batch", feats[b, : alone.shape[0]].numpy(), log_mel, bound)
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


@pytest.mark.parametrize("subtract_mean", [True, False])
def test_long_waveform_log_mel_in_pieces_equals_one_go(monkeypatch, subtract_mean):
    """Frontend.log_mel cuts long audio into pieces of frames (bounded fbank memory): every frame comes from the
    same samples through the same per-frame arithmetic, so the result is the one-go log-mel. Tolerance: the FFT may
    round differently for a different number of rows (batched kernels); a few float32 ulps of the log-mel's range."""
    import maeast_fairseq.frontend as fe
    from maeast_fairseq.frontend import Frontend, FrontendConfig

    front = Frontend(FrontendConfig(subtract_waveform_mean=subtract_mean))
    wav = torch.randn(160 * 2503 + 240, generator=torch.Generator().manual_seed(0)) * 0.1 + 0.05
    whole = front.log_mel(wav)
    monkeypatch.setattr(fe, "LOG_MEL_PIECE_FRAMES", 700)  # 4 pieces, the last one short
    pieces = front.log_mel(wav)
    assert pieces.shape == whole.shape == (2503, 128)
    scale = float(whole.abs().max())
    torch.testing.assert_close(pieces, whole, rtol=0, atol=8 * torch.finfo(torch.float32).eps * scale)
