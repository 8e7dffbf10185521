"""``maeast-config``: every option of a config, with its value, default, command-line flag and help.

    maeast-config mae_ast_patch            # a config of examples/pretrain or examples/finetune, by name or path
    maeast-config examples/finetune/esc50.yaml --section model
    maeast-config mae_ast                  # a registered model / task / criterion: all its fields and defaults
    maeast-config --list                   # the config files and registered names

For a yaml, each of its ``task``, ``model`` and ``criterion`` sections is matched with the dataclass registered under
its ``_name`` and **every** field of that dataclass is listed, the ones the yaml sets marked ``*`` (a key of the yaml
that is no field is reported: fairseq would refuse it). The same fields are hydra overrides (``task.window_type=...``,
``model.mask_ratio=...``) and ``fairseq-train`` flags (``--window-type``, ``--mask-ratio``): ``fairseq-train --arch
mae_ast --help`` does not list the model's flags (fairseq adds them after the help is printed), they work all the
same. Imports fairseq (to read the registries), runs nothing.
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import os
import sys
from typing import Dict, List, Optional, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG_DIRS = [os.path.join(REPO, "examples", "pretrain"), os.path.join(REPO, "examples", "finetune")]
SECTIONS = ("task", "model", "criterion")


def _registries() -> Dict[str, Dict[str, type]]:
    """{section: {registered name: dataclass}} of our plugin's (and fairseq's) tasks, models and criterions."""
    import maeast_fairseq

    maeast_fairseq.register()
    from fairseq.criterions import CRITERION_DATACLASS_REGISTRY
    from fairseq.models import MODEL_DATACLASS_REGISTRY
    from fairseq.tasks import TASK_DATACLASS_REGISTRY

    return {"task": dict(TASK_DATACLASS_REGISTRY), "model": dict(MODEL_DATACLASS_REGISTRY),
            "criterion": dict(CRITERION_DATACLASS_REGISTRY)}


def ours(registries: Dict[str, Dict[str, type]]) -> Dict[str, List[str]]:
    """The names this plugin registers, per section."""
    return {s: sorted(n for n, dc in reg.items() if dc is not None and dc.__module__.startswith("maeast_fairseq"))
            for s, reg in registries.items()}


def config_files() -> List[str]:
    return sorted(p for d in CONFIG_DIRS for p in glob.glob(os.path.join(d, "*.yaml")))


def find_config(name: str) -> Optional[str]:
    """A yaml path from a path or a bare name (``mae_ast_patch``, ``esc50_tiny``) of examples/pretrain|finetune."""
    if os.path.isfile(name):
        return name
    stem = name[:-5] if name.endswith(".yaml") else name
    for d in CONFIG_DIRS:
        path = os.path.join(d, stem + ".yaml")
        if os.path.isfile(path):
            return path
    return None


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return "???"


def _show(v) -> str:
    if isinstance(v, str):
        return v if v.startswith("${") or v == "???" else repr(v)
    return repr(v)


def field_rows(dc: type, values: Optional[dict] = None) -> List[Tuple[str, str, str, str, str, bool]]:
    """``(name, value, default, flag, help, set_by_values)`` of every public field of dataclass ``dc``."""
    values = values or {}
    rows = []
    for f in dataclasses.fields(dc):
        if f.name.startswith("_"):
            continue
        default = _show(_default(f))
        given = f.name in values
        value = _show(values[f.name]) if given else default
        help_text = (f.metadata or {}).get("help") or ("(interpolated from the rest of the config)"
                                                       if default.startswith("${") else "")
        flag = f"(no flag: follows {default})" if default.startswith("${") else "--" + f.name.replace("_", "-")
        rows.append((f.name, value, default, flag, help_text, given))
    return rows


def print_section(title: str, dc: type, values: Optional[dict], prefix: str, out=None) -> int:
    """Print the fields of one section; returns the number of unknown keys in ``values``."""
    out = out or sys.stdout
    rows = field_rows(dc, values)
    print(f"\n{title}  ({dc.__module__}.{dc.__name__}; {len(rows)} fields"
          + (", * = set by the yaml)" if values is not None else ")"), file=out)
    for name, value, default, flag, help_text, given in rows:
        mark = "*" if given else " "
        shown = f"{value}" if not given or value == default else f"{value}   (default {default})"
        print(f" {mark} {prefix}{name} = {shown}", file=out)
        print(f"      {flag}   {help_text}", file=out)
    unknown = sorted(set(values or {}) - {r[0] for r in rows} - {"_name"})
    for key in unknown:
        print(f"   ! {prefix}{key}: set by the yaml but not a field of {dc.__name__} (fairseq refuses it)", file=out)
    return len(unknown)


def describe_yaml(path: str, sections=SECTIONS, out=None) -> int:
    from omegaconf import OmegaConf

    out = out or sys.stdout
    registries = _registries()
    cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    print(f"{path}", file=out)
    problems = 0
    for section in sections:
        values = cfg.get(section)
        if not isinstance(values, dict) or "_name" not in values:
            continue
        name = values["_name"]
        dc = registries[section].get(name)
        if dc is None:
            print(f"\n{section}: {name!r} is not a registered {section} (known: "
                  f"{', '.join(ours(registries)[section])})", file=out)
            problems += 1
            continue
        problems += print_section(f"{section}._name={name}", dc, values, f"{section}.", out)
    return problems


def describe_name(name: str, out=None) -> bool:
    registries = _registries()
    found = False
    for section, reg in registries.items():
        dc = reg.get(name)
        if dc is not None:
            print_section(f"{section} {name!r}", dc, None, f"{section}.", out)
            found = True
    return found


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="maeast-config", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", help="a yaml (path, or name in examples/pretrain | examples/finetune) or a "
                                             "registered model / task / criterion name")
    p.add_argument("--section", choices=SECTIONS, action="append",
                   help="only this section of a yaml (repeatable; default: task, model, criterion)")
    p.add_argument("--list", action="store_true", help="list the config files and our registered names")
    args = p.parse_args(argv)
    if args.list or not args.config:
        print("configs:")
        for path in config_files():
            print(f"  {os.path.relpath(path, os.getcwd()) if path.startswith(os.getcwd()) else path}")
        for section, names in ours(_registries()).items():
            print(f"{section}s: {', '.join(names)}")
        return 0 if args.list else 2
    path = find_config(args.config)
    if path is not None:
        return 1 if describe_yaml(path, tuple(args.section or SECTIONS)) else 0
    if describe_name(args.config):
        return 0
    print(f"maeast-config: {args.config!r} is neither a yaml file, nor a config name of examples/pretrain or "
          "examples/finetune, nor a registered task / model / criterion (maeast-config --list)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
