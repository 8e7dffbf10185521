"""A small synthetic audio corpus with structure (harmonic tones with vibrato, chirps, noise bursts, clicks).

Used by the tests and by ``make demo`` when no real audio is given: clips of 1.5-3 s at mixed sample rates (16, 22.05
and 8 kHz) and channel counts, so the resampler and the down-mix are exercised too. Optional class labels
(``tone`` (melodies), ``chirp``, ``noise``, ``clicks``) make a labelled set.
"""
from __future__ import annotations

import os
from typing import List, Tuple

import numpy as np
import soundfile as sf

KINDS = ("tone", "chirp", "noise", "clicks")


def synth_clip(kind: str, seconds: float, sr: int, rng: np.random.Generator) -> np.ndarray:
    n = int(seconds * sr)
    t = np.arange(n) / sr
    if kind == "tone":  # a melody: harmonic notes of random pitch, 100-300 ms each, with vibrato
        n_notes = max(1, int(seconds / rng.uniform(0.1, 0.3)))
        f0 = rng.uniform(110, 880, n_notes)[np.minimum((t / seconds * n_notes).astype(int), n_notes - 1)]
        vib = 1 + 0.01 * np.sin(2 * np.pi * rng.uniform(3, 7) * t)
        phase = 2 * np.pi * np.cumsum(f0 * vib) / sr
        x = sum(np.sin(k * phase) / k for k in range(1, 6))
    elif kind == "chirp":
        f0, f1 = rng.uniform(100, 600), rng.uniform(1500, min(6000, sr / 2 - 200))
        if rng.random() < 0.5:
            f0, f1 = f1, f0
        phase = 2 * np.pi * (f0 * t + (f1 - f0) * t ** 2 / (2 * seconds))
        x = np.sin(phase)
    elif kind == "noise":
        x = rng.standard_normal(n)
        rate = rng.uniform(1, 6)
        x *= 0.5 * (1 + np.sin(2 * np.pi * rate * t)) ** 2
        # crude band limiting with a moving average of random width
        w = int(rng.integers(1, 8))
        x = np.convolve(x, np.ones(w) / w, mode="same")
    elif kind == "clicks":
        x = np.zeros(n)
        period = int(sr / rng.uniform(2, 8))
        decay = np.exp(-np.arange(int(0.05 * sr)) / (0.01 * sr))
        burst = rng.standard_normal(len(decay)) * decay
        for start in range(int(rng.integers(0, period)), n - len(burst), period):
            x[start:start + len(burst)] += burst
    else:
        raise ValueError(f"unknown kind {kind!r}; choose from {KINDS}")
    x = x / (np.abs(x).max() + 1e-9) * rng.uniform(0.2, 0.8)
    x = x + 1e-3 * rng.standard_normal(n)  # a recording's noise floor: no exactly-silent (log(eps)) bins
    return x.astype(np.float32)


def make_corpus(dest: str, n_clips: int = 24, *, seed: int = 0, seconds: Tuple[float, float] = (1.5, 3.0),
                rates=(16000, 22050, 8000), kinds=KINDS) -> List[Tuple[str, str]]:
    """Write ``n_clips`` clips under ``dest/<kind>/clip_XXXX.wav``; returns [(path, kind)]. Deterministic in seed."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_clips):
        kind = kinds[i % len(kinds)]
        sr = int(rates[i % len(rates)])
        x = synth_clip(kind, float(rng.uniform(*seconds)), sr, rng)
        if i % 5 == 4:  # some stereo files: the loader must down-mix
            x = np.stack([x, 0.5 * x], axis=1)
        folder = os.path.join(dest, kind)
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"clip_{i:04d}.wav")
        sf.write(path, x, sr)
        out.append((path, kind))
    return out
