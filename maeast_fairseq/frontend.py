"""The audio front end of every method, named explicitly: waveform -> Kaldi log-mel -> length policy -> normalisation.

Nothing here is implicit, because silent front-end mismatches are what cost users accuracy (USERS.md item 4):

===================  =======================================  ==============================================
setting              SSAST / EAT                              MAE-AST
===================  =======================================  ==============================================
window               ``hanning``                              ``povey`` (Kaldi's default)
waveform mean        subtracted                               kept
length policy        ``fixed``: truncate / zero-pad to 1024   ``crop_to_shortest``: random crop of every clip
                     frames, padding in log-mel space          to the shortest clip of the batch (clips under
                     *before* normalisation                    2 s dropped by ``min_sample_size``)
normalisation        ``dataset``: ``(x - mean) / (2 * std)``  ``none`` here: the model's BatchNorm x 0.5
                     (AudioSet: -4.2677393 / 4.5689974)
===================  =======================================  ==============================================

The settings are fields of the task config, so they are saved in every checkpoint (``cfg.task``).
Collation is vectorised (``pad_sequence`` + one ``gather``), with no per-clip Python loop.
"""

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch
from torch.nn.utils.rnn import pad_sequence

from .fbank import FbankConfig

LENGTH_POLICIES = ("fixed", "crop_to_shortest")
NORMS = ("dataset", "none")

AUDIOSET_MEAN = -4.2677393
AUDIOSET_STD = 4.5689974


@dataclass
class FrontendConfig:
    sample_rate: int = field(default=16000, metadata={"help": "audio is resampled to this rate before the fbank"})
    num_mel_bins: int = field(default=128, metadata={"help": "mel bins of the Kaldi fbank"})
    window_type: str = field(default="hanning", metadata={"help": "fbank window: 'hanning' (SSAST/EAT) or 'povey' (MAE-AST)"})
    subtract_waveform_mean: bool = field(
        default=True, metadata={"help": "remove the waveform's mean before the fbank (SSAST/EAT yes, MAE-AST no)"}
    )
    norm: str = field(
        default="dataset",
        metadata={"help": "'dataset': (x - norm_mean) / (2 * norm_std) in the front end (SSAST/EAT); 'none': leave "
                          "the log-mel as is (MAE-AST normalises inside the model with BatchNorm x 0.5)"},
    )
    norm_mean: float = field(default=AUDIOSET_MEAN, metadata={"help": "log-mel mean of the corpus (maeast-stats)"})
    norm_std: float = field(default=AUDIOSET_STD, metadata={"help": "log-mel std of the corpus (maeast-stats)"})
    length_policy: str = field(
        default="fixed",
        metadata={"help": "'fixed': truncate / zero-pad (log-mel space, before normalisation) to target_frames "
                          "(SSAST/EAT); 'crop_to_shortest': random crop to the shortest clip of the batch (MAE-AST)"},
    )
    target_frames: int = field(default=1024, metadata={"help": "frames per clip under the 'fixed' policy"})
    max_frames: int = field(
        default=0, metadata={"help": "under 'crop_to_shortest', also crop to at most this many frames (0 = no cap)"}
    )
    padding_mask: bool = field(
        default=True,
        metadata={"help": "pass a padding mask to the model: padded tokens are never masked, scored or used as "
                          "negatives. false = the official pad-as-data behaviour (for reproduction)"},
    )


def check_frontend(cfg) -> None:
    if cfg.length_policy not in LENGTH_POLICIES:
        raise ValueError(f"length_policy must be one of {LENGTH_POLICIES}, got {cfg.length_policy!r}")
    if cfg.norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {cfg.norm!r}")
    if cfg.norm == "dataset" and not cfg.norm_std > 0:
        raise ValueError(f"norm_std must be > 0, got {cfg.norm_std} (compute it with maeast-stats)")


def fbank_config(cfg) -> FbankConfig:
    return FbankConfig(sample_rate=cfg.sample_rate, num_mel_bins=cfg.num_mel_bins, window_type=cfg.window_type)


def normalise(feats: torch.Tensor, cfg) -> torch.Tensor:
    if cfg.norm == "dataset":
        return (feats - cfg.norm_mean) / (2.0 * cfg.norm_std)
    return feats


def kept_frames(lengths: torch.Tensor, cfg) -> torch.Tensor:
    """Real frames per clip that survive the length policy (the ``lengths`` :func:`collate_features` returns)."""
    if cfg.length_policy == "crop_to_shortest":
        t = int(lengths.min())
        if cfg.max_frames > 0:
            t = min(t, cfg.max_frames)
        return torch.full_like(lengths, t)
    return lengths.clamp(max=cfg.target_frames)


def collate_features(
    feats: List[torch.Tensor], cfg, crop_u: Optional[torch.Tensor] = None
) -> Tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
    """Stack per-clip log-mels (each (T_i, F), *not yet normalised*) under the length policy, then normalise.

    ``crop_u`` (B,) in [0, 1) picks the random crop start of each clip (``crop_to_shortest``) or, under ``fixed``,
    nothing (truncation keeps the start, as the seeds do). Returns ``(x (B, T, F), frame_padding (B, T) or None,
    lengths (B,))`` where ``lengths`` counts the real frames kept per clip.
    """
    lengths = torch.tensor([f.shape[0] for f in feats], dtype=torch.long)
    padded = pad_sequence(feats, batch_first=True)  # zero padding in log-mel space
    return collate_padded(padded, lengths, cfg, crop_u)


def collate_padded(
    padded: torch.Tensor, lengths: torch.Tensor, cfg, crop_u: Optional[torch.Tensor] = None
) -> Tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
    """:func:`collate_features` on log-mels already stacked: ``padded`` (B, T_max, F), zero beyond ``lengths`` (B,)
    real frames per clip (what the batched :class:`~maeast_fairseq.fbank.Fbank` returns, on any device).

    ``lengths`` may stay on the CPU while ``padded`` is on the GPU: the length policy then needs no host read of a
    device tensor (the crop length is ``lengths.min()`` on the host).
    """
    device = padded.device
    if cfg.length_policy == "crop_to_shortest":
        t = int(lengths.min())
        if cfg.max_frames > 0:
            t = min(t, cfg.max_frames)
        if crop_u is None:
            crop_u = torch.zeros(len(lengths))
        starts = torch.floor(crop_u * (lengths - t + 1).to(crop_u.dtype)).long().clamp(min=0)
        idx = (starts[:, None] + torch.arange(t)[None, :]).to(device)
        x = torch.gather(padded, 1, idx[:, :, None].expand(-1, -1, padded.shape[-1]))
        kept = torch.full_like(lengths, t)
        return normalise(x, cfg), None, kept
    t = cfg.target_frames
    if padded.shape[1] >= t:
        x = padded[:, :t]
    else:
        x = torch.nn.functional.pad(padded, (0, 0, 0, t - padded.shape[1]))
    kept = lengths.clamp(max=t)
    frame_padding = None
    if cfg.padding_mask:
        frame_padding = (torch.arange(t)[None, :] >= kept[:, None]).to(device)
    return normalise(x, cfg), frame_padding, kept
