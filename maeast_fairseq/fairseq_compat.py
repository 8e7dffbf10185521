"""Targeted fixes to fairseq 0.12's checkpointing and config merging, installed by :func:`maeast_fairseq.register` (so in every
process that loads the plugin as a user dir, every rank included). Nothing else in fairseq is changed.

1. **Multi-process resume under ``weights_only`` loading.** On resume, rank 0 reads the checkpoint (with torch's
   default ``weights_only=True``: the file holds tensors and plain containers only) and fairseq then sends the state
   to the other ranks with ``distributed.utils.broadcast_object``: ``torch.save`` into a buffer on rank 0,
   ``torch.load`` of that buffer on the others. By then ``state["cfg"]`` is an omegaconf ``DictConfig`` (made by
   ``load_checkpoint_to_cpu``) and the tensors are replaced by fairseq's ``_TensorPlaceholder``, so the safe loader
   refuses the buffer and every rank > 0 dies (``Weights only load failed ... omegaconf.dictconfig.DictConfig``).
   The fix keeps ``weights_only=True`` and allow-lists, *only while fairseq's broadcast runs*
   (:class:`torch.serialization.safe_globals`), the classes that buffer needs (:data:`BROADCAST_SAFE_GLOBALS`: omegaconf
   containers / nodes / metadata, ``typing.Any``, a few builtin types, fairseq's placeholder). It does not set
   ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``, does not pass ``weights_only=False`` anywhere, and does not widen the
   allow-list of any other ``torch.load`` (``maeast_fairseq.checkpoint.load_pretrained`` stays ``weights_only=True``
   with torch's default allow-list).

2. **Checkpoints are never half-written.** fairseq writes the first checkpoint of a save atomically (``.tmp`` then
   ``os.rename``), but every further name of the same save (``checkpoint_last.pt`` after ``checkpoint_best.pt`` or
   ``checkpoint_E_U.pt``) is a plain ``shutil.copyfile`` onto the old file: a process killed during that copy leaves
   a truncated ``checkpoint_last.pt``, and the next run (which resumes from it) crashes. ``PathManager.copy`` of
   local paths now copies to ``<dst>.tmp`` and ``os.replace``-s it onto ``<dst>``: ``<dst>`` is always either the
   previous complete file or the new complete file. Both that copy and fairseq's own ``.tmp`` + rename
   (``PathManager.rename``) now ``fsync`` the new file before the rename and its directory after it
   (:func:`durable_replace`), so a power cut or kernel crash after a save leaves the new checkpoint, not an empty or
   missing name (a process dying was already covered by the rename alone).

3. **Renamed config fields still load.** fairseq merges a model / task / criterion config (from a yaml in
   ``add_defaults``, from a checkpoint in ``build_model``) into its dataclass with ``merge_with_parent``, which refuses
   unknown keys (yamls) or silently drops them (checkpoints: an old EAT checkpoint's ``depth`` would become the
   default depth). ``merge_with_parent`` now first renames the old fields of our configs in place, with a warning
   naming the old and the new key (:mod:`maeast_fairseq.core.config_aliases`); configs of other dataclasses pass
   through untouched.
"""
from __future__ import annotations

import functools
import os
import shutil

_MARK = "_maeast_fairseq_compat"


def broadcast_safe_globals() -> list:
    """What fairseq's checkpoint broadcast pickles besides tensors and plain containers (found with
    ``torch.serialization.get_unsafe_globals_in_checkpoint`` on the MAE-AST / SSAST / EAT, hydra and argparse
    checkpoints; the other omegaconf value nodes are included for configs that hold typed values). Classes only, no
    functions: unpickling can build these objects, never call arbitrary code."""
    import collections
    import typing

    from fairseq.distributed.utils import _TensorPlaceholder
    from omegaconf import DictConfig, ListConfig
    from omegaconf.base import ContainerMetadata, Metadata
    from omegaconf.nodes import AnyNode, BooleanNode, FloatNode, IntegerNode, StringNode

    return [
        DictConfig, ListConfig, ContainerMetadata, Metadata,
        AnyNode, BooleanNode, FloatNode, IntegerNode, StringNode,
        typing.Any, dict, list, tuple, int, float, str, bool, collections.defaultdict,
        _TensorPlaceholder,
    ]


def _install_broadcast_safe_globals() -> None:
    import torch
    from fairseq.distributed import utils as distributed_utils

    orig = distributed_utils._broadcast_object_slow
    if getattr(orig, _MARK, False):
        return

    @functools.wraps(orig)
    def _broadcast_object_slow(*args, **kwargs):
        with torch.serialization.safe_globals(broadcast_safe_globals()):
            return orig(*args, **kwargs)

    setattr(_broadcast_object_slow, _MARK, True)
    distributed_utils._broadcast_object_slow = _broadcast_object_slow  # broadcast_object looks it up here


def fsync_path(path: str) -> None:
    """``fsync`` a file or a directory (its entries: a rename in it) by path; directories that cannot be opened
    for it (some platforms / file systems) are skipped."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if os.path.isdir(path) else os.O_RDONLY
    try:
        fd = os.open(path, flags)
    except OSError:
        if os.path.isdir(path):
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not os.path.isdir(path):  # directories on some file systems refuse fsync: nothing more to do
            raise
    finally:
        os.close(fd)


def durable_replace(tmp_path: str, dst_path: str) -> None:
    """``os.replace(tmp_path, dst_path)`` with the data on disk first and the new name on disk after: ``fsync`` of
    the file, the rename, ``fsync`` of the directory."""
    fsync_path(tmp_path)
    os.replace(tmp_path, dst_path)
    fsync_path(os.path.dirname(os.path.abspath(dst_path)))


def atomic_copy(src_path: str, dst_path: str, overwrite: bool = False) -> bool:
    """Copy ``src_path`` to ``dst_path`` so that ``dst_path`` is never seen half-written (same dir tmp + replace,
    fsynced: :func:`durable_replace`)."""
    if not overwrite and os.path.exists(dst_path):
        return False  # iopath's answer for an existing target without overwrite
    tmp = dst_path + ".tmp"
    shutil.copyfile(src_path, tmp)
    durable_replace(tmp, dst_path)
    return True


def _install_atomic_copy() -> None:
    from fairseq.file_io import PathManager

    orig = PathManager.copy
    if getattr(orig, _MARK, False):
        return

    def copy(src_path: str, dst_path: str, overwrite: bool = False) -> bool:
        if PathManager.path_requires_pathmanager(src_path) or PathManager.path_requires_pathmanager(dst_path):
            return orig(src_path, dst_path, overwrite)  # remote stores: iopath's own copy
        return atomic_copy(src_path, dst_path, overwrite)

    setattr(copy, _MARK, True)
    PathManager.copy = staticmethod(copy)

    orig_rename = PathManager.rename
    if getattr(orig_rename, _MARK, False):
        return

    def rename(src: str, dst: str) -> None:  # fairseq's torch_persistent_save: <name>.tmp -> <name> (local only)
        durable_replace(src, dst)

    setattr(rename, _MARK, True)
    PathManager.rename = staticmethod(rename)


def upgrade_config_node(cls: type, cfg, source: str = "config") -> None:
    """:func:`~maeast_fairseq.core.config_aliases.upgrade_config` in place on an OmegaConf ``DictConfig``: old keys
    are removed and the new ones written, so what fairseq saves afterwards (checkpoints hold the root config) has
    the new names. The other keys, interpolations included, are left untouched (unresolved)."""
    from omegaconf import OmegaConf, open_dict

    from .core.config_aliases import upgrade_config

    plain = OmegaConf.to_container(cfg, resolve=False)
    upgraded = upgrade_config(cls, plain, source)
    changed = {k: v for k, v in upgraded.items() if k not in plain or plain[k] is not v}
    removed = [k for k in plain if k not in upgraded]
    if changed or removed:
        with open_dict(cfg):  # struct mode refuses new keys unless opened
            for k in removed:
                del cfg[k]
            for k, v in changed.items():
                cfg[k] = v


def _install_config_renames() -> None:
    import fairseq.dataclass.utils as dataclass_utils
    import fairseq.models
    import fairseq.registry
    import fairseq.tasks
    from omegaconf import OmegaConf

    from .core.config_aliases import has_aliases

    orig = dataclass_utils.merge_with_parent
    if getattr(orig, _MARK, False):
        return

    @functools.wraps(orig)
    def merge_with_parent(dc, cfg, remove_missing=False):
        cls = dc if isinstance(dc, type) else type(dc)
        if has_aliases(cls) and OmegaConf.is_dict(cfg):
            upgrade_config_node(cls, cfg, f"config of {cfg.get('_name') or cls.__name__}")
        return orig(dc, cfg, remove_missing)

    setattr(merge_with_parent, _MARK, True)
    for module in (dataclass_utils, fairseq.models, fairseq.registry, fairseq.tasks):  # each imported the name
        if getattr(module, "merge_with_parent", None) is orig:
            module.merge_with_parent = merge_with_parent


def install() -> None:
    """Install the three fixes (idempotent)."""
    _install_broadcast_safe_globals()
    _install_atomic_copy()
    _install_config_renames()
