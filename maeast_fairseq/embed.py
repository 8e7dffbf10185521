"""The embedding API: a core model + the front end it was trained with, from raw waveforms to embeddings.

No fairseq anywhere on this path. :func:`maeast_fairseq.checkpoint.load_pretrained` builds a :class:`Pretrained`
from a fairseq checkpoint or an exported folder; :meth:`Pretrained.embed` does the rest::

    from maeast_fairseq.checkpoint import load_pretrained
    model = load_pretrained("checkpoint_best.pt")
    out = model.embed([wav_a, wav_b], sample_rate=44100)   # 1-D arrays / tensors of any lengths
    out["clip"]          # (B, D)        clip embeddings (the method's default pooling, or pooling='mean'|'cls')
    out["frames"]        # (B, T, F_p*D) time sequence at out["frame_rate"] Hz, zero past out["frame_lengths"]
    out["hidden_states"] # L+1 x (B, T, F_p*D), the encoder input then every layer, same layout as "frames"

What happens, step by step:

1. **resampling** to the model's rate (``sample_rate`` names the input rate; without it the waveforms are taken to
   be at the model's rate, with a :class:`SampleRateWarning`);
2. **front end** of the checkpoint: waveform mean removal (SSAST/EAT), Kaldi log-mel with the training window and
   mel bins, normalisation with the checkpoint's statistics. A fixed-length model (``length_policy=fixed``) is
   *not* padded to its training length: shorter clips get padding masks instead, so a clip's embedding does not
   depend on the other clips of its batch;
3. **chunking**: a clip longer than the training length (``target_frames``; 1024 frames for ``crop_to_shortest``
   models without ``max_frames``) is cut into consecutive windows of at most that length, each encoded on its own;
   the windows are placed so that the concatenated time steps stay regularly spaced (a hop of a whole number of
   time steps), and the time sequences are concatenated. A clip shorter than one patch is padded with log-mel
   zeros (the value the ``fixed`` policy pads with) up to one patch that the model sees as data (under a padding
   mask its only, partial patch would be all padding), counts as one time step, is marked in
   ``out["padded_to_one_patch"]`` and named in a :class:`ShortClipWarning`;
4. **time sequence**: the patch tokens of one time step (all frequency patches) are concatenated in frequency order,
   ``(T_p, F_p * D)``, as s3prl's MAE-AST upstream does; frame models (one frequency patch) give ``(T_p, D)``.
   The rate is ``sample_rate / (frame_shift * stride_time)`` Hz, e.g. 100 / 16 = 6.25 Hz for 16x16 patches,
   50 Hz for 2-frame frame models;
5. **clip pooling**: ``mean`` over the valid tokens of the chosen layer (SSAST / MAE-AST default) or the ``cls``
   token (EAT default; only for models that have one, last layer only). Over several chunks, the CLS outputs are
   averaged with weights equal to the number of time steps of each chunk.

Inputs of any length work (0.1 s ... hours); a batch gives the same numbers as one-by-one calls (up to float
rounding of a differently padded attention).
"""
from __future__ import annotations

import math
import warnings
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from .audio import resample
from .core.base import POOLINGS
from .frontend import Frontend, FrontendConfig
from .precision import model_width, resolve_precision


class SampleRateWarning(UserWarning):
    """Waveforms given without ``sample_rate=``: taken to be at the model's rate."""


class ShortClipWarning(UserWarning):
    """A clip shorter than one patch: padded to one patch (log-mel zeros seen as data)."""


WaveformsLike = Union[torch.Tensor, np.ndarray, Sequence[Union[torch.Tensor, np.ndarray, Sequence[float]]]]


def as_waveform_list(waveforms: WaveformsLike) -> List[torch.Tensor]:
    """A batch of mono waveforms as a list of 1-D float32 tensors.

    Accepts a list of 1-D tensors / arrays (any lengths), a 2-D tensor / array ``(B, N)`` (equal lengths) or one
    1-D tensor / array (a batch of one).
    """
    if isinstance(waveforms, (torch.Tensor, np.ndarray)):
        t = torch.as_tensor(waveforms)
        if t.dim() == 1:
            return [t.float()]
        if t.dim() == 2:
            return [row.float() for row in t]
        raise ValueError(f"expected waveforms (B, N) or (N,), got shape {tuple(t.shape)}; average channels first")
    out = []
    for i, w in enumerate(waveforms):
        t = torch.as_tensor(np.asarray(w) if not isinstance(w, torch.Tensor) else w)
        if t.dim() != 1:
            raise ValueError(f"waveform {i} has shape {tuple(t.shape)}: expected a 1-D mono waveform (average the "
                             "channels first)")
        out.append(t.float() if t.dtype != torch.float32 else t)
    return out


class Pretrained(torch.nn.Module):
    """A pure-torch core model with the front end it was trained with. :meth:`embed` takes raw waveforms.

    ``name``: the registered model name (``mae_ast``, ``ssast``, ``eat``); ``default_pooling``: the clip pooling
    used when ``embed`` is given none; ``chunk_frames``: the longest window (in fbank frames) encoded at once.
    ``load_report`` says how the weights were matched (see :func:`maeast_fairseq.checkpoint.load_pretrained`).
    """

    def __init__(self, model: torch.nn.Module, frontend: FrontendConfig, name: str, *,
                 default_pooling: str = "mean", chunk_frames: Optional[int] = None,
                 load_report: Optional[dict] = None, source: Optional[str] = None):
        super().__init__()
        if default_pooling not in POOLINGS:
            raise ValueError(f"default_pooling must be one of {POOLINGS}, got {default_pooling!r}")
        self.model, self.frontend, self.name = model, frontend, name
        self.default_pooling = default_pooling
        self.frontend_module = Frontend(frontend)  # the fbank, normalisation and padding of ``frontend``
        self.chunk_frames = int(chunk_frames or default_chunk_frames(frontend))
        self.load_report = load_report or {}
        self.source = source
        self._probe_cache: Optional[dict] = None
        tok = self.tokenizer
        if self.chunk_frames < tok.patch_time:
            raise ValueError(f"chunk_frames={self.chunk_frames} is shorter than one patch ({tok.patch_time} frames)")

    # -- geometry ---------------------------------------------------------------------------------------------------
    @property
    def tokenizer(self):
        tok = getattr(self.model, "tokenizer", None)
        if tok is None:
            enc = getattr(self.model, "encoder", None)
            tok = getattr(enc, "tokenizer", None)
        if tok is None:
            raise AttributeError(f"{type(self.model).__name__} has no tokenizer (model.tokenizer / "
                                 "model.encoder.tokenizer)")
        return tok

    @property
    def sample_rate(self) -> int:
        return int(self.frontend.sample_rate)

    @property
    def frame_shift(self) -> int:
        """Fbank hop in samples (160 at 16 kHz)."""
        return self.frontend_module.fbank.cfg.window_shift

    @property
    def downsample_rate(self) -> int:
        """Samples (at :attr:`sample_rate`) per output time step: ``frame_shift * stride_time``."""
        return self.frame_shift * self.tokenizer.stride_time

    @property
    def frame_rate(self) -> float:
        """Time steps per second of ``frames`` / ``hidden_states``."""
        return self.sample_rate / self.downsample_rate

    def timestamps(self, n_steps: int) -> torch.Tensor:
        """(n_steps,) centre of every time step in seconds: the centre of the fbank frames its patches cover."""
        tok, cfg = self.tokenizer, self.frontend_module.fbank.cfg
        j = torch.arange(n_steps, dtype=torch.float64)
        centre = j * tok.stride_time * cfg.window_shift + ((tok.patch_time - 1) * cfg.window_shift
                                                           + cfg.window_size) / 2.0
        return centre / self.sample_rate

    def _probe(self) -> dict:
        """Number of hidden states, width and CLS presence, from one tiny forward pass (cached)."""
        if self._probe_cache is None:
            p = next(self.model.parameters())
            tok = self.tokenizer
            x = torch.zeros(1, tok.patch_time, tok.num_mel_bins, device=p.device, dtype=p.dtype)
            was_training = self.model.training
            self.model.eval()
            with torch.no_grad():
                out = self.model.extract_features(x, None)
            self.model.train(was_training)
            self._probe_cache = {"num_hidden": len(out["hidden_states"]), "dim": int(out["x"].shape[-1]),
                                 "has_cls": "cls" in out}
        return self._probe_cache

    @property
    def embed_dim(self) -> int:
        """Width D of a token (and of the clip embedding)."""
        return self._probe()["dim"]

    @property
    def frame_dim(self) -> int:
        """Width of one time step of ``frames``: ``n_freq * D``."""
        return self.tokenizer.n_freq * self.embed_dim

    @property
    def num_hidden_states(self) -> int:
        """L + 1: the encoder input, then every layer."""
        return self._probe()["num_hidden"]

    @property
    def has_cls(self) -> bool:
        return self._probe()["has_cls"]

    # -- front end --------------------------------------------------------------------------------------------------
    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def prepare(self, waveforms: WaveformsLike, sample_rate: Optional[int] = None) -> List[torch.Tensor]:
        """Waveforms -> list of 1-D float32 tensors at the model's rate, on the model's device."""
        wavs = as_waveform_list(waveforms)
        if not wavs:
            raise ValueError("embed: got an empty batch")
        device = self._device()
        if sample_rate is None:
            warnings.warn(f"{self.name}: no sample_rate given: the waveforms are taken to be at the model's rate "
                          f"({self.sample_rate} Hz) and are not resampled; pass sample_rate= (e.g. the rate "
                          "load_audio / soundfile returned): audio at another rate embedded this way gives different "
                          "embeddings", SampleRateWarning, stacklevel=3)
        sr = self.sample_rate if sample_rate is None else int(sample_rate)
        return [resample(w.to(device), sr, self.sample_rate) if sr != self.sample_rate else w.to(device)
                for w in wavs]

    def log_mel(self, wavs: List[torch.Tensor]) -> List[torch.Tensor]:
        """Model-rate 1-D waveforms -> list of *un-normalised* log-mels (T_i, F), one clip at a time (no padding
        is computed; the waveform mean is removed first for SSAST/EAT front ends)."""
        device = self._device()
        return [self.frontend_module.log_mel(w.to(device, torch.float32)) for w in wavs]

    def features(self, waveforms: WaveformsLike, sample_rate: Optional[int] = None
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Waveforms -> normalised log-mel (B, T, F) (the core model's input, zero-padded) + frame padding (B, T),
        True = padding."""
        return self.frontend_module.pad_and_normalise(self.log_mel(self.prepare(waveforms, sample_rate)))

    # -- encoder over chunks ----------------------------------------------------------------------------------------
    def chunk_plan(self, num_frames: int, chunk_frames: Optional[int] = None) -> List[Tuple[int, int, int]]:
        """``[(first frame, frames, first time step), ...]`` of the windows a clip of ``num_frames`` is encoded in.

        Windows hold ``n`` time steps (``n = n_time(chunk_frames)``), start every ``n * stride_time`` frames and
        are ``(n - 1) * stride_time + patch_time`` frames long, so the time steps of consecutive windows continue
        each other regularly and their total is ``n_time(num_frames)``, as without chunking.
        """
        tok = self.tokenizer
        n = tok.n_time(int(chunk_frames or self.chunk_frames))
        hop, width = n * tok.stride_time, (n - 1) * tok.stride_time + tok.patch_time
        total = tok.n_time(num_frames)
        return [(k * hop, min(width, num_frames - k * hop), k * n) for k in range(math.ceil(total / n))]

    def encode(self, waveforms: WaveformsLike, sample_rate: Optional[int] = None, *, layer: Optional[int] = None,
               pooling: Optional[str] = None, hidden_states: bool = True, chunk_frames: Optional[int] = None,
               chunk_batch_size: int = 8, precision: str = "fp32") -> Dict[str, object]:
        """:meth:`embed` without ``torch.no_grad`` (for trainable upstreams)."""
        prec = resolve_precision(precision, self._device(), width=model_width(self.model))
        pooling = pooling or self.default_pooling
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        n_hidden = self.num_hidden_states
        if layer is not None and not -n_hidden <= layer < n_hidden:
            raise ValueError(f"layer {layer} out of range: this model has {n_hidden} hidden states "
                             f"(0 = encoder input ... {n_hidden - 1} = last layer)")
        last = layer is None or layer % n_hidden == n_hidden - 1
        if pooling == "cls":
            if not self.has_cls:
                raise ValueError(f"pooling='cls': the {self.name} model has no CLS token; use pooling='mean'")
            if not last:
                raise ValueError("pooling='cls' is only available for the last layer (the CLS output of inner "
                                 "layers is not returned by the encoder); use pooling='mean' with layer=...")
        tok = self.tokenizer
        nf, p = tok.n_freq, tok.patch_time

        mels = self.log_mel(self.prepare(waveforms, sample_rate))
        device, dtype = mels[0].device, next(self.model.parameters()).dtype
        b = len(mels)
        short = [(i, f.shape[0]) for i, f in enumerate(mels) if f.shape[0] < p]
        if short:
            warnings.warn(f"{len(short)} clip(s) shorter than one patch ({p} frames): "
                          + ", ".join(f"clip {i} ({n} frames)" for i, n in short)
                          + "; padded to one patch with log-mel zeros that the model sees as data (the tokens of a "
                          "partial patch would all be padding); their embeddings rest on less than one patch of audio "
                          "(out['padded_to_one_patch'] marks them)", ShortClipWarning, stacklevel=3)
        clips = []
        for f in mels:
            if f.shape[0] < p:  # shorter than one patch: pad with log-mel zeros (the fixed policy's value)
                f = torch.nn.functional.pad(f, (0, 0, 0, p - f.shape[0]))
            clips.append(self.frontend_module.normalise(f))
        steps = [tok.n_time(c.shape[0]) for c in clips]
        t_max = max(steps)
        chunks = [(i, start, length, first) for i, c in enumerate(clips)
                  for start, length, first in self.chunk_plan(c.shape[0], chunk_frames)]
        chunks.sort(key=lambda c: -c[2])  # similar lengths together: less padding

        keep = list(range(n_hidden)) if hidden_states else [n_hidden - 1 if last else layer % n_hidden]
        grids = {l: None for l in keep}
        cls_sum = cls_weight = None
        for s in range(0, len(chunks), chunk_batch_size):
            group = chunks[s: s + chunk_batch_size]
            x = pad_sequence([clips[i][start: start + length] for i, start, length, _ in group], batch_first=True)
            lengths = torch.tensor([length for _, _, length, _ in group], device=device)
            padding = torch.arange(x.shape[1], device=device)[None] >= lengths[:, None]
            with prec.autocast(device):
                out = self.model.extract_features(x.to(dtype), padding)
            if prec.bf16:  # bfloat16 activations back to float32: the grids, pooling and outputs are float32
                out = _outputs_to(out, torch.float32)
            nt = tok.n_time(x.shape[1])
            for l in keep:
                h = out["x"] if l == n_hidden - 1 else out["hidden_states"][l]
                g = _to_grid(h, tok, nt)  # (b, nt, nf, D)
                if grids[l] is None:
                    grids[l] = g.new_zeros(b, t_max, nf, g.shape[-1])
                for j, (i, _, length, first) in enumerate(group):
                    n = tok.n_time(length)
                    grids[l][i, first: first + n] = g[j, :n]
            if "cls" in out:
                w = torch.tensor([float(tok.n_time(length)) for _, _, length, _ in group], device=device,
                                 dtype=out["cls"].dtype)
                idx = torch.tensor([i for i, _, _, _ in group], device=device)
                if cls_sum is None:
                    cls_sum = out["cls"].new_zeros(b, out["cls"].shape[-1])
                    cls_weight = out["cls"].new_zeros(b)
                cls_sum = cls_sum.index_add(0, idx, out["cls"] * w[:, None])
                cls_weight = cls_weight.index_add(0, idx, w)

        sel_index = n_hidden - 1 if last else layer % n_hidden
        sel = grids[sel_index]
        step_lengths = torch.tensor(steps, device=device)
        frame_padding = torch.arange(t_max, device=device)[None] >= step_lengths[:, None]
        valid = (~frame_padding).to(sel.dtype)
        result: Dict[str, object] = {
            "frames": sel.reshape(b, t_max, nf * sel.shape[-1]),
            "frame_padding": frame_padding,
            "frame_lengths": step_lengths,
            "frame_rate": self.frame_rate,
            "x": sel.reshape(b, t_max * nf, sel.shape[-1]),
            "padding_mask": frame_padding.repeat_interleave(nf, dim=1),
            "layer": sel_index,
            "pooling": pooling,
            "precision": prec.name,
            "padded_to_one_patch": torch.tensor([m.shape[0] < p for m in mels], device=device),
        }
        mean = (sel * valid[:, :, None, None]).sum((1, 2)) / (step_lengths.to(sel.dtype) * nf)[:, None]
        result["mean"] = mean
        if cls_sum is not None:
            result["cls"] = cls_sum / cls_weight[:, None]
        result["clip"] = result["cls"] if pooling == "cls" else mean
        if hidden_states:
            result["hidden_states"] = [grids[l].reshape(b, t_max, -1) for l in range(n_hidden)]
        return result

    @torch.no_grad()
    def embed(self, waveforms: WaveformsLike, sample_rate: Optional[int] = None, layer: Optional[int] = None,
              pooling: Optional[str] = None, *, hidden_states: bool = True, chunk_frames: Optional[int] = None,
              chunk_batch_size: int = 8, precision: str = "fp32") -> Dict[str, object]:
        """Embeddings of a batch of mono waveforms of any lengths.

        ``waveforms``: list of 1-D tensors / arrays (or a 2-D ``(B, N)`` one) at ``sample_rate`` Hz (others than
        the model's are resampled; not given: the model's rate, 16 kHz, with a :class:`SampleRateWarning`: pass it
        for arrays). ``layer``: which hidden state feeds ``clip`` / ``frames`` /
        ``x`` (0 = encoder input ... L = last, negative from the end; default: the last). ``pooling``: ``'mean'``
        (over valid tokens) or ``'cls'`` (default: the method's, see :attr:`default_pooling`). ``precision``:
        ``'fp32'`` (default), ``'bf16'`` (the encoder under ``torch.autocast(bfloat16)``, float32 weights; the
        outputs are cast back to float32) or ``'auto'`` (bf16 where the device computes it natively and, on a
        CPU, the model is wide enough to gain; see :mod:`maeast_fairseq.precision`). The Python default is fp32
        so that a script gives the same numbers on every machine; the command-line tools (``maeast-embed``,
        ``maeast-evaluate``) default to ``auto`` and print and record their choice. bf16 embeddings differ from
        fp32 ones by bfloat16 rounding (a relative error of a few 2^-8, growing with depth; clip embeddings:
        cosine similarity > 0.99).

        Returns (tensors on the model's device):

        * ``clip`` (B, D): the pooled clip embedding; ``mean`` (B, D) always, ``cls`` (B, D) for CLS models;
        * ``frames`` (B, T, n_freq * D): the time sequence of the chosen layer, zeros past each clip's end;
          ``frame_padding`` (B, T) (True = padding), ``frame_lengths`` (B,), ``frame_rate`` (Hz, float);
        * ``hidden_states``: all L + 1 layers as time sequences (B, T, n_freq * D) (``hidden_states=False`` skips);
        * ``x`` (B, T * n_freq, D): the chosen layer's patch tokens in time-major order (``t * n_freq + f``) and
          ``padding_mask`` (B, T * n_freq);
        * ``layer`` (int, the index used), ``pooling`` (str) and ``precision`` (``'fp32'`` or ``'bf16'``: the
          resolved choice; tensors are float32 either way);
        * ``padded_to_one_patch`` (B,) bool: the clips shorter than one patch, padded to one (see the module doc).
        """
        was_training = self.training
        self.eval()
        try:
            return self.encode(waveforms, sample_rate, layer=layer, pooling=pooling, hidden_states=hidden_states,
                               chunk_frames=chunk_frames, chunk_batch_size=chunk_batch_size, precision=precision)
        finally:
            self.train(was_training)


def _outputs_to(out: Dict, dtype: torch.dtype) -> Dict:
    """``extract_features`` output with its float tensors (``x``, ``cls``, every hidden state) cast to ``dtype``."""
    def cast(v):
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            return v.to(dtype)
        if isinstance(v, (list, tuple)):
            return [cast(t) for t in v]
        return v
    return {k: cast(v) for k, v in out.items()}


def _to_grid(h: torch.Tensor, tok, n_time: int) -> torch.Tensor:
    """(B, N, D) tokens in the tokenizer's order -> (B, n_time, n_freq, D)."""
    b, n, d = h.shape
    if n != n_time * tok.n_freq:
        raise ValueError(f"expected {n_time} x {tok.n_freq} tokens, got {n}")
    if tok.token_order == "time_major":
        return h.reshape(b, n_time, tok.n_freq, d)
    return h.reshape(b, tok.n_freq, n_time, d).transpose(1, 2)


def default_chunk_frames(frontend: FrontendConfig) -> int:
    """The training length in frames: ``target_frames`` (``fixed``), else ``max_frames`` or 1024."""
    if frontend.length_policy == "fixed":
        return int(frontend.target_frames)
    return int(frontend.max_frames) if frontend.max_frames > 0 else 1024
