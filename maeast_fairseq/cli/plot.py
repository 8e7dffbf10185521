"""``maeast-plot``: the figures of the demo for your own runs (matplotlib, PNG).

    maeast-plot loss RUN [RUN ...] --out loss.png       # RUN: a training log (fairseq-hydra-train's hydra_train.log,
                                                         # or the console output saved to a file; json or simple
                                                         # log_format) or a common.tensorboard_logdir folder
    maeast-plot recon CHECKPOINT CLIP --out recon.png   # MAE-AST / SSAST: spectrogram, mask, reconstruction
    maeast-plot eat CHECKPOINT RUN --out eat.png        # EAT: inverse block mask, frame / utterance losses, teacher
                                                         # target and student prediction variance over training

``loss``: one panel per run, the training loss and its logged terms (``nce``, ``mse``, ``frame_loss`` ...) per
update, and the validation loss as points. ``recon`` needs a pretraining checkpoint (with its decoder: not an export);
``--frames`` crops / pads the clip's log-mel as in pretraining (default 256).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import struct
import sys
from typing import Dict, List, Tuple

PROG = "maeast-plot"
_TRAIN = re.compile(r"\[?train_inner\]?")
_VALID = re.compile(r"valid on '[^']+' subset")


def _numbers(pairs) -> Dict[str, float]:
    out = {}
    for k, v in pairs:
        try:
            out[k.strip()] = float(v)
        except (TypeError, ValueError):
            pass
    return out


def parse_log_line(line: str) -> Tuple[str, Dict[str, float]]:
    """``("train" | "valid" | "", record)`` of one fairseq log line, in the json or the simple log format."""
    kind = "train" if _TRAIN.search(line) else "valid" if _VALID.search(line) or "[valid]" in line else ""
    if not kind:
        return "", {}
    if "{" in line:  # log_format json
        try:
            rec = _numbers(json.loads(line[line.index("{"):].strip()).items())
        except ValueError:
            rec = {}
        rec = {k[len("valid_"):] if k.startswith("valid_") else k: v for k, v in rec.items()}
    elif kind == "train":  # "epoch 001:  5 / 5 loss=7.36, nce=4.69, ..., num_updates=5, ..."
        rec = _numbers(re.findall(r"([A-Za-z_][\w]*)=([-+0-9.eE]+)", line))
    else:  # "valid on 'valid' subset | loss 0.898 | accuracy 83.33 | ... | num_updates 20"
        rec = _numbers(re.findall(r"\| ([A-Za-z_][\w]*) ([-+0-9.eE]+)", line))
    if "num_updates" not in rec or "loss" not in rec:
        return "", {}
    rec["num_updates"] = int(rec["num_updates"])
    return kind, rec


def read_log(path: str) -> Dict[str, List[Dict[str, float]]]:
    """{"train": [...], "valid": [...]} records of a fairseq training log."""
    runs: Dict[str, List[Dict[str, float]]] = {"train": [], "valid": []}
    with open(path, errors="replace") as f:
        for line in f:
            kind, rec = parse_log_line(line)
            if kind:
                runs[kind].append(rec)
    return runs


def _tfrecords(path: str):
    """The records of a TFRecord file (tensorboard event file); CRCs are not checked."""
    with open(path, "rb") as f:
        while True:
            head = f.read(12)
            if len(head) < 12:
                return
            (n,) = struct.unpack("<Q", head[:8])
            data = f.read(n)
            f.read(4)
            if len(data) < n:
                return
            yield data


def read_tensorboard(folder: str) -> Dict[str, List[Dict[str, float]]]:
    """{"train": [...], "valid": [...]} from fairseq's tensorboard folder (``train_inner/`` and ``valid/`` event
    files; scalars by step = num_updates)."""
    from tensorboardX.proto import event_pb2

    out: Dict[str, List[Dict[str, float]]] = {"train": [], "valid": []}
    for kind, sub in (("train", "train_inner"), ("valid", "valid")):
        steps: Dict[int, Dict[str, float]] = {}
        for path in sorted(glob.glob(os.path.join(folder, sub, "events.out.tfevents.*"))):
            for data in _tfrecords(path):
                event = event_pb2.Event()
                event.ParseFromString(data)
                for value in event.summary.value:
                    if value.HasField("simple_value"):
                        steps.setdefault(int(event.step), {})[value.tag] = float(value.simple_value)
        out[kind] = [dict(rec, num_updates=step) for step, rec in sorted(steps.items()) if "loss" in rec]
    return out


def read_run(path: str) -> Dict[str, List[Dict[str, float]]]:
    if os.path.isdir(path):
        found = read_tensorboard(path)
        if not found["train"] and not found["valid"]:
            raise ValueError(f"{path}: no tensorboard scalars with a 'loss' under {path}/train_inner or {path}/valid "
                             "(the folder of common.tensorboard_logdir)")
        return found
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such log file or tensorboard folder")
    found = read_log(path)
    if not found["train"] and not found["valid"]:
        raise ValueError(f"{path}: no train_inner / valid line with loss and num_updates (a fairseq training log, "
                         "json or simple log_format)")
    return found


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    lo = sub.add_parser("loss", help="loss curves of training logs / tensorboard folders")
    lo.add_argument("runs", nargs="+", help="training logs or tensorboard folders")
    lo.add_argument("--out", required=True, help="output PNG")
    re_ = sub.add_parser("recon", help="MAE-AST / SSAST: a clip, its mask and the reconstruction")
    re_.add_argument("checkpoint", help="a pretraining checkpoint (mae_ast or ssast)")
    re_.add_argument("clip", help="an audio file")
    re_.add_argument("--out", required=True, help="output PNG")
    re_.add_argument("--frames", type=int, default=256, help="log-mel frames shown (cropped / zero-padded)")
    re_.add_argument("--seed", type=int, default=0, help="seed of the mask")
    ea = sub.add_parser("eat", help="EAT: the inverse block mask and the teacher / student statistics")
    ea.add_argument("checkpoint", help="an EAT pretraining checkpoint")
    ea.add_argument("run", help="its training log or tensorboard folder")
    ea.add_argument("--out", required=True, help="output PNG")
    ea.add_argument("--frames", type=int, default=256, help="clip length (frames) of the mask shown")
    args = p.parse_args(argv)
    try:
        from ..demo import plots
    except ImportError as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return 2
    try:
        if args.what == "loss":
            runs = {}
            for path in args.runs:
                rec = read_run(path)
                name = os.path.basename(os.path.normpath(path))
                runs[name if name not in runs else path] = {"curve": rec["train"], "valid": rec["valid"]}
            written = plots.loss_curves(runs, args.out, {})
        elif args.what == "recon":
            from ..audio import load_audio
            from ..checkpoint import load_pretrained

            rate = load_pretrained(args.checkpoint).sample_rate
            wav = load_audio(args.clip, rate)
            written = plots.reconstruction(args.checkpoint, wav, args.out, os.path.basename(args.clip),
                                           frames=args.frames, seed=args.seed)
        else:
            written = plots.eat_figure(args.checkpoint, read_run(args.run)["train"], args.out, frames=args.frames)
    except ImportError as err:
        print(f"{PROG}: needs matplotlib (pip install matplotlib): {err}", file=sys.stderr)
        return 2
    except (OSError, ValueError, KeyError) as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return 2
    print(written)
    return 0


if __name__ == "__main__":
    sys.exit(main())
