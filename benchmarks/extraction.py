"""Embedding extraction speed and memory, float32 vs bfloat16 autocast, for SSAST, MAE-AST and EAT side by side.

    python benchmarks/extraction.py                        # CPU, base size, batch 8 of 10 s clips, fp32 and bf16
    python benchmarks/extraction.py --methods ssast_patch --batches 5 --json out.json
    python benchmarks/extraction.py --paths embed,evaluate # also maeast-evaluate's extraction (all layers, pooled)
    python benchmarks/extraction.py --tiny --batches 1     # the *_tiny.yaml models (seconds; used by the tests)

What is timed is one call of :meth:`maeast_fairseq.embed.Pretrained.embed` on a batch of ``--batch`` synthetic
clips of ``--seconds`` s at 16 kHz (front end included: fbank, normalisation, windows of the training length), with
``precision='fp32'`` or ``'bf16'`` (see :mod:`maeast_fairseq.precision`). The model is the core model of
``examples/pretrain/<method>.yaml`` (its ``model:`` section, the papers' base settings: 12 x 768), randomly
initialised under a fixed seed (speed does not depend on the weights), reduced to its encoder, with the front end of
the yaml's ``task:`` section. Two extraction paths (``--paths``):

* ``embed``: what ``maeast-embed`` does per batch: clip embeddings and the last layer's time sequence
  (``hidden_states=False``);
* ``evaluate``: what ``maeast-evaluate`` does per batch (files aside): every hidden state as a time sequence, then
  the per-clip mean over valid frames of every layer (``evaluation.features.pooled_sums``).

Every (method, precision, path) runs in a fresh subprocess, so ``peak_rss_mb`` (``ru_maxrss``, the whole process:
Python and torch included; ``base_rss_mb`` before the model is built) is its own; 1 untimed warm-up batch, then
``--batches`` timed ones (``clips_per_s`` = batch / median batch time). On CUDA the peak is
``torch.cuda.max_memory_allocated``. The table ends with bf16 / fp32 ratios per method: the speed-up
(clips/s ratio) and the peak memory ratio.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import statistics
import sys
import time
from typing import Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)  # train_step: the configs of the benchmark models

DEFAULT_METHODS = "mae_ast_patch,ssast_patch,eat_base"
PATHS = ("embed", "evaluate")
# the keys of every result row (tests check them)
ROW_KEYS = ("method", "core", "precision", "path", "batch", "seconds", "device", "batch_s_median", "batch_s_min",
            "batch_times_s", "clips_per_s", "audio_s_per_s", "peak_mem_mb", "base_rss_mb", "embed_dim", "layers")


def build_pretrained(method: str, tiny: bool, seed: int = 1):
    """A :class:`~maeast_fairseq.embed.Pretrained` around the randomly initialised core model of benchmark
    ``method`` (``train_step.SPECS``), with the front end of its yaml's task section; and the model config."""
    import torch
    from train_step import load_config

    from maeast_fairseq.checkpoint import build_core
    from maeast_fairseq.embed import Pretrained
    from maeast_fairseq.frontend import FrontendConfig, check_frontend

    core, model_cfg, task_cfg, _, _ = load_config(method, tiny)
    torch.manual_seed(seed)
    model = build_core(core, model_cfg, f"benchmark {method}")
    model.remove_pretraining_modules()
    names = {f.name for f in dataclasses.fields(FrontendConfig)}
    frontend = FrontendConfig(**{k: v for k, v in task_cfg.items() if k in names})
    check_frontend(frontend)
    return Pretrained(model.eval(), frontend, core, default_pooling=model.default_pooling), core, model_cfg


def measure(method: str, precision: str, path: str, batch: int, batches: int, seconds: float, device: str,
            tiny: bool, seed: int = 1) -> dict:
    """Time ``batches`` extraction batches (after one warm-up) of ``method`` in ``precision``, in this process."""
    import torch

    from maeast_fairseq.evaluation.features import pooled_sums
    from maeast_fairseq.precision import model_width, resolve_precision

    base_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    dev = torch.device(device)
    pre, core, model_cfg = build_pretrained(method, tiny, seed)
    pre = pre.to(dev)
    prec = resolve_precision(precision, dev, width=model_width(pre.model))
    g = torch.Generator().manual_seed(seed)
    sr = pre.sample_rate
    wavs = [0.1 * torch.randn(int(round(seconds * sr)), generator=g) for _ in range(batch)]

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def one() -> float:
        sync()
        t0 = time.perf_counter()
        if path == "embed":
            out = pre.embed(wavs, sr, hidden_states=False, precision=prec.name)
            out["clip"].sum().item()
        else:
            out = pre.embed(wavs, sr, hidden_states=True, precision=prec.name)
            sums, counts = pooled_sums(out["hidden_states"], out["frame_padding"])
            sums.sum().item()
        sync()
        return time.perf_counter() - t0

    one()  # warm-up: first-call allocations, oneDNN kernel selection
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = [one() for _ in range(batches)]
    if dev.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    med = statistics.median(times)
    try:
        load = list(os.getloadavg())
    except OSError:  # pragma: no cover
        load = None
    return {
        "method": method, "core": core, "precision": prec.name, "precision_reason": prec.describe(), "path": path,
        "batch": batch, "seconds": seconds, "device": device, "batches": batches,
        "batch_s_median": med, "batch_s_min": min(times), "batch_times_s": times,
        "clips_per_s": batch / med, "audio_s_per_s": batch * seconds / med,
        "peak_mem_mb": peak_mb, "peak_mem_kind": "cuda.max_memory_allocated" if dev.type == "cuda" else
        "ru_maxrss (whole process)", "base_rss_mb": base_rss_mb,
        "embed_dim": int(model_cfg["embed_dim"]), "layers": int(model_cfg["encoder_layers"]),
        "torch_threads": torch.get_num_threads(), "loadavg_after": load,
    }


# -- driver -----------------------------------------------------------------------------------------------------------
def environment(device: str) -> dict:
    import torch

    from maeast_fairseq.precision import bf16_support

    sup = bf16_support(device)
    env = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
           "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
           "bf16_support": {"device": sup.device, "native": sup.native, "units": list(sup.units), "detail": sup.detail}}
    try:
        env["loadavg_1_5_15"] = list(os.getloadavg())
    except OSError:  # pragma: no cover
        pass
    return env


def run_one_subprocess(method: str, precision: str, path: str, args) -> dict:
    from train_step import run_worker

    argv = ["--_worker", f"{method}:{precision}:{path}", "--batch", str(args.batch), "--batches", str(args.batches),
            "--seconds", str(args.seconds), "--device", args.device] + (["--tiny"] * args.tiny)
    return run_worker(__file__, argv, {"method": method, "precision": precision, "path": path})


def ratios(rows: List[dict]) -> Dict[str, dict]:
    """Per (method, path): bf16 / fp32 clips per second (the speed-up) and peak memory."""
    by = {(r["method"], r["path"], r["precision"]): r for r in rows if "error" not in r}
    out = {}
    for (method, path, prec), r in by.items():
        ref = by.get((method, path, "fp32"))
        if prec != "bf16" or ref is None:
            continue
        out[f"{method}/{path}"] = {"speedup": r["clips_per_s"] / ref["clips_per_s"],
                                   "speedup_best": ref["batch_s_min"] / r["batch_s_min"],
                                   "peak_mem": r["peak_mem_mb"] / ref["peak_mem_mb"]}
    return out


def format_table(result: dict) -> str:
    env = result["environment"]
    lines = [f"device {result['device']}, batch {result['batch']} x {result['seconds']:g} s clips at 16 kHz, "
             f"1 warm-up + {result['batches']} timed batches; torch {env['torch']}, {env['torch_threads']} threads",
             f"bf16 support: {env['bf16_support']['detail']} (native: {env['bf16_support']['native']})",
             f"{'method':<16}{'path':<10}{'precision':<10}{'clips/s':>9}{'batch s':>9}{'peak RSS MB':>13}"
             f"{'bf16/fp32':>11}"]
    rat = result["ratios"]
    for r in result["rows"]:
        if "error" in r:
            err = r["error"].strip().splitlines()[-1] if r["error"].strip() else "?"
            lines.append(f"{r['method']:<16}{r['path']:<10}{r['precision']:<10} ERROR: {err}")
            continue
        ratio = rat.get(f"{r['method']}/{r['path']}") if r["precision"] == "bf16" else None
        cell = f"{ratio['speedup']:.2f}x" if ratio else ""
        lines.append(f"{r['method']:<16}{r['path']:<10}{r['precision']:<10}{r['clips_per_s']:>9.2f}"
                     f"{r['batch_s_median']:>9.2f}{r['peak_mem_mb']:>13.0f}{cell:>11}")
    if rat:
        lines.append("bf16/fp32: clips/s ratio (> 1: bf16 faster); peak memory ratio: "
                     + ", ".join(f"{k} {v['peak_mem']:.2f}" for k, v in rat.items()))
    return "\n".join(lines)


def _split(text: str) -> List[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def main(argv: Optional[List[str]] = None) -> dict:
    from train_step import SPECS

    from maeast_fairseq.precision import PRECISIONS

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--methods", default=DEFAULT_METHODS, help=f"comma-separated, of {sorted(SPECS)}")
    ap.add_argument("--precisions", default="fp32,bf16", help=f"comma-separated, of {PRECISIONS} (default fp32,bf16)")
    ap.add_argument("--paths", default="embed", help=f"comma-separated, of {PATHS} (default: embed)")
    ap.add_argument("--batch", type=int, default=8, help="clips per batch (default 8)")
    ap.add_argument("--batches", type=int, default=3, help="timed batches after one warm-up batch (default 3)")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of every synthetic clip (default 10 s)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--tiny", action="store_true", help="the *_tiny.yaml models (smoke test)")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.batch < 1 or args.batches < 1 or args.seconds <= 0:
        ap.error("--batch and --batches must be >= 1, --seconds > 0")
    if args._worker:
        method, precision, path = args._worker.split(":")
        print(json.dumps(measure(method, precision, path, args.batch, args.batches, args.seconds, args.device,
                                 args.tiny)))
        return {}
    methods, precisions, paths = _split(args.methods), _split(args.precisions), _split(args.paths)
    for m in methods:
        if m not in SPECS:
            ap.error(f"unknown method {m!r}; choose from {sorted(SPECS)}")
    for p in precisions:
        if p not in PRECISIONS:
            ap.error(f"unknown precision {p!r}; choose from {PRECISIONS}")
    for p in paths:
        if p not in PATHS:
            ap.error(f"unknown path {p!r}; choose from {PATHS}")
    result = {"device": args.device, "batch": args.batch, "batches": args.batches, "seconds": args.seconds,
              "tiny": args.tiny, "command": " ".join([os.path.relpath(__file__, ROOT)] + sys.argv[1:]),
              "environment": environment(args.device), "rows": [], "ratios": {}}
    print(f"bf16 support: {result['environment']['bf16_support']['detail']}", file=sys.stderr, flush=True)
    for m in methods:
        for path in paths:
            for p in precisions:
                t0 = time.time()
                result["rows"].append(run_one_subprocess(m, p, path, args))
                print(f"[{m} {path} {p}] done in {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
                result["ratios"] = ratios(result["rows"])
                if args.json:  # partial results survive an interrupted run
                    _write(args.json, result)
    print(format_table(result))
    if args.json:
        _write(args.json, result)
    return result


def _write(path: str, result: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
