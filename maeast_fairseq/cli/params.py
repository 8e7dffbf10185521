"""``maeast-params``: parameter counts per module of each method at its paper settings (or any config).

    maeast-params                       # every base config in examples/pretrain
    maeast-params examples/pretrain/eat_base.yaml

For every top-level module it prints trainable parameters, frozen parameters (``requires_grad=False``: EAT's EMA
teacher, fixed sin-cos tables stored as parameters) and buffers, then the totals under the counting rules the papers
use (see README, "Parameter counts"). Builds the pure-torch core models; fairseq is not imported.
"""
import argparse
import dataclasses
import glob
import os
import sys

import torch

from ..checkpoint import CORE_MODELS

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BASE_CONFIGS = ["mae_ast_patch", "mae_ast_patch_6l", "mae_ast_frame", "mae_ast_frame_6l", "ssast_patch", "ssast_frame",
                "eat_base", "eat_large"]


def read_model_cfg(path: str) -> dict:
    from omegaconf import OmegaConf  # yaml reader (installed with the fairseq extra); no fairseq import

    cfg = OmegaConf.load(path)
    return OmegaConf.to_container(cfg.model, resolve=False)


def build(model_cfg: dict):
    name = model_cfg.get("_name")
    if name not in CORE_MODELS:
        raise SystemExit(f"model {name!r} is not one of {sorted(CORE_MODELS)}")
    core_cls, cfg_cls = CORE_MODELS[name]
    names = {f.name for f in dataclasses.fields(cfg_cls)}
    return core_cls(cfg_cls(**{k: v for k, v in model_cfg.items() if k in names}))


def count(module: torch.nn.Module):
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in module.parameters() if not p.requires_grad)
    buffers = sum(b.numel() for b in module.buffers())
    return trainable, frozen, buffers


def report(path: str) -> dict:
    model = build(read_model_cfg(path))
    rows = [(name, *count(child)) for name, child in model.named_children()]
    direct = [p for n, p in model.named_parameters(recurse=False)]
    if direct:
        rows.append(("(own parameters)", sum(p.numel() for p in direct if p.requires_grad),
                     sum(p.numel() for p in direct if not p.requires_grad), 0))
    total = count(model)
    print(f"\n{os.path.basename(path)}  ({type(model).__name__})")
    print(f"  {'module':<28}{'trainable':>14}{'frozen':>14}{'buffers':>12}")
    for name, t, f, b in rows:
        print(f"  {name:<28}{t:>14,}{f:>14,}{b:>12,}")
    print(f"  {'total':<28}{total[0]:>14,}{total[1]:>14,}{total[2]:>12,}")
    summary = getattr(model, "paper_parameter_count", None)
    if callable(summary):
        for rule, n in summary().items():
            print(f"  {rule:<56}{n / 1e6:>8.1f}M")
    return {"trainable": total[0], "frozen": total[1], "buffers": total[2]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("configs", nargs="*", help="yaml configs (default: the base configs in examples/pretrain)")
    args = p.parse_args(argv)
    paths = args.configs or [os.path.join(REPO, "examples", "pretrain", f"{n}.yaml") for n in BASE_CONFIGS]
    missing = [x for x in paths if not os.path.isfile(x)]
    for x in missing:
        print(f"skipping {x}: no such file", file=sys.stderr)
    for x in paths:
        if x not in missing:
            report(x)
    return 0


if __name__ == "__main__":
    sys.exit(main())
