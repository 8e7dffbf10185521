"""``maeast-predict``: the top labels of audio files under a fine-tuned classifier checkpoint.

    maeast-predict CHECKPOINT audio1.wav [audio2.flac ...] [--top 5] [--long chunks|truncate] [--json OUT]

The checkpoint alone is enough (no training data, no pretrained checkpoint, no fairseq): it is read with
``torch.load(weights_only=True)``; the label list, the encoder and head configs and the front end (window, mel bins,
normalisation statistics, target length) are in its ``cfg``. Probabilities are softmax for models trained with
cross-entropy and per-class sigmoids for BCE-trained (multi-label) models.

Clips longer than the training length (``task.target_frames``) are cut into consecutive windows of that length
and their probabilities averaged (``--long chunks``, default) or truncated to the first window as in training
(``--long truncate``); shorter clips are padded with a padding mask, as in training.
"""
import argparse
import dataclasses
import json
import sys
from typing import Dict, List, Sequence

import torch

from ..audio import AudioError, load_audio
from ..core.classifier import classifier_from_state, load_checkpoint
from ..fbank import Fbank
from ..frontend import FrontendConfig, collate_features, fbank_config


def load_classifier(path: str, device: str = "cpu"):
    """(model in eval mode, front end, class names, activation) of a ``maeast_classifier`` checkpoint."""
    state = load_checkpoint(path)
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


@torch.no_grad()
def predict_files(paths: Sequence[str], model, frontend: FrontendConfig, activation: str = "softmax",
                  long: str = "chunks", device: str = "cpu") -> List[torch.Tensor]:
    """Class probabilities (C,) per file."""
    fbank = Fbank(fbank_config(frontend))
    target = frontend.target_frames
    out = []
    for path in paths:
        wav = load_audio(path, frontend.sample_rate)
        if frontend.subtract_waveform_mean:
            wav = wav - wav.mean()
        feats, _ = fbank(wav)
        if frontend.length_policy == "fixed" and long == "chunks" and feats.shape[0] > target:
            windows = list(torch.split(feats, target))
            if len(windows) > 1 and windows[-1].shape[0] < target // 2:
                windows = windows[:-1]  # a short tail would be mostly padding: dropped
        else:
            windows = [feats]
        x, padding, _ = collate_features(windows, frontend)
        probs = model.probabilities(x.to(device), None if padding is None else padding.to(device), activation)
        out.append(probs.mean(dim=0).cpu())
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="maeast-predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a fine-tuned maeast_classifier checkpoint (checkpoint_best.pt)")
    parser.add_argument("audio", nargs="+", help="audio files (any rate / channels soundfile reads)")
    parser.add_argument("--top", type=int, default=5, help="labels to print per file (default 5)")
    parser.add_argument("--long", choices=("chunks", "truncate"), default="chunks",
                        help="clips longer than the training length: average over windows (default) or truncate")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--json", help="also write {file: {label: probability}} (top labels) to this file")
    args = parser.parse_args(argv)
    try:
        model, frontend, classes, activation = load_classifier(args.checkpoint, args.device)
    except (OSError, ValueError, RuntimeError) as err:
        print(f"maeast-predict: cannot load {args.checkpoint}: {err}", file=sys.stderr)
        return 2
    k = max(1, min(args.top, len(classes)))
    results: Dict[str, Dict[str, float]] = {}
    status = 0
    for path in args.audio:
        try:
            (probs,) = predict_files([path], model, frontend, activation, args.long, args.device)
        except (AudioError, OSError, ValueError) as err:
            print(f"{path}: error: {err}", file=sys.stderr)
            status = 1
            continue
        values, idx = probs.topk(k)
        results[path] = {classes[i]: round(float(v), 6) for v, i in zip(values.tolist(), idx.tolist())}
        print(path)
        width = max(len(classes[i]) for i in idx.tolist())
        for v, i in zip(values.tolist(), idx.tolist()):
            print(f"  {classes[i]:<{width}}  {v:.4f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return status


if __name__ == "__main__":
    sys.exit(main())
