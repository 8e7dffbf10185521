"""Frozen upstreams and the extract-once feature cache of the evaluation protocols (pure torch, no fairseq).

Upstreams (:func:`load_upstream`), all run frozen (``eval()``, ``no_grad``) on 16 kHz mono audio:

* ``PATH``: a checkpoint of ours (any method :func:`maeast_fairseq.checkpoint.load_pretrained` reads), its front end
  and normalisation statistics taken from the checkpoint, run through the embedding API
  (:meth:`maeast_fairseq.embed.Pretrained.embed`); layers = every hidden state (the encoder input, then each
  block), each a time sequence as s3prl makes it: the tokens of one time step concatenated over
  frequency, ``(B, T_p * F_p, D) -> (B, T_p, F_p * D)``, one step per ``stride_time`` fbank frames. Clips longer
  than the training length are encoded in windows (``--chunk-seconds`` overrides the window).
* ``random:PATH``: the same architecture and front end as ``PATH``, parameters re-initialised by the model's own
  initialiser under a fixed seed. Buffers (the input BatchNorm's running statistics, fixed position tables) are
  kept from the checkpoint: they are data statistics and constants, not learned weights, so the comparison with
  ``PATH`` isolates what pretraining learned.
* ``logmel``: the plain log-mel frames (128-bin Kaldi fbank, Hann window, waveform mean removed, AudioSet
  normalisation ``(x - mean) / (2 std)``) as a single "layer" at 100 frames/s: an honest baseline.

Checkpoint upstreams run in the numeric precision ``precision`` asks for (``auto`` | ``fp32`` | ``bf16``, resolved
for the device and the model's width by :func:`maeast_fairseq.precision.resolve_precision`; ``bf16`` = the encoder
under bfloat16 autocast, float32 outputs); the log-mel upstream has no encoder and is always float32. The resolved
precision is part of a checkpoint upstream's cache key, so features extracted in bf16 are never served to an fp32
request, nor the reverse. The heads always train in float32.

The cache (:class:`FeatureCache`) stores, per split, the mean over each clip's valid frames of every layer: an
``(N, L+1, D)`` tensor. This is exact for both heads (see :mod:`maeast_fairseq.evaluation.superb`). The file name is a
hash of the upstream (checkpoint path, size and mtime, precision; or the log-mel settings; or the random seed), of the
manifest (path and contents), of every audio file's size and mtime, and of the extraction options, so a changed
checkpoint or data set is re-extracted and an unchanged one never is.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..audio import load_audio
from ..frontend import Frontend, FrontendConfig, padding_from_lengths
from ..precision import PRECISIONS, Precision, model_width, resolve_precision

#: bump when the extraction changes what a cache file holds
EXTRACTOR_VERSION = 1
#: counts of splits extracted / read from the cache in this process (tests check them)
STATS = {"extracted": 0, "cache_hits": 0}

Progress = Callable[[int, int], None]


# ----------------------------------------------------------------------------------------------------------------
# Upstreams
# ----------------------------------------------------------------------------------------------------------------


class Upstream:
    """A frozen feature extractor: ``hidden_states(wavs) -> ([h_0, ..., h_L] each (B, T, D), frame_padding)``."""

    kind: str = ""
    sample_rate: int = 16000
    #: the arithmetic of the extraction (subclasses set their own; reported and, for checkpoints, in the cache key)
    precision: Precision = Precision("fp32", "fp32", "float32")

    def __init__(self, spec: str, label: str, frame_rate: float, cache_key: dict):
        self.spec, self.label, self.frame_rate, self.cache_key = spec, label, frame_rate, cache_key
        self.device = torch.device("cpu")
        self.extraction = ""  # how the time sequence is obtained (reported)

    def to(self, device) -> Upstream:
        self.device = torch.device(device)
        return self

    def hidden_states(self, wavs: Sequence[torch.Tensor]) -> Tuple[List[torch.Tensor], Optional[torch.Tensor]]:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"spec": self.spec, "kind": self.kind, "model": getattr(self, "model_name", None), "label": self.label,
                "frame_rate_hz": self.frame_rate, "extraction": self.extraction, "precision": self.precision.name,
                "precision_reason": self.precision.describe()}


class LogmelUpstream(Upstream):
    kind = "logmel"

    def __init__(self, frontend: Optional[FrontendConfig] = None, precision: str = "fp32"):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        # no encoder: the fbank is float32 whatever is asked (and the cache key does not depend on it)
        self.precision = Precision("fp32", precision, "the log-mel upstream has no encoder: always float32")
        self.frontend = frontend or FrontendConfig()
        self.frontend_module = Frontend(self.frontend)
        fb = self.frontend_module.fbank.cfg
        f = self.frontend
        label = (f"logmel ({f.num_mel_bins}-bin Kaldi fbank, {f.window_type} window, "
                 f"{'waveform mean removed, ' if f.subtract_waveform_mean else ''}"
                 + (f"normalised (x - {f.norm_mean:g}) / (2 * {f.norm_std:g}))" if f.norm == "dataset" else "raw)"))
        super().__init__("logmel", label, 1000.0 / fb.frame_shift_ms,
                         {"kind": "logmel", "frontend": dataclasses.asdict(self.frontend)})
        self.extraction = "normalised log-mel frames as one layer"
        self.num_layers, self.dim = 1, fb.num_features

    def to(self, device):
        super().to(device)
        self.frontend_module = self.frontend_module.to(self.device)
        return self

    @torch.no_grad()
    def hidden_states(self, wavs):
        # one batched fbank call; the padding follows each clip's frames
        feats, frames = self.frontend_module.batch_log_mel(wavs)
        return [self.frontend_module.normalise(feats)], padding_from_lengths(frames, feats.shape[1])


def file_identity(path: str) -> dict:
    st = os.stat(path)
    return {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


class CheckpointUpstream(Upstream):
    """A checkpoint of ours through the embedding API (:meth:`maeast_fairseq.embed.Pretrained.embed`): every
    hidden state as a time sequence ``(B, T_p, F_p * D)`` with its frame padding; clips longer than the training
    length are encoded in windows (``chunk_frames``, default the checkpoint's training length)."""

    kind = "checkpoint"

    def __init__(self, path: str, random_init_seed: Optional[int] = None, chunk_seconds: float = 0.0,
                 precision: str = "fp32"):
        from ..checkpoint import load_pretrained  # the embedding API of the project

        if precision not in PRECISIONS:  # before loading anything
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.requested_precision = precision

        self.pretrained = load_pretrained(path).eval()
        name = self.pretrained.name
        if random_init_seed is not None:
            self.kind = "random"
            reinitialise(self.pretrained, random_init_seed)
        pre = self.pretrained
        shift_ms = 1000.0 * pre.frame_shift / pre.sample_rate
        self.chunk_frames = int(round(chunk_seconds * 1000.0 / shift_ms)) if chunk_seconds > 0 else None
        desc = f"{name} checkpoint {os.path.abspath(path)}"
        if random_init_seed is not None:
            desc = (f"RANDOM-INIT {name} (architecture, front end and input-normalisation statistics of "
                    f"{os.path.abspath(path)}; parameters drawn with seed {random_init_seed})")
        key = {"kind": self.kind, "checkpoint": file_identity(path), "chunk_frames": self.chunk_frames}
        if random_init_seed is not None:
            key["seed"] = random_init_seed
        super().__init__(path if random_init_seed is None else f"random:{path}", desc, float(pre.frame_rate), key)
        self.model_name = name
        self.extraction = (f"Pretrained.embed hidden states as time sequences (F_p * D per step), windows of "
                           f"{self.chunk_frames or pre.chunk_frames} frames")
        self._resolve_precision()

    def _resolve_precision(self) -> None:
        """The requested precision resolved for the current device and the model's width; part of the cache key."""
        self.precision = resolve_precision(self.requested_precision, self.device,
                                           width=model_width(self.pretrained.model))
        self.cache_key["precision"] = self.precision.name

    def to(self, device):
        super().to(device)
        self.pretrained = self.pretrained.to(self.device).eval()
        self._resolve_precision()
        return self

    @torch.no_grad()
    def hidden_states(self, wavs):
        out = self.pretrained.embed(list(wavs), self.sample_rate, hidden_states=True, chunk_frames=self.chunk_frames,
                                    precision=self.precision.name)
        return list(out["hidden_states"]), out["frame_padding"]


def reinitialise(pretrained, seed: int) -> None:
    """Re-initialise every parameter of ``pretrained.model`` with the model's own initialiser (a fresh instance of
    its class built from its config under ``seed``, reduced to the encoder and given the same patch geometry);
    keep the buffers (normalisation running statistics, fixed position tables)."""
    from ..checkpoint import apply_geometry, encoder_geometry

    model = pretrained.model
    cfg = getattr(model, "cfg", None)
    if cfg is None:
        raise ValueError(f"random:CKPT needs a model with a .cfg to rebuild it; {type(model).__name__} has none")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = type(model)(cfg)
        fresh.remove_pretraining_modules()
        apply_geometry(fresh, encoder_geometry(model))
    new, own = fresh.state_dict(), model.state_dict()
    buffers = {name for name, _ in model.named_buffers()}
    state = {}
    for k, v in own.items():
        if k in buffers:
            state[k] = v
        elif k not in new or new[k].shape != v.shape:
            raise ValueError(f"random:CKPT: cannot rebuild parameter {k} of {type(model).__name__}")
        else:
            state[k] = new[k].to(v.device, v.dtype)
    model.load_state_dict(state, strict=True)
    model.eval()


def load_upstream(spec: str, *, random_seed: int = 0, device: str = "cpu", chunk_seconds: float = 0.0,
                  precision: str = "fp32") -> Upstream:
    """``logmel`` | ``random:PATH`` | ``PATH`` -> an :class:`Upstream` on ``device``; ``precision`` (``auto`` |
    ``fp32`` | ``bf16``) of a checkpoint's encoder (resolved for ``device``: ``upstream.precision``)."""
    if spec == "logmel":
        up: Upstream = LogmelUpstream(precision=precision)
    elif spec.startswith("random:"):
        path = spec[len("random:"):]
        if not os.path.isfile(path):
            raise FileNotFoundError(f"random:{path}: no such checkpoint (random:CKPT takes the architecture from CKPT)")
        up = CheckpointUpstream(path, random_init_seed=random_seed, chunk_seconds=chunk_seconds,
                                precision=precision)
    else:
        if not os.path.isfile(spec):
            raise FileNotFoundError(f"upstream {spec!r}: not 'logmel', 'random:CKPT' or an existing checkpoint file")
        up = CheckpointUpstream(spec, chunk_seconds=chunk_seconds, precision=precision)
    return up.to(device)


# ----------------------------------------------------------------------------------------------------------------
# Pooled extraction
# ----------------------------------------------------------------------------------------------------------------


def pooled_sums(hidden: Sequence[torch.Tensor], padding: Optional[torch.Tensor], layer_norm: bool = False):
    """Per-clip sums over the valid frames of every layer (B, L+1, D) (float64) and the valid frame counts (B,)."""
    h = torch.stack(list(hidden), dim=1).double()  # (B, L+1, T, D)
    if layer_norm:
        h = F.layer_norm(h.float(), h.shape[-1:]).double()
    if padding is None:
        valid = torch.ones(h.shape[0], h.shape[2], dtype=torch.float64, device=h.device)
    else:
        valid = (~padding).double()
    sums = torch.einsum("bltd,bt->bld", h, valid)
    return sums, valid.sum(1)


@dataclass
class ExtractOptions:
    batch_size: int = 16  # clips per forward pass
    layer_norm: bool = False  # layer-norm every frame of every layer before the mean (s3prl Featurizer option)
    dtype: str = "float32"  # storage dtype of the cache: float32 or float16

    def key(self) -> dict:
        return {"layer_norm": self.layer_norm, "dtype": self.dtype}


def extract_pooled(upstream: Upstream, paths: Sequence[str], lengths: Optional[Sequence[int]] = None,
                   opts: Optional[ExtractOptions] = None, progress: Optional[Progress] = None) -> Dict:
    """Mean over the valid frames of every layer for each clip: ``{"means": (N, L+1, D), "frames": (N,)}``.

    Clips are processed longest first in batches (less padding); audio is read with ``load_audio`` (mono,
    resampled to 16 kHz)."""
    opts = opts if opts is not None else ExtractOptions()
    n = len(paths)
    order = sorted(range(n), key=lambda i: -(lengths[i] if lengths is not None else 0))
    sums = counts = None
    done = 0
    for start in range(0, n, opts.batch_size):
        idx = order[start:start + opts.batch_size]
        hidden, padding = upstream.hidden_states([load_audio(paths[i], upstream.sample_rate) for i in idx])
        s, c = pooled_sums(hidden, padding, opts.layer_norm)
        if sums is None:
            sums = torch.zeros(n, *s.shape[1:], dtype=torch.float64)
            counts = torch.zeros(n, dtype=torch.float64)
        target = torch.tensor(idx)
        sums.index_add_(0, target, s.cpu())
        counts.index_add_(0, target, c.cpu())
        done += len(idx)
        if progress is not None:
            progress(done, n)
    if sums is None:
        raise ValueError("no clips to extract")
    means = sums / counts.clamp(min=1)[:, None, None]
    return {"means": means.to(getattr(torch, opts.dtype)), "frames": counts.long()}


# ----------------------------------------------------------------------------------------------------------------
# Cache
# ----------------------------------------------------------------------------------------------------------------


def manifest_identity(tsv: str, paths: Sequence[str]) -> dict:
    """The manifest path and contents, and every audio file's size and mtime (hashed)."""
    with open(tsv, "rb") as f:
        content = hashlib.sha256(f.read()).hexdigest()
    h = hashlib.sha256()
    for p in paths:
        st = os.stat(p)
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return {"manifest": os.path.abspath(tsv), "manifest_sha256": content, "audio_sha256": h.hexdigest()}


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "maeast-fairseq", "features")


class FeatureCache:
    """Pooled features per (upstream, split, options) on disk under ``root`` (``None``: no caching)."""

    def __init__(self, root: Optional[str]):
        self.root = root

    def key(self, upstream: Upstream, tsv: str, paths: Sequence[str], opts: ExtractOptions) -> Tuple[str, dict]:
        ident = {"version": EXTRACTOR_VERSION, "upstream": upstream.cache_key, "data": manifest_identity(tsv, paths),
                 "options": opts.key()}
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24], ident

    def get(self, upstream: Upstream, split: str, tsv: str, paths: Sequence[str], lengths: Sequence[int],
            opts: ExtractOptions, log: Optional[Callable[[str], None]] = None) -> Dict:
        """Pooled features of one split: read from the cache, or extracted (with progress) and stored."""
        log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        key, ident = self.key(upstream, tsv, paths, opts)
        path = os.path.join(self.root, f"{split}-{key}.pt") if self.root else None
        if path and os.path.isfile(path):
            data = torch.load(path, map_location="cpu", weights_only=True)
            STATS["cache_hits"] += 1
            log(f"  features of {split!r}: cache hit ({path})")
            return {"means": data["means"], "frames": data["frames"], "source": "cache", "path": path}
        t0 = time.time()
        every = max(1, len(paths) // 10)
        last = [0]

        def progress(done, total):
            if done - last[0] >= every or done == total:
                last[0] = done
                log(f"  extracting {split!r}: {done}/{total} clips ({time.time() - t0:.1f} s)")

        out = extract_pooled(upstream, paths, lengths, opts, progress)
        STATS["extracted"] += 1
        empty = int((out["frames"] == 0).sum())
        if empty:
            log(f"  warning: {empty} clip(s) of {split!r} are shorter than one output frame: zero features")
        if path:
            os.makedirs(self.root, exist_ok=True)
            tmp = f"{path}.tmp{os.getpid()}"
            torch.save({"means": out["means"], "frames": out["frames"]}, tmp)
            os.replace(tmp, path)
            with open(path[:-3] + ".json", "w") as f:
                json.dump({**ident, "shape": list(out["means"].shape), "upstream_label": upstream.label}, f,
                          indent=2)
            log(f"  stored {tuple(out['means'].shape)} {opts.dtype} features in {path}")
        return {**out, "source": "extracted", "path": path}
