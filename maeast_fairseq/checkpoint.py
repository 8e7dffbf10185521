"""Load a checkpoint of ours without fairseq: the pure-torch core model + its front end, ready to embed audio.

:func:`load_pretrained` reads

* a **fairseq checkpoint** (``checkpoint_best.pt``, pretraining or fine-tuning): read with
  ``torch.load(weights_only=True)``, so no pickled code runs. Our checkpoints store their config as plain
  containers; one that stores OmegaConf containers is read by allowing *only* OmegaConf's container / node classes
  and a few ``typing`` / builtin types (:data:`CONFIG_GLOBALS`); anything else is refused with the list of the
  classes the file wants;
* an **exported folder** (:func:`maeast_fairseq.export.export_safetensors`): ``config.json`` + ``model.safetensors``,
  no pickle at all.

Weights are matched strictly for the encoder: every encoder tensor of the core model must be in the file with the
same shape, and the file may hold nothing else except the known pretraining-only parts of the method (decoder,
teacher, prediction heads: the core class's ``pretraining_only``) and, for a fine-tuned model, what lies outside its
encoder (the classification head). Anything missing, unexpected or of another shape raises :class:`CheckpointError`
naming the keys: a conversion that silently loads wrong weights is the worst failure there is.
``Pretrained.load_report`` lists what was ignored. The pretraining-only modules are then removed from the model
(they are not needed to embed, and an export never contains them).

The front end (window, mel bins, waveform mean removal, normalisation statistics, training length) comes from the
checkpoint's task config and is never guessed: a checkpoint without it needs ``frontend=`` explicitly.

The fine-tuning classifier's builders live here too, beside the strict loader: :func:`classifier_from_pretrained`
(a pretrained or fine-tuned checkpoint -> a classifier with a new head) and :func:`classifier_from_state` (a
fine-tuned checkpoint -> the very same classifier, for ``maeast-predict``). Config fields a checkpoint holds that
the model's config does not know are logged as a warning naming them (then ignored), never dropped silently.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import pickle
import typing
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch

from .core.base import POOLINGS
from .core.classifier import CLASSIFIER_NAME, AudioClassifier, ClassifierConfig, apply_patch_strides, prepare_encoder
from .core.config_aliases import upgrade_config
from .core.positions import LearnedPositions
from .core.registry import CORE_MODELS
from .embed import Pretrained, default_chunk_frames
from .errors import CheckpointError
from .frontend import FrontendConfig, check_frontend

logger = logging.getLogger(__name__)

__all__ = ["CheckpointError", "CORE_MODELS", "Pretrained", "load_pretrained", "read_checkpoint",
           "register_wrapper", "EXPORT_FORMAT", "CONFIG_NAME", "WEIGHTS_NAME"]

EXPORT_FORMAT = "maeast-fairseq-export"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

#: front-end fields a checkpoint must carry (the rest have safe defaults: the Kaldi frame settings are fixed)
REQUIRED_FRONTEND_FIELDS = ("window_type", "norm", "length_policy")




# -------------------------------------------------------------------------------------------------------- reading
def _config_globals() -> List[Any]:
    """The only non-container classes a fairseq checkpoint may make us unpickle (its OmegaConf config)."""
    allowed: List[Any] = [typing.Any, collections.defaultdict, dict, list, tuple, set, int, float, bool, str]
    try:
        from omegaconf import DictConfig, ListConfig
        from omegaconf.base import ContainerMetadata, Metadata
        from omegaconf.nodes import AnyNode, BooleanNode, FloatNode, IntegerNode, StringNode
    except ImportError:  # no omegaconf: such a config could not be unpickled anyway
        return allowed
    return allowed + [DictConfig, ListConfig, ContainerMetadata, Metadata, AnyNode, StringNode, IntegerNode,
                      FloatNode, BooleanNode]


#: documented for users: what :func:`read_checkpoint` may allow (resolved lazily, omegaconf is optional)
CONFIG_GLOBALS = ("omegaconf DictConfig, ListConfig, ContainerMetadata, Metadata, AnyNode, StringNode, IntegerNode, "
                  "FloatNode, BooleanNode; typing.Any; collections.defaultdict; builtin dict/list/tuple/set/int/"
                  "float/bool/str")


def read_checkpoint(path: str, map_location: Union[str, torch.device] = "cpu", *,
                    official: Optional[dict] = None) -> dict:
    """A checkpoint of ours as a dict (:func:`read_fairseq_file`). An official released file (SSAST ``.pth``,
    MAE-AST / EAT fairseq ``.pt``) is recognised from its contents, read by its own safe reader and converted into
    the same layout (:mod:`maeast_fairseq.official`; ``official``: its converter's options, e.g. ``{"ema": True}``);
    a file of no known format raises naming what it holds."""
    from .official import official_as_ours

    try:
        state = read_fairseq_file(path, map_location)
    except (CheckpointError, pickle.UnpicklingError, RuntimeError, EOFError) as err:
        return official_as_ours(path, None, refused=err, **(official or {}))
    return official_as_ours(path, state, **(official or {}))


def read_fairseq_file(path: str, map_location: Union[str, torch.device] = "cpu") -> dict:
    """``torch.load(path, weights_only=True)``; on a config of OmegaConf containers, retry allowing only
    :data:`CONFIG_GLOBALS`. Raises :class:`CheckpointError` naming the classes it refuses."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        pass  # a config of OmegaConf containers: retry allowing exactly those classes
    allowed = _config_globals()
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        try:
            wanted = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # pragma: no cover - older torch / odd files
            wanted = []
        names = {f"{getattr(g, '__module__', '')}.{getattr(g, '__qualname__', g)}" for g in allowed}
        refused = [w for w in wanted if w not in names] or [str(err).splitlines()[0]]
        raise CheckpointError(
            f"{path}: refusing to unpickle {refused} (weights_only loading allows tensors, plain containers and "
            f"the OmegaConf config classes only; loading other classes would run code from the file). Fix: "
            "re-save the checkpoint with a plain-dict config in an environment that has the classes, e.g. "
            "`ckpt['cfg'] = OmegaConf.to_container(ckpt['cfg'])`, or export it with maeast_fairseq.export."
        ) from err


def _plain(obj):
    """OmegaConf containers -> plain dicts / lists (unresolved interpolations stay strings)."""
    if type(obj).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf
        return OmegaConf.to_container(obj, resolve=False)
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    return obj


def _build(dc_cls, values: Optional[dict], what: str, source: str, warn_unknown: bool = True):
    """``dc_cls`` from the known fields of a config dict; the unknown ones (other than fairseq's ``_name``) are
    ignored with a warning naming them (``warn_unknown=False``: silently, for a task config read for its front-end
    fields only). Fields and values written under an old name are renamed first, with a warning
    (:func:`~maeast_fairseq.core.config_aliases.upgrade_config`)."""
    values = upgrade_config(dc_cls, values or {}, f"{source}: {what}")
    names = {f.name for f in dataclasses.fields(dc_cls)}
    unknown = sorted(k for k in values if k not in names and not k.startswith("_"))
    if unknown and warn_unknown:
        logger.warning("%s: %s fields unknown to %s are ignored: %s", source, what, dc_cls.__name__, unknown)
    return dc_cls(**{k: v for k, v in values.items() if k in names})


def build_core(name: str, model_cfg: Optional[dict], source: str = "checkpoint") -> torch.nn.Module:
    """The core model registered as ``name`` (:data:`CORE_MODELS`), built from a config dict (a checkpoint's
    ``cfg.model`` or a classifier's ``encoder_cfg``; unknown fields are warned about and ignored)."""
    if name not in CORE_MODELS:
        raise CheckpointError(f"{source}: model {name!r} is not one of ours ({sorted(CORE_MODELS)})")
    core_cls, core_cfg_cls = CORE_MODELS[name]
    return core_cls(_build(core_cfg_cls, model_cfg, f"model ({name})", source))


def model_from_converted(conv, *, encoder_only: bool = False) -> torch.nn.Module:
    """An official file's :class:`~maeast_fairseq.official.Converted` -> our model with its weights loaded strictly:
    the core model (all its pretraining parts included) or, for a fine-tuned file, the classifier
    (``encoder_only=True``: its encoder)."""
    from .official import checkpoint_dict

    if conv.model_name in CORE_MODELS:
        model = build_core(conv.model_name, conv.model_cfg, conv.source)
        model.load_state_dict(conv.state, strict=True)
        return model
    if conv.model_name != "maeast_classifier":
        raise CheckpointError(f"{conv.source}: converted to unknown model {conv.model_name!r}")
    model, _ = classifier_from_state(checkpoint_dict(conv), conv.source)
    return model.encoder if encoder_only else model


# -------------------------------------------------------------------------------------------- fine-tuned wrappers
#: registered name of a fine-tuning model -> fn(model_cfg, task_cfg) -> (core name, core model cfg, key prefix
#: [, prepare(core)])
WRAPPERS: Dict[str, Callable[[dict, dict], tuple]] = {}


def register_wrapper(name: str, fn: Callable[[dict, dict], tuple]) -> None:
    """Teach :func:`load_pretrained` a fine-tuning model whose encoder is one of :data:`CORE_MODELS`.

    ``fn(model_cfg, task_cfg)`` returns ``(core name, core config dict, state-dict prefix of the encoder)``, e.g.
    ``("ssast", cfg["encoder"], "encoder.")``, optionally with a 4th item ``prepare(core)`` that changes the freshly
    built core the way fine-tuning did (patch strides, position grid) before the weights are loaded. Unregistered
    wrappers are found by searching the model config for a nested config whose ``_name`` is a core model (or a
    path to a pretraining checkpoint of ours) and the state dict for the prefix under which its weights sit; such a
    wrapper must not change the encoder's geometry (register it otherwise).
    """
    WRAPPERS[name] = fn


def _classifier_wrapper(model_cfg: dict, task_cfg: dict):
    """``maeast_classifier`` (fine-tuning): encoder under ``encoder.``, config in ``encoder_name`` / ``encoder_cfg``,
    fine-tuning patch strides re-applied (SSAST's overlapping patches and re-gridded positions)."""
    name, enc = model_cfg.get("encoder_name"), dict(model_cfg.get("encoder_cfg") or {})
    if not name:
        raise CheckpointError("maeast_classifier checkpoint without model.encoder_name / encoder_cfg")
    geometry = {"stride_time": int(model_cfg.get("patch_stride_time") or 0),
                "stride_freq": int(model_cfg.get("patch_stride_freq") or 0),
                "grid_frames": int(model_cfg.get("target_frames") or task_cfg.get("target_frames") or 1024)}

    def prepare(core):
        core.remove_pretraining_modules()
        apply_geometry(core, geometry)

    return name, enc, "encoder.", prepare


WRAPPERS["maeast_classifier"] = _classifier_wrapper


def encoder_geometry(model: torch.nn.Module) -> Optional[dict]:
    """The fine-tuning patch geometry of a core model when it differs from the pretraining one (strides != patch):
    ``{"stride_time", "stride_freq", "grid_frames"}`` (``grid_frames`` rebuilds a learned position grid), else
    None. Exports store it so that the model is rebuilt the same way."""
    tok = getattr(model, "tokenizer", None) or getattr(getattr(model, "encoder", None), "tokenizer", None)
    if tok is None or (tok.stride_time, tok.stride_freq) == (tok.patch_time, tok.patch_freq):
        return None
    grids = [m.grid for m in model.modules() if isinstance(m, LearnedPositions)]
    grid_frames = (grids[0][0] - 1) * tok.stride_time + tok.patch_time if grids else 1024
    return {"stride_time": tok.stride_time, "stride_freq": tok.stride_freq, "grid_frames": grid_frames}


def apply_geometry(core: torch.nn.Module, geometry: Optional[dict]) -> None:
    """Re-apply fine-tuning patch strides (and the matching position grid) to a freshly built core."""
    if not geometry or not (geometry.get("stride_time") or geometry.get("stride_freq")):
        return
    apply_patch_strides(core, geometry.get("stride_time", 0), geometry.get("stride_freq", 0),
                        geometry.get("grid_frames", 1024))


def _find_core_cfg(cfg, depth: int = 0) -> Optional[dict]:
    if not isinstance(cfg, dict) or depth > 4:
        return None
    for v in cfg.values():
        if isinstance(v, dict) and v.get("_name") in CORE_MODELS:
            return v
    for v in cfg.values():
        found = _find_core_cfg(v, depth + 1)
        if found is not None:
            return found
    return None


def _find_pretraining_ckpt(cfg: dict, source: str) -> Optional[dict]:
    """A string field of the fine-tuning config naming an existing checkpoint of ours -> its config."""
    base = os.path.dirname(os.path.abspath(source))
    for v in cfg.values():
        if isinstance(v, str) and v.endswith(".pt"):
            for cand in (v, os.path.join(base, v)):
                if os.path.isfile(cand) and os.path.abspath(cand) != os.path.abspath(source):
                    inner = _plain(read_checkpoint(cand).get("cfg") or {})
                    if (inner.get("model") or {}).get("_name") in CORE_MODELS:
                        return inner
    return None


def _find_prefix(encoder_keys: List[str], state_keys: List[str], source: str) -> str:
    if all(k in state_keys for k in encoder_keys):
        return ""
    anchor = encoder_keys[0]
    keyset = set(state_keys)
    cands = sorted({k[: -len(anchor)] for k in state_keys if k.endswith("." + anchor)})
    good = [p for p in cands if all(p + k in keyset for k in encoder_keys)]
    if len(good) == 1:
        return good[0]
    if len(good) > 1:
        raise CheckpointError(f"{source}: the encoder weights appear under several prefixes {good}; register the "
                              "wrapper with maeast_fairseq.checkpoint.register_wrapper")
    return cands[0] if len(cands) == 1 else ""


# --------------------------------------------------------------------------------------------- weights, strictly
def load_encoder_state(model: torch.nn.Module, state: Dict[str, torch.Tensor], name: str, source: str,
                       prefix: str = "") -> dict:
    """Load ``state`` into ``model``: strict for the encoder, tolerant only of the method's pretraining-only parts.

    Returns a report ``{"encoder_tensors": n, "prefix": prefix, "pretraining_only_in_file": [...],
    "pretraining_only_not_in_file": [...], "outside_encoder_ignored": [...]}`` (the pretraining-only parts, the core
    class's ``pretraining_only``, are removed afterwards by ``model.remove_pretraining_modules()``); raises
    :class:`CheckpointError` on any missing, unexpected or mis-shaped encoder tensor.
    """
    is_pre = model.is_pretraining_only
    own = model.state_dict()
    sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    outside = sorted(k for k in state if not k.startswith(prefix))
    encoder_keys = [k for k in own if not is_pre(k)]
    missing = [k for k in encoder_keys if k not in sub]
    unexpected = [k for k in sub if k not in own and not is_pre(k)]
    mismatched = [f"{k}: file {tuple(sub[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in encoder_keys if k in sub and tuple(sub[k].shape) != tuple(own[k].shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} encoder tensors missing from the file: {_short(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors: {_short(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches: {_short(mismatched)}")
    if problems:
        raise CheckpointError(
            f"{source}: the weights do not match the {name} model built from its config"
            f"{f' (encoder prefix {prefix!r})' if prefix else ''}: " + "; ".join(problems)
            + ". Nothing was loaded. Fix: check that the config saved with the weights is the one they were "
              "trained with (model fields, e.g. sizes, patch shape, number of extra tokens)."
        )
    load = {k: v for k, v in sub.items() if k in own}
    result = model.load_state_dict(load, strict=False)
    assert not result.unexpected_keys and all(is_pre(k) for k in result.missing_keys), result
    report = {
        "encoder_tensors": len(encoder_keys),
        "prefix": prefix,
        "pretraining_only_in_file": sorted(k for k in sub if is_pre(k)),
        "pretraining_only_not_in_file": sorted(result.missing_keys),
        "outside_encoder_ignored": outside,
    }
    if outside:
        logger.info("%s: %d tensors outside the encoder (e.g. a classification head) not loaded: %s", source,
                    len(outside), _short(outside))
    return report


def _short(keys: List[str], n: int = 8) -> str:
    return ", ".join(keys[:n]) + (f", ... ({len(keys) - n} more)" if len(keys) > n else "")


def load_state_strict(module: torch.nn.Module, state: Dict[str, torch.Tensor], what: str) -> None:
    """Load a whole model's ``state`` into ``module``: every key of each, same shapes (torch names a shape
    mismatch). Raises ``RuntimeError`` listing the missing / unexpected keys."""
    result = module.load_state_dict(state, strict=False)
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if missing or unexpected:
        raise RuntimeError(
            f"{what}: the weights do not match the model built from its config: "
            + (f"missing {_short(missing)}" if missing else "")
            + ("; " if missing and unexpected else "")
            + (f"unexpected {_short(unexpected)}" if unexpected else "")
            + ". Was it written by another version of the model?")


# ----------------------------------------------------------------------------------------------------- the loader
def _frontend_from(task_cfg: dict, source: str, fallback: Optional[dict] = None) -> FrontendConfig:
    values = dict(task_cfg)
    if not all(k in values for k in REQUIRED_FRONTEND_FIELDS) and fallback:
        values = dict(fallback, **{k: v for k, v in values.items() if k in {f.name for f in
                                                                          dataclasses.fields(FrontendConfig)}})
    absent = [k for k in REQUIRED_FRONTEND_FIELDS if k not in values]
    if absent:
        raise CheckpointError(
            f"{source}: the checkpoint does not say which front end it was trained with (task fields {absent} "
            "are absent); a guessed front end silently costs accuracy. Fix: pass "
            "load_pretrained(..., frontend=FrontendConfig(...)) with the training settings.")
    fe = _build(FrontendConfig, values, "task", source, warn_unknown=False)
    check_frontend(fe)
    return fe


def _finish(model, frontend, name, *, source, report, default_pooling=None, chunk_frames=None,
            keep_pretraining_modules=False, map_location=None) -> Pretrained:
    check_frontend(frontend)
    if not keep_pretraining_modules:
        model.remove_pretraining_modules()
    pooling = default_pooling or model.default_pooling
    pre = Pretrained(model.eval(), frontend, name, default_pooling=pooling, chunk_frames=chunk_frames,
                     load_report=report, source=source)
    if isinstance(map_location, (str, torch.device)):
        pre = pre.to(map_location)
    return pre.eval()


def load_pretrained(path: str, map_location: Union[str, torch.device] = "cpu", *,
                    frontend: Optional[FrontendConfig] = None, default_pooling: Optional[str] = None,
                    chunk_frames: Optional[int] = None, keep_pretraining_modules: bool = False,
                    official: Optional[dict] = None) -> Pretrained:
    """A checkpoint of ours (fairseq ``.pt`` or exported folder) or an official released file (SSAST, MAE-AST,
    EAT; converted on the fly, ``official`` = its converter's options, see :mod:`maeast_fairseq.official`) ->
    :class:`Pretrained`, in ``eval()`` mode, on ``map_location``'s device.

    ``frontend`` overrides the checkpoint's front end (only for checkpoints that lack one); ``default_pooling``
    ('mean' / 'cls') the method's default clip pooling; ``chunk_frames`` the longest window encoded at once
    (default: the training length). ``keep_pretraining_modules=True`` keeps the decoder / teacher / heads.
    """
    path = os.fspath(path)
    if default_pooling is not None and default_pooling not in POOLINGS:
        raise ValueError(f"default_pooling must be one of {POOLINGS}, got {default_pooling!r}")
    if os.path.isdir(path):
        return _load_export(path, map_location, frontend=frontend, default_pooling=default_pooling,
                            chunk_frames=chunk_frames)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint file or exported folder at {path!r}")
    state = read_checkpoint(path, map_location, official=official)
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path}: not a fairseq checkpoint (no 'model' entry)")
    cfg = _plain(state.get("cfg") or {})
    model_cfg, task_cfg = dict(cfg.get("model") or {}), dict(cfg.get("task") or {})
    name = model_cfg.get("_name")
    prefix: Optional[str] = None
    fallback_task = None
    wrapper_pooling = model_cfg.get("pooling") if model_cfg.get("pooling") in POOLINGS else None
    prepare = None
    if name in WRAPPERS:
        wrapped = WRAPPERS[name](model_cfg, task_cfg)
        name, model_cfg, prefix = wrapped[:3]
        prepare = wrapped[3] if len(wrapped) > 3 else None
    elif name not in CORE_MODELS:
        inner = _find_core_cfg(model_cfg)
        if inner is None:
            inner_ckpt = _find_pretraining_ckpt(model_cfg, path)
            if inner_ckpt is not None:
                inner, fallback_task = inner_ckpt["model"], inner_ckpt.get("task")
        if inner is None:
            raise CheckpointError(
                f"{path}: model {name!r} is not one of ours ({sorted(CORE_MODELS)}) and its config names no "
                "encoder of ours; a fine-tuning model can be registered with "
                "maeast_fairseq.checkpoint.register_wrapper")
        wrapper = name
        name, model_cfg = inner["_name"], dict(inner)
        logger.warning("%s: unregistered model %r; loading the %s encoder found in its config (register the "
                       "wrapper with register_wrapper if it changes the encoder, e.g. its patch strides)", path,
                       wrapper, name)
    model = build_core(name, model_cfg, path)
    if prepare is not None:
        prepare(model)
    weights = state["model"]
    if prefix is None:
        encoder_keys = [k for k in model.state_dict() if not model.is_pretraining_only(k)]
        prefix = _find_prefix(encoder_keys, list(weights), path)
    report = load_encoder_state(model, weights, name, path, prefix)
    if state.get("converted_from"):  # an official file: what was found, dropped and assumed
        report["official"] = state["converted_from"]
    fe = frontend or _frontend_from(task_cfg, path, fallback_task)
    return _finish(model, fe, name, source=path, report=report, default_pooling=default_pooling or wrapper_pooling,
                   chunk_frames=chunk_frames, keep_pretraining_modules=keep_pretraining_modules,
                   map_location=map_location)


def _load_export(folder: str, map_location, *, frontend=None, default_pooling=None, chunk_frames=None) -> Pretrained:
    cfg_path, weights_path = os.path.join(folder, CONFIG_NAME), os.path.join(folder, WEIGHTS_NAME)
    if not os.path.isfile(cfg_path) or not os.path.isfile(weights_path):
        raise CheckpointError(f"{folder}: an exported model folder holds {CONFIG_NAME} and {WEIGHTS_NAME}; "
                              f"found {sorted(os.listdir(folder))}")
    with open(cfg_path) as f:
        cfg = json.load(f)
    if cfg.get("format") != EXPORT_FORMAT:
        raise CheckpointError(f"{cfg_path}: not a {EXPORT_FORMAT} config (format={cfg.get('format')!r})")
    name = cfg["model_name"]
    if name not in CORE_MODELS:  # before reading the weights
        raise CheckpointError(f"{cfg_path}: model {name!r} is not one of ours ({sorted(CORE_MODELS)})")
    try:
        from safetensors.torch import load_file
    except ImportError as err:  # pragma: no cover
        raise ImportError(f"reading {weights_path} needs safetensors: `pip install safetensors` ({err})") from err
    device = str(map_location) if not isinstance(map_location, torch.device) else map_location.type
    weights = load_file(weights_path, device=device)
    model = build_core(name, cfg["model"], cfg_path)
    if cfg.get("geometry"):
        model.remove_pretraining_modules()
        apply_geometry(model, cfg["geometry"])
    report = load_encoder_state(model, weights, name, weights_path)
    fe = frontend or _frontend_from(cfg["frontend"], cfg_path)
    emb = cfg.get("embedding") or {}
    return _finish(model, fe, name, source=folder, report=report,
                   default_pooling=default_pooling or emb.get("default_pooling"),
                   chunk_frames=chunk_frames or emb.get("chunk_frames"), map_location=map_location)


def export_config(pretrained: Pretrained) -> dict:
    """The ``config.json`` of an export: model name + model config + front end + embedding defaults."""
    model_cfg = getattr(pretrained.model, "cfg", None)
    if model_cfg is None or not dataclasses.is_dataclass(model_cfg):
        raise ValueError(f"{type(pretrained.model).__name__} has no dataclass .cfg to export")
    return {
        "format": EXPORT_FORMAT,
        "version": 1,
        "model_name": pretrained.name,
        "model": dataclasses.asdict(model_cfg),
        "geometry": encoder_geometry(pretrained.model),
        "frontend": dataclasses.asdict(pretrained.frontend),
        "embedding": {"default_pooling": pretrained.default_pooling, "chunk_frames": pretrained.chunk_frames,
                      "frame_rate_hz": pretrained.frame_rate, "downsample_rate": pretrained.downsample_rate},
        "source": os.path.basename(pretrained.source) if pretrained.source else None,
    }


# --------------------------------------------------------------------------------- fine-tuning classifier builders
def pretrained_encoder_info(state: Dict[str, Any], path: str = "checkpoint") -> Tuple[str, Dict[str, Any]]:
    """(encoder name, encoder config) of a pretrained or classifier checkpoint dict (``torch.load`` output)."""
    model_cfg = dict((state.get("cfg") or {}).get("model") or {})
    name = model_cfg.get("_name")
    if name == CLASSIFIER_NAME:
        return model_cfg.get("encoder_name"), dict(model_cfg.get("encoder_cfg") or {})
    if not name:
        raise ValueError(f"{path}: no cfg.model._name; is it a fairseq checkpoint of this project?")
    return name, model_cfg


def classifier_from_pretrained(cfg: ClassifierConfig, state: Dict[str, Any], path: str = "checkpoint",
                               model_cls=AudioClassifier):
    """Build a classifier whose encoder holds the weights of a pretrained checkpoint (``torch.load`` dict); fills
    ``cfg.encoder_name`` / ``cfg.encoder_cfg``. A classifier checkpoint gives its encoder (the head is new)."""
    model_cfg = dict((state.get("cfg") or {}).get("model") or {})
    name, encoder_cfg = pretrained_encoder_info(state, path)
    if name in CORE_MODELS:  # saved with the current field names (an old checkpoint's are renamed, with a warning)
        encoder_cfg = upgrade_config(CORE_MODELS[name][1], encoder_cfg, f"{path}: model ({name})")
    cfg.encoder_name, cfg.encoder_cfg = name, encoder_cfg
    core = build_core(name, encoder_cfg, path)
    weights = state["model"]
    if model_cfg.get("_name") == CLASSIFIER_NAME:
        # its encoder as it was fine-tuned (strides, position grid); this fine-tuning's strides apply on top
        # (0 keeps that checkpoint's)
        old = (model_cfg.get("patch_stride_time", 0), model_cfg.get("patch_stride_freq", 0))
        core.remove_pretraining_modules()
        apply_patch_strides(core, *old, model_cfg.get("target_frames", cfg.target_frames))
        weights = {k[len("encoder."):]: v for k, v in weights.items() if k.startswith("encoder.")}
        load_state_strict(core, weights, f"{path} (encoder of a {CLASSIFIER_NAME})")
    else:
        load_state_strict(core, weights, path)
    removed = core.remove_pretraining_modules()
    prepare_encoder(core, cfg)
    n = sum(p.numel() for p in core.parameters())
    logger.info(f"loaded the {name} encoder from {path} ({n:,} parameters kept"
                + (f"; dropped {', '.join(removed)}" if removed else "") + ")")
    return model_cls(cfg, core)


def classifier_from_state(state: Dict[str, Any], path: str = "checkpoint") -> Tuple[AudioClassifier, Dict[str, Any]]:
    """Rebuild a fine-tuned classifier from its checkpoint dict (no fairseq, no pretrained checkpoint, no data).
    Returns ``(model in eval mode, the checkpoint's cfg dict)``."""
    full = state.get("cfg") or {}
    model_cfg = dict(full.get("model") or {})
    if model_cfg.get("_name") != CLASSIFIER_NAME:
        raise ValueError(f"{path} is not a {CLASSIFIER_NAME} checkpoint (model {model_cfg.get('_name')!r}); "
                         "fine-tune it first")
    cfg = _build(ClassifierConfig, model_cfg, f"model ({CLASSIFIER_NAME})", path)
    if "head_norm_eps" not in model_cfg:  # saved before the head's eps was per method: every head had 1e-6
        cfg.head_norm_eps = 1e-6
    model = AudioClassifier(cfg, prepare_encoder(build_core(cfg.encoder_name, cfg.encoder_cfg, path), cfg))
    load_state_strict(model, state["model"], path)
    return model.eval(), full


__all__ += ["export_config", "load_encoder_state", "load_state_strict", "default_chunk_frames", "encoder_geometry",
            "apply_geometry", "WRAPPERS", "build_core", "pretrained_encoder_info", "classifier_from_pretrained",
            "classifier_from_state"]
