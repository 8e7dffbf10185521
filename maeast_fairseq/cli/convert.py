"""``maeast-convert``: an official released checkpoint (SSAST, MAE-AST, EAT) -> a checkpoint of ours or an export.

::

    maeast-convert SRC OUT [--safetensors] [--num-heads H] [--ema] [--labels FILE] [--force]

``SRC`` is an official file (``SSAST-Base-Patch-400.pth``, ``chunk_patch_75_12LayerEncoder.pt``, an EAT
pretraining or fine-tuning ``.pt``, ...); its format is recognised from its contents and read without running
pickled code. ``OUT``:

* a ``.pt`` path: a fairseq-layout checkpoint of ours with every converted tensor (decoder, teacher and prediction
  heads included), usable as ``load_pretrained(OUT)``, ``model.model_path=OUT`` (fine-tuning) and, for pretraining
  models, ``checkpoint.restore_file=OUT checkpoint.reset_optimizer=true checkpoint.reset_lr_scheduler=true
  checkpoint.reset_dataloader=true checkpoint.reset_meters=true`` (further pretraining on your audio);
* an existing folder or ``--safetensors``: the safetensors export (``config.json`` + ``model.safetensors``, the
  encoder only; no pickle).

It prints what it found: family, variant, sizes, front end assumed, dropped keys with the reason, notes.
Options: ``--num-heads`` (SSAST: not stored in the file; DeiT's value by width otherwise), ``--ema`` (EAT
pretraining: the EMA teacher as the encoder instead of the student), ``--labels`` (EAT fine-tuned: a label file,
e.g. AudioSet's ``class_labels_indices.csv``).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

PROG = "maeast-convert"


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="official checkpoint file (SSAST .pth, MAE-AST / EAT fairseq .pt)")
    p.add_argument("out", help="our checkpoint (.pt) to write, or a folder for the safetensors export")
    p.add_argument("--safetensors", action="store_true", help="write the safetensors export into the folder OUT")
    p.add_argument("--num-heads", type=int, default=0, help="SSAST: attention heads (not stored in the file)")
    p.add_argument("--ema", action="store_true", help="EAT pretraining: the EMA teacher as the encoder")
    p.add_argument("--labels", default=None, help="EAT fine-tuned: label file (class_labels_indices.csv)")
    p.add_argument("--force", action="store_true", help="overwrite OUT")
    return p.parse_args(argv)


def _options(args: argparse.Namespace, family: str) -> dict:
    opts = {}
    if args.num_heads:
        if family != "ssast":
            raise ValueError(f"--num-heads applies to SSAST files only ({args.src} is {family})")
        opts["num_heads"] = args.num_heads
    if args.ema:
        if family != "eat":
            raise ValueError(f"--ema applies to EAT pretraining files only ({args.src} is {family})")
        opts["ema"] = True
    if args.labels:
        if family != "eat":
            raise ValueError(f"--labels applies to EAT fine-tuned files only ({args.src} is {family})")
        opts["labels"] = args.labels
    return opts


def describe(conv) -> List[str]:
    """The report printed for a conversion: family, variant, sizes, front end, dropped keys, notes."""
    import torch

    n_params = sum(int(t.numel()) for t in conv.state.values() if torch.is_tensor(t))
    c = conv.model_cfg
    sizes = ", ".join(f"{k} {c[k]}" for k in ("embed_dim", "encoder_layers", "num_heads", "ffn_dim",
                                              "decoder_layers", "patch_time", "patch_freq", "num_mel_bins",
                                              "target_frames") if k in c)
    lines = [f"family: {conv.family}", f"variant: {conv.variant}", f"becomes: our {conv.model_name}",
             f"sizes: {sizes}; {len(conv.state)} tensors, {n_params:,} values"]
    if conv.classifier:
        lines.append(f"classifier: {conv.classifier.get('num_classes')} classes, pooling "
                     f"{conv.classifier.get('pooling')}")
    fe = conv.frontend
    lines.append("front end: " + ", ".join(f"{k}={fe[k]}" for k in fe))
    lines.append(f"dropped ({len(conv.dropped)}):")
    lines += [f"  {k}: {why}" for k, why in conv.dropped.items()]
    lines.append("notes:")
    lines += [f"  {n}" for n in conv.notes]
    return lines


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    import torch

    from ..checkpoint import model_from_converted as build_model
    from ..official import OfficialFormatError, checkpoint_dict, convert_raw, detect_family
    from ..official.reader import read_raw

    if not os.path.isfile(args.src):
        print(f"{PROG}: no file at {args.src!r}", file=sys.stderr)
        return 2
    to_folder = args.safetensors or os.path.isdir(args.out)
    if not to_folder and os.path.exists(args.out) and not args.force:
        print(f"{PROG}: {args.out} exists (pass --force to overwrite)", file=sys.stderr)
        return 2
    try:
        raw = read_raw(args.src)
        family = detect_family(raw)
        conv = convert_raw(raw, args.src, **_options(args, family.FAMILY if family else "unknown"))
    except (OfficialFormatError, ValueError) as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return 1
    for line in describe(conv):
        print(line)
    if to_folder:
        from ..checkpoint import load_pretrained
        from ..export import export_safetensors

        tmp = args.out.rstrip("/") + ".converting.pt"
        torch.save(checkpoint_dict(conv), tmp)
        try:
            pretrained = load_pretrained(tmp)
            pretrained.source = args.src
            paths = export_safetensors(pretrained, args.out)
        finally:
            os.remove(tmp)
        print(f"wrote {paths['weights']} and {paths['config']} (encoder only; load_pretrained({args.out!r}))")
    else:
        build_model(conv)  # strict load into our model before anything is written
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        torch.save(checkpoint_dict(conv), args.out)
        print(f"wrote {args.out} (our {conv.model_name} checkpoint; load_pretrained / model.model_path / "
              "checkpoint.restore_file)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
