"""fairseq dataset: a wav2vec-style manifest -> Kaldi log-mel fbank per clip -> batches under the front end's length
policy (see :mod:`maeast_fairseq.frontend`). This is the only data module that imports fairseq."""
from __future__ import annotations

import logging
from typing import List, Optional

import numpy as np
import torch
from fairseq.data import FairseqDataset
from torch.nn.utils.rnn import pad_sequence

from ..audio import AudioError, load_audio
from ..core.rng import MaskRNG
from ..fbank import Fbank, num_frames
from ..frontend import check_frontend, collate_features, fbank_config, kept_frames
from .manifest import read_manifest

logger = logging.getLogger(__name__)

CROP_SALT = 0x5EED  # crop offsets use another random stream than the model's masks


class FbankDataset(FairseqDataset):
    def __init__(self, manifest: str, frontend, *, min_sample_size: int = 0, max_sample_size: int = 0,
                 min_frames: int = 1, shuffle: bool = True, seed: int = 1):
        super().__init__()
        check_frontend(frontend)
        self.manifest = manifest
        self.frontend = frontend
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 1
        self.fbank = Fbank(fbank_config(frontend))
        # fbank_on_device: items are waveforms; the task computes the batched fbank on the training device
        self.on_device = bool(getattr(frontend, "fbank_on_device", False))
        self.min_frames = min_frames
        root, entries = read_manifest(manifest)
        too_short = [e for e in entries if e.num_samples < min_sample_size]
        too_long = [e for e in entries if max_sample_size > 0 and e.num_samples > max_sample_size]
        dropped = {id(e) for e in too_short + too_long}
        self.entries = [e for e in entries if id(e) not in dropped]
        logger.info(
            f"{manifest}: kept {len(self.entries)} of {len(entries)} clips; dropped {len(too_short)} shorter than "
            f"min_sample_size={min_sample_size} samples and {len(too_long)} longer than max_sample_size="
            f"{max_sample_size or 'inf'}"
        )
        if not self.entries:
            raise ValueError(
                f"{manifest}: no clip left after the length filters ({len(too_short)} too short, {len(too_long)} too "
                f"long); lower task.min_sample_size / raise task.max_sample_size"
            )
        cfg = self.fbank.cfg
        for e in self.entries:
            if num_frames(e.num_samples, cfg) < min_frames:
                raise ValueError(
                    f"{manifest}:{e.line}: {e.path} has {e.num_samples} samples = {num_frames(e.num_samples, cfg)} "
                    f"frames, fewer than one patch ({min_frames} frames). Remove it from the manifest or drop such "
                    f"clips with task.min_sample_size={int(min_frames * cfg.sample_rate * cfg.frame_shift_ms / 1000) + 400}"
                )
        self.sizes = np.array([e.num_samples for e in self.entries], dtype=np.int64)
        if frontend.length_policy == "fixed":
            target = frontend.target_frames * int(cfg.sample_rate * cfg.frame_shift_ms / 1000)
            self._tokens = np.full_like(self.sizes, target)
        else:
            self._tokens = self.sizes.copy()

    # -- items -----------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int):
        e = self.entries[index]
        try:
            wav = load_audio(e.path, self.frontend.sample_rate)
        except AudioError as err:
            raise AudioError(f"{self.manifest}:{e.line}: {err}") from None
        if self.frontend.subtract_waveform_mean:
            wav = wav - wav.mean()
        wav = self.augment_waveform(wav, index)
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
        x, frame_padding, lengths = collate_features([s["fbank"] for s in samples], self.frontend, crop_u)
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
            "ntokens": int(kept_frames(frame_lengths, self.frontend).sum()),
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

    def ordered_indices(self):
        """Shuffled, then sorted by length (longest first) so batches are length-homogeneous (MAE-AST crops every
        clip to the shortest one in its batch)."""
        if not self.shuffle:
            return np.arange(len(self))
        order = np.random.permutation(len(self))
        return order[np.argsort(-self._tokens[order], kind="stable")]

    def attr(self, attr: str, index: int):
        return getattr(self.entries[index], attr, None)
