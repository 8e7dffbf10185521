"""``maeast-embed``: embed a folder (or manifest) of audio files with a checkpoint of ours, into one ``.npz``.

::

    maeast-embed CKPT AUDIO_DIR_OR_MANIFEST --out FILE.npz [--layer N] [--pooling mean|cls] [--frames]
                 [--batch-size 8] [--ext wav,flac,ogg,mp3] [--device cpu|cuda] [--precision auto|fp32|bf16]
                 [--skip-errors]

``CKPT`` is a fairseq checkpoint (``checkpoint_best.pt``) or an exported folder; fairseq is not needed.
``AUDIO_DIR_OR_MANIFEST`` is a folder (searched recursively for ``--ext`` files) or a ``.tsv`` manifest
(``maeast-manifest``'s format). Every file is read as mono and resampled to the model's rate; the model's own front
end (window, normalisation statistics) is applied. Long files are encoded in windows of the training length.
``--precision auto`` (the default) runs the encoder in bfloat16 autocast where the device computes bfloat16
natively (a CUDA card of compute capability >= 8.0; a CPU with AMX-BF16 / AVX512-BF16 for a model at least 384
wide), else in float32; the choice is printed and stored; the embeddings are float32 either way.

The ``.npz`` holds (no pickled objects, ``np.load(FILE)`` reads it):

* ``paths`` (N,) str: the files, relative to the folder (or as written in the manifest);
* ``clip`` (N, D) float32: clip embeddings (``--pooling``; default: the method's, EAT CLS, else mean);
* with ``--frames``: ``frames`` (sum of T_i, n_freq * D) float32, the time sequences of all files one after the
  other, file ``i`` in rows ``frame_offsets[i]:frame_offsets[i + 1]``; ``frame_offsets`` (N + 1,) int64;
* ``frame_rate`` (Hz), ``layer`` (the hidden state used: 0 = encoder input ... L = last), ``pooling``,
  ``precision`` (``fp32`` or ``bf16``: what the encoder ran in), ``sample_rate``, ``model_name``, ``checkpoint``;
  ``skipped`` (str) lists unreadable files with ``--skip-errors``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import List, Tuple

import numpy as np

PROG = "maeast-embed"
DEFAULT_EXT = "wav,flac,ogg,mp3"


def log(message: str) -> None:
    print(f"[{PROG}] {message}", file=sys.stderr, flush=True)


def list_inputs(src: str, exts: List[str]) -> List[Tuple[str, str]]:
    """``[(absolute path, name to record), ...]`` from a folder or a ``.tsv`` manifest, in a stable order."""
    if os.path.isdir(src):
        found = []
        for root, dirs, files in os.walk(src):
            dirs.sort()
            for name in sorted(files):
                if name.rsplit(".", 1)[-1].lower() in exts:
                    full = os.path.join(root, name)
                    found.append((full, os.path.relpath(full, src)))
        return found
    if os.path.isfile(src) and src.endswith(".tsv"):
        from ..data.manifest import read_manifest

        _, entries = read_manifest(src)
        return [(e.path, e.rel) for e in entries]
    raise SystemExit(f"[{PROG}] {src!r} is neither a folder nor a .tsv manifest")


def main(argv=None) -> int:
    from ..precision import PRECISIONS, model_width, resolve_precision

    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="fairseq checkpoint (.pt) or exported model folder")
    p.add_argument("inputs", help="folder of audio files (recursive) or .tsv manifest")
    p.add_argument("--out", required=True, help="output .npz file")
    p.add_argument("--layer", type=int, default=None,
                   help="hidden state to use: 0 = encoder input ... L = last (default), negative from the end")
    p.add_argument("--pooling", choices=("mean", "cls"), default=None,
                   help="clip pooling (default: the method's: EAT cls, SSAST / MAE-AST mean over valid tokens)")
    p.add_argument("--frames", action="store_true", help="also store the frame-level time sequences")
    p.add_argument("--batch-size", type=int, default=8, help="files per forward pass (default: 8)")
    p.add_argument("--ext", default=DEFAULT_EXT, help=f"extensions searched in a folder (default: {DEFAULT_EXT})")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available, else cpu)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="encoder arithmetic: auto (default: bf16 autocast where the device computes bfloat16 "
                        "natively and, on a CPU, the model is >= 384 wide; else fp32), fp32 or bf16")
    p.add_argument("--skip-errors", action="store_true", help="skip unreadable files (listed) instead of stopping")
    args = p.parse_args(argv)
    if args.batch_size < 1:
        p.error("--batch-size must be >= 1")

    import torch

    from ..audio import AudioError, audio_info, load_audio
    from ..checkpoint import load_pretrained

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    t0 = time.time()
    try:
        model = load_pretrained(args.checkpoint).to(device).eval()
    except (OSError, ValueError) as err:  # missing file, not a checkpoint, a checkpoint of another model
        raise SystemExit(f"[{PROG}] cannot load {args.checkpoint}: {err}") from None
    log(f"{model.name} model from {args.checkpoint} on {device}: {model.num_hidden_states} hidden states, "
        f"D={model.embed_dim}, {model.frame_rate:g} frames/s, pooling {args.pooling or model.default_pooling}")
    prec = resolve_precision(args.precision, device, width=model_width(model.model))
    log(prec.describe())
    if args.pooling == "cls" and not model.has_cls:
        raise SystemExit(f"[{PROG}] --pooling cls: the {model.name} model has no CLS token; use --pooling mean")
    n_hidden = model.num_hidden_states
    if args.layer is not None and not -n_hidden <= args.layer < n_hidden:
        raise SystemExit(f"[{PROG}] --layer {args.layer}: the model has hidden states 0 ... {n_hidden - 1}")
    if args.pooling == "cls" and args.layer is not None and args.layer % n_hidden != n_hidden - 1:
        raise SystemExit(f"[{PROG}] --pooling cls needs the last layer (the CLS output of inner layers is not "
                         "returned by the encoder)")
    files = list_inputs(args.inputs, [e.strip().lower().lstrip(".") for e in args.ext.split(",") if e.strip()])
    if not files:
        raise SystemExit(f"[{PROG}] no audio files found in {args.inputs!r} (extensions: {args.ext})")

    # sort by duration (header only) so that a batch holds similar lengths; results do not depend on the batch
    durations, skipped = [], []
    for full, rel in files:
        try:
            n, sr, _ = audio_info(full)
            durations.append(n / sr)
        except AudioError as err:
            if not args.skip_errors:
                raise SystemExit(f"[{PROG}] {err} (use --skip-errors to go on without it)") from None
            skipped.append(rel)
            durations.append(-1.0)
    order = [i for i in sorted(range(len(files)), key=lambda i: -durations[i]) if durations[i] >= 0]
    total_s = sum(d for d in durations if d > 0)
    log(f"{len(order)} files, {total_s / 60:.1f} min of audio -> {args.out}")

    clips, frames = {}, {}
    done, done_s, last_log = 0, 0.0, 0.0
    layer_used = pooling_used = None
    for s in range(0, len(order), args.batch_size):
        batch = order[s: s + args.batch_size]
        wavs, ok = [], []
        for i in batch:
            try:
                wavs.append(load_audio(files[i][0], model.sample_rate))
                ok.append(i)
            except AudioError as err:
                if not args.skip_errors:
                    raise SystemExit(f"[{PROG}] {err} (use --skip-errors to go on without it)") from None
                skipped.append(files[i][1])
        if not wavs:
            continue
        out = model.embed(wavs, model.sample_rate, layer=args.layer, pooling=args.pooling,
                          hidden_states=False, precision=prec.name)
        layer_used, pooling_used = out["layer"], out["pooling"]
        clip = out["clip"].float().cpu().numpy()
        fr = out["frames"].float().cpu().numpy() if args.frames else None
        lengths = out["frame_lengths"].cpu().numpy()
        for j, i in enumerate(ok):
            clips[i] = clip[j]
            if fr is not None:
                frames[i] = fr[j, : lengths[j]]
        done += len(batch)
        done_s += sum(durations[i] for i in ok)
        now = time.time()
        if now - last_log > 2.0 or done == len(order):
            last_log = now
            el = now - t0
            log(f"{done}/{len(order)} files ({100.0 * done / len(order):.0f} %), {done_s / max(el, 1e-9):.1f} s "
                f"of audio per second")

    kept = [i for i in range(len(files)) if i in clips]  # the input order
    result = {
        "paths": np.array([files[i][1] for i in kept], dtype=str),
        "clip": np.stack([clips[i] for i in kept]).astype(np.float32) if kept else
        np.zeros((0, model.embed_dim), np.float32),
        "frame_rate": np.float64(model.frame_rate),
        "layer": np.int64(layer_used if layer_used is not None else model.num_hidden_states - 1),
        "pooling": np.array(pooling_used or args.pooling or model.default_pooling),
        "precision": np.array(prec.name),
        "sample_rate": np.int64(model.sample_rate),
        "model_name": np.array(model.name),
        "checkpoint": np.array(os.path.abspath(args.checkpoint)),
        "skipped": np.array(skipped, dtype=str),
    }
    if args.frames:
        seqs = [frames[i] for i in kept]
        result["frames"] = np.concatenate(seqs).astype(np.float32) if seqs else \
            np.zeros((0, model.frame_dim), np.float32)
        result["frame_offsets"] = np.cumsum([0] + [len(x) for x in seqs]).astype(np.int64)
    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    with open(args.out, "wb") as f:  # the exact name (np.savez would append .npz to a path)
        np.savez(f, **result)
    log(f"wrote {args.out}: clip {result['clip'].shape}"
        + (f", frames {result['frames'].shape}" if args.frames else "")
        + (f"; skipped {len(skipped)} unreadable file(s): {skipped[:5]}" if skipped else "")
        + f" in {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
