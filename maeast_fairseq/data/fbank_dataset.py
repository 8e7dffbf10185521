"""fairseq dataset: a wav2vec-style manifest -> Kaldi log-mel fbank per clip -> batches under the front end's length
policy (see :mod:`maeast_fairseq.frontend`). This is the only data module that imports fairseq.

Bad input is an error naming the manifest, its line and the fix, or - where the user chose a filter - a logged
count, never silently dropped or altered data:

* at construction: a malformed manifest (:func:`~maeast_fairseq.data.manifest.read_manifest`), a manifest with no
  clip line, a root folder (line 1) that does not exist or under which none of the first clips exist, clips shorter
  than one patch at the model rate, whatever their file's rate (every clip that could be that short at some rate is
  probed for its rate): ``short_clip_policy="error"`` lists every one of them in one error, with its length in
  seconds; ``"drop"`` drops and counts them (logged; the pretraining yamls choose it). The length
  filters ``min_sample_size`` / ``max_sample_size`` drop clips by their manifest count (samples *at the file's own
  rate*, as the manifest lists them) and log how many they dropped;
* when a clip is loaded: a missing / unreadable / empty / truncated file or NaN / Inf samples
  (:mod:`maeast_fairseq.audio`), and a file whose frame count is not the manifest's (the file changed after the
  manifest was written: regenerate it; ``maeast-manifest --check`` lists every such line);
* when batching: a clip longer than ``dataset.max_tokens`` (fairseq would only say that "sentence lengths should not
  exceed max_tokens"). The clips left over after the last full multiple of ``dataset.required_batch_size_multiple``
  form smaller batches (fairseq would drop them, and a split smaller than the multiple would be empty).

Long clips: a clip far longer than anything the length policy keeps is not decoded whole. Under ``fixed`` the model
sees the first ``target_frames`` frames, under ``crop_to_shortest`` with ``max_frames`` > 0 a crop of at most
``max_frames``; a clip longer than :data:`LONG_CLIP_FACTOR` times that is decoded only up to that length (so an
hour-long file costs the memory of ``LONG_CLIP_FACTOR`` crops, not of an hour). Clips up to that length are decoded
whole, exactly as before (``roll_aug`` rolls the whole clip, random crops range over all of it). Under
``crop_to_shortest`` with ``max_frames: 0`` nothing bounds a clip but ``max_sample_size`` (drop, counted) and
``dataset.max_tokens`` (refused by :meth:`FbankDataset.batch_by_size` with the lines to fix).
"""
from __future__ import annotations

import logging
import os
from typing import List, Optional

import numpy as np
import torch
from fairseq.data import FairseqDataset
from torch.nn.utils.rnn import pad_sequence

from ..audio import AudioError, audio_info, num_resampled, read_clip
from ..core.rng import MaskRNG
from ..fbank import Fbank, num_frames
from ..frontend import Frontend
from .manifest import ManifestError, map_in_threads, read_manifest

logger = logging.getLogger(__name__)

CROP_SALT = 0x5EED  # crop offsets use another random stream than the model's masks
#: a clip longer than this many times the longest crop the length policy keeps is decoded only up to that length
LONG_CLIP_FACTOR = 4
#: clips whose files are looked up at construction to tell a wrong root (line 1) from a few missing files
ROOT_PROBE = 8
#: what a clip shorter than one patch does: ``error`` lists every such clip at once; ``drop`` drops and counts them
SHORT_CLIP_POLICIES = ("error", "drop")
#: a clip is probed for its sample rate when it could be shorter than one patch at a rate up to this
MAX_PROBED_RATE = 384000
#: threads reading audio headers at construction
PROBE_WORKERS = 8
#: short clips listed in an error / log
SHOW_SHORT = 20


def min_samples_for_frames(frames: int, cfg) -> int:
    """The fewest samples (at ``cfg.sample_rate``) that give at least ``frames`` fbank frames."""
    lo, hi = 0, max(1, int(cfg.window_size))
    while int(num_frames(hi, cfg)) < frames:
        hi *= 2
    while lo < hi:  # num_frames is non-decreasing in the sample count
        mid = (lo + hi) // 2
        if int(num_frames(mid, cfg)) >= frames:
            hi = mid
        else:
            lo = mid + 1
    return lo


class FbankDataset(FairseqDataset):
    def __init__(self, manifest: str, frontend, *, min_sample_size: int = 0, max_sample_size: int = 0,
                 min_frames: int = 1, shuffle: bool = True, seed: int = 1, short_clip_policy: str = "error"):
        super().__init__()
        self.frontend_module = Frontend(frontend)  # checks the config; the fbank, normalisation and collation
        self.manifest = manifest
        self.frontend = frontend
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 1
        # fbank_on_device: items are waveforms; the task computes the batched fbank on the training device
        self.on_device = bool(getattr(frontend, "fbank_on_device", False))
        self.min_frames = min_frames
        if short_clip_policy not in SHORT_CLIP_POLICIES:
            raise ValueError(f"short_clip_policy must be one of {', '.join(SHORT_CLIP_POLICIES)}, got "
                             f"{short_clip_policy!r}")
        root, entries = read_manifest(manifest)
        if not entries:
            raise ManifestError(manifest, None, "has no clip line, only the root folder; list the clips as "
                                "'path<TAB>num_samples' lines (rerun maeast-manifest AUDIO_DIR --dest DIR)")
        self._check_root(root, entries)
        too_short = [e for e in entries if e.num_samples < min_sample_size]
        too_long = [e for e in entries if max_sample_size > 0 and e.num_samples > max_sample_size]
        dropped = {id(e) for e in too_short + too_long}
        self.entries = [e for e in entries if id(e) not in dropped]
        logger.info(
            f"{manifest}: kept {len(self.entries)} of {len(entries)} clips; dropped {len(too_short)} shorter than "
            f"min_sample_size={min_sample_size} samples and {len(too_long)} longer than max_sample_size="
            f"{max_sample_size or 'inf'} (manifest counts, at each file's own rate)"
        )
        if not self.entries:
            raise ValueError(
                f"{manifest}: no clip left after the length filters ({len(too_short)} too short, {len(too_long)} too "
                f"long); lower task.min_sample_size / raise task.max_sample_size"
            )
        cfg = self.fbank.cfg
        self._apply_short_clip_policy(short_clip_policy)
        self.sizes = np.array([e.num_samples for e in self.entries], dtype=np.int64)
        if frontend.length_policy == "fixed":
            target = frontend.target_frames * int(cfg.sample_rate * cfg.frame_shift_ms / 1000)
            self._tokens = np.full_like(self.sizes, target)
        else:
            self._tokens = self.sizes.copy()
        # the longest clip (model-rate samples) decoded whole: see the module docstring
        kept = frontend.target_frames if frontend.length_policy == "fixed" else int(frontend.max_frames or 0)
        self.max_load_samples: Optional[int] = (
            LONG_CLIP_FACTOR * ((kept - 1) * cfg.window_shift + cfg.window_size) if kept > 0 else None
        )

    @property
    def fbank(self) -> Fbank:
        """The front end's Kaldi fbank (``fbank.cfg``: the frame geometry)."""
        return self.frontend_module.fbank

    def _check_root(self, root: str, entries) -> None:
        """A wrong root (line 1) fails here, not as a missing file at the first batch."""
        if not os.path.isdir(root):
            raise ManifestError(
                self.manifest, 1,
                f"root folder {root!r} does not exist; line 1 must be the folder the clip paths are relative to "
                "(was the data moved?). Fix: correct line 1, or rerun maeast-manifest AUDIO_DIR --dest DIR")
        probe = entries[:ROOT_PROBE]
        if not any(os.path.exists(e.path) for e in probe):
            raise ManifestError(
                self.manifest, 1,
                f"none of the first {len(probe)} clips exist under the root folder {root!r} (e.g. line "
                f"{probe[0].line}: {probe[0].path}); is line 1 the folder the paths are relative to? Fix: correct "
                f"line 1 or the paths (`maeast-manifest --check {self.manifest}` lists every missing file)")

    def _short_clips(self) -> list:
        """``(entry, sample_rate, frames)`` of every kept clip shorter than one patch (``min_frames``) at the model
        rate, in manifest order.

        The manifest counts samples at each file's own rate, so a clip's length in frames needs its rate: every clip
        that would be short at some rate up to :data:`MAX_PROBED_RATE` Hz is probed (header only, in threads); the
        others are long enough at any rate."""
        cfg = self.fbank.cfg
        model_rate = int(cfg.sample_rate)
        need = min_samples_for_frames(self.min_frames, cfg)  # model-rate samples of one patch
        suspects = [e for e in self.entries if e.num_samples * model_rate < need * MAX_PROBED_RATE]
        if not suspects:
            return []

        def rate_of(e):
            try:
                return audio_info(e.path)[1]
            except AudioError as err:
                if num_frames(e.num_samples, cfg) < self.min_frames:  # short as listed: its problem is reported now
                    raise AudioError(f"{self.manifest}:{e.line}: {err}") from None
                return None  # else the loader reports it, naming the line, when it reads the clip

        short = []
        for e, sr in zip(suspects, map_in_threads(rate_of, suspects, PROBE_WORKERS)):
            if sr is None:
                continue
            n = e.num_samples if sr == model_rate else num_resampled(e.num_samples, sr, model_rate)
            frames = int(num_frames(n, cfg))
            if frames < self.min_frames:
                short.append((e, sr, frames))
        return short

    def _apply_short_clip_policy(self, policy: str) -> None:
        """Clips shorter than one patch: all reported at once (``error``), or dropped and counted (``drop``)."""
        short = self._short_clips()
        if not short:
            return
        cfg = self.fbank.cfg
        need = min_samples_for_frames(self.min_frames, cfg)
        patch = (f"one patch ({self.min_frames} frames) needs {need / cfg.sample_rate:.3f} s of audio at any sample "
                 f"rate ({need} samples at {int(cfg.sample_rate)} Hz)")
        listed = [f"{self.manifest}:{e.line}: {e.path} has {e.num_samples} samples at {sr} Hz "
                  f"({e.num_samples / sr:.3f} s) = {frames} frames, fewer than one patch ({self.min_frames} frames)"
                  for e, sr, frames in short]
        if policy == "drop":
            gone = {id(e) for e, _, _ in short}
            self.entries = [e for e in self.entries if id(e) not in gone]
            logger.info(f"{self.manifest}: dropped {len(short)} clip(s) shorter than one patch "
                        f"(task.short_clip_policy=drop; {patch}); first {min(len(short), SHOW_SHORT)}:\n  "
                        + "\n  ".join(listed[:SHOW_SHORT]))
            if not self.entries:
                raise ValueError(f"{self.manifest}: every clip is shorter than one patch ({patch}): none is left "
                                 f"(first: {listed[0]}). Fix: give this split longer clips (e.g. another "
                                 "maeast-manifest --seed or --valid-percent), or use a model with shorter patches")
            return
        more = f"\n  ... and {len(short) - SHOW_SHORT} more" if len(short) > SHOW_SHORT else ""
        raise ValueError(
            f"{self.manifest}: {len(short)} clip(s) shorter than one patch; {patch}:\n  "
            + "\n  ".join(listed[:SHOW_SHORT]) + more
            + "\nFix: task.short_clip_policy=drop drops and counts them (--short-clip-policy drop with "
            "fairseq-train), or remove them from the manifest")

    # -- items -----------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int):
        e = self.entries[index]
        try:
            clip = read_clip(e.path, self.frontend.sample_rate, max_samples=self.max_load_samples)
        except AudioError as err:
            raise AudioError(f"{self.manifest}:{e.line}: {err}") from None
        if clip.num_frames != e.num_samples:
            raise ManifestError(
                self.manifest, e.line,
                f"lists {e.num_samples} samples for {e.rel} but the file holds {clip.num_frames} (at "
                f"{clip.sample_rate} Hz): the file changed after the manifest was written, or the line is wrong. "
                f"Fix: regenerate the manifest with maeast-manifest (`maeast-manifest --check {self.manifest}` "
                "lists every such line)")
        wav = self.augment_waveform(self.frontend_module.remove_mean(clip.wav), index)
        if self.on_device:
            self._check_frames(e, int(num_frames(wav.shape[0], self.fbank.cfg)))
            return {"id": index, "wav": wav}
        feats, _ = self.fbank(wav)
        self._check_frames(e, feats.shape[0])
        return {"id": index, "fbank": feats}

    def augment_waveform(self, wav: torch.Tensor, index: int) -> torch.Tensor:
        """Hook for waveform augmentation (after mean removal, before the fbank); none in pretraining."""
        return wav

    def _check_frames(self, e, frames: int) -> None:
        if frames < self.min_frames:
            raise ValueError(
                f"{self.manifest}:{e.line}: {e.path} decodes to {frames} frames, fewer than one patch "
                f"({self.min_frames} frames); remove it or raise task.min_sample_size"
            )

    def collater(self, samples: List[dict]):
        samples = [s for s in samples if s is not None]
        if not samples:
            return {}
        ids = torch.tensor([s["id"] for s in samples], dtype=torch.long)
        crop_u = MaskRNG.from_ids(self.seed ^ CROP_SALT, self.epoch, ids).uniform()
        if self.on_device:
            return self._collate_waveforms(samples, ids, crop_u)
        x, frame_padding, lengths = self.frontend_module.collate([s["fbank"] for s in samples], crop_u)
        return {
            "id": ids,
            "nsentences": len(samples),
            "ntokens": int(lengths.sum()),
            # masks are a function of (seed, epoch, clip id) only: reproducible for any batching / process count
            "net_input": {"fbank": x, "frame_padding": frame_padding,
                          "mask_rng": MaskRNG.from_ids(self.seed, self.epoch, ids)},
        }

    def _collate_waveforms(self, samples: List[dict], ids: torch.Tensor, crop_u: torch.Tensor):
        """fbank_on_device: zero-padded waveforms + lengths; the task turns them into exactly the features
        :func:`collate_features` would have made (``PretrainingTask.device_features``).

        The waveforms travel as the int32 *bit pattern* of the float32 samples (``wav_bits``): fairseq's trainer
        casts every float32 tensor of a batch to half under ``common.fp16`` / ``bf16``, which would round the audio
        before the fbank; integer tensors are moved to the device untouched and viewed back as float32 there.
        """
        wavs = [s["wav"].float() for s in samples]
        wav_lengths = torch.tensor([w.shape[0] for w in wavs], dtype=torch.long)
        padded = pad_sequence(wavs, batch_first=True)
        frame_lengths = num_frames(wav_lengths, self.fbank.cfg)
        return {
            "id": ids,
            "nsentences": len(samples),
            "ntokens": int(self.frontend_module.kept_frames(frame_lengths).sum()),
            # lengths and crop offsets as numpy arrays: fairseq moves tensors to the device, these stay on the host
            # so the length policy needs no device-to-host read
            "net_input": {"wav_bits": padded.view(torch.int32), "wav_lengths": wav_lengths.numpy(),
                          "frame_lengths": frame_lengths.numpy(), "crop_u": crop_u.numpy(),
                          "mask_rng": MaskRNG.from_ids(self.seed, self.epoch, ids)},
        }

    # -- batching --------------------------------------------------------------------------------------------------
    def set_epoch(self, epoch: int):
        self.epoch = epoch

    @property
    def can_reuse_epoch_itr_across_epochs(self):
        return False  # crops and masks depend on the epoch

    def num_tokens(self, index: int) -> int:
        return int(self._tokens[index])

    def num_tokens_vec(self, indices):
        return self._tokens[indices]

    def size(self, index: int) -> int:
        return int(self._tokens[index])

    def batch_by_size(self, indices, max_tokens=None, max_sentences=None, required_batch_size_multiple=1):
        """fairseq's batching, after refusing clips that alone exceed ``max_tokens`` with the lines to fix (fairseq
        itself only asserts that "sentence lengths should not exceed max_tokens")."""
        if max_tokens:
            tokens = self._tokens[np.asarray(indices, dtype=np.int64)]
            over = np.asarray(indices)[tokens > max_tokens]
            if len(over):
                first = sorted(over.tolist(), key=lambda i: self.entries[i].line)[:5]
                shown = "; ".join(f"line {self.entries[i].line}: {self.entries[i].rel} ({int(self._tokens[i])})"
                                  for i in first)
                fix = ("raise dataset.max_tokens above task.target_frames x the frame shift in samples"
                       if self.frontend.length_policy == "fixed" else
                       f"drop them with task.max_sample_size={int(max_tokens)} (counted and logged), or raise "
                       "dataset.max_tokens")
                raise ValueError(
                    f"{self.manifest}: {len(over)} clip(s) longer than dataset.max_tokens={int(max_tokens)} samples, "
                    f"so no batch can hold them ({shown}). Fix: {fix}")
        batches = super().batch_by_size(indices, max_tokens=max_tokens, max_sentences=max_sentences,
                                        required_batch_size_multiple=required_batch_size_multiple)
        # fairseq drops the clips left over after the last full multiple of required_batch_size_multiple (all of a
        # split smaller than the multiple: "The dataset is empty"); they form smaller batches of their own instead
        covered = np.concatenate([np.asarray(b, dtype=np.int64) for b in batches]) if len(batches) else \
            np.zeros(0, dtype=np.int64)
        indices = np.asarray(indices, dtype=np.int64)
        left = indices[~np.isin(indices, covered)]
        if len(left):
            extra = super().batch_by_size(left, max_tokens=max_tokens, max_sentences=max_sentences,
                                          required_batch_size_multiple=1)
            logger.info(f"{self.manifest}: {len(left)} clip(s) fill no batch of a multiple of "
                        f"dataset.required_batch_size_multiple={required_batch_size_multiple}: they form "
                        f"{len(extra)} smaller batch(es) instead of being dropped")
            batches = list(batches) + list(extra)
        return batches

    def ordered_indices(self):
        """Shuffled, then sorted by length (longest first) so batches are length-homogeneous (MAE-AST crops every
        clip to the shortest one in its batch)."""
        if not self.shuffle:
            return np.arange(len(self))
        order = np.random.permutation(len(self))
        return order[np.argsort(-self._tokens[order], kind="stable")]

    def attr(self, attr: str, index: int):
        return getattr(self.entries[index], attr, None)
