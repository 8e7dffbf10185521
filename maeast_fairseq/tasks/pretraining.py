"""Task ``maeast_pretraining``: self-supervised pretraining on wav2vec-style manifests (``{data}/{split}.tsv``)."""

import logging
from dataclasses import dataclass, field
from typing import Optional

import torch
from fairseq.dataclass import FairseqDataclass
from fairseq.tasks import register_task
from omegaconf import II, MISSING

from ..data.fbank_dataset import FbankDataset
from ..frontend import Frontend, FrontendConfig
from ..precision import resolve_precision
from .base import AudioTask, resolve_data_folder, split_manifest

logger = logging.getLogger(__name__)


@dataclass
class PretrainingTaskConfig(FairseqDataclass, FrontendConfig):
    data: str = field(default=MISSING, metadata={"help": "folder with {split}.tsv manifests (maeast-manifest)"})
    min_sample_size: int = field(
        default=0, metadata={"help": "drop clips with fewer samples (manifest counts, at each file's own rate; "
                                     "counted and logged); MAE-AST uses 32000 (2 s)"}
    )
    max_sample_size: int = field(
        default=0, metadata={"help": "drop clips with more samples (manifest counts; counted and logged); 0 = keep "
                                     "all"}
    )
    short_clip_policy: str = field(
        default="error",
        metadata={"help": "a clip shorter than one patch (its length at the model rate, whatever the file's rate): "
                          "'error' lists every such clip at once, 'drop' drops and counts them (logged)"},
    )
    fbank_on_device: bool = field(
        default=False,
        metadata={"help": "the loader returns waveforms (mean removed per the front end) and the task computes the "
                          "batched fbank on the training device, then the same length policy, log-mel padding and "
                          "normalisation as the loader: identical features, far less loader CPU"},
    )
    autocast_bf16: bool = field(
        default=False,
        metadata={"help": "run forward + loss under torch.autocast(bfloat16) on the training device, with float32 "
                          "weights and optimizer (use with common.fp16=false, common.bf16=false; no loss scaling)"},
    )
    # frames of one patch, from the model: a shorter clip is an error naming its manifest line. (No help string on
    # purpose: fairseq's argparse path then resolves the interpolation instead of turning it into a flag.)
    # ``oc.select`` with a default: fairseq-validate's config has no ``model`` group (no --arch), where a plain
    # ``${model.patch_time}`` cannot be resolved; the task it builds then comes from the checkpoint's own config
    patch_frames: int = II("oc.select:model.patch_time,1")
    seed: int = II("common.seed")
    # where fairseq writes tensorboard scalars (common.tensorboard_logdir): reconstruction images go there too
    tensorboard_logdir: Optional[str] = II("oc.select:common.tensorboard_logdir,null")


@register_task("maeast_pretraining", dataclass=PretrainingTaskConfig)
class PretrainingTask(AudioTask):
    cfg: PretrainingTaskConfig

    @classmethod
    def setup_task(cls, cfg: PretrainingTaskConfig, **kwargs):
        resolve_data_folder(cfg, "train.tsv / valid.tsv")
        return cls(cfg)

    def load_dataset(self, split: str, task_cfg=None, **kwargs):
        cfg = task_cfg or self.cfg
        path = split_manifest(cfg.data, split)
        self.datasets[split] = FbankDataset(
            path, cfg, min_sample_size=cfg.min_sample_size, max_sample_size=cfg.max_sample_size,
            min_frames=cfg.patch_frames, shuffle=split != "test", seed=cfg.seed,
            short_clip_policy=getattr(cfg, "short_clip_policy", "error"),
        )

    # -- fbank on the training device / bf16 autocast ----------------------------------------------------------------
    def device_features(self, sample, dtype=None):
        """Replace a waveform batch (``fbank_on_device``) by the features the loader would have collated."""
        net = sample.get("net_input") if sample else None
        if not net or "wav_bits" not in net:
            return sample
        wav = net["wav_bits"].view(torch.float32)
        frontend = getattr(self, "_device_frontend", None)
        if frontend is None or frontend.device != wav.device:
            frontend = self._device_frontend = Frontend(self.cfg).to(wav.device)
        # lengths / crop offsets are host arrays (the collater's numpy): no device-to-host read here
        feats, _ = frontend.fbank(wav, torch.as_tensor(net["wav_lengths"]))
        lengths = torch.as_tensor(net["frame_lengths"])
        x, frame_padding, _ = frontend.collate_padded(feats, lengths, torch.as_tensor(net["crop_u"]))
        if dtype is not None and dtype != x.dtype:
            x = x.to(dtype)  # what the trainer does to the loader's features under common.fp16 / bf16
        new_net = {"fbank": x, "frame_padding": frame_padding, "mask_rng": net["mask_rng"]}
        return dict(sample, net_input=new_net)

    @staticmethod
    def _input_dtype(model):
        for p in model.parameters():
            if p.requires_grad and p.is_floating_point():
                return p.dtype
        return None

    def _autocast(self, sample):
        enabled = bool(getattr(self.cfg, "autocast_bf16", False))
        device = "cpu"
        if enabled:
            x = sample["net_input"]["fbank"]
            device = x.device.type
            if getattr(self, "_precision_said", None) != device:  # once per device: what bf16 means here
                self._precision_said = device
                prec = resolve_precision("bf16", device)
                (logger.info if prec.support.native else logger.warning)(
                    f"task.autocast_bf16: {prec.describe()}")
        return torch.autocast(device, dtype=torch.bfloat16, enabled=enabled)

    def begin_valid_epoch(self, epoch, model):
        """Every validation: the first clip's reconstruction goes to tensorboard (``common.tensorboard_logdir``)."""
        super().begin_valid_epoch(epoch, model)
        self._images_due = bool(getattr(self.cfg, "tensorboard_logdir", None))

    def _log_images(self, sample, model) -> None:
        if not getattr(self, "_images_due", False):
            return
        self._images_due = False
        from ..tensorboard_images import log_reconstruction

        core = model
        while hasattr(core, "module"):  # DDP / fairseq's wrappers
            core = core.module
        net = sample["net_input"]
        if "fbank" in net:
            log_reconstruction(self.cfg.tensorboard_logdir, core, net["fbank"], net.get("frame_padding"),
                               getattr(self, "_last_update", 0) + 1, seed=int(self.cfg.seed or 0))

    def post_validate(self, model, stats, agg):
        """After every validation: the plateau test of ``reduce_lr_on_plateau_per_validation`` (SSAST's schedule)."""
        from ..optim.plateau import step_on_validation

        step_on_validation(stats)

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        self._last_update = update_num
        sample = self.device_features(sample, self._input_dtype(model))
        if not getattr(self.cfg, "autocast_bf16", False):
            return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad)
        model.train()
        model.set_num_updates(update_num)
        with self._autocast(sample):
            loss, sample_size, logging_output = criterion(model, sample)
        if ignore_grad:
            loss *= 0
        optimizer.backward(loss)
        return loss, sample_size, logging_output

    def valid_step(self, sample, model, criterion):
        sample = self.device_features(sample, self._input_dtype(model))
        self._log_images(sample, model)
        if not getattr(self.cfg, "autocast_bf16", False):
            return super().valid_step(sample, model, criterion)
        model.eval()
        with torch.no_grad(), self._autocast(sample):
            return criterion(model, sample)
