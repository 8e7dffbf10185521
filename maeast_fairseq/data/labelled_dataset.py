"""fairseq dataset for fine-tuning: :class:`FbankDataset` + the aligned ``{split}.lbl`` labels + train-time
augmentation of the data side.

* Labels: ``{split}.lbl`` has one line per clip of ``{split}.tsv`` (comma-separated labels, see
  :mod:`maeast_fairseq.data.manifest`), ``labels.txt`` the label list (line order = class index). Every problem
  names the file and line: a malformed line, a label missing from ``labels.txt``, and - for single-label data
  (``multi_label: false``) - a clip with no label or with several. Labels are kept as a CSR index (no dense
  ``clips x classes`` matrix: AudioSet-2M x 527 would be 1 GB) and turned into float multi-hot targets (B, C) in
  the collater with one scatter.
* ``roll_aug`` (EAT / Audio-MAE ``roll_mag_aug``): the waveform is rolled by a random offset and scaled by
  ``Beta(10, 10) + 0.5``.
* ``noise_aug`` (SSAST / EAT Speech Commands): on the normalised features, add ``U(0, 1) * u / 10`` noise
  (``u ~ U(0, 1)`` per clip) and roll each clip by -10..10 frames, circularly *within its valid frames* (so a
  padding mask stays a suffix), vectorised over the batch.

Augmentation randomness is a function of (seed, epoch, clip id), like the crops and masks of pretraining.
"""
from __future__ import annotations

import logging
from typing import List, Sequence

import numpy as np
import torch

from ..core.rng import MaskRNG
from .fbank_dataset import FbankDataset
from .manifest import ManifestError, read_labels, read_manifest

logger = logging.getLogger(__name__)

ROLL_SALT = 0x0A11
NOISE_SALT = 0x0B0B


class LabelledFbankDataset(FbankDataset):
    def __init__(self, manifest: str, frontend, *, label_path: str, class_names: Sequence[str],
                 label_list_path: str = "labels.txt", multi_label: bool = False, roll_aug: bool = False,
                 noise_aug: bool = False, **kwargs):
        super().__init__(manifest, frontend, **kwargs)
        self.num_classes = len(class_names)
        self.multi_label = multi_label
        self.roll_aug = roll_aug
        self.noise_aug = noise_aug
        index = {name: i for i, name in enumerate(class_names)}
        # one label line per clip line of the manifest, before the length filters of FbankDataset
        _, all_entries = read_manifest(manifest)
        per_clip = read_labels(label_path, len(all_entries), manifest_path=manifest)
        offsets, flat = [0], []
        for e in self.entries:
            lineno = e.line - 1  # label line of manifest line e.line (the manifest's line 1 is the root)
            names = per_clip[lineno - 1]
            unknown = [n for n in names if n not in index]
            if unknown:
                raise ManifestError(label_path, lineno, f"label(s) {', '.join(map(repr, unknown))} not in "
                                    f"{label_list_path}; add them there or fix the label")
            if not multi_label and len(names) != 1:
                raise ManifestError(
                    label_path, lineno,
                    f"{'no label' if not names else f'{len(names)} labels ({line_of(names)})'} for {e.rel}, but "
                    "task.multi_label=false needs exactly one label per clip; fix the line or set "
                    "task.multi_label=true")
            ids = sorted({index[n] for n in names})
            flat.extend(ids)
            offsets.append(len(flat))
        self.label_offsets = np.asarray(offsets, dtype=np.int64)
        self.label_index = np.asarray(flat, dtype=np.int64)
        counts = np.bincount(self.label_index, minlength=self.num_classes)
        unlabelled = int((np.diff(self.label_offsets) == 0).sum())  # multi-label only: empty lines = no positive
        logger.info(f"{label_path}: {len(self.entries)} clips, {len(self.label_index)} labels; "
                    f"{int((counts == 0).sum())} of {self.num_classes} classes without a clip"
                    + (f"; {unlabelled} clips without a label (empty lines: all-negative targets)" if unlabelled
                       else ""))

    def labels_of(self, index: int) -> np.ndarray:
        return self.label_index[self.label_offsets[index]:self.label_offsets[index + 1]]

    def augment_waveform(self, wav: torch.Tensor, index: int) -> torch.Tensor:
        if not self.roll_aug:
            return wav
        rng = np.random.default_rng([self.seed, self.epoch, index, ROLL_SALT])
        shift = int(rng.integers(0, max(1, len(wav))))
        gain = float(rng.beta(10, 10) + 0.5)
        return torch.roll(torch.as_tensor(wav), shift) * gain

    def collater(self, samples: List[dict]):
        batch = super().collater(samples)
        if not batch:
            return batch
        ids = batch["id"]
        starts = torch.as_tensor(self.label_offsets[ids.numpy()])
        ends = torch.as_tensor(self.label_offsets[ids.numpy() + 1])
        counts = ends - starts
        rows = torch.repeat_interleave(torch.arange(len(ids)), counts)
        # position of every label in the flat index: start of its clip + rank within the clip
        within = torch.arange(int(counts.sum())) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        cols = torch.as_tensor(self.label_index)[torch.repeat_interleave(starts, counts) + within]
        target = torch.zeros(len(ids), self.num_classes)
        target[rows, cols] = 1.0
        batch["target"] = target
        if self.noise_aug:
            net = batch["net_input"]
            net["fbank"] = self._noise(net["fbank"], net["frame_padding"], ids)
        return batch

    def _noise(self, x: torch.Tensor, frame_padding, ids: torch.Tensor) -> torch.Tensor:
        rng = MaskRNG.from_ids(self.seed ^ NOISE_SALT, self.epoch, ids)
        b, t, f = x.shape
        scale = rng.uniform() / 10.0  # (B,)
        valid = torch.full((b,), t, dtype=torch.long) if frame_padding is None else (~frame_padding).sum(1)
        real = (torch.arange(t)[None, :] < valid[:, None]).to(x.dtype)[:, :, None]  # padded frames stay as they are
        x = x + rng.uniform(t, f) * scale[:, None, None] * real
        shift = rng.randint(21) - 10  # (B,) in [-10, 10]
        pos = torch.arange(t)[None, :]
        src = torch.where(pos < valid[:, None], (pos - shift[:, None]) % valid[:, None].clamp(min=1), pos)
        return torch.gather(x, 1, src[:, :, None].expand(-1, -1, f))


def line_of(names: Sequence[str]) -> str:
    return ",".join(names)
