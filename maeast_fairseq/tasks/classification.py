"""Task ``maeast_classification``: fine-tune a pretrained encoder on labelled clips.

Data (``task.data``): ``{split}.tsv`` manifests, the aligned ``{split}.lbl`` label files (one line per clip,
comma-separated labels) and ``labels.txt`` (one label per line; line order = class index) -- exactly what
``maeast-manifest ROOT --dest DIR --labels-from parent|regex:...|csv:...`` writes.

``multi_label: false`` (default): every clip has exactly one label (multi-class; the criterion defaults to
cross-entropy + accuracy). ``multi_label: true``: zero or more labels per clip (BCE + mAP).

**Front end.** The fields of :class:`~maeast_fairseq.frontend.FrontendConfig` are here too, but the signal fields
(``sample_rate``, ``num_mel_bins``, ``window_type``, ``subtract_waveform_mean``, ``norm``, ``norm_mean``,
``norm_std``) default to ``None`` = **copied from the pretrained checkpoint's ``cfg.task``**, so fine-tuning sees
exactly the features the encoder was pretrained on. Set any of them to override (e.g. the SSAST /
EAT ESC-50 recipes normalise with ESC-50 statistics). The length policy is the fine-tuning recipe's own
(``length_policy: fixed``, ``target_frames``: ESC-50 512, Speech Commands 128, AudioSet 1024, with a padding mask)
and is not copied: MAE-AST pretrains with ``crop_to_shortest``, which would cut validation clips to the shortest
clip of their batch. The resolved values are written back into this config, so the fine-tuned checkpoint's
``cfg.task`` holds the effective front end.
"""

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from typing import List, Optional

import torch
from fairseq.dataclass import FairseqDataclass
from fairseq.tasks import register_task
from omegaconf import II, MISSING, OmegaConf, open_dict

from ..checkpoint import CORE_MODELS, read_checkpoint
from ..criterions import classification as _criterion  # noqa: F401  (registers the criterion)
from ..data.labelled_dataset import LabelledFbankDataset
from ..data.manifest import LABEL_LIST_NAME, label_path_for, read_label_list
from ..frontend import FrontendConfig, check_frontend
from .base import AudioTask, resolve_data_folder, split_manifest

logger = logging.getLogger(__name__)

CLASSIFIER = "maeast_classifier"  # the fine-tuned model (its checkpoints can be fine-tuned again)
# front-end fields copied from the pretrained checkpoint unless set here
COPIED = ("sample_rate", "num_mel_bins", "window_type", "subtract_waveform_mean", "norm", "norm_mean", "norm_std")
FROM_CHECKPOINT = "None = the pretrained checkpoint's"


@dataclass
class ClassificationTaskConfig(FairseqDataclass, FrontendConfig):
    data: str = field(default=MISSING, metadata={"help": "folder with {split}.tsv, {split}.lbl and labels.txt"})
    label_list: str = field(
        default=LABEL_LIST_NAME, metadata={"help": "label list file, relative to task.data (one label per line)"}
    )
    multi_label: bool = field(
        default=False,
        metadata={"help": "clips may have zero or several labels (BCE + mAP); false: exactly one (CE + accuracy)"},
    )
    roll_aug: bool = field(
        default=False, metadata={"help": "train only: roll the waveform by a random offset, gain Beta(10,10)+0.5 (EAT)"}
    )
    noise_aug: bool = field(
        default=False, metadata={"help": "train only: add U(0,1)*u/10 noise to the features, roll +-10 frames (SSAST)"}
    )
    min_sample_size: int = field(
        default=0, metadata={"help": "drop clips with fewer samples (manifest counts, at each file's own rate; "
                                     "counted and logged)"}
    )
    max_sample_size: int = field(
        default=0, metadata={"help": "drop clips with more samples (manifest counts; counted and logged); 0 = keep all"}
    )
    short_clip_policy: str = field(
        default="error",
        metadata={"help": "a clip shorter than one patch (its length at the model rate, whatever the file's rate): "
                          "'error' lists every such clip at once, 'drop' drops and counts them (logged)"},
    )
    # the front end: copied from the pretrained checkpoint unless set (see the module docstring)
    sample_rate: Optional[int] = field(default=None, metadata={"help": f"audio rate ({FROM_CHECKPOINT})"})
    num_mel_bins: Optional[int] = field(default=None, metadata={"help": f"mel bins ({FROM_CHECKPOINT})"})
    window_type: Optional[str] = field(default=None, metadata={"help": f"fbank window ({FROM_CHECKPOINT})"})
    subtract_waveform_mean: Optional[bool] = field(
        default=None, metadata={"help": f"remove the waveform mean ({FROM_CHECKPOINT})"}
    )
    norm: Optional[str] = field(default=None, metadata={"help": f"'dataset' or 'none' ({FROM_CHECKPOINT})"})
    norm_mean: Optional[float] = field(default=None, metadata={"help": f"log-mel mean ({FROM_CHECKPOINT})"})
    norm_std: Optional[float] = field(default=None, metadata={"help": f"log-mel std ({FROM_CHECKPOINT})"})
    length_policy: str = field(
        default="fixed", metadata={"help": "'fixed' (pad / cut to target_frames; the fine-tuning default) or "
                                           "'crop_to_shortest'"}
    )
    target_frames: int = field(
        default=1024, metadata={"help": "frames per clip: ESC-50 512, Speech Commands 128, AudioSet 1024"}
    )
    # interpolated from the rest of the config (no help string on purpose: fairseq's argparse path then resolves
    # the interpolation instead of turning it into a flag). ``oc.select`` with a default: fairseq-validate builds a
    # config without a ``model`` group (no --arch), where a plain ``${model.model_path}`` cannot be resolved
    model_path: Optional[str] = II("oc.select:model.model_path,null")
    seed: int = II("common.seed")
    train_subset: str = II("dataset.train_subset")


def read_checkpoint_cfg(path: str) -> dict:
    """The ``cfg`` dict of a fairseq checkpoint, read with ``weights_only`` (memory-mapped: tensors are not read)."""
    if not path or not os.path.isfile(path):
        raise FileNotFoundError(f"model.model_path={path!r} is not a file; point it at a pretrained checkpoint "
                                "(mae_ast, ssast or eat; e.g. checkpoints/checkpoint_best.pt)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # tensors are not read
    except Exception:
        state = read_checkpoint(path)  # e.g. a config of OmegaConf containers
    from ..official import is_official, official_as_ours

    if is_official(state):  # an official released file (e.g. EAT's): the config of the model it converts to
        state = official_as_ours(path, state)
    cfg = state.get("cfg") or {}
    return OmegaConf.to_container(cfg) if OmegaConf.is_config(cfg) else cfg


def check_pretrained_type(pre: dict, path: str) -> None:
    """Refuse, before anything is built, a ``model.model_path`` checkpoint whose model is not one this task can
    fine-tune, naming its type and the accepted ones (otherwise the front end would be copied from it and the
    failure would come later, from the model, without the file's name)."""
    accepted = sorted(CORE_MODELS) + [CLASSIFIER]
    model_cfg = dict(pre.get("model") or {})
    name = model_cfg.get("_name")
    if name == CLASSIFIER:
        name = model_cfg.get("encoder_name")
        if name in CORE_MODELS:
            return
        raise ValueError(f"model.model_path={path}: a {CLASSIFIER} checkpoint whose encoder is {name!r}, not one "
                         f"of {sorted(CORE_MODELS)}; it cannot be fine-tuned here")
    if name in CORE_MODELS:
        return
    what = f"a {name!r} model" if name else "not a fairseq checkpoint of this project (no cfg.model._name)"
    raise ValueError(
        f"model.model_path={path} is {what}, but maeast_classification fine-tunes only {', '.join(accepted)} "
        "checkpoints. Fix: point model.model_path at a checkpoint written by maeast_pretraining (mae_ast, ssast, "
        "eat) or by this task")


@register_task("maeast_classification", dataclass=ClassificationTaskConfig)
class ClassificationTask(AudioTask):
    cfg: ClassificationTaskConfig

    def __init__(self, cfg: ClassificationTaskConfig, class_names: List[str], patch_frames: int = 1):
        super().__init__(cfg)
        self.class_names = class_names
        self.patch_frames = patch_frames
        self._optimizer_checked = False

    @classmethod
    def setup_task(cls, cfg: ClassificationTaskConfig, **kwargs):
        resolve_data_folder(cfg, "train.tsv / train.lbl / valid.tsv / valid.lbl / labels.txt (maeast-manifest "
                                 "... --labels-from parent writes them)")
        class_names = read_label_list(os.path.join(cfg.data, cfg.label_list))
        missing = [k for k in COPIED if getattr(cfg, k) is None]
        pre = {}
        if missing or (cfg.model_path and os.path.isfile(cfg.model_path)):
            pre = read_checkpoint_cfg(cfg.model_path)
            check_pretrained_type(pre, cfg.model_path)
        # frames of one patch (a shorter clip would have no valid token): from the encoder's config
        pre_model = dict(pre.get("model") or {})
        if pre_model.get("_name") == "maeast_classifier":
            pre_model = dict(pre_model.get("encoder_cfg") or {})
        patch_frames = int(pre_model.get("patch_time", 1) or 1)
        if missing:
            pre_task = dict(pre.get("task") or {})
            defaults = FrontendConfig()
            copied = {}
            with open_dict(cfg):
                for k in missing:
                    v = pre_task.get(k, getattr(defaults, k))
                    setattr(cfg, k, v)
                    copied[k] = v
            logger.info(f"front end copied from {cfg.model_path}: {copied}")
            absent = [k for k in missing if k not in pre_task]
            if absent:
                logger.warning(f"{cfg.model_path} records no {', '.join(absent)} in cfg.task: using the defaults "
                               f"{ {k: copied[k] for k in absent} }; set task.<field> if it was pretrained otherwise")
        check_frontend(cfg)
        return cls(cfg, class_names, patch_frames)

    # -- data ------------------------------------------------------------------------------------------------------
    def load_dataset(self, split: str, task_cfg=None, **kwargs):
        cfg = task_cfg or self.cfg
        path = split_manifest(cfg.data, split)
        train = split == cfg.train_subset
        self.datasets[split] = LabelledFbankDataset(
            path, cfg, label_path=label_path_for(path), class_names=self.class_names,
            label_list_path=os.path.join(cfg.data, cfg.label_list), multi_label=cfg.multi_label,
            roll_aug=cfg.roll_aug and train, noise_aug=cfg.noise_aug and train,
            min_sample_size=cfg.min_sample_size, max_sample_size=cfg.max_sample_size,
            min_frames=self.patch_frames, shuffle=train, seed=cfg.seed,
            short_clip_policy=getattr(cfg, "short_clip_policy", "error"),
        )

    # -- model -----------------------------------------------------------------------------------------------------
    def build_model(self, cfg, from_checkpoint: bool = False):
        with open_dict(cfg):
            cfg.num_classes = len(self.class_names)
            cfg.class_names = list(self.class_names)
            cfg.multi_label = bool(self.cfg.multi_label)
            cfg.target_frames = int(self.cfg.target_frames)
        model = super().build_model(cfg, from_checkpoint)
        # fairseq builds the model from a merged copy of cfg: write what the model read from the pretrained
        # checkpoint back here, so the saved checkpoint is self-contained (rebuilt without model_path)
        with open_dict(cfg):
            cfg.encoder_name = model.cfg.encoder_name
            cfg.encoder_cfg = model.cfg.encoder_cfg
            cfg.frontend = self.frontend_dict()
        # the task config fairseq saves is not the merged copy this task holds either: write the resolved front end
        # into the saved one too (it is the root of the model config handed to us), for readers of cfg.task
        root = cfg._get_root() if OmegaConf.is_config(cfg) else None
        if root is not None and root is not cfg and OmegaConf.is_config(root.get("task", None)):
            with open_dict(root.task):
                for k, v in self.frontend_dict().items():
                    root.task[k] = v
        return model

    def frontend_dict(self) -> dict:
        """The effective front end (checkpoint values + overrides) as a plain dict."""
        return {f.name: getattr(self.cfg, f.name) for f in dataclasses.fields(FrontendConfig)}

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False, **kwargs):
        if not self._optimizer_checked:
            check_optimizer_groups(model, optimizer)
            name_lr_groups(optimizer)
            self._optimizer_checked = True
        return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad, **kwargs)


def _inner_optimizer(optimizer):
    """The optimizer under fairseq's precision wrappers: the one that holds the param groups."""
    inner = optimizer
    for _ in range(4):  # FP16Optimizer / AMPOptimizer / MemoryEfficientFP16Optimizer wrap the real one
        nxt = getattr(inner, "fp32_optimizer", None) or getattr(inner, "wrapped_optimizer", None)
        if nxt is None:
            break
        inner = nxt
    return inner


def lr_group_names(optimizer) -> dict:
    """{fairseq's group key: a readable name} for the groups of a ``composite`` optimizer with ``dynamic_groups``,
    whose keys are md5 hashes of the per-parameter overrides: ``<param_group>_x<lr scale>``, e.g.
    ``default_x0.5625`` (layer-wise lr decay). Other optimizers: {}."""
    inner = _inner_optimizer(optimizer)
    optimizers = getattr(inner, "optimizers", None)
    if not isinstance(optimizers, dict):
        return {}
    names = {}
    for key, opt in optimizers.items():
        params = [p for g in getattr(opt, "param_groups", []) for p in g["params"]]
        overrides = getattr(params[0], "optim_overrides", None) if params else None
        if not overrides or key in ("default", "no_decay"):
            continue
        scale = overrides.get("optimizer", {}).get("lr_scale", 1.0)
        names[key] = f"{getattr(params[0], 'param_group', 'default')}_x{scale:.4g}"
    return names


def name_lr_groups(optimizer) -> None:
    """Log the learning rates of hashed ``composite`` groups under :func:`lr_group_names` (``lr_default_x0.5625``
    instead of ``lr_175863c3...``). Only the logged names change: the optimizer and scheduler state dicts keep
    fairseq's keys, so checkpoints resume as before."""
    names = lr_group_names(optimizer)
    sched = getattr(_inner_optimizer(optimizer), "lr_scheduler", None)
    if not names or sched is None or getattr(sched, "_maeast_named", False):
        return
    step_update = sched.step_update

    def named_step_update(num_updates):
        lrs = step_update(num_updates)
        return {names.get(k, k): v for k, v in lrs.items()} if isinstance(lrs, dict) else lrs

    sched.step_update = named_step_update
    sched._maeast_named = True
    from fairseq import metrics  # the hashed names logged before this first step: dropped from the open meters

    for agg in metrics.get_active_aggregators():
        hashed = {k for k in agg.keys() if k.startswith("lr_") and k[3:] in names}
        for key in hashed:
            del agg[key]
        if hashed and hasattr(agg, "priorities"):  # fairseq's MetersDict keeps its order in a side list
            agg.priorities[:] = [p for p in agg.priorities if p[-1] not in hashed]
    logger.info(f"learning-rate groups logged as lr_<name>: {names}")


def check_optimizer_groups(model, optimizer) -> None:
    """Fail loudly when the optimizer ignores the per-parameter lr scales / groups the model asked for (fairseq's
    ``adam`` makes one group; only ``composite`` with ``dynamic_groups: true`` honours ``optim_overrides``)."""
    wanted = {(round(getattr(p, "optim_overrides", {}).get("optimizer", {}).get("lr_scale", 1.0), 12),
               getattr(p, "param_group", "default")) for p in model.parameters() if p.requires_grad}
    inner = _inner_optimizer(optimizer)
    try:
        groups = list(inner.param_groups)
    except (AttributeError, NotImplementedError, ValueError):
        logger.warning(f"cannot list the param groups of {type(optimizer).__name__}; layer-decay groups unchecked")
        return
    if len(wanted) > 1 and len(groups) < len(wanted):
        raise ValueError(
            f"the model asks for {len(wanted)} optimizer groups (layer-wise lr decay model.layer_decay / "
            f"model.no_decay_group) but the optimizer has {len(groups)}: use optimizer._name=composite with "
            "optimizer.dynamic_groups=true and lr_scheduler._name=pass_through (see examples/finetune/*.yaml), or "
            "set model.layer_decay=1.0 model.no_decay_group=false")
