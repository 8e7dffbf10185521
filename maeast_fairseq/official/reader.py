"""Read an official checkpoint without running any code stored in it.

Files are read with ``torch.load(weights_only=True)``: tensors, plain containers and the few classes torch itself
allows. A file may also name other classes or functions (older fairseq versions pickle their meter objects, an
``argparse.Namespace`` of arguments, numpy scalars, an OmegaConf ``DictConfig`` config, enums of the training code).
Each such name is scanned from the pickle *before* loading (``get_unsafe_globals_in_checkpoint``, which reads the
opcodes and executes nothing) and, when it is one of the kinds above (:data:`INERT_GLOBALS`), mapped for this one
call (``torch.serialization.safe_globals``, never the global allow-list) onto an inert placeholder: a
:class:`Inert` object that records its name, the arguments and the state the file gives it, and does nothing else.
No class or function named by the file is imported or called (builtin container / number types excepted:
:data:`BUILTIN_TYPES`). Any other name (e.g. ``builtins.open``,
``os.system``) makes the file refused before anything is unpickled.

:func:`plain` then turns what a config needs into plain Python: OmegaConf containers and nodes into dicts / lists /
values, a ``Namespace`` into a dict, numpy scalars into numbers, enums into their value. :func:`fairseq_config`
gives a fairseq file's ``cfg`` as plain dicts whether it was saved as a plain dict (fairseq >= 0.10), a
``DictConfig`` (older fairseq) or only as ``args`` (a ``Namespace``, pre-hydra fairseq).
"""
from __future__ import annotations

import fnmatch
import os
import pickle
import struct
from typing import Any, Dict, Tuple

import torch

from .common import OfficialFormatError

__all__ = ["Inert", "INERT_GLOBALS", "read_raw", "plain", "fairseq_config", "describe"]

#: names of non-torch globals an official checkpoint may hold, replaced by inert placeholders when read (fnmatch
#: patterns over ``module.qualname``). Anything else is refused.
INERT_GLOBALS: Tuple[str, ...] = (
    "argparse.Namespace",
    "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar",
    "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
    "numpy.dtype", "numpy.dtypes.*", "numpy.ndarray",
    "omegaconf.*", "typing.*", "collections.defaultdict", "enum.*",
    "fairseq.*",                         # meters of older fairseq versions, dataclass enums, ...
    "mae_ast.*", "EAT.*", "data2vec.*", "examples.*",   # enums / dataclasses of the official code bases
    "pathlib.PosixPath", "pathlib.WindowsPath", "pathlib.PurePosixPath", "pathlib.PureWindowsPath",
)

#: builtin types a config may reference (OmegaConf metadata stores e.g. ``ref_type=int``): admitted as themselves,
#: calling them on the file's values runs nothing but a conversion
BUILTIN_TYPES = {f"builtins.{t.__name__}": t for t in (dict, list, tuple, set, frozenset, int, float, bool, str, bytes)}

_NUMPY_SCALAR = ("numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar")


class Inert:
    """Stand-in for an object of a class the file names: keeps ``name``, ``args`` and ``state``; runs nothing."""

    name = "?"

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.args, obj.state = args, None
        return obj

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        self.state = state

    def __getattr__(self, key):  # attribute access on a Namespace-like placeholder reads its state
        if key.startswith("__") or key in ("args", "state"):
            raise AttributeError(key)
        state = self.__dict__.get("state")
        if isinstance(state, dict) and key in state:
            return state[key]
        raise AttributeError(f"{self.name} placeholder has no field {key!r}")

    def __repr__(self):
        return f"<inert {self.name}>"


def _placeholder(name: str):
    if name in _NUMPY_SCALAR:
        return _numpy_scalar
    return type(f"Inert[{name}]", (Inert,), {"name": name})


def _numpy_scalar(dtype, data=None):
    """``numpy.core.multiarray.scalar(dtype, bytes)`` -> a Python number, decoded with ``struct`` (no numpy call)."""
    try:
        code = str(dtype.args[0])  # e.g. 'f8', 'i8', 'b1'
        order = "<"
        if isinstance(dtype.state, tuple) and len(dtype.state) > 1 and dtype.state[1] in ("<", ">"):
            order = dtype.state[1]
        fmt = {"f8": "d", "f4": "f", "f2": "e", "i8": "q", "i4": "i", "i2": "h", "i1": "b", "u8": "Q",
               "u4": "I", "u2": "H", "u1": "B", "b1": "?"}[code]
        return struct.unpack(order + fmt, data)[0]
    except Exception:  # unknown dtype: keep an inert record
        return _placeholder("numpy.scalar")(dtype, data)


def _is_inert_name(name: str) -> bool:
    return name in BUILTIN_TYPES or any(fnmatch.fnmatchcase(name, pat) for pat in INERT_GLOBALS)


def read_raw(path: str) -> Any:
    """The unpickled top-level object of ``path`` (tensors on the CPU), foreign objects as :class:`Inert`.

    Raises :class:`OfficialFormatError` naming the refused globals when the file names code to run, and when it
    is no torch file at all.
    """
    path = os.fspath(path)
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception as err:
        raise OfficialFormatError(f"{path}: not a known format: found no torch-saved object ({type(err).__name__}: "
                                  f"{str(err).splitlines()[0] if str(err) else ''})") from err
    refused = sorted(n for n in names if not _is_inert_name(n))
    if refused:
        raise OfficialFormatError(
            f"{path}: refusing to unpickle {refused}: the file names functions / classes that are neither tensors, "
            "plain containers nor the config / meter objects of the official training code; unpickling them would "
            "run code from the file. Nothing was loaded. Fix: load it only if you trust its origin, re-save its "
            "state dict with torch.save(state_dict) and convert that.")
    stand_ins = [(BUILTIN_TYPES[n] if n in BUILTIN_TYPES else _placeholder(n), n) for n in names]
    try:
        with torch.serialization.safe_globals(stand_ins):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise OfficialFormatError(f"{path}: not a known format: torch's weights-only reader refused it "
                                  f"({str(err).splitlines()[0]})") from err
    except (RuntimeError, EOFError, ValueError) as err:
        raise OfficialFormatError(f"{path}: not a known format: found no readable torch-saved object "
                                  f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from err


# ------------------------------------------------------------------------------------------------ plain values
def plain(obj: Any, _depth: int = 0) -> Any:
    """Config values as plain Python (see the module docstring); unknown placeholders stay :class:`Inert`."""
    if _depth > 64:
        return obj
    if isinstance(obj, Inert):
        name, state = obj.name, obj.state
        if name.startswith("omegaconf.") and isinstance(state, dict):
            if "_content" in state:
                content = state["_content"]
                if isinstance(content, dict):
                    return {k: plain(v, _depth + 1) for k, v in content.items()}
                if isinstance(content, (list, tuple)):
                    return [plain(v, _depth + 1) for v in content]
                return None if content is None else plain(content, _depth + 1)
            if "_val" in state:
                return plain(state["_val"], _depth + 1)
        if name == "argparse.Namespace" and isinstance(state, dict):
            return {k: plain(v, _depth + 1) for k, v in state.items()}
        if name.startswith("pathlib."):
            return os.path.join(*[str(a) for a in obj.args]) if obj.args else ""
        if len(obj.args) == 1 and not isinstance(obj.args[0], (dict, list, tuple)) and state is None:
            return plain(obj.args[0], _depth + 1)  # an enum member pickled as EnumClass(value)
        return obj
    if isinstance(obj, dict):
        return {k: plain(v, _depth + 1) for k, v in obj.items()}
    if isinstance(obj, list):
        return [plain(v, _depth + 1) for v in obj]
    if isinstance(obj, tuple):
        return tuple(plain(v, _depth + 1) for v in obj)
    return obj


def fairseq_config(raw: dict) -> Dict[str, Any]:
    """A fairseq checkpoint's config as plain dicts ``{"model": {...}, "task": {...}, "criterion": {...}, ...}``.

    ``cfg`` as a plain dict or an OmegaConf container is returned as is (plain); a file with only ``args`` (a
    ``Namespace`` of all arguments, pre-hydra fairseq) gives the same flat fields to ``model``, ``task`` and
    ``criterion``, each with ``_name`` set from ``arch`` / ``task`` / ``criterion``.
    """
    cfg = plain(raw.get("cfg")) if isinstance(raw, dict) else None
    if isinstance(cfg, dict) and cfg:
        return cfg
    args = plain(raw.get("args")) if isinstance(raw, dict) else None
    if isinstance(args, dict) and args:
        flat = dict(args)
        return {"model": dict(flat, _name=flat.get("arch", flat.get("_name"))),
                "task": dict(flat, _name=flat.get("task")),
                "criterion": dict(flat, _name=flat.get("criterion"))}
    return {}


def describe(raw: Any, n_keys: int = 6) -> str:
    """What a file holds, for "not a known format" messages: top-level type / keys, model name, a few keys."""
    if isinstance(raw, dict):
        keys = list(raw.keys())
        parts = [f"a {type(raw).__name__} with {len(keys)} top-level keys {[str(k) for k in keys[:n_keys]]}"
                 + (" ..." if len(keys) > n_keys else "")]
        model = raw.get("model") if isinstance(raw.get("model"), dict) else None
        if model is not None:
            name = (fairseq_config(raw).get("model") or {}).get("_name")
            parts.append(f"model name {name!r}")
            mkeys = [str(k) for k in list(model.keys())[:n_keys]]
            parts.append(f"{len(model)} entries under 'model', e.g. {mkeys}")
        elif keys and all(torch.is_tensor(v) for v in raw.values()):
            parts = [f"a bare state dict of {len(keys)} tensors, e.g. {[str(k) for k in keys[:n_keys]]}"]
        return "; ".join(parts)
    return f"a top-level {type(raw).__name__}"
