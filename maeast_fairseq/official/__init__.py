"""The official released checkpoints of SSAST, MAE-AST and EAT, read safely and converted onto our core models.

:func:`read_official` reads a file without running pickled code (:mod:`.reader`), recognises its family from its
contents (keys, tensor shapes, stored config fields; never the file name) and converts it strictly
(:class:`~.common.Converted`). :func:`load_official` turns that into a :class:`~maeast_fairseq.embed.Pretrained`
(what :func:`maeast_fairseq.checkpoint.load_pretrained` returns for such a file: its reader calls
:func:`official_as_ours`), :func:`checkpoint_dict` into the
layout of our own checkpoints (``maeast-convert``, ``model.model_path=``, ``checkpoint.restore_file=``).

=====================================  =====================================  ==================================
official file                          family / what it becomes               front end assumed
=====================================  =====================================  ==================================
SSAST ``.pth`` (bare state dict)       ``ssast`` (patch or frame)             hanning, dataset mean/std /(2 std)
MAE-AST fairseq ``.pt``                ``mae_ast`` (patch or frame)           povey, in-model BatchNorm
EAT fairseq ``.pt`` pretraining        ``eat`` (student; ``ema=True``:        hanning, dataset mean/std /(2 std)
                                       the teacher)
EAT fairseq ``.pt`` fine-tuned         ``maeast_classifier``                  hanning, dataset mean/std /(2 std)
=====================================  =====================================  ==================================
"""
from __future__ import annotations

import os
from typing import Any, Dict, Optional

from . import eat, mae_ast, ssast
from .common import Converted, OfficialFormatError, as_checkpoint
from .reader import describe, read_raw

__all__ = ["FAMILIES", "Converted", "OfficialFormatError", "detect_family", "read_official", "convert_raw",
           "checkpoint_dict", "official_as_ours", "is_official"]

#: the converters, tried in this order; each exposes FAMILY, matches(raw), convert(raw, source, **options)
FAMILIES = [ssast, mae_ast, eat]


def detect_family(raw: Any):
    """The converter module whose format ``raw`` (a file's unpickled contents) is, else None."""
    for family in FAMILIES:
        try:
            if family.matches(raw):
                return family
        except Exception:  # a malformed file is simply not of this family
            continue
    return None


def convert_raw(raw: Any, source: str = "", **options) -> Converted:
    """Convert already-read contents; :class:`OfficialFormatError` when no family recognises them."""
    family = detect_family(raw)
    if family is None:
        known = ", ".join(f.FAMILY for f in FAMILIES)
        raise OfficialFormatError(f"{source}: not a known format: found {describe(raw)} (known official formats: "
                                  f"{known}; our own checkpoints and exported folders load with load_pretrained)")
    return family.convert(raw, source, **options)


def read_official(path: str, **options) -> Converted:
    """Read an official checkpoint safely, detect its family from its contents and convert it.

    ``options`` go to the family's converter: SSAST ``num_heads=`` (not stored in the file; DeiT's value by
    default), EAT ``ema=True`` (the teacher as the encoder) and ``labels=`` (a label file for a fine-tuned model).
    """
    path = os.fspath(path)
    return convert_raw(read_raw(path), path, **options)


def checkpoint_dict(conv: Converted) -> Dict[str, Any]:
    """The converted model in the layout of our fairseq checkpoints (``torch.save`` it to get a ``.pt`` of ours)."""
    ckpt = as_checkpoint(conv)
    if conv.model_name == "maeast_classifier":
        clf = dict(conv.classifier or {})
        ckpt["cfg"]["model"] = dict(clf, _name="maeast_classifier", encoder_name=conv.family,
                                    encoder_cfg=dict(conv.model_cfg), frontend=dict(conv.frontend))
        ckpt["cfg"]["task"] = dict(conv.frontend, multi_label=bool(clf.get("multi_label", False)),
                                   target_frames=int(clf.get("target_frames", conv.frontend.get("target_frames", 1024))))
        ckpt["cfg"]["criterion"] = {"loss": "bce" if clf.get("multi_label") else "ce"}
    return ckpt


def official_as_ours(path: str, state: Any = None, refused: Optional[BaseException] = None, **options):
    """For :func:`maeast_fairseq.checkpoint.read_checkpoint`: ``state`` (a file's contents read by our reader, or
    None when that reader ``refused`` it) -> our checkpoint layout. Ours is returned unchanged; an official file is
    converted (:func:`checkpoint_dict`); anything else raises naming what the file holds."""
    if state is None:
        raw = read_raw(path)  # the official reader: inert placeholders, refuses code
        if detect_family(raw) is None:
            if refused is not None and isinstance(raw, dict) and "model" in raw:
                raise refused  # a checkpoint of ours with objects our reader refuses: its message says why
            return checkpoint_dict(convert_raw(raw, path, **options))  # raises "not a known format"
        state = raw
    family = detect_family(state)
    if family is not None:
        return checkpoint_dict(family.convert(state, path, **options))
    if options:
        raise TypeError(f"{path}: official-format options {sorted(options)} given for a checkpoint that is not an "
                        "official file")
    if isinstance(state, dict) and "model" in state and ("cfg" in state or "args" in state):
        return state
    return checkpoint_dict(convert_raw(state, path))  # raises "not a known format: found ..."


def is_official(state: Any) -> bool:
    """Whether already-read checkpoint contents are an official file (of a known family) rather than ours."""
    return detect_family(state) is not None
