"""Renamed config fields and values: configs written with the old names keep loading, with a warning.

The three methods' configs use one vocabulary (``encoder_layers``, ``embed_dim``, ``ffn_dim``, ``num_heads``,
``encoder_layerdrop``, ``decoder_embed_dim``, ``mask_type: cluster``). Checkpoints and yamls written before the
renames carry the old names; every place that builds a config from a dict passes the dict through
:func:`upgrade_config`, which replaces each old name by the new one and logs a warning naming both: the checkpoint
readers without fairseq (:mod:`maeast_fairseq.checkpoint`), ``maeast-params``, and fairseq's own config merging
(yamls, checkpoints; :func:`maeast_fairseq.fairseq_compat.upgrade_config_node`, installed with the plugin).

The tables are keyed by config class name and looked up along the class's MRO, so a fairseq model config (a
subclass of the core one, e.g. ``EatModelConfig(FairseqDataclass, EatConfig)``) shares its core class's entries.
Pure python: no torch, no fairseq, no omegaconf.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Dict, Mapping, MutableMapping, Tuple

logger = logging.getLogger(__name__)

#: config class -> {old field name: new field name} (same meaning, same value)
RENAMED_FIELDS: Dict[str, Dict[str, str]] = {
    "EatConfig": {
        "depth": "encoder_layers",
        "layerdrop": "encoder_layerdrop",
        "decoder_dim": "decoder_embed_dim",
    },
    "ClassifierConfig": {"layerdrop": "encoder_layerdrop"},
}


def _ffn_dim_from_mlp_ratio(mlp_ratio: Any, values: Mapping[str, Any], cls: type) -> int:
    """EAT's old ``mlp_ratio`` (FFN width / embed_dim) -> ``ffn_dim``, at the config's ``embed_dim``."""
    return int(round(float(mlp_ratio) * int(values.get("embed_dim", field_default(cls, "embed_dim")))))


#: config class -> {old field name: (new field name, fn(old value, all values, config class) -> new value)}: the
#: old field held another quantity
CONVERTED_FIELDS: Dict[str, Dict[str, Tuple[str, Callable[[Any, Mapping[str, Any], type], Any]]]] = {
    "EatConfig": {"mlp_ratio": ("ffn_dim", _ffn_dim_from_mlp_ratio)},
}

#: config class -> {field name: {old value: new value}}
RENAMED_VALUES: Dict[str, Dict[str, Dict[Any, Any]]] = {
    "MaeAstConfig": {"mask_type": {"chunk": "cluster"}},
}


def field_default(cls: type, name: str) -> Any:
    """The default of dataclass field ``name`` of ``cls``."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                return f.default_factory()  # type: ignore[misc]
            break
    raise KeyError(f"{cls.__name__} has no field {name!r} with a default")


def _tables(cls: type):
    for klass in getattr(cls, "__mro__", (cls,)):
        name = klass.__name__
        if name in RENAMED_FIELDS or name in CONVERTED_FIELDS or name in RENAMED_VALUES:
            yield RENAMED_FIELDS.get(name, {}), CONVERTED_FIELDS.get(name, {}), RENAMED_VALUES.get(name, {})


def has_aliases(cls: type) -> bool:
    """Whether ``cls`` (or a base class) has renamed fields or values."""
    return any(True for _ in _tables(cls))


def renamed_keys(cls: type) -> Dict[str, str]:
    """{old field name: new field name} of ``cls`` (renamed and converted fields together)."""
    out: Dict[str, str] = {}
    for renamed, converted, _ in _tables(cls):
        out.update(renamed)
        out.update({old: new for old, (new, _) in converted.items()})
    return out


def upgrade_config(cls: type, values: Mapping[str, Any], source: str = "config") -> Dict[str, Any]:
    """A copy of ``values`` (a config dict for dataclass ``cls``) with every old field name and old value replaced
    by the current one, each replacement logged as a warning that names ``source``, the old and the new key.

    A dict that holds both an old name and its new one with different values is refused (``ValueError``): which one
    was meant cannot be told.
    """
    out = dict(values)
    for renamed, converted, values_renamed in _tables(cls):
        for old, new in renamed.items():
            if old in out:
                _replace(out, old, new, out.pop(old), source)
        for old, (new, convert) in converted.items():
            if old in out:
                old_value = out.pop(old)
                new_value = convert(old_value, out, cls)
                _replace(out, old, new, new_value, source, f"{old}={old_value!r} -> {new}={new_value!r}")
        for name, mapping in values_renamed.items():
            value = out.get(name)
            if isinstance(value, str) and value in mapping:
                out[name] = mapping[value]
                logger.warning("%s: %s=%r was renamed %s=%r; the old value still works but is deprecated: write "
                               "the new one", source, name, value, name, mapping[value])
    return out


def _replace(out: MutableMapping[str, Any], old: str, new: str, value: Any, source: str, detail: str = "") -> None:
    if new in out and out[new] != value:
        raise ValueError(f"{source}: both the old field {old!r} and its new name {new!r} are set, to different "
                         f"values ({value!r} vs {out[new]!r}). Fix: keep only {new!r}")
    out[new] = value
    logger.warning("%s: config field %r was renamed %r%s; the old name still loads but is deprecated: write %r",
                   source, old, new, f" ({detail})" if detail else "", new)
