"""``maeast-stats``: log-mel fbank mean and std of a corpus, for ``norm: dataset`` (SSAST / EAT).

::

    maeast-stats DATA_DIR_OR_TSV [--split train] [--window hanning|povey] [--num-mel-bins 128]
                 [--sample-rate 16000] [--no-subtract-waveform-mean] [--max-clips N] [--seed 42]
                 [--target-frames 1024] [--json OUT] [--workers 4] [--progress-every 500]

Each clip goes through the same front end as training (:mod:`maeast_fairseq.frontend`):
``load_audio`` (mono, resampled to ``--sample-rate``), waveform mean removed (SSAST/EAT; turn off
with ``--no-subtract-waveform-mean``), Kaldi fbank with the chosen window and mel bins.  The
statistics are one scalar mean and one scalar std (population std, ddof 0) over every
(frame, bin) value, accumulated in float64 by merging per-clip moments (Chan et al.).

By default only real frames count.  ``--target-frames T`` first truncates / zero-pads every clip
to ``T`` frames in log-mel space, as SSAST's dataloader does before its statistics were taken, so
padded zeros are included (use it to reproduce SSAST-style numbers).

``--max-clips N`` uses a seeded random subset of N clips.  Clips that cannot be read or are too
short for one frame are skipped and reported.  The result is printed with the override to paste,
``task.norm_mean=... task.norm_std=...``, and optionally written as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import sys
import time
from typing import Sequence

import torch

from maeast_fairseq.audio import AudioError, load_audio
from maeast_fairseq.data.manifest import ManifestEntry, ManifestError, map_in_threads, read_manifest, resolve_manifest
from maeast_fairseq.fbank import WINDOW_TYPES
from maeast_fairseq.frontend import Frontend, FrontendConfig

PROG = "maeast-stats"
#: How many skipped clips to name in the report.
SHOW_FIRST = 5


def log(message: str) -> None:
    print(f"[{PROG}] {message}", file=sys.stderr, flush=True)


@dataclasses.dataclass
class Moments:
    """Count, mean and sum of squared deviations of a set of values, merged exactly in float64."""

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def add(self, values: torch.Tensor) -> None:
        """Merge all elements of ``values`` (any shape) into the running moments."""
        x = values.detach().to(torch.float64).reshape(-1)
        n = x.numel()
        if n == 0:
            return
        mean = float(x.mean())
        m2 = float(((x - mean) ** 2).sum())
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.count * n / total
        self.count = total

    @property
    def std(self) -> float:
        """Population standard deviation (ddof 0)."""
        return math.sqrt(self.m2 / self.count) if self.count else float("nan")


def choose_clips(entries: Sequence[ManifestEntry], max_clips: int | None, seed: int) -> list[ManifestEntry]:
    """All entries, or a seeded random subset of ``max_clips`` kept in manifest order."""
    if max_clips is None or max_clips >= len(entries):
        return list(entries)
    picked = sorted(random.Random(seed).sample(range(len(entries)), max_clips))
    return [entries[i] for i in picked]


def compute_stats(entries: Sequence[ManifestEntry], frontend: FrontendConfig, *, target_frames: int | None = None,
                  workers: int = 4, progress_every: int = 500) -> dict:
    """Mean / std of the log-mel values of ``entries``; returns a dict (see :func:`main` for the keys)."""
    # log-mel frames of one waveform as the training dataset computes them
    frontend_module = Frontend(frontend)
    fixed = None
    if target_frames is not None:
        # The dataset's own 'fixed' length policy, without normalisation.
        fixed = Frontend(dataclasses.replace(frontend, norm="none", length_policy="fixed", target_frames=target_frames))

    def load(entry: ManifestEntry) -> torch.Tensor | str:
        try:
            return load_audio(entry.path, frontend.sample_rate)
        except AudioError as exc:
            return str(exc)

    moments = Moments()
    real_frames = 0
    skipped: list[tuple[ManifestEntry, str]] = []
    start = time.monotonic()
    for done, (entry, wav) in enumerate(zip(entries, map_in_threads(load, entries, workers)), start=1):
        if isinstance(wav, str):
            skipped.append((entry, wav))
        else:
            feats = frontend_module.log_mel(wav)
            if feats.shape[0] == 0:
                skipped.append((entry, f"{wav.numel()} samples at {frontend.sample_rate} Hz give no full frame"))
            else:
                real_frames += feats.shape[0]
                if fixed is not None:
                    padded, _, _ = fixed.collate([feats])
                    feats = padded[0]
                moments.add(feats)
        if progress_every > 0 and (done % progress_every == 0 or done == len(entries)):
            elapsed = time.monotonic() - start
            log(f"{done}/{len(entries)} clips ({elapsed:.1f} s, {done / max(elapsed, 1e-9):.1f} clips/s), "
                f"running mean {moments.mean:.5f} std {moments.std:.5f}")
    return {
        "mean": moments.mean,
        "std": moments.std,
        "num_clips": len(entries) - len(skipped),
        "num_skipped": len(skipped),
        "skipped": [{"line": entry.line, "path": entry.path, "reason": reason} for entry, reason in skipped],
        "num_real_frames": real_frames,
        "num_values": moments.count,
    }


EPILOG = """examples:
  maeast-stats data/audioset --max-clips 20000 --target-frames 1024 --json stats.json   # SSAST/EAT style
  maeast-stats data/esc50/train.tsv

then pass the printed override to training, e.g.
  fairseq-hydra-train ... task.norm_mean=-4.2677393 task.norm_std=4.5689974
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Compute a corpus's log-mel fbank mean and std (for task.norm_mean / task.norm_std).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("data", metavar="DATA_DIR_OR_TSV", help="data folder with {split}.tsv, or a .tsv manifest")
    parser.add_argument("--split", default="train", help="split to use when DATA is a folder (default: %(default)s)")
    parser.add_argument("--window", default="hanning", choices=WINDOW_TYPES,
                        help="fbank window; hanning: SSAST/EAT, povey: MAE-AST (default: %(default)s)")
    parser.add_argument("--num-mel-bins", type=int, default=128, metavar="N", help="mel bins (default: %(default)s)")
    parser.add_argument("--sample-rate", type=int, default=16000, metavar="HZ",
                        help="audio is resampled to this rate (default: %(default)s)")
    parser.add_argument("--subtract-waveform-mean", action=argparse.BooleanOptionalAction, default=True,
                        help="remove each waveform's mean before the fbank; SSAST/EAT: yes, MAE-AST: no "
                             "(default: yes)")
    parser.add_argument("--max-clips", type=int, metavar="N", help="use a seeded random subset of N clips")
    parser.add_argument("--seed", type=int, default=42, help="seed of the --max-clips subset (default: %(default)s)")
    parser.add_argument("--target-frames", type=int, metavar="T",
                        help="truncate / zero-pad every clip to T frames before the stats (SSAST style); "
                             "default: real frames only")
    parser.add_argument("--json", metavar="OUT", help="also write the result to this JSON file")
    parser.add_argument("--workers", type=int, default=4, help="threads loading audio (default: %(default)s)")
    parser.add_argument("--progress-every", type=int, default=500, metavar="N",
                        help="report progress every N clips on stderr, 0 = never (default: %(default)s)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.max_clips is not None and args.max_clips < 1:
        parser.error("--max-clips must be >= 1")
    if args.target_frames is not None and args.target_frames < 1:
        parser.error("--target-frames must be >= 1")
    try:
        tsv = resolve_manifest(args.data, args.split)
        _, entries = read_manifest(tsv)
    except ManifestError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        print(f"{PROG}: check the manifest with: maeast-manifest --check {args.data}", file=sys.stderr)
        return 1
    if not entries:
        print(f"{PROG}: error: {tsv} lists no clips", file=sys.stderr)
        return 1
    frontend = FrontendConfig(sample_rate=args.sample_rate, num_mel_bins=args.num_mel_bins, window_type=args.window,
                              subtract_waveform_mean=args.subtract_waveform_mean)
    chosen = choose_clips(entries, args.max_clips, args.seed)
    log(f"{tsv}: {len(chosen)} of {len(entries)} clips, window {args.window}, {args.num_mel_bins} mel bins, "
        + (f"padded / truncated to {args.target_frames} frames" if args.target_frames else "real frames only"))

    result = compute_stats(chosen, frontend, target_frames=args.target_frames, workers=args.workers,
                           progress_every=args.progress_every)
    if result["num_skipped"]:
        log(f"skipped {result['num_skipped']} clip(s); first {SHOW_FIRST}:")
        for item in result["skipped"][:SHOW_FIRST]:
            log(f"  {tsv}:{item['line']}: {item['reason']}")
    if result["num_values"] == 0:
        print(f"{PROG}: error: no usable clip in {tsv}", file=sys.stderr)
        return 1

    override = f"task.norm_mean={result['mean']:.8g} task.norm_std={result['std']:.8g}"
    result.update({
        "manifest": tsv,
        "window": args.window,
        "num_mel_bins": args.num_mel_bins,
        "sample_rate": args.sample_rate,
        "subtract_waveform_mean": args.subtract_waveform_mean,
        "target_frames": args.target_frames,
        "max_clips": args.max_clips,
        "seed": args.seed,
        "override": override,
    })
    print(f"clips: {result['num_clips']} (skipped {result['num_skipped']}), real frames: {result['num_real_frames']}")
    print(f"mean: {result['mean']:.8g}")
    print(f"std:  {result['std']:.8g}")
    print(override)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
