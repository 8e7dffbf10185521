"""Audio loading and band-limited resampling (torch + soundfile + numpy only).

No fairseq and no torchaudio here: torchaudio's Linux wheels are CUDA-linked and
newer versions cannot load audio any more, so files are read with
``soundfile`` (libsndfile: WAV, FLAC, OGG, MP3 ...) and resampled with the
windowed-sinc polyphase resampler below.

Conventions (those of the official code): audio is float in ``[-1, 1]`` as soundfile returns
it (no int16 scaling), channels are averaged to mono, and the clip is resampled to
the model rate (16 kHz) when the file has another rate.  The waveform mean is *not*
removed here; SSAST/EAT's mean removal belongs to the dataset.

Bad files raise :class:`AudioError` naming the file and the fix, never a silent
substitute:

* missing, unreadable (soundfile cannot decode it, e.g. a damaged FLAC stream) or
  empty (0 samples);
* **truncated WAV** (the header declares more audio than the file holds: an
  interrupted copy or download).  libsndfile would silently decode the part that is
  there; the rest of the clip is lost, so the file is refused: re-copy it.
  (Streaming headers with a placeholder length are not truncation.)
* **NaN or Inf samples** (possible in float WAV / FLAC files written from a failed
  computation).  They are refused rather than replaced: a replaced value would be a
  made-up signal, and a single non-finite sample makes every fbank frame it touches,
  and then the loss, NaN.  Fix the file or drop it from the manifest.

Samples beyond ``[-1, 1]`` (a float file holding integer-PCM values, e.g. int16
audio written as float without dividing by 32768) are loaded unchanged but logged:
one warning per file and process (logger ``maeast_fairseq.audio``) naming the file
and its peak.  The features stay finite, but the clip is ~90 dB (int16) or ~186 dB
(int32) louder than the data the normalisation statistics describe.

:func:`read_clip` is :func:`load_audio` for datasets: it also returns the file's
rate and frame count (to compare with a manifest) and can stop decoding after
``max_samples`` output samples, so a clip far longer than anything the model sees
costs no more memory than that.

Resampler
---------
``resample(wav, orig_sr, new_sr)`` reduces the two rates by their gcd
(``orig -> new``, e.g. 44100 -> 16000 becomes 441 -> 160) and computes every output
sample as a dot product of the input with an ideal low-pass (sinc) kernel
centred at the output instant, cut off at ``rolloff * min(orig_sr, new_sr) / 2``
and truncated to ``lowpass_filter_width`` zero crossings on each side by a Kaiser
window (beta 8.6, ~85 dB stop-band attenuation; ``window="hann"`` is available
too).  Since output sample ``q * new + i`` is at input position
``q * orig + i * orig / new``, the ``new`` distinct phases form a
``(new, 1, K)`` filter bank applied by one strided ``conv1d`` (stride ``orig``):
output channel ``i`` of conv step ``q`` is output sample ``q * new + i``.
The signal is taken as zero outside ``[0, n)``; the output has
``ceil(n * new_sr / orig_sr)`` samples.  Kernels are cached per
``(orig, new, width, rolloff, window, beta, device, dtype)``.
"""

from __future__ import annotations

import logging
import math
import os
from collections import OrderedDict
from typing import NamedTuple, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["AudioError", "ClipAudio", "load_audio", "read_clip", "audio_info", "resample", "num_resampled",
           "resample_kernel", "wav_truncation"]

PathLike = Union[str, "os.PathLike[str]"]

logger = logging.getLogger(__name__)

#: files already reported for samples beyond [-1, 1] (one warning per file and process)
_WARNED_SCALE: set = set()


class AudioError(ValueError):
    """An audio file that cannot be used; the message names the file and the fix."""


def _soundfile():
    # Imported lazily so that ``resample`` works where soundfile is not installed (GPU hosts).
    try:
        import soundfile
    except ImportError as err:  # pragma: no cover - soundfile is a declared dependency
        raise ImportError(f"reading audio files needs soundfile: `pip install soundfile` ({err})") from err
    return soundfile


# -------------------------------------------------------------------------------------------------
# Files
# -------------------------------------------------------------------------------------------------


def _check_exists(path: PathLike) -> str:
    p = os.fspath(path)
    if not os.path.exists(p):
        raise AudioError(
            f"audio file not found: {p!r}. Fix: check the path (for manifests: the root directory on the "
            "first line plus the relative path) or regenerate the manifest."
        )
    if os.path.isdir(p):
        raise AudioError(f"audio path is a directory, not a file: {p!r}. Fix: point to an audio file.")
    return p


def _unreadable(p: str, err: Exception) -> AudioError:
    return AudioError(
        f"cannot read audio file {p!r}: {err}. Fix: make sure it is a complete audio file in a format "
        "libsndfile reads (WAV, FLAC, OGG, MP3), e.g. convert it with `ffmpeg -i IN -ar 16000 OUT.flac`, "
        "or drop it from the manifest."
    )


#: ``data`` chunk sizes that streaming writers (ffmpeg / sox / arecord to a pipe) put in the header when they
#: cannot seek back to write the real size: they mean "unknown length", not "truncated".
_WAV_PLACEHOLDER_SIZES = frozenset({0, 0xFFFFFFFF, 0x7FFFFFFF, 0x7FFFF000})


def wav_truncation(path: str) -> tuple[int, int] | None:
    """``(declared_frames, held_frames)`` when ``path`` is a RIFF/WAVE file whose ``data`` chunk claims more bytes
    than the file holds (a truncated file), else ``None`` (not a WAV file, complete, RF64, or a streaming header
    with a placeholder size).

    Only the chunk headers are read (a few small reads); malformed headers give ``None`` (soundfile reports those).
    """
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
                return None
            order = "little" if head[:4] == b"RIFF" else "big"
            pos, block_align = 12, 0
            while pos + 8 <= size:
                f.seek(pos)
                chunk = f.read(8)
                if len(chunk) < 8:
                    return None
                cid, csize = chunk[:4], int.from_bytes(chunk[4:], order)
                if cid == b"fmt ":
                    fmt = f.read(min(csize, 16))
                    if len(fmt) >= 14:
                        block_align = int.from_bytes(fmt[12:14], order)
                elif cid == b"data":
                    if csize in _WAV_PLACEHOLDER_SIZES or block_align <= 0:
                        return None
                    held = size - (pos + 8)
                    if csize > held:
                        return csize // block_align, held // block_align
                    return None
                pos += 8 + csize + (csize & 1)  # chunks are padded to an even size
    except OSError:
        return None
    return None


def _check_complete(p: str) -> None:
    """Refuse a truncated WAV file (libsndfile would silently decode only the part that is there)."""
    cut = wav_truncation(p)
    if cut is not None:
        raise AudioError(
            f"audio file {p!r} is truncated: its header declares {cut[0]} frames but the file holds only {cut[1]} "
            "(an interrupted copy or download?). Fix: copy the file again, or drop it from the manifest "
            "(`maeast-manifest --check` lists every such file)."
        )


def audio_info(path: PathLike) -> Tuple[int, int, int]:
    """``(num_samples, sample_rate, channels)`` of an audio file, from its header.

    Raises :class:`AudioError` for a missing, unreadable, empty or truncated (WAV) file.
    """
    p = _check_exists(path)
    sf = _soundfile()
    try:
        info = sf.info(p)
    except Exception as err:  # soundfile raises LibsndfileError (a RuntimeError) or TypeError
        raise _unreadable(p, err) from err
    if info.frames <= 0:
        raise AudioError(f"audio file is empty (0 samples): {p!r}. Fix: remove it from the manifest.")
    _check_complete(p)
    return int(info.frames), int(info.samplerate), int(info.channels)


class ClipAudio(NamedTuple):
    """What :func:`read_clip` returns."""

    wav: torch.Tensor  #: (samples,) mono at the target rate (or (channels, samples) with mono=False)
    sample_rate: int  #: the file's own rate
    num_frames: int  #: frames the file holds at its own rate (what a manifest lists)
    cropped: bool  #: True when decoding stopped at ``max_samples`` (the file holds more)


def read_clip(
    path: PathLike,
    target_sr: Optional[int] = 16000,
    *,
    max_samples: Optional[int] = None,
    mono: bool = True,
    dtype: torch.dtype = torch.float32,
) -> ClipAudio:
    """:func:`load_audio` plus the file's rate and frame count; ``max_samples`` (at ``target_sr``) stops decoding
    early for a longer file: only its first ``max_samples`` output samples are read and resampled (with enough
    extra input for the resampling filter, so they equal the first samples of the whole clip resampled).
    A clip of at most ``max_samples`` samples is read whole, exactly as :func:`load_audio` reads it.
    """
    p = _check_exists(path)
    _check_complete(p)
    read_dtype = "float64" if dtype == torch.float64 else "float32"
    sf = _soundfile()
    try:
        with sf.SoundFile(p) as f:
            sr, total = int(f.samplerate), int(f.frames)
            frames = total
            if max_samples is not None and target_sr is not None:
                frames = min(total, _input_frames(int(max_samples), sr, int(target_sr)))
            data = f.read(frames, dtype=read_dtype, always_2d=True)  # (frames, channels)
    except Exception as err:
        raise _unreadable(p, err) from err
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise AudioError(f"audio file is empty (0 samples): {p!r}. Fix: remove it from the manifest.")
    finite = np.isfinite(data)
    if not finite.all():
        bad = int(data.size - np.count_nonzero(finite))
        frame, channel = (int(i[0]) for i in np.nonzero(~finite))
        raise AudioError(
            f"audio file {p!r} has {bad} NaN/Inf sample(s) (first at frame {frame}, channel {channel}): it would "
            "give NaN features and a NaN loss, and it is not replaced by a made-up value. Fix: repair or "
            "re-export the file from its source, or drop it from the manifest."
        )
    _warn_unscaled(p, data)
    cropped = frames < total
    wav = torch.from_numpy(np.ascontiguousarray(data.T))  # (channels, samples)
    if mono:
        wav = wav.mean(dim=0)
    if target_sr is not None and sr != int(target_sr):
        wav = resample(wav, sr, int(target_sr))
    if cropped:
        wav = wav[..., : int(max_samples)]
    return ClipAudio(wav.to(dtype), sr, total, cropped)


#: lossy codecs: their decoders overshoot full scale a little (Gibbs ringing of a clipped master); only a peak
#: beyond LOSSY_PEAK_LIMIT there means unscaled integer samples
LOSSY_EXTS = (".ogg", ".oga", ".opus", ".mp3")
LOSSY_PEAK_LIMIT = 2.0


def _warn_unscaled(p: str, data: np.ndarray) -> None:
    """Warn (once per file) when decoded samples exceed [-1, 1] (``LOSSY_PEAK_LIMIT`` for Ogg / MP3, whose decoders
    overshoot a little); the samples are left as they are."""
    key = os.path.abspath(p)
    if key in _WARNED_SCALE:
        return
    peak = max(float(data.max()), -float(data.min()))  # no |data| copy of a long clip
    if peak > (LOSSY_PEAK_LIMIT if os.path.splitext(p)[1].lower() in LOSSY_EXTS else 1.0):
        _WARNED_SCALE.add(key)
        logger.warning(
            f"audio file {p!r} has samples beyond [-1, 1] (peak |sample| = {peak:.6g}): samples should be in "
            "[-1, 1]; was this integer PCM saved as float without scaling? They are used as they are; if so, "
            "divide the file's samples by 32768 (int16 values) or 2**31 (int32 values) and write it again."
        )


def _input_frames(max_samples: int, orig_sr: int, new_sr: int) -> int:
    """Input frames that determine the first ``max_samples`` output samples of ``resample(orig_sr -> new_sr)``."""
    if orig_sr == new_sr:
        return max_samples
    _, width = resample_kernel(orig_sr, new_sr)
    return -(-max_samples * orig_sr // new_sr) + 2 * width + 1


def load_audio(
    path: PathLike,
    target_sr: Optional[int] = 16000,
    *,
    mono: bool = True,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Read an audio file as float in ``[-1, 1]``, average channels, resample to ``target_sr``.

    Returns ``(samples,)`` with ``mono=True`` (the default) and ``(channels, samples)``
    otherwise.  ``target_sr=None`` keeps the file's rate.  Raises :class:`AudioError`
    for a missing, unreadable, empty or truncated file and for NaN / Inf samples.
    """
    return read_clip(path, target_sr, mono=mono, dtype=dtype).wav


# -------------------------------------------------------------------------------------------------
# Resampling
# -------------------------------------------------------------------------------------------------

_KAISER_BETA = 8.6
_MAX_KERNEL_ELEMENTS = 1 << 24  # 16M taps: beyond that the rates are not reducible enough
_KERNEL_CACHE: OrderedDict[tuple, Tuple[torch.Tensor, int]] = OrderedDict()
_KERNEL_CACHE_SIZE = 32


def _as_rate(sr: Union[int, float], name: str) -> int:
    if isinstance(sr, float) and not sr.is_integer():
        raise ValueError(f"resample: {name}={sr} must be a whole number of Hz")
    sr = int(sr)
    if sr <= 0:
        raise ValueError(f"resample: {name}={sr} must be positive")
    return sr


def num_resampled(n: int, orig_sr: int, new_sr: int) -> int:
    """Number of samples ``resample`` returns for ``n`` input samples: ``ceil(n * new / orig)``."""
    orig_sr, new_sr = _as_rate(orig_sr, "orig_sr"), _as_rate(new_sr, "new_sr")
    return -((-int(n) * new_sr) // orig_sr)


def resample_kernel(
    orig_sr: int,
    new_sr: int,
    *,
    lowpass_filter_width: int = 16,
    rolloff: float = 0.99,
    window: str = "kaiser",
    beta: float = _KAISER_BETA,
    device: Union[str, torch.device, None] = None,
    dtype: torch.dtype = torch.float32,
) -> Tuple[torch.Tensor, int]:
    """The ``(new, 1, K)`` polyphase filter bank for gcd-reduced rates and its half-width.

    ``kernel[i, 0, m]`` weighs input sample ``q * orig - width + m`` for output sample
    ``q * new + i``.  Built in float64, cast to ``dtype``.
    """
    g = math.gcd(orig_sr, new_sr)
    orig, new = orig_sr // g, new_sr // g
    device = torch.device(device) if device is not None else torch.device("cpu")
    key = (orig, new, int(lowpass_filter_width), float(rolloff), window, float(beta), device, dtype)
    hit = _KERNEL_CACHE.get(key)
    if hit is not None:
        _KERNEL_CACHE.move_to_end(key)
        return hit
    if lowpass_filter_width < 1:
        raise ValueError(f"resample: lowpass_filter_width={lowpass_filter_width} must be >= 1")
    if not 0.0 < rolloff <= 1.0:
        raise ValueError(f"resample: rolloff={rolloff} must be in (0, 1]")
    # Cut-off (as a fraction of the input rate) and kernel half-width in input samples.
    cutoff = min(orig, new) * rolloff / orig  # = 2 * f_c / orig_sr
    width = math.ceil(lowpass_filter_width / cutoff)
    taps = orig + 2 * width
    if new * taps > _MAX_KERNEL_ELEMENTS:
        raise ValueError(
            f"resample: {orig_sr} -> {new_sr} Hz needs a {new}x{taps} filter bank (rates share only gcd {g}). "
            "Fix: resample through a common rate, or use rates with a large common divisor (e.g. 16000, 44100, 48000)."
        )
    m = torch.arange(taps, dtype=torch.float64)
    phase = torch.arange(new, dtype=torch.float64) * (orig / new)
    d = m.unsqueeze(0) - width - phase.unsqueeze(1)  # (new, taps): offset from output instant, input samples
    half = lowpass_filter_width / cutoff  # window half-length
    inside = d.abs() <= half
    u = (d / half).clamp(-1.0, 1.0)
    if window == "kaiser":
        w = torch.special.i0(beta * torch.sqrt(1.0 - u * u)) / torch.special.i0(torch.tensor(beta, dtype=torch.float64))
    elif window == "hann":
        w = torch.cos(0.5 * math.pi * u) ** 2
    else:
        raise ValueError(f"resample: window={window!r}; choose 'kaiser' or 'hann'")
    h = cutoff * torch.sinc(cutoff * d) * w * inside
    kernel = h.to(device=device, dtype=dtype).unsqueeze(1).contiguous()
    _KERNEL_CACHE[key] = (kernel, width)
    while len(_KERNEL_CACHE) > _KERNEL_CACHE_SIZE:
        _KERNEL_CACHE.popitem(last=False)
    return kernel, width


def resample(wav: torch.Tensor, orig_sr: int, new_sr: int, **filter_options) -> torch.Tensor:
    """Band-limited resampling of ``wav`` (``(..., n)``) from ``orig_sr`` to ``new_sr`` Hz.

    Returns ``(..., ceil(n * new_sr / orig_sr))`` on ``wav``'s device and dtype
    (float types; integer input is converted to float32).  ``wav`` itself is
    returned when the rates are equal.  ``filter_options``: the filter of :func:`resample_kernel`
    (``lowpass_filter_width``, ``rolloff``, ``window``, ``beta``; its defaults when not given); see the module
    docstring.
    """
    orig_sr, new_sr = _as_rate(orig_sr, "orig_sr"), _as_rate(new_sr, "new_sr")
    if orig_sr == new_sr:
        return wav
    if not wav.is_floating_point():
        wav = wav.float()
    g = math.gcd(orig_sr, new_sr)
    orig, new = orig_sr // g, new_sr // g
    kernel, width = resample_kernel(orig_sr, new_sr, device=wav.device, dtype=wav.dtype, **filter_options)
    shape = wav.shape
    n = shape[-1]
    n_out = num_resampled(n, orig_sr, new_sr)
    if n_out == 0 or wav.numel() == 0:
        return wav.new_zeros(*shape[:-1], n_out)
    x = wav.reshape(-1, 1, n)
    steps = -(-n_out // new)  # conv output positions needed
    right = (steps - 1) * orig + kernel.shape[-1] - width - n
    x = F.pad(x, (width, right))
    y = F.conv1d(x, kernel, stride=orig)  # (batch, new, steps)
    y = y.transpose(1, 2).reshape(x.shape[0], -1)[:, :n_out]
    return y.reshape(*shape[:-1], n_out)
