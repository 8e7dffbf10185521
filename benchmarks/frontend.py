"""The front end's throughput: Kaldi log-mel fbank clip by clip on CPU (the official code's way: one torchaudio call
per clip in the data loader) vs batched on CPU vs batched on GPU, and the data loader's clips/s against what a
training step consumes.

    python benchmarks/frontend.py                                   # CPU; GPU rows too when CUDA is present
    python benchmarks/frontend.py --train-step-json benchmarks/results/train_step_cpu_b8.json --json out.json

Clips are synthetic 10 s, 16 kHz noise (the fbank's cost does not depend on the content). The loader rows run
:class:`~maeast_fairseq.data.fbank_dataset.FbankDataset` over a manifest of such wav files (SSAST / EAT front end:
fixed 1024 frames) through a ``torch.utils.data.DataLoader`` (batch 8) with 0 and 2 workers, once computing the fbank
in the loader (default) and once with ``task.fbank_on_device=true`` (the loader only decodes audio; the fbank then
costs the batched device figure).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from types import SimpleNamespace

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from maeast_fairseq.frontend import Frontend, FrontendConfig  # noqa: E402

SR = 16000


def _time(fn, repeats: int, sync=None) -> list:
    out = []
    for _ in range(repeats):
        if sync:
            sync()
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        out.append(time.perf_counter() - t0)
    return out


def fbank_rows(clips: int, seconds: float, batch: int, repeats: int) -> dict:
    fb = Frontend(FrontendConfig()).fbank
    g = torch.Generator().manual_seed(0)
    wav = 0.1 * torch.randn(clips, int(seconds * SR), generator=g)
    rows = {}
    fb(wav[0])  # warm-up
    t = _time(lambda: [fb(w) for w in wav], repeats)
    rows["cpu_clip_by_clip"] = {"clips_per_s": clips / statistics.median(t), "times_s": t}
    fb(wav[:batch])
    t = _time(lambda: [fb(wav[i:i + batch]) for i in range(0, clips, batch)], repeats)
    rows[f"cpu_batched_{batch}"] = {"clips_per_s": clips / statistics.median(t), "times_s": t}
    if torch.cuda.is_available():
        dev = torch.device("cuda")
        fbg = Frontend(FrontendConfig()).to(dev).fbank
        wg = wav.to(dev)
        big = max(batch, 64)
        for b in sorted({batch, big}):
            fbg(wg[:b])
            torch.cuda.synchronize()
            t = _time(lambda b=b: [fbg(wg[i:i + b]) for i in range(0, clips, b)], repeats, torch.cuda.synchronize)
            rows[f"cuda_batched_{b}"] = {"clips_per_s": clips / statistics.median(t), "times_s": t}
        # including the host-to-device copy of the waveforms (what fbank_on_device pays)
        t = _time(lambda: [fbg(wav[i:i + big].to(dev, non_blocking=True)) for i in range(0, clips, big)], repeats,
                  torch.cuda.synchronize)
        rows[f"cuda_batched_{big}_with_h2d"] = {"clips_per_s": clips / statistics.median(t), "times_s": t}
    base = rows["cpu_clip_by_clip"]["clips_per_s"]
    for r in rows.values():
        r["speedup_vs_clip_by_clip"] = r["clips_per_s"] / base
    return rows


def loader_rows(clips: int, seconds: float, batch: int, workers: list) -> dict:
    import soundfile as sf

    from maeast_fairseq.data.fbank_dataset import FbankDataset

    rows = {}
    with tempfile.TemporaryDirectory() as d:
        rng = np.random.default_rng(0)
        lines = [d]
        for i in range(clips):
            x = (0.1 * rng.standard_normal(int(seconds * SR))).astype(np.float32)
            sf.write(os.path.join(d, f"c{i}.wav"), x, SR)
            lines.append(f"c{i}.wav\t{len(x)}")
        path = os.path.join(d, "train.tsv")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        for on_device in (False, True):
            cfg = SimpleNamespace(**vars(FrontendConfig()), fbank_on_device=on_device)
            ds = FbankDataset(path, cfg, shuffle=False, min_frames=16)
            for w in workers:
                dl = torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=w, collate_fn=ds.collater)
                next(iter(dl))  # warm-up (worker start-up excluded below is not possible: counted)
                t0 = time.perf_counter()
                n = sum(b["nsentences"] for b in dl)
                dt = time.perf_counter() - t0
                key = f"loader_{'waveforms' if on_device else 'fbank'}_workers{w}"
                rows[key] = {"clips_per_s": n / dt, "seconds": dt, "clips": n}
    return rows


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clips", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", default="0,2")
    ap.add_argument("--train-step-json", default=None, help="train_step.py's JSON: compare with clips/s per step")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    res = {"clips": args.clips, "seconds": args.seconds, "batch": args.batch, "torch": torch.__version__,
           "threads": torch.get_num_threads(), "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available()
           else None, "command": " ".join(["benchmarks/frontend.py"] + sys.argv[1:])}
    res["fbank"] = fbank_rows(args.clips, args.seconds, args.batch, args.repeats)
    res["loader"] = loader_rows(args.clips, args.seconds, args.batch, [int(w) for w in args.workers.split(",")])
    if args.train_step_json:
        with open(args.train_step_json) as f:
            ts = json.load(f)
        res["train_step"] = {k: {"clips_per_s": v["clips_per_s"], "device": ts["device"]}
                             for k, v in ts["models"].items() if "clips_per_s" in v}
    print(f"fbank, {args.clips} clips of {args.seconds:g} s ({torch.get_num_threads()} threads):")
    for k, v in res["fbank"].items():
        print(f"  {k:<30}{v['clips_per_s']:>10.1f} clips/s{v['speedup_vs_clip_by_clip']:>8.1f}x")
    print(f"data loader (FbankDataset + DataLoader, batch {args.batch}):")
    for k, v in res["loader"].items():
        print(f"  {k:<30}{v['clips_per_s']:>10.1f} clips/s")
    if "train_step" in res:
        print("training step consumes:")
        for k, v in res["train_step"].items():
            print(f"  {k:<30}{v['clips_per_s']:>10.2f} clips/s ({v['device']})")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main()
