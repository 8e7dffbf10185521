"""``maeast-evaluate``: SUPERB-style evaluation of a frozen upstream on a labelled data folder.

::

    maeast-evaluate UPSTREAM --data DIR [--train train --dev valid --test test]
                    [--protocol superb|hear-mlp] [--lr 1e-4 | --lr-sweep 1e-3,1e-4,1e-5] [--seeds 0,1,2]
                    [--steps N] [--batch-size 32] [--eval-every 50] [--cache DIR | --no-cache] [--json OUT]
                    [--folds K [--fold-file FILE --fold-split all] [--fold-prefix fold]]
                    [--layer K] [--layer-norm] [--balanced] [--multilabel] [--shuffle-labels [--shuffle-seed 0]]
                    [--random-seed 0] [--device cpu|cuda] [--extract-batch-size 16] [--chunk-seconds S]
                    [--cache-dtype float32|float16] [--threads N] [--precision auto|fp32|bf16]

``UPSTREAM`` is a checkpoint of ours, ``random:CKPT`` (CKPT's architecture, random init, seeded by
``--random-seed``) or ``logmel`` (the normalised log-mel frames). ``DIR`` holds manifests ``{split}.tsv`` with aligned
labels ``{split}.lbl`` (and optionally ``labels.txt``), as written by ``maeast-manifest --labels-from``.

Protocols:

* ``superb`` (default): frozen upstream, weighted sum of all layers (softmax over zero-initialised weights), head
  ``Linear(D, 256)`` -> mean over valid frames -> ``Linear(256, C)``, Adam lr 1e-4, gradient clipping 1.0, the
  checkpoint with the best dev metric tested on the test split;
* ``hear-mlp`` (the default with ``--folds``): the same weighted sum, then the HEAR / ESC-50 MLP (mean pool -> 2 x
  [Linear 1024 -> BatchNorm -> Dropout 0.1 -> ReLU] -> Linear(C)), Adam lr 1e-3, selection on validation.

``--folds K``: k-fold mode on manifests ``fold1 .. foldK`` (or one manifest ``--fold-split`` plus a ``--fold-file``
with one fold id per clip; ``maeast-manifest --folds K --group-by ...`` writes fold manifests of whole groups): for
test fold k, fold (k + 1) mod K validates and the others train. The result is the mean over the folds and head seeds
with two spreads kept apart: over the folds (sample std of the per-fold means: how much the score depends on which
clips are tested) and over the head seeds (sample std of the per-seed means: the noise of head training), plus every
fold's own scores.

``--shuffle-labels`` is a control: the training and dev labels are replaced by a permutation that carries no
information about the true class (every class receives every label in equal shares); test labels are kept, so the
test metric must fall to chance. (A plain random permutation is not a good control on clustered data: it renames
whole clusters and can land far from chance in either direction; relabelling only the training split is not enough
either, since selecting on the true dev labels then picks the lucky checkpoint.)

Features are extracted once per (upstream, split) and cached as each clip's mean over its valid frames, per layer:
exact for both heads because they are linear up to the mean (see :mod:`maeast_fairseq.evaluation.superb`), which is
why a head trains in seconds. ``--precision`` (default ``auto``: bfloat16 autocast where the device computes it
natively and, on a CPU, the model is at least 384 wide; else float32) is the arithmetic of the upstream's encoder
during extraction only (the heads train in float32; ``logmel`` is float32 whatever is asked); the choice is printed,
recorded in the JSON and part of the cache key (bf16 features never answer an fp32 request).

A table is printed and, with ``--json``, written with every number labelled by its protocol, upstream, data, split
sizes, seeds and metric, with per-class scores (multi-class: recall, precision, F1 and the confusion matrix summed
over the seeds and folds; multi-label: AP) and a PNG (``--png``, default next to ``--json``: the weighted sum's
per-layer weights and the confusion matrix). Single-label data gives accuracy; multi-label (a ``.lbl`` line with
several labels, or ``--multilabel``) gives mAP. These are frozen-protocol numbers on your data: never put them beside
the papers' fine-tuned numbers as equals.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Dict, List, Optional

import torch

from maeast_fairseq.core.metrics import average_precision, confusion_matrix, confusion_scores
from maeast_fairseq.data.manifest import (
    LABEL_LIST_NAME,
    ManifestError,
    label_path_for,
    read_label_list,
    read_labels,
    read_manifest,
    resolve_manifest,
)
from maeast_fairseq.evaluation.features import STATS, ExtractOptions, FeatureCache, default_cache_dir, load_upstream
from maeast_fairseq.evaluation.superb import (
    PROTOCOL_DEFAULTS,
    PROTOCOLS,
    TrainConfig,
    chance_level,
    fold_roles,
    mean_std,
    metric_name,
    protocol_label,
    run_protocol,
)
from maeast_fairseq.precision import PRECISIONS

NOT_COMPARABLE = ("frozen-upstream numbers on the data named here; not comparable to the papers' fine-tuned "
                  "results (AS-20K, ESC-50, SPC, ...) nor to the SUPERB leaderboard unless the data is the same")


def _floats(text: str) -> List[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def _ints(text: str) -> List[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="maeast-evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("upstream", help="checkpoint path, 'random:CKPT' or 'logmel'")
    p.add_argument("--data", required=True, help="folder with {split}.tsv + {split}.lbl (+ labels.txt)")
    p.add_argument("--train", default="train", help="training split (default: train)")
    p.add_argument("--dev", default="valid", help="dev split used for selection (default: valid)")
    p.add_argument("--test", default="test", help="held-out test split (default: test)")
    p.add_argument("--protocol", choices=PROTOCOLS, default=None,
                   help="superb (default) or hear-mlp (default with --folds)")
    lr = p.add_mutually_exclusive_group()
    lr.add_argument("--lr", type=float, default=None, help="learning rate (superb: 1e-4, hear-mlp: 1e-3)")
    lr.add_argument("--lr-sweep", type=_floats, default=None, metavar="A,B,...",
                    help="learning rates to sweep; the best mean dev metric picks one")
    p.add_argument("--seeds", type=_ints, default=[0, 1, 2], metavar="0,1,2", help="head seeds (default: 0,1,2)")
    p.add_argument("--steps", type=int, default=None, help="updates per head (superb: 3000, hear-mlp: 4000)")
    p.add_argument("--batch-size", type=int, default=32, help="head batch size (default: 32)")
    p.add_argument("--eval-every", type=int, default=50, help="dev evaluation interval in updates (default: 50)")
    p.add_argument("--grad-clip", type=float, default=None, help="gradient norm clip (superb: 1.0, hear-mlp: none)")
    p.add_argument("--patience", type=int, default=0, help="stop after N dev evaluations without gain (0: never)")
    p.add_argument("--balanced", action="store_true", help="class-balanced sampling of training batches")
    p.add_argument("--layer", type=int, default=None, help="use this one layer instead of the weighted sum")
    p.add_argument("--layer-norm", action="store_true", help="layer-norm each layer's frames before the sum")
    p.add_argument("--multilabel", action="store_true", help="multi-label (BCE, mAP) even if every clip has 1 label")
    p.add_argument("--shuffle-labels", action="store_true",
                   help="CONTROL: relabel the training and dev clips independently of their true class (test "
                        "labels kept); the test metric should fall to chance")
    p.add_argument("--shuffle-seed", type=int, default=0, help="seed of --shuffle-labels (default: 0)")
    p.add_argument("--folds", type=int, default=0, help="k-fold mode with K folds")
    p.add_argument("--fold-prefix", default="fold", help="fold manifests are {prefix}1 .. {prefix}K (default: fold)")
    p.add_argument("--fold-file", default=None, help="one fold id per clip of --fold-split (instead of fold manifests)")
    p.add_argument("--fold-split", default="all", help="the manifest --fold-file refers to (default: all)")
    p.add_argument("--random-seed", type=int, default=0, help="seed of a random:CKPT upstream (default: 0)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--extract-batch-size", type=int, default=16, help="clips per upstream forward (default: 16)")
    p.add_argument("--chunk-seconds", type=float, default=0.0,
                   help="checkpoints: encode clips in windows of this length (default: the training length)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="arithmetic of the upstream encoder while extracting features: auto (default: bf16 "
                        "autocast where the device computes bfloat16 natively and, on a CPU, the model is >= 384 "
                        "wide; else fp32), fp32 or bf16; part of the cache key. Heads always train in float32")
    p.add_argument("--cache", default=None, help=f"feature cache folder (default: {default_cache_dir()})")
    p.add_argument("--no-cache", action="store_true", help="extract without reading or writing a cache")
    p.add_argument("--cache-dtype", choices=("float32", "float16"), default="float32")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads while this command runs (0: torch's default; 1 is often fastest for "
                        "the small heads on a busy machine)")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--png", default=None,
                   help="write a figure here: the per-layer weights of the weighted sum and the confusion matrix "
                        "(multi-class) or per-class AP (multi-label); default: the --json path with .png, if given")
    p.add_argument("--quiet", action="store_true", help="no per-run lines")
    return p


# ----------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------


def load_split(data: str, split: str) -> Dict:
    tsv = resolve_manifest(data, split)
    _, entries = read_manifest(tsv)
    lbl = label_path_for(tsv)
    if not os.path.isfile(lbl):
        raise ManifestError(lbl, None, f"no labels for split {split!r}: evaluation needs {lbl} (one line of labels "
                            "per clip; maeast-manifest --labels-from parent writes it)")
    labels = read_labels(lbl, len(entries), manifest_path=tsv)
    return {"name": split, "tsv": tsv, "paths": [e.path for e in entries],
            "lengths": [e.num_samples for e in entries], "labels": labels}


def class_list(data: str, splits: List[Dict]) -> List[str]:
    path = os.path.join(data, LABEL_LIST_NAME) if os.path.isdir(data) else None
    if path and os.path.isfile(path):
        classes = read_label_list(path)
    else:
        classes = sorted({lab for s in splits for labs in s["labels"] for lab in labs})
    known = set(classes)
    for s in splits:
        unknown = sorted({lab for labs in s["labels"] for lab in labs} - known)
        if unknown:
            raise ManifestError(s["tsv"], None, f"labels {unknown} are not in {path}")
    return classes


def encode_labels(labels: List[List[str]], classes: List[str], multilabel: bool, where: str) -> torch.Tensor:
    index = {c: i for i, c in enumerate(classes)}
    if multilabel:
        y = torch.zeros(len(labels), len(classes))
        for i, labs in enumerate(labels):
            y[i, [index[lab] for lab in labs]] = 1.0
        return y
    bad = [i + 1 for i, labs in enumerate(labels) if len(labs) != 1]
    if bad:
        raise ManifestError(where, bad[0], f"{len(bad)} clip(s) without exactly one label; use --multilabel for "
                            "multi-label data")
    return torch.tensor([index[labs[0]] for labs in labels], dtype=torch.long)


def shuffle_labels(y: torch.Tensor, seed: int) -> torch.Tensor:
    """The CONTROL relabelling: a permutation of the training labels that carries no information about the true
    class. Multi-class: every true class receives the labels in (as nearly as possible) the proportions of the
    whole set -- the clips sorted by (true class, random) take the labels dealt round-robin (first occurrence of each
    label, then the second, ...). A plain uniform permutation would not do: on data that forms a few clean clusters
    it only renames the clusters at random, and the renaming can match the truth for some classes (the test score is
    then a multiple of 1/C, far from chance either way). Multi-label: a uniform permutation of the clips' label sets.
    """
    g = torch.Generator().manual_seed(seed)
    n = len(y)
    if y.dim() > 1:
        return y[torch.randperm(n, generator=g)]
    noise = torch.rand(n, generator=g)
    items = sorted(range(n), key=lambda i: (int(y[i]), float(noise[i])))  # clips, by true class
    occurrence = torch.zeros(n, dtype=torch.long)
    seen: Dict[int, int] = {}
    for i in torch.randperm(n, generator=g).tolist():
        occurrence[i] = seen.get(int(y[i]), 0)
        seen[int(y[i])] = occurrence[i] + 1
    dealt = sorted(range(n), key=lambda i: (int(occurrence[i]), float(noise[i])))  # labels, round-robin
    out = torch.empty_like(y)
    out[torch.tensor(items)] = y[torch.tensor(dealt)]
    return out


def read_fold_ids(path: str, n: int) -> List[str]:
    """The fold id of every clip (one line each) of a ``--fold-file``; an error unless there are ``n``."""
    with open(path, encoding="utf-8") as f:
        ids = [line.strip() for line in f.read().splitlines()]
    if len(ids) != n:
        raise ManifestError(path, None, f"has {len(ids)} fold ids but the manifest has {n} clips (one id per clip)")
    return ids


def fold_order(ids) -> List[str]:
    """The distinct fold ids in the order of the folds (numeric when they all are numbers, else alphabetical)."""
    uniq = set(ids)
    try:
        return sorted(uniq, key=lambda v: (float(v), v))
    except ValueError:
        return sorted(uniq)


# ----------------------------------------------------------------------------------------------------------------
# Reporting
# ----------------------------------------------------------------------------------------------------------------


def _pct(x: float) -> str:
    return f"{100 * x:6.2f}"


def _ms(d: Dict) -> str:
    return f"{_pct(d['mean'])} ± {100 * d['std']:.2f}"


def _weights_line(weights: Optional[List[float]]) -> str:
    if weights is None:
        return "(a fixed layer: no weights)"
    return "  ".join(f"h{i}={w:.3f}" for i, w in enumerate(weights))


def per_class_scores(scores: Optional[torch.Tensor], y: torch.Tensor, classes: List[str],
                     multilabel: bool) -> Optional[Dict]:
    """Per-class scores of the selected heads from their test logits ``scores (S, N, C)`` (S head seeds).

    Multi-class: the confusion matrix summed over the seeds (rows: true class, columns: predicted), and per class
    its support (test clips), recall (= per-class accuracy), precision and F1 from that matrix. Multi-label: per
    class the support (positive clips) and AP, mean over the seeds (``None`` for a class with no positive)."""
    if scores is None:
        return None
    y = y.cpu()
    n_classes = len(classes)
    if multilabel:
        ap = torch.stack([average_precision(s, y) for s in scores])  # (S, C)
        ap_mean = ap.mean(0)
        return {"metric": "AP", "seeds": int(scores.shape[0]),
                "classes": [{"class": c, "support": int(y[:, j].sum()),
                             "ap": None if torch.isnan(ap_mean[j]) else float(ap_mean[j])}
                            for j, c in enumerate(classes)]}
    pred = scores.argmax(-1)  # (S, N)
    confusion = confusion_matrix(pred, y.unsqueeze(0).expand_as(pred), n_classes)
    per = confusion_scores(confusion)  # NaN where undefined (see core.metrics.precision_recall_f1)

    def value(t: torch.Tensor, j: int) -> Optional[float]:
        return None if torch.isnan(t[j]) else float(t[j])

    rows = [{"class": c, "support": int(per["support"][j]) // int(scores.shape[0]), "recall": value(per["recall"], j),
             "precision": value(per["precision"], j), "f1": value(per["f1"], j)} for j, c in enumerate(classes)]
    return {"metric": "accuracy", "seeds": int(scores.shape[0]), "classes": rows,
            "confusion": confusion.tolist(),
            "confusion_rule": "rows: true class, columns: predicted class, counts summed over the head seeds"}


def write_figure(out: Dict, path: str) -> Optional[str]:
    """A PNG: the weighted sum's per-layer weights (mean over seeds, and folds) beside the confusion matrix (multi-class,
    row-normalised) or the per-class AP (multi-label). Needs matplotlib (``pip install matplotlib``)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("maeast-evaluate: no figure: matplotlib is not installed (pip install matplotlib)", file=sys.stderr)
        return None
    weights = out["result"]["layer_weights"]["mean_over_seeds"]
    per_class = out.get("per_class")
    fig, (ax_w, ax_c) = plt.subplots(1, 2, figsize=(12, 5), gridspec_kw={"width_ratios": [1, 1.3]})
    if weights is None:
        ax_w.text(0.5, 0.5, "one fixed layer (--layer): no weights", ha="center", va="center")
        ax_w.set_axis_off()
    else:
        ax_w.bar(range(len(weights)), weights, color="tab:blue")
        ax_w.set_xticks(range(len(weights)))
        ax_w.axhline(1 / len(weights), color="gray", lw=0.8, ls="--", label="uniform (the initial weights)")
        ax_w.set_xlabel("layer (0 = the input to the first block)")
        ax_w.set_ylabel("softmax weight")
        ax_w.set_title("weighted-sum layer weights" + (" (mean over seeds and folds)" if "folds" in out else
                                                        " (mean over seeds)"))
        ax_w.legend(loc="upper right", fontsize=8)
    classes = out["classes"]
    if per_class is None:
        ax_c.set_axis_off()
    elif "confusion" in per_class:
        from maeast_fairseq.demo.plots import draw_confusion
        draw_confusion(fig, ax_c, per_class["confusion"], classes,
                       "confusion matrix (row-normalised, all seeds" + (", all folds)" if "folds" in out else ")"))
    else:
        aps = [r["ap"] if r["ap"] is not None else float("nan") for r in per_class["classes"]]
        ax_c.barh(range(len(classes)), aps, color="tab:orange")
        ax_c.set_yticks(range(len(classes)), classes, fontsize=7)
        ax_c.set_xlabel("AP (mean over seeds)")
        ax_c.set_title("per-class average precision")
    res = out["test"]
    fig.suptitle(f"{out['upstream']['spec']} | {out['protocol']} | test {out['metric']} "
                 f"{100 * res['mean']:.2f} % ({res['split']})", fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def keep_freed_memory_in_the_heap() -> bool:
    """glibc hands freed blocks over 128 KiB back to the kernel at once; the stacked heads allocate MB-sized tensors
    every step, which then page-fault in again. Raising the mmap / trim thresholds (64 / 256 MiB) keeps them in the
    heap: the same numbers, a full 5-fold evaluation of the demo ~20 % faster on a CPU. Only where glibc is the C
    library (False elsewhere: nothing changes)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 64 << 20)) and bool(libc.mallopt(m_trim_threshold, 256 << 20))
    except (OSError, AttributeError):
        return False


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    keep_freed_memory_in_the_heap()
    threads = torch.get_num_threads()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        return _main(args)
    finally:
        torch.set_num_threads(threads)


def _main(args) -> int:
    t_start = time.time()
    protocol = args.protocol or ("hear-mlp" if args.folds else "superb")
    defaults = PROTOCOL_DEFAULTS[protocol]
    lrs = args.lr_sweep or [args.lr if args.lr is not None else defaults["lr"]]
    steps = args.steps if args.steps is not None else defaults["steps"]
    grad_clip = args.grad_clip if args.grad_clip is not None else defaults["grad_clip"]
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    label = protocol_label(protocol, args.layer)
    if args.shuffle_labels:
        label += " | CONTROL: train/dev labels shuffled"
    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    data = os.path.abspath(args.data)

    checkpoint = args.upstream[len("random:"):] if args.upstream.startswith("random:") else args.upstream
    if args.upstream != "logmel" and not os.path.exists(checkpoint):
        print(f"maeast-evaluate: upstream {args.upstream!r}: no such checkpoint file ({os.path.abspath(checkpoint)}); "
              "give 'logmel', 'random:CKPT' or a checkpoint path", file=sys.stderr)
        return 2

    # -- data ------------------------------------------------------------------------------------------------------
    try:
        if args.folds:
            if args.fold_file:
                whole = load_split(data, args.fold_split)
                ids = read_fold_ids(args.fold_file, len(whole["paths"]))
                order = fold_order(ids)
                if len(order) != args.folds:
                    raise ManifestError(args.fold_file, None, f"has {len(order)} distinct fold ids {order}, "
                                        f"expected --folds {args.folds}")
                fold_index = [[i for i, v in enumerate(ids) if v == fid] for fid in order]
                fold_names = [f"{args.fold_split}[fold {fid}]" for fid in order]
                sources = [whole]
            else:
                fold_names = [f"{args.fold_prefix}{k + 1}" for k in range(args.folds)]
                sources = [load_split(data, name) for name in fold_names]
        else:
            sources = [load_split(data, s) for s in (args.train, args.dev, args.test)]
        classes = class_list(data, sources)
    except ManifestError as exc:
        print(f"maeast-evaluate: {exc}", file=sys.stderr)
        return 2
    multilabel = args.multilabel or any(len(labs) != 1 for s in sources for labs in s["labels"])
    metric = metric_name(multilabel)

    # -- features ---------------------------------------------------------------------------------------------------
    log(f"upstream {args.upstream} on {device}")
    try:
        upstream = load_upstream(args.upstream, random_seed=args.random_seed, device=str(device),
                                 chunk_seconds=args.chunk_seconds, precision=args.precision)
    except (OSError, ValueError) as err:  # missing file, not a checkpoint, a checkpoint of another model
        print(f"maeast-evaluate: cannot load the upstream {args.upstream}: {err}", file=sys.stderr)
        return 2
    log(f"  {upstream.precision.describe()}")
    cache = FeatureCache(None if args.no_cache else (args.cache or default_cache_dir()))
    opts = ExtractOptions(batch_size=args.extract_batch_size, layer_norm=args.layer_norm, dtype=args.cache_dtype)
    feats, cache_info = [], {}
    for s in sources:
        f = cache.get(upstream, s["name"], s["tsv"], s["paths"], s["lengths"], opts, log)
        feats.append(f["means"].float())
        cache_info[s["name"]] = {"source": f["source"], "path": f["path"]}
    ys = [encode_labels(s["labels"], classes, multilabel, label_path_for(s["tsv"])) for s in sources]
    n_layers, dim = feats[0].shape[1], feats[0].shape[2]
    if args.layer is not None and not -n_layers <= args.layer < n_layers:
        print(f"maeast-evaluate: --layer {args.layer} out of range ({n_layers} layers)", file=sys.stderr)
        return 2

    base = TrainConfig(protocol=protocol, steps=steps, batch_size=args.batch_size, eval_every=args.eval_every,
                       grad_clip=grad_clip, balanced=args.balanced, layer=args.layer, patience=args.patience)

    def run(train_x, train_y, dev_x, dev_y, test_x, test_y):
        if args.shuffle_labels:
            train_y = shuffle_labels(train_y, args.shuffle_seed)
            dev_y = shuffle_labels(dev_y, args.shuffle_seed + 1)
        return run_protocol(train_x.to(device), train_y.to(device), dev_x.to(device), dev_y.to(device),
                            test_x.to(device), test_y.to(device), len(classes), lrs=lrs, seeds=args.seeds, base=base,
                            multilabel=multilabel, log=None if args.quiet else log)

    out: Dict = {
        "protocol": label, "protocol_id": protocol, "metric": metric,
        "upstream": {**upstream.describe(), "layers": n_layers, "dim": dim},
        "data": data, "classes": classes, "num_classes": len(classes), "multilabel": multilabel,
        "seeds": args.seeds, "lrs": lrs,
        "training": {"optimizer": "Adam", "steps": steps, "batch_size": args.batch_size,
                     "eval_every": args.eval_every, "grad_clip": grad_clip, "balanced": args.balanced,
                     "patience": args.patience, "layer": args.layer, "layer_norm": args.layer_norm,
                     "selection": f"best dev {metric} (ties: lower dev loss)",
                     "shuffled_labels": args.shuffle_labels and
                     "train and dev labels relabelled independently of the true class (stratified); test kept"},
        "features": {"cache": cache_info, "pooled": "per-layer mean over valid frames (exact for the head)",
                     "chunk_seconds": args.chunk_seconds, "dtype": args.cache_dtype,
                     "precision": upstream.precision.name, "precision_requested": args.precision},
        "note": NOT_COMPARABLE,
    }

    t_train = time.time()
    if not args.folds:
        names = [args.train, args.dev, args.test]
        out["splits"] = {role: {"split": s["name"], "manifest": s["tsv"], "clips": len(s["paths"])}
                         for role, s in zip(("train", "dev", "test"), sources)}
        res = run(feats[0], ys[0], feats[1], ys[1], feats[2], ys[2])
        out["per_class"] = per_class_scores(res.pop("test_scores"), ys[2], classes, multilabel)
        chance = chance_level(ys[0], ys[2], multilabel)
        out.update(result=res, **chance)
        out["test"] = {"protocol": label, "upstream": upstream.spec, "data": data, "split": names[2],
                       "clips": len(sources[2]["paths"]), "metric": metric, **res["test"]}
    else:
        folds = []
        per_seed: Dict[int, List[float]] = {s: [] for s in args.seeds}
        chances = []
        test_scores, test_targets = [], []
        for k in range(args.folds):
            roles = fold_roles(k, args.folds)

            def gather(which):
                if args.fold_file:
                    idx = torch.tensor([i for f in which for i in fold_index[f]], dtype=torch.long)
                    return feats[0][idx], ys[0][idx]
                return torch.cat([feats[f] for f in which]), torch.cat([ys[f] for f in which])

            (trx, tr_y), (dvx, dv_y), (tex, te_y) = gather(roles["train"]), gather(roles["valid"]), \
                gather(roles["test"])
            log(f"  fold {k + 1}/{args.folds}: test {fold_names[k]}, valid {fold_names[roles['valid'][0]]}, "
                f"train {', '.join(fold_names[f] for f in roles['train'])}")
            res = run(trx, tr_y, dvx, dv_y, tex, te_y)
            test_scores.append(res.pop("test_scores"))
            test_targets.append(te_y)
            chance = chance_level(tr_y, te_y, multilabel)
            chances.append(chance["chance"])
            for seed, v in zip(args.seeds, res["test"]["values"]):
                per_seed[seed].append(v)
            folds.append({"fold": k + 1, "test_fold": fold_names[k], "valid_fold": fold_names[roles["valid"][0]],
                          "train_folds": [fold_names[f] for f in roles["train"]],
                          "sizes": {"train": len(tr_y), "valid": len(dv_y), "test": len(te_y)},
                          "chance": chance["chance"], **res})
        seed_means = [sum(v) / len(v) for v in per_seed.values()]
        fold_means = [sum(f["test"]["values"]) / len(f["test"]["values"]) for f in folds]
        over_folds, over_seeds = mean_std(fold_means), mean_std(seed_means)
        out["folds"] = folds
        out["splits"] = {"folds": fold_names, "clips": [len(fold_index[k]) if args.fold_file else
                                                        len(sources[k]["paths"]) for k in range(args.folds)]}
        out["chance"] = sum(chances) / len(chances)
        out["chance_rule"] = chance_level(ys[0], ys[0], multilabel)["chance_rule"] + " (mean over folds)"
        out["test"] = {"protocol": label, "upstream": upstream.spec, "data": data,
                       "split": f"{args.folds}-fold cross-validation", "metric": metric,
                       **over_seeds, "values": seed_means,
                       "std_over_folds": over_folds["std"], "std_over_seeds": over_seeds["std"],
                       "n_folds": args.folds, "n_seeds": len(args.seeds),
                       "min_fold": min(fold_means), "max_fold": max(fold_means),
                       "per_fold": [{"fold": f["test_fold"], "mean": m, "std": f["test"]["std"],
                                     "values": f["test"]["values"]} for f, m in zip(folds, fold_means)],
                       "aggregation": "mean over the folds and head seeds. std_over_folds: sample std of the "
                                      "per-fold means (each over the seeds): how much the score depends on which "
                                      "clips are tested. std_over_seeds (= std): sample std of the per-seed means "
                                      "(each over the folds): the noise of head training"}
        if all(t is not None for t in test_scores):
            out["per_class"] = per_class_scores(torch.cat(test_scores, dim=1), torch.cat(test_targets), classes,
                                                multilabel)
        w = [f["layer_weights"]["mean_over_seeds"] for f in folds]
        out["result"] = {"layer_weights": {"mean_over_seeds": None if w[0] is None else
                                           [sum(c) / len(c) for c in zip(*w)], "per_fold": w}}
    out["seconds"] = {"features": round(t_train - t_start, 2), "heads": round(time.time() - t_train, 2)}
    out["extracted_splits"], out["cache_hits"] = STATS["extracted"], STATS["cache_hits"]

    print_report(out, args)
    png = args.png or (os.path.splitext(args.json)[0] + ".png" if args.json else None)
    if png:
        written = write_figure(out, png)
        if written:
            out["figure"] = written
            print(f"figure written to {written}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
        print(f"results written to {args.json}")
    return 0


def print_report(out: Dict, args) -> None:
    m, label = out["metric"], out["protocol"]
    up = out["upstream"]
    print(f"\n== maeast-evaluate  [{label}] ==")
    print(f"upstream : {up['label']}")
    print(f"           {up['layers']} layer(s) x {up['dim']} dims, {up['frame_rate_hz']:g} frames/s; "
          f"{up['extraction']}")
    print(f"           {up['precision_reason']}")
    kind = "multi-label" if out["multilabel"] else "multi-class"
    print(f"data     : {out['data']}  ({out['num_classes']} classes, {kind})")
    if "folds" in out:
        print(f"folds    : {', '.join(f'{n} ({c})' for n, c in zip(out['splits']['folds'], out['splits']['clips']))}"
              f"; test fold k, valid fold k+1 mod K, rest train")
    else:
        print("splits   : " + "  ".join(f"{role}={s['split']} ({s['clips']} clips)"
                                        for role, s in out["splits"].items()))
    t = out["training"]
    print(f"training : Adam, lr {'sweep ' if len(out['lrs']) > 1 else ''}{','.join(f'{v:g}' for v in out['lrs'])}, "
          f"{t['steps']} steps, batch {t['batch_size']}, grad clip {t['grad_clip'] or 'none'}, "
          f"dev every {t['eval_every']}, head seeds {','.join(map(str, out['seeds']))}")
    print("features : " + ", ".join(f"{k}: {v['source']}" for k, v in out["features"]["cache"].items()))
    if "folds" in out:
        print(f"\n{'fold':<6}{'test':<18}{'valid':<18}{'lr':>8}  {'dev ' + m + ' %':>18}  {'test ' + m + ' %':>18}")
        for f in out["folds"]:
            print(f"{f['fold']:<6}{f['test_fold']:<18}{f['valid_fold']:<18}{f['selected_lr']:>8.0e}  "
                  f"{_ms(f['dev']):>18}  "
                  f"{_ms(f['test']):>18}")
    else:
        r = out["result"]
        print(f"\n{'lr':>8}  {'dev ' + m + ' %':>18}  {'test ' + m + ' %':>18}")
        for p in r["per_lr"]:
            sel = "  <- selected on dev" if p["lr"] == r["selected_lr"] else ""
            print(f"{p['lr']:>8.0e}  {_ms(p['dev']):>18}  {_ms(p['test']):>18}{sel}")
    pc = out.get("per_class")
    if pc is not None:
        if "confusion" in pc:
            print(f"\n{'class':<20}{'clips':>7}{'recall %':>10}{'precision %':>13}{'F1 %':>8}   (test, all seeds"
                  f"{', all folds' if 'folds' in out else ''})")
            for r in pc["classes"]:
                cells = [("-" if r[k] is None else f"{100 * r[k]:.1f}") for k in ("recall", "precision", "f1")]
                print(f"{r['class'][:19]:<20}{r['support']:>7}{cells[0]:>10}{cells[1]:>13}{cells[2]:>8}")
        else:
            print(f"\n{'class':<20}{'positives':>10}{'AP %':>8}   (test, mean over seeds)")
            for r in pc["classes"]:
                ap = "-" if r["ap"] is None else f"{100 * r['ap']:.1f}"
                print(f"{r['class'][:19]:<20}{r['support']:>10}{ap:>8}")
    res = out["test"]
    if "folds" in out:
        print(f"\nRESULT [{label}] upstream={up['spec']} data={out['data']} ({res['split']}): "
              f"test {m} = {_pct(res['mean']).strip()} %, "
              f"± {100 * res['std_over_folds']:.2f} over {res['n_folds']} folds "
              f"(fold means {_pct(res['min_fold']).strip()} .. {_pct(res['max_fold']).strip()}), "
              f"± {100 * res['std_over_seeds']:.2f} over {res['n_seeds']} head seed(s) (sample std)")
    else:
        print(f"\nRESULT [{label}] upstream={up['spec']} data={out['data']} ({res['split']}): "
              f"test {m} = {_pct(res['mean']).strip()} ± {100 * res['std']:.2f} % "
              f"(mean ± std over {res['n']} head seed(s))")
    print(f"chance : {_pct(out['chance']).strip()} % ({out['chance_rule']})")
    lw = out["result"]["layer_weights"]["mean_over_seeds"]
    print(f"layer weights (softmax, mean over seeds{' and folds' if 'folds' in out else ''}): {_weights_line(lw)}")
    print(f"note   : {out['note']}")


if __name__ == "__main__":
    sys.exit(main())
