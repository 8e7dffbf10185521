"""The audio front end of every method, named explicitly: waveform -> Kaldi log-mel -> length policy -> normalisation.

Nothing here is implicit, because silent front-end mismatches are what cost users accuracy:

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

:class:`Frontend` is the one object that applies a config: the fbank, the mean removal, normalisation, the length
policy and collation (the dataset, the embedding API, evaluation, prediction, statistics and the benchmark use it).
"""

from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import torch
from torch.nn.utils.rnn import pad_sequence

from .fbank import Fbank, FbankConfig

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


#: :meth:`Frontend.log_mel` computes longer waveforms in pieces of this many frames (60 s at a 10 ms shift)
LOG_MEL_PIECE_FRAMES = 6000


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
    nothing (truncation keeps the start, as the official code does). Returns ``(x (B, T, F), frame_padding (B, T) or
    None, lengths (B,))`` where ``lengths`` counts the real frames kept per clip.
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


def padding_from_lengths(lengths: torch.Tensor, frames: int) -> torch.Tensor:
    """(B, frames) bool, True beyond each clip's ``lengths`` (B,) real frames (on ``lengths``' device)."""
    return torch.arange(frames, device=lengths.device)[None] >= lengths[:, None]


class Frontend(torch.nn.Module):
    """One front-end config applied: waveform -> Kaldi log-mel -> normalisation / length policy -> batch.

    Built from a :class:`FrontendConfig` or any config with the same fields (the task configs); ``cfg`` is kept as
    given. The fbank's window and mel matrix are non-persistent buffers: ``.to(device)`` moves them, state dicts do
    not hold them.
    """

    def __init__(self, cfg):
        super().__init__()
        check_frontend(cfg)
        self.cfg = cfg
        self.fbank = Fbank(fbank_config(cfg))

    @property
    def device(self) -> torch.device:
        return self.fbank.window.device

    # -- one clip ---------------------------------------------------------------------------------------------------
    def remove_mean(self, wav: torch.Tensor) -> torch.Tensor:
        """A 1-D waveform minus its mean when the config says so (SSAST / EAT), else as given."""
        if self.cfg.subtract_waveform_mean and wav.numel():
            return wav - wav.mean()
        return wav

    def log_mel(self, wav: torch.Tensor) -> torch.Tensor:
        """*Un-normalised* log-mel (T, F) of one model-rate 1-D waveform, its mean removed per the config.

        A waveform of more than :data:`LOG_MEL_PIECE_FRAMES` frames is turned into log-mel in pieces of that many
        frames (each frame depends only on its own samples: the same numbers, and the fbank's working memory --
        windows, spectra -- stays that of one piece however long the audio; ``snip_edges=False`` reflects the
        signal at its ends, so it is done in one go)."""
        wav = self.remove_mean(wav)
        fb = self.fbank
        n = int(fb.num_frames(wav.numel()))
        if n <= LOG_MEL_PIECE_FRAMES or not fb.cfg.snip_edges:
            return fb(wav)[0]
        shift, size = fb.cfg.window_shift, fb.cfg.window_size
        return torch.cat([fb(wav[a * shift: (min(n, a + LOG_MEL_PIECE_FRAMES) - 1) * shift + size])[0]
                          for a in range(0, n, LOG_MEL_PIECE_FRAMES)])

    # -- a batch ----------------------------------------------------------------------------------------------------
    def batch_log_mel(self, wavs: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """*Un-normalised* log-mels of model-rate 1-D waveforms in one batched fbank call, on :attr:`device`:
        ``(B, T, F)`` zero beyond each clip's frames, and the frames per clip ``(B,)``. The mean removal is
        vectorised over the zero-padded batch."""
        device = self.device
        lengths = torch.tensor([len(w) for w in wavs], device=device)
        x = pad_sequence([w.to(device, torch.float32) for w in wavs], batch_first=True)
        if self.cfg.subtract_waveform_mean:
            valid = padding_from_lengths(lengths, x.shape[1]).logical_not()
            x = (x - (x * valid).sum(1, keepdim=True) / lengths[:, None]) * valid
        return self.fbank(x, lengths)

    def pad_and_normalise(self, mels: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-clip log-mels (T_i, F) -> normalised (B, T, F), zero-padded at the end, and frame padding (B, T)."""
        lengths = torch.tensor([m.shape[0] for m in mels], device=mels[0].device)
        feats = pad_sequence(list(mels), batch_first=True)
        return self.normalise(feats), padding_from_lengths(lengths, feats.shape[1])

    def normalise(self, feats: torch.Tensor) -> torch.Tensor:
        return normalise(feats, self.cfg)

    def kept_frames(self, lengths: torch.Tensor) -> torch.Tensor:
        return kept_frames(lengths, self.cfg)

    def collate(self, feats: List[torch.Tensor], crop_u: Optional[torch.Tensor] = None):
        """:func:`collate_features` under this config: ``(x (B, T, F), frame_padding or None, kept frames (B,))``."""
        return collate_features(feats, self.cfg, crop_u)

    def collate_padded(self, padded: torch.Tensor, lengths: torch.Tensor, crop_u: Optional[torch.Tensor] = None):
        """:func:`collate_padded` under this config (log-mels already stacked, e.g. by :meth:`batch_log_mel`)."""
        return collate_padded(padded, lengths, self.cfg, crop_u)
