"""``maeast-predict``: the top labels of audio files under a fine-tuned classifier checkpoint, or a test report.

    maeast-predict CHECKPOINT audio1.wav [audio2.flac ...] [--top 5] [--long chunks|truncate] [--json OUT]
                   [--labels class_labels_indices.csv]
    maeast-predict CHECKPOINT data/test.tsv [more.tsv | AUDIO_DIR ...] --out report/ [--labels-from parent]

The checkpoint alone is enough (no training data, no pretrained checkpoint, no fairseq): it is read with
``torch.load(weights_only=True)``; the label list, the encoder and head configs and the front end (window, mel bins,
normalisation statistics, target length) are in its ``cfg``. Probabilities are softmax for models trained with
cross-entropy and per-class sigmoids for BCE-trained (multi-label) models.

Inputs are audio files, ``.tsv`` manifests (``maeast-manifest``'s format; the aligned ``.lbl`` next to it, when
there is one, gives the true labels) or folders (searched recursively for ``--ext`` files; ``--labels-from parent``
takes each file's true label from its folder's name). With true labels, a **test report** is printed: accuracy
(multi-class) or mAP (multi-label), per-class precision / recall / F1 / support (multi-label: also the per-class AP,
decisions at probability >= ``--threshold``), and the confusion matrix (multi-class: rows = true class, columns =
predicted). ``--out DIR`` writes ``predictions.csv`` (one row per clip: ``file``, ``true``, ``predicted``,
``padded_to_one_patch`` and one ``prob_<class>`` column per class), ``report.json``, ``confusion.csv`` and
``confusion.png`` (needs matplotlib). The metrics are those of training (:mod:`maeast_fairseq.core.metrics`).

Clips longer than the training length (``task.target_frames``) are cut into consecutive windows of that length
and their probabilities averaged (``--long chunks``, default) or truncated to the first window as in training
(``--long truncate``); shorter clips are padded with a padding mask, as in training.

**Clips shorter than one patch** (16 frames = 0.175 s for 16x16 patches) have no complete patch, so under the
padding mask the model would see nothing and answer with its bias (near-uniform probabilities). They are instead
padded to one patch with log-mel zeros (the value the ``fixed`` length policy pads with) that the model sees as data,
a warning names each such clip, and the CSV marks it (``padded_to_one_patch``); ``--short-clips error`` refuses them
instead (each such clip named with its length on stderr, not predicted; exit status 1).
"""
import argparse
import csv
import dataclasses
import json
import math
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ..audio import AudioError, load_audio
from ..checkpoint import classifier_from_state, read_checkpoint
from ..frontend import Frontend, FrontendConfig

DEFAULT_EXT = "wav,flac,ogg,mp3"


def load_classifier(path: str, device: str = "cpu"):
    """(model in eval mode, front end, class names, activation) of a ``maeast_classifier`` checkpoint."""
    state = read_checkpoint(path)
    model, cfg = classifier_from_state(state, path)
    task = dict(cfg.get("task") or {})
    values = {k: v for k, v in task.items() if v is not None}
    values.update({k: v for k, v in dict((cfg.get("model") or {}).get("frontend") or {}).items() if v is not None})
    names = {f.name for f in dataclasses.fields(FrontendConfig)}
    missing = sorted(n for n in names if n not in values)
    if missing:
        raise ValueError(f"the checkpoint does not record its front end ({', '.join(missing)} missing)")
    frontend = FrontendConfig(**{k: v for k, v in values.items() if k in names})
    crit = dict(cfg.get("criterion") or {})
    loss = crit.get("loss", "auto")
    if loss == "auto":
        loss = "bce" if task.get("multi_label") else "ce"
    activation = "sigmoid" if loss == "bce" else "softmax"
    return model.to(device), frontend, model.class_names, activation


def patch_frames(model) -> int:
    """Frames of one patch of the classifier's encoder (a shorter clip has no complete patch)."""
    from ..core.classifier import _tokenizers

    return max(tok.patch_time for tok in _tokenizers(model.encoder))


class ShortClipError(ValueError):
    """Clips shorter than one patch, refused (``short_clips="error"``)."""


@torch.no_grad()
def predict_clips(paths: Sequence[str], model, frontend: FrontendConfig, activation: str = "softmax",
                  long: str = "chunks", device: str = "cpu", short_clips: str = "pad"
                  ) -> Tuple[torch.Tensor, List[bool]]:
    """Class probabilities ``(N, C)`` of the files, and per file whether it was padded to one patch.

    ``short_clips``: ``"pad"`` (a clip shorter than one patch is padded to one patch with log-mel zeros, seen as
    data) or ``"error"`` (:class:`ShortClipError` listing every such file, before any prediction)."""
    frontend_module = Frontend(frontend)
    target, patch = frontend.target_frames, patch_frames(model)
    mels = [frontend_module.log_mel(load_audio(path, frontend.sample_rate)) for path in paths]
    short = [m.shape[0] < patch for m in mels]
    if any(short) and short_clips == "error":
        listed = "; ".join(f"{p} ({m.shape[0]} frames)" for p, m, s in zip(paths, mels, short) if s)
        raise ShortClipError(f"{sum(short)} clip(s) shorter than one patch ({patch} frames = "
                             f"{_frames_seconds(frontend_module, patch):.3f} s), refused (--short-clips error): "
                             f"{listed}")
    out = []
    for feats in mels:
        if feats.shape[0] < patch:  # no complete patch: pad to one with log-mel zeros, the fixed policy's value
            feats = torch.nn.functional.pad(feats, (0, 0, 0, patch - feats.shape[0]))
        if frontend.length_policy == "fixed" and long == "chunks" and feats.shape[0] > target:
            windows = list(torch.split(feats, target))
            if len(windows) > 1 and windows[-1].shape[0] < max(target // 2, patch):
                windows = windows[:-1]  # a short tail would be mostly padding: dropped
        else:
            windows = [feats]
        x, padding, _ = frontend_module.collate(windows)
        probs = model.probabilities(x.to(device), None if padding is None else padding.to(device), activation)
        out.append(probs.mean(dim=0).cpu())
    return torch.stack(out), short


def predict_files(paths: Sequence[str], model, frontend: FrontendConfig, activation: str = "softmax",
                  long: str = "chunks", device: str = "cpu") -> List[torch.Tensor]:
    """Class probabilities (C,) per file (clips shorter than one patch padded to one, see :func:`predict_clips`)."""
    probs, _ = predict_clips(paths, model, frontend, activation, long, device)
    return list(probs)


def _frames_seconds(frontend_module: Frontend, frames: int) -> float:
    cfg = frontend_module.fbank.cfg
    return ((frames - 1) * cfg.window_shift + cfg.window_size) / cfg.sample_rate


# -- inputs -------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Clip:
    path: str                      #: the file read
    name: str                      #: as written in the CSV (the manifest's relative path, or the path given)
    labels: Optional[List[str]]    #: true labels (None: unknown)
    where: str                     #: where the labels come from (for errors): "test.lbl:3"


def list_clips(inputs: Sequence[str], exts: Sequence[str], labels_from: Optional[str]) -> List[Clip]:
    """Audio files, ``.tsv`` manifests (true labels from the aligned ``.lbl`` when it exists) and folders (true
    labels from the parent folder's name with ``labels_from="parent"``), in the order given."""
    from ..data.manifest import label_path_for, read_labels, read_manifest
    from .embed import list_inputs

    clips: List[Clip] = []
    for src in inputs:
        if os.path.isdir(src):
            found = list_inputs(src, list(exts))
            if not found:
                raise ValueError(f"{src}: no file with extension {','.join(exts)} in this folder (--ext)")
            for full, rel in found:
                label = [os.path.basename(os.path.dirname(full))] if labels_from == "parent" else None
                clips.append(Clip(full, os.path.join(src, rel), label, f"{full} (--labels-from parent)"))
        elif src.endswith(".tsv") and os.path.isfile(src):
            _, entries = read_manifest(src)
            lbl = label_path_for(src)
            labels = read_labels(lbl, len(entries), manifest_path=src) if os.path.isfile(lbl) else None
            for i, e in enumerate(entries):
                clips.append(Clip(e.path, e.rel, None if labels is None else labels[i], f"{lbl}:{i + 1}"))
        else:
            clips.append(Clip(src, src, None, src))
    return clips


# -- the report ---------------------------------------------------------------------------------------------------
def truth_matrix(clips: Sequence[Clip], classes: Sequence[str], multi_label: bool) -> torch.Tensor:
    """(N, C) 0/1 of the clips' true labels; an unknown label or (multi-class) not exactly one label is an error
    naming the file and line."""
    index = {c: i for i, c in enumerate(classes)}
    y = torch.zeros(len(clips), len(classes))
    for n, clip in enumerate(clips):
        unknown = [lab for lab in clip.labels if lab not in index]
        if unknown:
            raise ValueError(f"{clip.where}: label(s) {unknown} are not classes of the checkpoint "
                             f"({', '.join(classes)})")
        if not multi_label and len(clip.labels) != 1:
            raise ValueError(f"{clip.where}: {len(clip.labels)} labels {clip.labels}, but the checkpoint is a "
                             "multi-class (one label per clip) model")
        y[n, [index[lab] for lab in clip.labels]] = 1.0
    return y


def _num(v) -> Optional[float]:
    v = float(v)
    return None if math.isnan(v) else v


def score_report(probs: torch.Tensor, truth: torch.Tensor, classes: Sequence[str], multi_label: bool,
                threshold: float = 0.5) -> Dict:
    """The scores of predictions ``probs`` (N, C) against the true labels ``truth`` (N, C) 0/1, as fractions."""
    from ..core.metrics import (
        accuracy,
        average_precision,
        confusion_matrix,
        confusion_scores,
        mean_average_precision,
        multilabel_scores,
    )

    report: Dict = {"clips": int(probs.shape[0]), "classes": list(classes)}
    if multi_label:
        ap = average_precision(probs, truth)
        scores = multilabel_scores(probs >= threshold, truth)
        report.update(metric="mAP", value=mean_average_precision(probs, truth), threshold=threshold)
    else:
        pred, y = probs.argmax(-1), truth.argmax(-1)
        confusion = confusion_matrix(pred, y, len(classes))
        scores = confusion_scores(confusion)
        report.update(metric="accuracy", value=accuracy(probs, y), confusion=confusion.tolist(),
                      confusion_rule="rows: true class, columns: predicted class (clip counts)")
    report["per_class"] = [
        dict({"class": c, "support": int(scores["support"][j]), "precision": _num(scores["precision"][j]),
              "recall": _num(scores["recall"][j]), "f1": _num(scores["f1"][j])},
             **({"ap": _num(ap[j])} if multi_label else {}))
        for j, c in enumerate(classes)]
    return report


def _pct(v: Optional[float]) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def print_report(report: Dict, file=None) -> None:
    file = file or sys.stdout
    classes = report["classes"]
    w = max(8, max(len(c) for c in classes))
    print(f"test {report['metric']}: {100 * report['value']:.2f} % over {report['clips']} clip(s)"
          + (f" (decisions at probability >= {report['threshold']})" if "threshold" in report else ""), file=file)
    extra = f" {'AP %':>6}" if report["metric"] == "mAP" else ""
    print(f"\n{'class':<{w}} {'clips':>6} {'precision %':>12} {'recall %':>9} {'F1 %':>6}{extra}", file=file)
    for r in report["per_class"]:
        ap = f" {_pct(r['ap']):>6}" if "ap" in r else ""
        print(f"{r['class']:<{w}} {r['support']:>6} {_pct(r['precision']):>12} {_pct(r['recall']):>9} "
              f"{_pct(r['f1']):>6}{ap}", file=file)
    if "confusion" in report:
        cw = max(5, max(len(c) for c in classes))
        print("\nconfusion matrix (rows: true class, columns: predicted)", file=file)
        print(f"{'':<{w}} " + " ".join(f"{c[:cw]:>{cw}}" for c in classes), file=file)
        for c, row in zip(classes, report["confusion"]):
            print(f"{c:<{w}} " + " ".join(f"{v:>{cw}}" for v in row), file=file)


def write_predictions(path: str, clips: Sequence[Clip], probs: torch.Tensor, padded: Sequence[bool],
                      classes: Sequence[str], multi_label: bool, threshold: float) -> None:
    """``predictions.csv``: file, true (comma-separated labels, empty if unknown), predicted (multi-class: the
    argmax; multi-label: the classes at probability >= threshold), padded_to_one_patch, prob_<class>... (9
    significant digits: float32 probabilities read back exactly)."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "true", "predicted", "padded_to_one_patch"] + [f"prob_{c}" for c in classes])
        for clip, p, short in zip(clips, probs.tolist(), padded):
            if multi_label:
                predicted = ",".join(c for c, v in zip(classes, p) if v >= threshold)
            else:
                predicted = classes[max(range(len(p)), key=p.__getitem__)]
            true = "" if clip.labels is None else ",".join(clip.labels)
            writer.writerow([clip.name, true, predicted, int(short)] + [f"{v:.9g}" for v in p])


def write_confusion(out_dir: str, report: Dict) -> List[str]:
    """``confusion.csv`` (and ``confusion.png`` when matplotlib is installed) of a multi-class report."""
    classes = report["classes"]
    path = os.path.join(out_dir, "confusion.csv")
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true \\ predicted"] + list(classes))
        for c, row in zip(classes, report["confusion"]):
            writer.writerow([c] + row)
    written = [path]
    try:
        from ..demo.plots import confusion_figure
    except ImportError:
        return written
    try:
        png = confusion_figure(report["confusion"], classes, os.path.join(out_dir, "confusion.png"),
                               f"test accuracy {100 * report['value']:.2f} % over {report['clips']} clips")
    except ImportError:
        print("maeast-predict: no confusion.png: matplotlib is not installed (pip install matplotlib)",
              file=sys.stderr)
        return written
    return written + [png]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="maeast-predict", description=__doc__.split("\n\n")[0],
                                     epilog="Clips shorter than one patch are padded to one patch (warned, marked "
                                            "in the CSV) or, with --short-clips error, refused.")
    parser.add_argument("checkpoint", help="a fine-tuned maeast_classifier checkpoint (checkpoint_best.pt)")
    parser.add_argument("audio", nargs="+", metavar="INPUT",
                        help="audio files (any rate / channels soundfile reads), .tsv manifests (true labels from "
                             "the aligned .lbl) or folders (recursive)")
    parser.add_argument("--top", type=int, default=5, help="labels to print per audio file (default 5)")
    parser.add_argument("--long", choices=("chunks", "truncate"), default="chunks",
                        help="clips longer than the training length: average over windows (default) or truncate")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--json", help="also write {file: {label: probability}} (top labels) to this file")
    parser.add_argument("--labels", help="class names from this file instead of the checkpoint's: a CSV with "
                                         "index and display_name columns (AudioSet's class_labels_indices.csv, "
                                         "e.g. for an official EAT fine-tuned file) or one name per line")
    parser.add_argument("--out", help="write predictions.csv here (and, with true labels, report.json, "
                                      "confusion.csv and confusion.png)")
    parser.add_argument("--labels-from", choices=("parent",), default=None,
                        help="folders: the true label of each file is its folder's name")
    parser.add_argument("--ext", default=DEFAULT_EXT, help=f"extensions searched in folders (default {DEFAULT_EXT})")
    parser.add_argument("--threshold", type=float, default=0.5,
                        help="multi-label models: a class is predicted at probability >= this (default 0.5)")
    parser.add_argument("--short-clips", choices=("pad", "error"), default="pad",
                        help="clips shorter than one patch: pad to one patch with log-mel zeros and warn (default) "
                             "or refuse them")
    args = parser.parse_args(argv)
    try:
        model, frontend, classes, activation = load_classifier(args.checkpoint, args.device)
        if args.labels:
            from ..official.eat import read_labels

            classes = read_labels(args.labels, len(classes))
    except (OSError, ValueError, RuntimeError) as err:
        print(f"maeast-predict: cannot load {args.checkpoint}: {err}", file=sys.stderr)
        return 2
    multi_label = activation == "sigmoid"
    exts = [e.strip().lower().lstrip(".") for e in args.ext.split(",") if e.strip()]
    try:
        clips = list_clips(args.audio, exts, args.labels_from)
    except (OSError, ValueError) as err:
        print(f"maeast-predict: {err}", file=sys.stderr)
        return 2
    files_only = all(not os.path.isdir(a) and not a.endswith(".tsv") for a in args.audio)
    k = max(1, min(args.top, len(classes)))
    results: Dict[str, Dict[str, float]] = {}
    kept: List[Clip] = []
    rows: List[torch.Tensor] = []
    padded: List[bool] = []
    status = 0
    for n, clip in enumerate(clips):
        try:
            probs, short = predict_clips([clip.path], model, frontend, activation, args.long, args.device,
                                         args.short_clips)
        except ShortClipError as err:
            print(f"{clip.path}: error: {err}", file=sys.stderr)
            status = 1
            continue
        except (AudioError, OSError, ValueError) as err:
            print(f"{clip.path}: error: {err}", file=sys.stderr)
            status = 1
            continue
        kept.append(clip)
        rows.append(probs[0])
        padded.append(short[0])
        if short[0]:
            print(f"maeast-predict: warning: {clip.path} is shorter than one patch ({patch_frames(model)} frames): "
                  "padded to one patch with log-mel zeros (seen as data); its prediction rests on less than one "
                  "patch of audio", file=sys.stderr)
        values, idx = probs[0].topk(k)
        results[clip.name] = {classes[i]: round(float(v), 6) for v, i in zip(values.tolist(), idx.tolist())}
        if files_only:
            print(clip.path)
            width = max(len(classes[i]) for i in idx.tolist())
            for v, i in zip(values.tolist(), idx.tolist()):
                print(f"  {classes[i]:<{width}}  {v:.4f}")
        elif (n + 1) % 100 == 0:
            print(f"maeast-predict: {n + 1} / {len(clips)} clips", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    probs_all = torch.stack(rows) if rows else torch.zeros(0, len(classes))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        write_predictions(os.path.join(args.out, "predictions.csv"), kept, probs_all, padded, classes, multi_label,
                          args.threshold)
    labelled = [i for i, c in enumerate(kept) if c.labels is not None]
    if not labelled:
        if not files_only:
            print(f"maeast-predict: {len(kept)} clip(s) predicted; no true labels (a manifest without its .lbl, or "
                  "a folder without --labels-from parent): no test report"
                  + (f"; predictions in {os.path.join(args.out, 'predictions.csv')}" if args.out else
                     "; --out DIR writes predictions.csv"), file=sys.stderr)
        return status
    try:
        truth = truth_matrix([kept[i] for i in labelled], classes, multi_label)
    except ValueError as err:
        print(f"maeast-predict: {err}", file=sys.stderr)
        return 2
    report = score_report(probs_all[labelled], truth, classes, multi_label, args.threshold)
    report.update(checkpoint=os.path.abspath(args.checkpoint), inputs=list(args.audio),
                  padded_to_one_patch=int(sum(padded[i] for i in labelled)),
                  unlabelled_clips=len(kept) - len(labelled), failed_clips=len(clips) - len(kept))
    if len(labelled) < len(kept):
        print(f"maeast-predict: {len(kept) - len(labelled)} clip(s) without true labels are not in the report",
              file=sys.stderr)
    print_report(report)
    if args.out:
        with open(os.path.join(args.out, "report.json"), "w") as f:
            json.dump(report, f, indent=1)
            f.write("\n")
        written = [os.path.join(args.out, n) for n in ("predictions.csv", "report.json")]
        if "confusion" in report:
            written += write_confusion(args.out, report)
        print("\nwritten: " + ", ".join(written))
    return status


if __name__ == "__main__":
    sys.exit(main())
