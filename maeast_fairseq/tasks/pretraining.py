"""Task ``maeast_pretraining``: self-supervised pretraining on wav2vec-style manifests (``{data}/{split}.tsv``)."""

import logging
import os
from dataclasses import dataclass, field

from fairseq.dataclass import FairseqDataclass
from fairseq.tasks import FairseqTask, register_task
from omegaconf import II, MISSING

from ..data.fbank_dataset import FbankDataset
from ..frontend import FrontendConfig

logger = logging.getLogger(__name__)


@dataclass
class PretrainingTaskConfig(FairseqDataclass, FrontendConfig):
    data: str = field(default=MISSING, metadata={"help": "folder with {split}.tsv manifests (maeast-manifest)"})
    min_sample_size: int = field(
        default=0, metadata={"help": "drop clips with fewer samples (counted and logged); MAE-AST uses 32000 (2 s)"}
    )
    max_sample_size: int = field(
        default=0, metadata={"help": "drop clips with more samples (counted and logged); 0 = keep all"}
    )
    # frames of one patch, from the model: a shorter clip is an error naming its manifest line. (No help string on
    # purpose: fairseq's argparse path then resolves the interpolation instead of turning it into a flag.)
    patch_frames: int = II("model.patch_time")
    seed: int = II("common.seed")


@register_task("maeast_pretraining", dataclass=PretrainingTaskConfig)
class PretrainingTask(FairseqTask):
    cfg: PretrainingTaskConfig

    @classmethod
    def setup_task(cls, cfg: PretrainingTaskConfig, **kwargs):
        if not os.path.isdir(cfg.data):
            raise FileNotFoundError(
                f"task.data={cfg.data!r} is not a folder; point it at the folder holding train.tsv / valid.tsv "
                "(write them with `maeast-manifest AUDIO_DIR --dest DATA_DIR`)"
            )
        return cls(cfg)

    def load_dataset(self, split: str, task_cfg=None, **kwargs):
        cfg = task_cfg or self.cfg
        path = os.path.join(cfg.data, f"{split}.tsv")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no manifest {path} for split {split!r} (write it with maeast-manifest)")
        self.datasets[split] = FbankDataset(
            path, cfg, min_sample_size=cfg.min_sample_size, max_sample_size=cfg.max_sample_size,
            min_frames=cfg.patch_frames, shuffle=split != "test", seed=cfg.seed,
        )

    @property
    def source_dictionary(self):
        return None

    @property
    def target_dictionary(self):
        return None

    def max_positions(self):
        return None
