"""What every official-format converter returns: our model name, config and weights, plus what it assumed.

A converter (one module per family: ``ssast``, ``mae_ast``, ``eat``) exposes

* ``FAMILY``: the family's name;
* ``matches(raw) -> bool``: whether the already-read file contents (see :mod:`.reader`) are of this family,
  decided from the keys, tensor shapes and stored config fields, never from the file name;
* ``convert(raw, source, **options) -> Converted``: the mapping onto our core, strict (every official tensor is
  mapped or dropped with a reason; anything else raises :class:`OfficialFormatError` naming the key and the file).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from ..errors import CheckpointError


class OfficialFormatError(CheckpointError):
    """An official checkpoint that cannot be converted as it is; the message names the file, the key and the fix."""


@dataclass
class Converted:
    family: str                                  # "ssast" | "mae_ast" | "eat"
    variant: str                                 # e.g. "patch 16x16", "frame 2x128", "student", "fine-tuned"
    model_name: str                              # our registered model name: "ssast" | "mae_ast" | "eat" | "maeast_classifier"
    model_cfg: Dict[str, Any]                    # fields of our core config dataclass (the encoder's config)
    state: Dict[str, torch.Tensor]               # weights under our key names (core model, or classifier for fine-tuned)
    frontend: Dict[str, Any]                     # FrontendConfig fields the family's official front end implies
    dropped: Dict[str, str] = field(default_factory=dict)      # official key -> why it is not carried over
    notes: List[str] = field(default_factory=list)             # what the conversion assumed, one line each
    classifier: Optional[Dict[str, Any]] = None                # fine-tuned: num_classes, pooling, labels, head settings
    source: str = ""


# ------------------------------------------------------------------------------------------ strict key mapping
#: one row of a mapping table: (our key, official keys it is made from, fn(list of official tensors) -> ours)
Row = Tuple[str, List[str], Callable[[List[torch.Tensor]], torch.Tensor]]


def same(ts: List[torch.Tensor]) -> torch.Tensor:
    return ts[0]


def concat0(ts: List[torch.Tensor]) -> torch.Tensor:
    """q, k, v projections -> one fused qkv (dim 0, in that order)."""
    return torch.cat(ts, dim=0)


def apply_table(source: str, weights: Dict[str, torch.Tensor], rows: List[Row], dropped: Dict[str, str],
                expected: Dict[str, torch.Tensor], family: str) -> Dict[str, torch.Tensor]:
    """Map ``weights`` (official keys) onto ours with ``rows``, strictly.

    Every official key must be used by a row or listed in ``dropped``; every row's official keys must exist; every
    produced tensor must have the shape of ``expected[our key]`` (our model built from the inferred config), and
    every key of ``expected`` must be produced. Errors name the official key, our key and the file.
    """
    used = {o for _, official, _ in rows for o in official}
    missing = [f"{o} (-> our {ours})" for ours, official, _ in rows for o in official if o not in weights]
    unknown = sorted(k for k in weights if k not in used and k not in dropped)
    if missing or unknown:
        found = []
        if missing:
            found.append(f"missing {len(missing)} tensor(s): {_show(missing)}")
        if unknown:
            found.append(f"{len(unknown)} tensor(s) this converter does not know: {_show(unknown)}")
        raise OfficialFormatError(
            f"{source}: {family} checkpoint " + "; ".join(found) + ". Nothing was loaded. Fix: use the released "
            "file as downloaded (a missing or renamed key means an incomplete or edited file; unknown keys a model "
            "variant this converter does not support).")
    out: Dict[str, torch.Tensor] = {}
    bad_shape = []
    for ours, official, fn in rows:
        try:
            t = fn([weights[o] for o in official])
        except RuntimeError as err:  # e.g. q / k / v projections of different shapes cannot be fused
            shapes = ", ".join(f"{o} {tuple(weights[o].shape)}" for o in official)
            bad_shape.append(f"{shapes}: cannot make our {ours} ({str(err).splitlines()[0]})")
            continue
        if ours in expected and tuple(t.shape) != tuple(expected[ours].shape):
            bad_shape.append(f"{'+'.join(official)}: {tuple(weights[official[0]].shape)} gives {tuple(t.shape)}, "
                             f"our {ours} needs {tuple(expected[ours].shape)}")
        out[ours] = t.detach().to(expected[ours].dtype if ours in expected else t.dtype).contiguous()
    if bad_shape:
        raise OfficialFormatError(
            f"{source}: {family} checkpoint has {len(bad_shape)} tensor(s) of another shape than its other tensors "
            f"imply: {_show(bad_shape)}. Nothing was loaded.")
    not_made = sorted(k for k in expected if k not in out)
    if not_made:
        raise OfficialFormatError(f"{source}: {family} conversion made no value for our {_show(not_made)} "
                                  "(a converter bug: please report it with the file's key list)")
    return out


def _show(items: List[str], n: int = 6) -> str:
    return ", ".join(items[:n]) + (f", ... ({len(items)} in all)" if len(items) > n else "")


def as_checkpoint(conv: Converted) -> Dict[str, Any]:
    """A converted model in the layout of our own fairseq checkpoints (what :func:`torch.save` writes for
    ``maeast-convert``; loadable by ``load_pretrained``, ``model.model_path=`` and, for pretraining models,
    ``checkpoint.restore_file=`` with ``checkpoint.reset_optimizer=true``)."""
    model_cfg = dict(conv.model_cfg, _name=conv.model_name)
    task_cfg = dict(conv.frontend)
    return {
        "args": None,
        "cfg": {"model": model_cfg, "task": task_cfg},
        "model": dict(conv.state),
        # what fairseq's checkpoint reader (_upgrade_state_dict) needs of a file with no training state: one history
        # entry and a fresh data iterator; no optimizer state (restore it with checkpoint.reset_optimizer=true or
        # load the weights only with checkpoint.finetune_from_model=...)
        "optimizer_history": [{"criterion_name": "converted", "optimizer_name": "converted",
                               "lr_scheduler_state": {}, "num_updates": 0}],
        "extra_state": {"train_iterator": {"epoch": 1, "iterations_in_epoch": 0, "version": 2, "shuffle": True}},
        "last_optimizer_state": None,
        "converted_from": {"family": conv.family, "variant": conv.variant, "source": os.path.basename(conv.source),
                           "dropped": dict(conv.dropped), "notes": list(conv.notes)},
    }
