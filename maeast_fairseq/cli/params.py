"""``maeast-params``: parameter counts per module of each method at its paper settings (or any config).

    maeast-params                       # every base config in examples/pretrain
    maeast-params examples/pretrain/eat_base.yaml
    maeast-params examples/finetune/esc50.yaml --encoder examples/pretrain/ssast_patch.yaml --num-classes 50

For every top-level module it prints trainable parameters, frozen parameters (``requires_grad=False``: EAT's EMA
teacher, fixed sin-cos tables stored as parameters) and buffers, then the totals under the counting rules the papers
use (see README, "Parameter counts"), and which paper figure, if any, the config is meant to reproduce
(:data:`PAPER_FIGURE`: only the base recipes; tiny, 6-layer and large configs have none quoted). A fine-tuning yaml
holds no encoder: the encoder is that of its ``model.model_path`` checkpoint, or of ``--encoder`` (a pretraining yaml
or checkpoint); the count is encoder (pretraining modules removed) + the head ``LayerNorm(D) + Linear(D, C)``.
Builds the pure-torch core models; fairseq is not imported.
"""
import argparse
import os
import sys
from typing import Dict, Tuple

import torch

from ..checkpoint import CheckpointError, build_core
from ..core.eat import Eat
from ..core.mae_ast import MaeAst
from ..core.ssast import Ssast

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BASE_CONFIGS = ["mae_ast_patch", "mae_ast_patch_6l", "mae_ast_frame", "mae_ast_frame_6l", "ssast_patch", "ssast_frame",
                "eat_base", "eat_large"]


# the figure each paper quotes for the configuration a yaml reproduces (the rule that gives it is printed below it)
PAPER_FIGURE = {
    "mae_ast_patch": "MAE-AST patch, 12-layer encoder: 86M (as listed in the EAT paper's comparison table)",
    "mae_ast_frame": "MAE-AST frame, 12-layer encoder: 86M (as listed in the EAT paper's comparison table)",
    "ssast_patch": "SSAST Base (patch): 89M (SSAST README)",
    "ssast_frame": "SSAST Base (frame): 89M (SSAST README)",
    "eat_base": "EAT-base: 93M pretraining, 88M fine-tuning (EAT paper, section 3.2)",
}


def paper_figure(path: str) -> str:
    stem = os.path.splitext(os.path.basename(path))[0]
    if stem in PAPER_FIGURE:
        return f"paper figure: {PAPER_FIGURE[stem]}"
    why = "a tiny test config" if stem.endswith("_tiny") else "no figure is quoted for this configuration"
    return f"paper figure: none ({why}); the counting rules below are those of its method"


def read_model_cfg(path: str) -> dict:
    from omegaconf import OmegaConf  # yaml reader (installed with the fairseq extra); no fairseq import

    cfg = OmegaConf.load(path)
    return OmegaConf.to_container(cfg.model, resolve=False)


def build(model_cfg: dict):
    """The core model of a config's model section (the checkpoint loader's builder: old field names renamed,
    unknown ones warned about)."""
    try:
        return build_core(model_cfg.get("_name"), model_cfg, "model config")
    except CheckpointError as err:
        raise SystemExit(str(err)) from None


def count(module: torch.nn.Module) -> Tuple[int, int, int]:
    """(trainable parameters, frozen parameters, buffer elements) of ``module`` (None counts 0)."""
    if module is None:
        return 0, 0, 0
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in module.parameters() if not p.requires_grad)
    buffers = sum(b.numel() for b in module.buffers())
    return trainable, frozen, buffers


def parameter_counts(model: torch.nn.Module) -> Dict[str, Tuple[int, int, int]]:
    """:func:`count` of every top-level module of ``model``, plus ``(own parameters)`` held by the model itself."""
    rows = {name: count(child) for name, child in model.named_children()}
    direct = list(model.parameters(recurse=False))
    if direct:
        rows["(own parameters)"] = (sum(p.numel() for p in direct if p.requires_grad),
                                    sum(p.numel() for p in direct if not p.requires_grad), 0)
    return rows


def _numel(*modules) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def _mae_ast_rules(model: MaeAst) -> Dict[str, int]:
    # EAT's table lists MAE-AST at 86M: what is kept downstream
    return {"encoder + patch embedding (kept downstream; paper: 86M)": _numel(model.patch_embed, model.encoder)}


def _ssast_rules(model: Ssast) -> Dict[str, int]:
    # SSAST's pretraining module keeps timm's DeiT classifier heads inside its ViT although they are never used
    # (``head`` and, for the distilled models, ``head_dist``: Linear(D, 1000) each); we do not build them
    kept = model.extra_tokens.numel() + _numel(model.patch_embed, model.positions, model.encoder)
    pretraining = kept + model.mask_embed.numel() + _numel(model.cpred, model.gpred)
    timm_heads = min(model.cfg.num_extra_tokens, 2) * (model.cfg.embed_dim * 1000 + 1000)
    return {
        "encoder, patch embed, CLS/DIST, positions (downstream)": kept,
        "+ mask embed + cpred/gpred (our pretraining model)": pretraining,
        "+ timm's unused ImageNet heads (SSAST README: 89M)": pretraining + timm_heads,
    }


def _eat_rules(model: Eat) -> Dict[str, int]:
    # EAT's code stores the fixed 768x8 sin-cos table as a frozen parameter of the student, so its student count
    # (encoder + decoder + table, teacher excluded) is the 93M; without the table, the trainable 88M
    trainable = _numel(model.encoder) + (0 if model.decoder is None else _numel(model.decoder))
    table = model.encoder.positions.numel()  # a buffer here, a frozen parameter in EAT
    return {
        "student encoder + decoder + fixed positions (EAT-base paper: 93M)": trainable + table,
        "student encoder + decoder, trainable (EAT-base paper: 88M)": trainable,
    }


PAPER_RULES = {MaeAst: _mae_ast_rules, Ssast: _ssast_rules, Eat: _eat_rules}


def paper_parameter_count(model: torch.nn.Module) -> Dict[str, int]:
    """The totals under the counting rules each paper quotes, for a MAE-AST, SSAST or EAT core model.

    MAE-AST: encoder + patch embedding (86M). SSAST: three rules, the README's "Base (89M)" is the third (88.76M at
    the base settings). EAT: 93M pretraining / 88M, 92.56M and 87.84M at the base settings (the fine-tuning model,
    encoder + 527-way head, has 85.66M, or 90.38M with the table: neither is within 2 % of 88M).
    """
    for cls, rules in PAPER_RULES.items():
        if isinstance(model, cls):
            return rules(model)
    raise TypeError(f"no paper counting rule for {type(model).__name__}; expected one of "
                    f"{', '.join(c.__name__ for c in PAPER_RULES)}")


def encoder_cfg_from(source: str) -> dict:
    """The core model config of a pretraining yaml or a checkpoint (ours or an official file)."""
    if source.endswith((".yaml", ".yml")):
        return read_model_cfg(source)
    from ..checkpoint import pretrained_encoder_info, read_checkpoint

    name, cfg = pretrained_encoder_info(read_checkpoint(source), source)
    return dict(cfg, _name=name)


def report_finetune(path: str, model_cfg: dict, encoder: str = None, num_classes: int = None) -> dict:
    source = encoder or model_cfg.get("model_path")
    print(f"\n{os.path.basename(path)}  (fine-tuning: maeast_classifier)")
    if not source or source == "???" or (not source.endswith((".yaml", ".yml")) and not os.path.isfile(source)):
        print(f"  the encoder comes from model.model_path={source!r}, which names no file here: give --encoder "
              "PRETRAIN_YAML_OR_CHECKPOINT to count it")
        return {}
    model = build(encoder_cfg_from(source))
    model.remove_pretraining_modules()
    enc = count(model)
    dim = model.cfg.embed_dim
    print(f"  encoder from {source} ({type(model).__name__}, pretraining modules removed): {enc[0] + enc[1]:,} "
          f"parameters")
    head_norm = 2 * dim
    if num_classes:
        head = head_norm + num_classes * (dim + 1)
        print(f"  head LayerNorm({dim}) + Linear({dim}, {num_classes}): {head:,}")
        print(f"  total {enc[0] + enc[1] + head:,} ({(enc[0] + enc[1] + head) / 1e6:.2f}M)")
        return {"encoder": enc[0] + enc[1], "head": head}
    print(f"  head LayerNorm({dim}) + Linear({dim}, C): {head_norm} + C x {dim + 1} (--num-classes C)")
    return {"encoder": enc[0] + enc[1]}


def report(path: str, encoder: str = None, num_classes: int = None) -> dict:
    model_cfg = read_model_cfg(path)
    if model_cfg.get("_name") == "maeast_classifier":
        return report_finetune(path, model_cfg, encoder, num_classes)
    model = build(model_cfg)
    total = count(model)
    print(f"\n{os.path.basename(path)}  ({type(model).__name__})")
    print(f"  {paper_figure(path)}")
    print(f"  {'module':<28}{'trainable':>14}{'frozen':>14}{'buffers':>12}")
    for name, (t, f, b) in parameter_counts(model).items():
        print(f"  {name:<28}{t:>14,}{f:>14,}{b:>12,}")
    print(f"  {'total':<28}{total[0]:>14,}{total[1]:>14,}{total[2]:>12,}")
    for rule, n in paper_parameter_count(model).items():
        print(f"  {rule:<56}{n / 1e6:>8.1f}M")
    return {"trainable": total[0], "frozen": total[1], "buffers": total[2]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("configs", nargs="*", help="yaml configs, pretraining or fine-tuning (default: the base configs "
                                              "in examples/pretrain)")
    p.add_argument("--encoder", help="fine-tuning yamls: the pretraining yaml or checkpoint of the encoder (default: "
                                     "the yaml's model.model_path)")
    p.add_argument("--num-classes", type=int, help="fine-tuning yamls: classes of the head")
    args = p.parse_args(argv)
    paths = args.configs or [os.path.join(REPO, "examples", "pretrain", f"{n}.yaml") for n in BASE_CONFIGS]
    missing = [x for x in paths if not os.path.isfile(x)]
    for x in missing:
        print(f"skipping {x}: no such file", file=sys.stderr)
    for x in paths:
        if x not in missing:
            report(x, args.encoder, args.num_classes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
