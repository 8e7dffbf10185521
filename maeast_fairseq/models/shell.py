"""The thin fairseq shell around a pure-torch core model.

A registered model is ``class X(CoreModel, FairseqShell)``: the core's ``__init__``/``forward``/``extract_features``
do the work (fairseq calls ``model(**sample["net_input"])`` = the core's ``forward(fbank, frame_padding, mask_rng)``);
the shell only adds what fairseq's trainer expects. Because the core *is* the model, checkpoint keys are the core's
own, so ``ckpt["model"]`` loads into the core class without fairseq.

**Weights of another model type.** fairseq's trainer loads a checkpoint (``checkpoint.restore_file``, or the
``checkpoint_last.pt`` a run in a reused ``checkpoint.save_dir`` resumes from) with
``model.load_state_dict(state["model"], strict=True, model_cfg=...)``, and turns any failure into "Cannot load model
parameters from checkpoint ...; please ensure that the architectures match". :func:`check_state_dict` runs first
(``FairseqShell.load_state_dict`` and ``maeast_classifier``'s) and raises :class:`ForeignStateDictError` when the
weights clearly belong to another model: the checkpoint's ``cfg.model._name`` names another type (when the caller's
``state`` is at hand: fairseq's loaders hold it in a local variable), its keys carry another of our model types'
signature modules (:func:`signature_modules`, read from the classes), or - for weights of no type of ours - most
of this model's keys are missing. The message names both types, a few missing / unexpected keys and the fix;
fairseq's generic exception then follows it in the traceback ("During handling of the above exception ...").
A checkpoint of the same type with another configuration (other sizes, one optional module more or less) is left
to torch's strict load, which lists the keys and shapes.
"""
from __future__ import annotations

import sys
from typing import Any, Dict, Mapping, Optional, Tuple

from fairseq.models import BaseFairseqModel

from ..core.classifier import CLASSIFIER_NAME, AudioClassifier
from ..core.registry import CORE_MODELS

#: fewer of this model's keys than this fraction in the incoming state: not this model's weights
MIN_KEY_OVERLAP = 0.5


class ForeignStateDictError(RuntimeError):
    """A state dict of another model (type) than the one it is loaded into; the message names both and the fix."""


def registered_name(model) -> str:
    """The fairseq registry name of ``model``'s class (or of its nearest registered base), else the class name."""
    from fairseq.models import MODEL_REGISTRY

    names = {cls: name for name, cls in MODEL_REGISTRY.items()}
    for cls in type(model).__mro__:
        if cls in names:
            return names[cls]
    return type(model).__name__


def signature_modules() -> Dict[str, frozenset]:
    """Per registered model type of ours, the top-level state-dict names (first component of the keys) that only
    this type has: a core model's pretraining-only parts (``pretraining_only`` of its class: the checkpoints of its
    pretraining always hold them), the classifier's head (``AudioClassifier.head_modules``). A name two types share
    (the ``decoder`` of MAE-AST and EAT) is no one's signature."""
    parts = {name: frozenset(core_cls.pretraining_only) for name, (core_cls, _) in CORE_MODELS.items()}
    parts[CLASSIFIER_NAME] = frozenset(AudioClassifier.head_modules)
    return {name: mods - frozenset().union(*(m for n, m in parts.items() if n != name))
            for name, mods in parts.items()}


def guess_model_type(keys) -> Optional[str]:
    """The model type of ours whose signature modules the state-dict ``keys`` hold most of (None if none)."""
    top = {k.split(".", 1)[0] for k in keys}
    scores = {name: len(sig & top) for name, sig in signature_modules().items()}
    best = max(scores, key=scores.get)
    return best if scores[best] > 0 else None


def _checkpoint_context(state_dict, depth: int = 6) -> Tuple[Optional[str], Optional[str]]:
    """``(checkpoint file, cfg.model._name)`` from a caller's frame that holds the checkpoint ``state`` whose
    ``"model"`` entry *is* ``state_dict`` (fairseq's ``Trainer.load_checkpoint`` and ``checkpoint_utils`` loaders:
    ``state = load_checkpoint_to_cpu(filename)``; ``model.load_state_dict(state["model"], ...)``), else Nones."""
    try:
        frame = sys._getframe(2)
    except ValueError:  # pragma: no cover
        return None, None
    for _ in range(depth):
        if frame is None:
            break
        state = frame.f_locals.get("state")
        if isinstance(state, Mapping) and state.get("model") is state_dict:
            filename = frame.f_locals.get("filename")
            return (filename if isinstance(filename, str) else None), _model_name(state)
        frame = frame.f_back
    return None, None


def _model_name(state: Mapping) -> Optional[str]:
    try:
        cfg = state.get("cfg")
        if cfg is not None:
            name = cfg["model"]["_name"] if "model" in cfg and cfg["model"] is not None else None
            if name:
                return str(name)
        args = state.get("args")  # pre-hydra checkpoints: an argparse Namespace
        name = getattr(args, "arch", None) or getattr(args, "_name", None)
        return str(name) if name else None
    except Exception:  # an odd cfg: the keys still tell
        return None


def _show(keys, n: int = 5) -> str:
    keys = sorted(keys)
    if not keys:
        return "none"
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def check_state_dict(model, state_dict: Mapping[str, Any], filename: Optional[str] = None,
                     checkpoint_type: Optional[str] = None) -> None:
    """Raise :class:`ForeignStateDictError` if ``state_dict`` clearly holds another model's weights (see the module
    docstring); otherwise return and let the strict load report any smaller mismatch. ``filename`` /
    ``checkpoint_type`` (the checkpoint's ``cfg.model._name``) default to what the calling fairseq loader holds."""
    own_keys = set(model.state_dict().keys())
    keys = set(state_dict.keys())
    if keys == own_keys:
        return  # the strict load can only fail on shapes: torch names them
    if filename is None and checkpoint_type is None:
        filename, checkpoint_type = _checkpoint_context(state_dict)
    own = registered_name(model)
    guessed = guess_model_type(keys)
    if checkpoint_type:  # the checkpoint's own word wins over the guess from its keys
        other = checkpoint_type if checkpoint_type != own else None
    else:
        other = guessed if guessed is not None and guessed != own and own in signature_modules() else None
    if other is None and (own in (checkpoint_type, guessed)
                          or len(own_keys & keys) >= MIN_KEY_OVERLAP * len(own_keys)):
        return  # this model type, perhaps of another configuration: the strict load lists what differs
    missing, unexpected = own_keys - keys, keys - own_keys
    source = f"checkpoint {filename}" if filename else "the checkpoint being loaded"
    if other is not None:
        how = ("its cfg.model._name" if other == checkpoint_type else
               f"its keys have {_show(sorted(signature_modules()[other] & {k.split('.', 1)[0] for k in keys}), 3)}")
        what = f"{source} holds the weights of a model of type '{other}' ({how}), but this run's model is '{own}'"
    else:
        what = (f"{source} does not hold the weights of this '{own}' model: only {len(own_keys & keys)} of its "
                f"{len(own_keys)} keys are there")
    finetune = (f"; to fine-tune from that '{other}' checkpoint, set model.model_path=<it> (task "
                "maeast_classification, model maeast_classifier) and leave checkpoint.restore_file at its default: "
                "restore_file resumes the very same model, it does not initialise another one"
                if other in CORE_MODELS else "")
    raise ForeignStateDictError(
        f"{what}. Missing keys: {_show(missing)}. Unexpected keys: {_show(unexpected)}. Fix: to train '{own}' from "
        "scratch, start a new run (an empty checkpoint.save_dir: a run resumes from <save_dir>/checkpoint_last.pt "
        f"by itself); to resume, point checkpoint.restore_file at a checkpoint of this '{own}' configuration"
        f"{finetune}."
    )


class ForeignModelRegistrationError(ImportError):
    """Another plugin registered one of our fairseq model names first (fairseq keeps the first class)."""


def _same_class(a, b) -> bool:
    """The same class, or the same class of the same module imported again (a reload): still ours."""
    return a is b or (getattr(a, "__qualname__", None) == getattr(b, "__qualname__", None)
                      and getattr(a, "__module__", None) == getattr(b, "__module__", None))


def register_ours(name: str, dataclass=None):
    """fairseq's ``register_model(name, dataclass)``, failing loudly when the name is taken by another class.

    fairseq's ``register_model`` keeps the first class registered under a name and hands it back for the later
    ones without a word; the official MAE-AST plugin registers ``mae_ast`` too, so with both loaded in one process
    (e.g. its ``--user-dir`` and ours) one of the two models would be built in place of the other silently.
    """
    from fairseq.models import register_model

    def wrap(cls):
        registered = register_model(name, dataclass=dataclass)(cls)
        if not _same_class(registered, cls):
            raise ForeignModelRegistrationError(
                f"fairseq model name {name!r} is already registered by "
                f"{getattr(registered, '__module__', '?')}.{getattr(registered, '__qualname__', registered)} (another "
                f"plugin loaded first, e.g. the official code's --user-dir / common.user_dir); fairseq keeps the first "
                f"class registered under a name, so this process would build that model instead of maeast-fairseq's "
                f"{cls.__qualname__}. Fix: load one plugin per process; official checkpoints need no official code "
                "here (load_pretrained or maeast-convert read them directly).")
        return registered

    return wrap


class FairseqShell(BaseFairseqModel):
    @classmethod
    def build_model(cls, cfg, task=None):
        task_bins = getattr(getattr(task, "cfg", None), "num_mel_bins", cfg.num_mel_bins)
        if cfg.num_mel_bins != task_bins:
            raise ValueError(
                f"model.num_mel_bins={cfg.num_mel_bins} but the task's front end makes {task_bins} mel bins; "
                "set both to the same value"
            )
        return cls(cfg)

    def max_positions(self):
        return None

    def load_state_dict(self, state_dict, strict=True, model_cfg=None, args=None):
        """fairseq's load (state-dict upgrades, pruning), after :func:`check_state_dict` when ``strict``."""
        if strict:
            check_state_dict(self, state_dict)
        return super().load_state_dict(state_dict, strict=strict, model_cfg=model_cfg, args=args)
