"""Cost as work grows: time and peak memory of SSAST, MAE-AST and EAT against clip length.

    python benchmarks/length_scaling.py --json benchmarks/results/length_scaling_cpu.json \\
        --png benchmarks/results/length_scaling_cpu.png                  # base models, 2.5 ... 40 s, all modes
    python benchmarks/length_scaling.py --methods mae_ast_patch --seconds 2.5 --modes infer   # one point
    python benchmarks/length_scaling.py --tiny --seconds 1,2 --repeats 1 --warmup 0           # tiny models (tests)

For every method (``--methods``: SSAST patch one pass, MAE-AST patch, EAT base; the ``model:`` sections of
``examples/pretrain/<name>.yaml``, built as ``train_step.py`` builds them) and clip length (``--seconds``; 100 fbank
frames per second, rounded to a whole number of patches), three modes (``--modes``):

* ``train``: one pretraining step (forward + loss + backward + AdamW step, + EAT's EMA teacher update) at batch
  ``--batch`` (1 by default): :func:`train_step.measure` with ``frames=`` the clip length;
* ``infer``: ``model.extract_features(x, padding)`` under ``torch.no_grad()``, batch 1, the whole clip at once
  (the pretraining-only parts removed, as :func:`maeast_fairseq.checkpoint.load_pretrained` does);
* ``embed``: :meth:`maeast_fairseq.embed.Pretrained.embed` on a raw waveform of that length (front end included):
  a clip longer than the training length is cut into windows of at most that length (``Pretrained.chunk_plan``)
  encoded ``--chunk-batch`` at a time (default 1: one window at a time, so the encoder's memory stays flat in
  length; the API's own default is 8), ``hidden_states=False``. The front end computes the log-mel of the whole
  waveform at once: its temporaries grow with the length (~0.8 MB per second of audio, measured on a 600 s clip).

The reported time is the median over ``--repeats`` runs after ``--warmup`` untimed ones; memory is the peak of the
point's own process: ``ru_maxrss`` on CPU (the whole process: runtime, weights, optimizer state, activations;
``base_rss_mb`` = the RSS before the model is built), ``torch.cuda.max_memory_allocated`` on CUDA.

Every point runs in a fresh process forked from a server process that has imported torch (``torch._dynamo``
included, which torch's optimizers import), the project and this script, and run nothing else (multiprocessing's
``forkserver``): its ``ru_maxrss`` is that point's alone, every point starts from the same base RSS whatever its
mode (so rows compare across modes), and the imports are paid once. A point that would exceed ``--max-rss-gb``
(estimated from the shorter points of the same method and mode, and enforced by watching the process's RSS) or runs
out of memory is recorded as skipped, with the reason.

Inputs longer than the pretraining length (1024 frames; 256 for the tiny SSAST / EAT):

* SSAST: learned positions for the pretraining grid (64 x 8); a longer input interpolates the grid bilinearly in
  time, a shorter one takes its first time columns (``position_crop: start``);
* MAE-AST: sinusoidal positions over the flattened token index: any length as it is;
* EAT: a fixed 2-D sin-cos table of ``max_time_patches`` (768 = 123 s) time rows, sliced to the clip; a longer clip
  is refused by the model, so the table is enlarged with the model override ``max_time_patches`` (recorded in the
  row's ``model_overrides`` and notes);
* the embedding API never feeds a window longer than the training length: positions as in pretraining.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import time
import traceback
from typing import Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _p in (ROOT, HERE):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import train_step  # noqa: E402  (benchmarks/train_step.py: configs, the training-step measurement, FLOPs)

DEFAULT_METHODS = "ssast_patch,mae_ast_patch,eat_base"
MODES = ("train", "infer", "embed")
DEFAULT_SECONDS = "2.5,5,10,20,40"
FRAMES_PER_SECOND = 100  # fbank frames per second of audio (10 ms hop)
MODE_LABEL = {"train": "training step", "infer": "inference", "embed": "embed (chunked)"}
LINESTYLE = {"train": "-", "infer": "--", "embed": ":"}

# the keys every measured row carries (the test checks them)
ROW_KEYS = ("method", "mode", "seconds", "frames", "tokens", "batch", "time_s", "times_s", "peak_mem_mb",
            "peak_mem_kind", "peak_rss_mb", "base_rss_mb", "gflop", "precision", "model_overrides", "notes")

# modules the fork server imports once; every point's process inherits them (and this module: see _preload).
# torch._dynamo: torch.optim imports it when an optimizer is built (1.5 s, ~70 MB); preloaded, every mode has it
PRELOAD = ["torch", "torch._dynamo", "omegaconf", "maeast_fairseq.checkpoint", "maeast_fairseq.embed",
           "maeast_fairseq.core.losses", "maeast_fairseq.core.rng", "maeast_fairseq.precision", "train_step"]


# -- geometry and long inputs -----------------------------------------------------------------------------------------
def clip_frames(seconds: float, patch_time: int) -> int:
    """Fbank frames of a ``seconds`` long clip, rounded (half up) to a whole number of patches, at least one."""
    return max(1, int(math.floor(seconds * FRAMES_PER_SECOND / patch_time + 0.5))) * patch_time


def wave_samples(frames: int, sample_rate: int = 16000) -> int:
    """Samples of a waveform whose Kaldi fbank (25 ms window, 10 ms hop, snip_edges) has exactly ``frames`` frames."""
    return (frames - 1) * sample_rate // 100 + sample_rate * 25 // 1000


def long_input_handling(core: str, model: dict, task: dict, frames: int, mode: str) -> Tuple[dict, str]:
    """(model overrides, note) for a ``frames`` long input of ``mode``: what the model does with a length other
    than its pretraining one, and the override that makes EAT accept a clip beyond its position table."""
    patch = int(model["patch_time"])
    n_time = frames // patch
    if mode == "embed":
        from maeast_fairseq.embed import default_chunk_frames

        chunk = default_chunk_frames(_frontend_config(task))
        windows = math.ceil(n_time / (chunk // patch))
        note = f"{windows} window{'s' if windows > 1 else ''} of <= {chunk} frames"
        return {}, note + ("; positions as in pretraining" if windows > 1 else "")
    if core == "ssast":
        n_t = int(model.get("target_frames", 1024)) // patch
        if n_time > n_t:
            return {}, f"learned positions interpolated {n_t} -> {n_time} time columns"
        if n_time < n_t:
            return {}, f"learned positions: first {n_time} of {n_t} time columns"
        return {}, f"learned positions: the {n_t}-column table"
    if core == "mae_ast":
        return {}, "sinusoidal positions (any length)"
    if core == "eat":
        rows = int(model.get("max_time_patches", 768))
        if n_time > rows:
            return {"max_time_patches": n_time}, f"max_time_patches raised {rows} -> {n_time} (sin-cos table)"
        return {}, f"sin-cos table: {n_time} of {rows} rows"
    raise ValueError(f"unknown core model {core!r}")


def inference_gflop(core: str, model: dict, frames: int, chunk: Optional[int] = None) -> float:
    """Forward GFLOPs of the encoder over every token of the clip (matmuls only, as ``train_step.flops_per_clip``):
    patch embedding + layers over N (+ SSAST's 2 extra tokens / EAT's CLS); ``chunk``: summed over the windows."""
    if chunk and frames > chunk:
        patch = int(model["patch_time"])
        per = (chunk // patch) * patch
        full, rest = divmod(frames, per)
        return full * inference_gflop(core, model, per) + (inference_gflop(core, model, rest) if rest else 0.0)
    t = train_step.token_counts(core, model, frames)
    n, d, f = t["tokens"], int(model["embed_dim"]), int(model["ffn_dim"])
    extra = {"ssast": int(model.get("num_extra_tokens", 2)), "eat": 1}.get(core, 0)
    p = int(model["patch_time"]) * int(model["patch_freq"])
    total = train_step.linear_flops(n, p, d) + int(model["encoder_layers"]) * train_step.layer_flops(n + extra, d, f)
    return total / 1e9


# -- one point, in its own process ------------------------------------------------------------------------------------
def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _frontend_config(task: dict):
    import dataclasses

    from maeast_fairseq.frontend import FrontendConfig

    names = {f.name for f in dataclasses.fields(FrontendConfig)}
    return FrontendConfig(**{k: v for k, v in task.items() if k in names})


def run_point(spec: dict) -> dict:
    """Measure one (method, mode, frames) point in this process (see the module doc). Returns the row."""
    mode, method, frames = spec["mode"], spec["method"], int(spec["frames"])
    if mode == "train":
        r = train_step.measure(method, spec["batch"], spec["repeats"], spec["warmup"], spec["device"], spec["tiny"],
                               seed=spec.get("seed", 1), precision=spec["precision"], frames=frames,
                               model_overrides=spec["model_overrides"])
        return {"time_s": r["step_s_median"], "times_s": r["step_times_s"], "peak_mem_mb": r["peak_mem_mb"],
                "peak_mem_kind": r["peak_mem_kind"], "peak_rss_mb": _maxrss_mb(), "base_rss_mb": r["base_rss_mb"],
                "gflop": r["flops_per_clip"]["training"] * spec["batch"] / 1e9, "loss": r["loss"],
                "precision": r["precision"], "precision_reason": r["precision_reason"],
                "params_trainable": r["params_trainable"]}

    import inspect

    import torch

    from maeast_fairseq.checkpoint import build_core
    from maeast_fairseq.embed import Pretrained
    from maeast_fairseq.precision import resolve_precision

    base_rss_mb = _maxrss_mb()
    core, model_cfg, task_cfg, _, _ = train_step.load_config(method, spec["tiny"])
    model_cfg.update(spec["model_overrides"])
    dev = torch.device(spec["device"])
    prec = resolve_precision(spec["precision"], dev, width=int(model_cfg["embed_dim"]))
    torch.manual_seed(spec.get("seed", 1))
    model = build_core(core, model_cfg)
    model.remove_pretraining_modules()  # what load_pretrained keeps: the encoder
    model = model.to(dev).eval()
    model_rss_mb = _maxrss_mb()  # the peak so far: building the whole pretraining model (as load_pretrained does)
    gen = torch.Generator().manual_seed(spec.get("seed", 1))
    out_info: Dict[str, object] = {}
    if mode == "infer":
        x = torch.randn(1, frames, int(model_cfg["num_mel_bins"]), generator=gen).to(dev)
        padding = torch.zeros(1, frames, dtype=torch.bool, device=dev)

        def run():
            with torch.no_grad(), prec.autocast(dev):
                return model.extract_features(x, padding)["x"].shape[1]

        gflop = inference_gflop(core, model_cfg, frames)
    elif mode == "embed":
        fe = _frontend_config(task_cfg)
        pre = Pretrained(model, fe, core, default_pooling=model.default_pooling).to(dev).eval()
        wav = 0.1 * torch.randn(wave_samples(frames, fe.sample_rate), generator=gen)
        kw = {"hidden_states": False, "chunk_batch_size": spec["chunk_batch"]}
        native = "precision" in inspect.signature(pre.embed).parameters
        if native:
            kw["precision"] = prec.name

        def run():
            with prec.autocast(dev) if not native else contextlib.nullcontext():
                return pre.embed([wav], sample_rate=fe.sample_rate, **kw)["frame_lengths"].tolist()[0]

        plan = pre.chunk_plan(frames)
        out_info = {"windows": len(plan), "window_frames": pre.chunk_frames, "chunk_batch": spec["chunk_batch"]}
        gflop = inference_gflop(core, model_cfg, frames, pre.chunk_frames)
    else:
        raise ValueError(f"unknown mode {mode!r}")

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(spec["warmup"]):
        run()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(max(1, spec["repeats"])):
        sync()
        t0 = time.perf_counter()
        size = run()
        sync()
        times.append(time.perf_counter() - t0)
    peak_rss = _maxrss_mb()
    cuda = dev.type == "cuda"
    return dict(out_info, time_s=statistics.median(times), times_s=times,
                peak_mem_mb=torch.cuda.max_memory_allocated() / 2**20 if cuda else peak_rss,
                peak_mem_kind="cuda.max_memory_allocated" if cuda else "ru_maxrss (whole process)",
                peak_rss_mb=peak_rss, base_rss_mb=base_rss_mb, model_rss_mb=model_rss_mb, gflop=gflop, output_size=size,
                precision=prec.name, precision_reason=prec.describe())


def _point_worker(conn, spec: dict) -> None:
    """Entry of a point's process: the row, ``{"skipped": why}`` on out-of-memory, ``{"error": traceback}``."""
    try:
        result = run_point(spec)
    except MemoryError as err:
        result = {"skipped": f"out of memory (MemoryError: {err})"}
    except Exception as err:  # noqa: BLE001 - reported in the row
        if "out of memory" in str(err).lower():
            result = {"skipped": f"out of memory ({type(err).__name__}: {str(err).splitlines()[0]})"}
        else:
            result = {"error": traceback.format_exc()[-3000:]}
    conn.send(result)
    conn.close()


def _rss_mb(pid: int) -> Optional[float]:
    """Current resident set size of process ``pid`` (Linux /proc), or None where it cannot be read."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def run_in_fresh_process(ctx, spec: dict, max_rss_mb: float, poll_s: float = 0.05) -> dict:
    """``run_point(spec)`` in a new process of ``ctx``; killed (and the row skipped) if its RSS passes
    ``max_rss_mb``; a process that dies without answering (e.g. the kernel's OOM killer) is recorded as skipped."""
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_point_worker, args=(send, spec), daemon=True)
    proc.start()
    send.close()
    result, seen = None, 0.0
    try:
        while True:
            if recv.poll(poll_s):
                try:
                    result = recv.recv()
                except EOFError:  # died while sending
                    result = None
                break
            rss = _rss_mb(proc.pid)
            if rss is not None:
                seen = max(seen, rss)
                if rss > max_rss_mb:
                    proc.kill()
                    result = {"skipped": f"exceeded --max-rss-gb {max_rss_mb / 1024:g}: RSS reached {rss:.0f} MB "
                                         "(process stopped)"}
                    break
            if not proc.is_alive() and not recv.poll(0):
                break
    finally:
        proc.join(timeout=30)
        if proc.is_alive():  # pragma: no cover
            proc.kill()
            proc.join()
    if result is None:
        code = proc.exitcode
        why = "killed by signal 9 (out of memory?)" if code == -9 else f"process ended with exit code {code}"
        result = {"skipped": f"{why}; largest RSS seen {seen:.0f} MB"}
    return result


def estimate_peak_mb(previous: List[dict], tokens: int) -> Optional[float]:
    """Peak memory of a ``tokens`` long point extrapolated from the measured shorter points of the same method and
    mode: base + (peak - base) x (tokens ratio)^e, e fitted on the last two points (clamped to [1, 2]; 1 with one
    point). The static part (weights, optimizer state) is scaled too, so the estimate errs high."""
    pts = [(r["tokens"], r["peak_rss_mb"] - r["base_rss_mb"], r["base_rss_mb"]) for r in previous
           if "time_s" in r and r["peak_rss_mb"] > r["base_rss_mb"]]
    if not pts:
        return None
    t1, g1, b1 = pts[-1]
    e = 1.0
    if len(pts) >= 2:
        t0, g0, _ = pts[-2]
        if t1 > t0 and g1 > g0 > 0:
            e = min(2.0, max(1.0, math.log(g1 / g0) / math.log(t1 / t0)))
    return b1 + g1 * (tokens / t1) ** e


# -- driver -----------------------------------------------------------------------------------------------------------
def environment(device: str) -> dict:
    import torch

    from maeast_fairseq.precision import cpu_model_name

    env = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
           "cpu": cpu_model_name(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}
    try:
        env["loadavg_1_5_15"] = list(os.getloadavg())
    except OSError:  # pragma: no cover
        pass
    if device == "cuda" and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def plan_points(args) -> List[dict]:
    """Every (method, mode, seconds) point, shortest first within a method and mode (the memory guard's order)."""
    points = []
    for method in args.methods:
        core, model, task, _, _ = train_step.load_config(method, args.tiny)
        for mode in args.modes:
            for seconds in sorted(args.seconds):
                frames = clip_frames(seconds, int(model["patch_time"]))
                overrides, note = long_input_handling(core, model, task, frames, mode)
                t = train_step.token_counts(core, model, frames)
                points.append({"method": method, "core": core, "mode": mode, "seconds": seconds, "frames": frames,
                               "tokens": t["tokens"], "n_time": t["n_time"], "n_freq": t["n_freq"],
                               "batch": args.batch if mode == "train" else 1, "model_overrides": overrides,
                               "notes": note})
    return points


def _preload() -> List[str]:
    """:data:`PRELOAD` + this module: as ``__main__`` when run as a script, else under its import name (preloading
    another program's ``__main__`` would run it in the fork server)."""
    main = sys.modules.get("__main__")
    is_main = os.path.abspath(getattr(main, "__file__", None) or "") == os.path.abspath(__file__)
    return ["__main__" if is_main else __name__] + PRELOAD


def measure_all(args, log=None) -> List[dict]:
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(_preload())
    limit_mb = args.max_rss_gb * 1024.0
    rows: List[dict] = []
    points = plan_points(args)
    for i, pt in enumerate(points, 1):
        same = [r for r in rows if r["method"] == pt["method"] and r["mode"] == pt["mode"]]
        row = dict(pt)
        tag = f"[{i}/{len(points)}] {pt['method']} {pt['mode']} {pt['seconds']:g} s ({pt['frames']} frames, " \
              f"{pt['tokens']} tokens)"
        memory_skipped = [r for r in same if "skipped" in r]
        est = estimate_peak_mb(same, pt["tokens"])
        if memory_skipped:
            row["skipped"] = f"a shorter clip ({memory_skipped[-1]['seconds']:g} s) was already skipped"
        elif est is not None and est > limit_mb and args.device == "cpu":
            row["skipped"] = (f"estimated peak {est / 1024:.2f} GB (from the shorter clips) > --max-rss-gb "
                              f"{args.max_rss_gb:g}")
        if "skipped" in row:
            log(f"{tag}: skipped: {row['skipped']}")
            rows.append(row)
            _save_partial(args, rows)
            continue
        spec = dict(pt, repeats=args.repeats, warmup=args.warmup, device=args.device, tiny=args.tiny,
                    precision=args.precision, chunk_batch=args.chunk_batch, seed=args.seed)
        t0 = time.time()
        result = run_in_fresh_process(ctx, spec, limit_mb)
        row.update(result)
        if "time_s" in row:
            log(f"{tag}: {row['time_s']:.3f} s, peak {row['peak_mem_mb']:.0f} MB "
                f"(base {row['base_rss_mb']:.0f} MB; point took {time.time() - t0:.0f} s)")
        elif "skipped" in row:
            log(f"{tag}: skipped: {row['skipped']}")
        else:
            log(f"{tag}: ERROR\n{row['error']}")
        rows.append(row)
        _save_partial(args, rows)
    return rows


def _save_partial(args, rows):
    """Write the partial result after every point (an interrupted run keeps what it measured)."""
    if args.json:
        _write(args.json, _result(args, rows))


def _result(args, rows: List[dict]) -> dict:
    return {"benchmark": "length_scaling", "device": args.device, "precision": args.precision, "batch": args.batch,
            "repeats": args.repeats, "warmup": args.warmup, "tiny": args.tiny, "chunk_batch": args.chunk_batch,
            "max_rss_gb": args.max_rss_gb, "methods": args.methods, "modes": args.modes, "seconds": args.seconds,
            "command": " ".join([os.path.relpath(os.path.abspath(__file__), ROOT)] + list(args.argv)),
            "environment": args.environment, "rows": rows}


def _write(path: str, result: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1)


def format_table(result: dict) -> str:
    """A markdown table (method, mode, seconds of audio, frames, tokens, time, GFLOP, peak memory, notes)."""
    cuda = result["device"] == "cuda"
    mem = "peak CUDA MB" if cuda else "peak RSS MB"
    env = result.get("environment") or {}
    head = (f"device {result['device']}, precision {result['precision']}, training batch {result['batch']}, "
            f"{result['warmup']} warm-up + {result['repeats']} timed runs per point, torch {env.get('torch', '?')}, "
            f"{env.get('torch_threads', '?')} threads; embed: windows encoded {result['chunk_batch']} at a time")
    lines = [head, "", f"| method | mode | audio s | frames | tokens | step / forward s | GFLOP | {mem} | notes |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        label = MODE_LABEL[r["mode"]] + (f" (batch {r['batch']})" if r["mode"] == "train" and r["batch"] != 1 else "")
        if "time_s" in r:
            cells = f"{r['time_s']:.3f} | {r['gflop']:.1f} | {r['peak_mem_mb']:.0f}"
            note = r["notes"]
        else:
            why = r.get("skipped") or (r.get("error") or "?").strip().splitlines()[-1]
            cells = "- | - | -"
            note = ("skipped: " if "skipped" in r else "ERROR: ") + why
        lines.append(f"| {r['method']} | {label} | {r['seconds']:g} | {r['frames']} | {r['tokens']} | {cells} | "
                     f"{note} |")
    lines += ["", "Notes: peak memory is the whole process's peak (" + (
        "torch.cuda.max_memory_allocated" if cuda else "ru_maxrss: runtime, weights, optimizer state, activations")
        + "). Training runs the whole clip at once (SSAST's learned positions interpolated past 1024 frames, MAE-AST's "
        "sinusoidal ones at any length, EAT's sin-cos table enlarged past max_time_patches); inference runs "
        "extract_features over the whole clip; embed cuts it into windows of the training length (positions as in "
        "pretraining)."]
    return "\n".join(lines)


def plot(result: dict, path: str) -> None:
    """2 x (modes) grid: time and peak memory against clip length, log-log, one line per method (solid = training
    step, dashed = inference, dotted = embed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    plain = FuncFormatter(lambda v, _: f"{v:g}")
    modes = [m for m in MODES if m in result["modes"]]
    methods = list(result["methods"])
    colours = {m: f"C{i}" for i, m in enumerate(methods)}
    fig, axes = plt.subplots(2, len(modes), figsize=(4.6 * len(modes), 7.5), squeeze=False)
    mem = "peak CUDA memory (MB)" if result["device"] == "cuda" else "peak RSS (MB)"
    for j, mode in enumerate(modes):
        for method in methods:
            rows = [r for r in result["rows"] if r["method"] == method and r["mode"] == mode and "time_s" in r]
            if not rows:
                continue
            xs = [r["seconds"] for r in rows]
            kw = dict(color=colours[method], linestyle=LINESTYLE[mode], marker="o", label=method)
            axes[0][j].plot(xs, [r["time_s"] for r in rows], **kw)
            axes[1][j].plot(xs, [r["peak_mem_mb"] for r in rows], **kw)
        unit = "step" if mode == "train" else "call"
        axes[0][j].set_title(f"{MODE_LABEL[mode]}: time")
        axes[0][j].set_ylabel(f"seconds per {unit}")
        axes[1][j].set_title(f"{MODE_LABEL[mode]}: peak memory")
        axes[1][j].set_ylabel(mem)
        for ax in (axes[0][j], axes[1][j]):
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xticks(sorted(result["seconds"]))
            ax.xaxis.set_major_formatter(plain)
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel("clip length (s)")
            ax.grid(True, which="both", alpha=0.3)
            if ax.get_lines():
                ax.legend(fontsize=8)
                lo, hi = ax.get_ylim()
                ax.yaxis.set_major_formatter(plain)  # within a decade, label the minor ticks too
                ax.yaxis.set_minor_formatter(plain if hi / lo < 10 else NullFormatter())
    env = result.get("environment") or {}
    fig.suptitle(f"cost against clip length: {result['device']} ({env.get('cpu', '')}), {result['precision']}, "
                 f"training batch {result['batch']}{', tiny models' if result['tiny'] else ''}; solid = training step, "
                 "dashed = inference, dotted = embed (chunked)", fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> dict:
    from maeast_fairseq.precision import PRECISIONS

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default=DEFAULT_METHODS, help=f"comma-separated, of {sorted(train_step.SPECS)}")
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {list(MODES)}")
    ap.add_argument("--seconds", default=DEFAULT_SECONDS, help="clip lengths in seconds, comma-separated")
    ap.add_argument("--batch", type=int, default=1, help="clips per training step (inference and embed: 1)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per point (the median is reported)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs per point first")
    ap.add_argument("--precision", default="fp32", choices=PRECISIONS,
                    help="fp32, bf16 (autocast for forward + loss) or auto (maeast_fairseq.precision)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--tiny", action="store_true", help="the *_tiny.yaml models (seconds; used by the tests)")
    ap.add_argument("--chunk-batch", type=int, default=1,
                    help="embed: windows encoded at once (1: memory flat in length; the API's default is 8)")
    ap.add_argument("--max-rss-gb", type=float, default=16.0,
                    help="skip a point whose process would pass this RSS (estimated from shorter clips; a process "
                         "that passes it is stopped)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", default=None, help="write the results here (after every point)")
    ap.add_argument("--png", default=None, help="plot time and peak memory against length here (matplotlib)")
    ap.add_argument("--table", default=None, help="only print the table (and --png) of an existing JSON")
    args = ap.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    if args.table:
        with open(args.table) as f:
            result = json.load(f)
        print(format_table(result))
        if args.png:
            plot(result, args.png)
        return result
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in args.methods:
        if m not in train_step.SPECS:
            ap.error(f"unknown method {m!r}; choose from {sorted(train_step.SPECS)}")
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in args.modes:
        if m not in MODES:
            ap.error(f"unknown mode {m!r}; choose from {list(MODES)}")
    try:
        args.seconds = [float(s) for s in args.seconds.split(",") if s.strip()]
    except ValueError:
        ap.error(f"--seconds takes comma-separated numbers, got {args.seconds!r}")
    if not args.seconds or min(args.seconds) <= 0:
        ap.error("--seconds: give positive clip lengths")
    if args.batch < 1 or args.repeats < 1 or args.warmup < 0 or args.chunk_batch < 1:
        ap.error("--batch, --repeats and --chunk-batch must be >= 1, --warmup >= 0")
    args.environment = environment(args.device)
    t0 = time.time()
    rows = measure_all(args)
    result = _result(args, rows)
    result["wall_s"] = time.time() - t0
    if args.json:
        _write(args.json, result)
    print(format_table(result))
    if args.png:
        plot(result, args.png)
    return result


if __name__ == "__main__":
    res = main()
    sys.exit(1 if any("error" in r for r in res.get("rows", [])) else 0)
