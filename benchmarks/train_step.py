"""One full pretraining step of SSAST, MAE-AST and EAT side by side: time, memory, throughput, analytical FLOPs.

    python benchmarks/train_step.py                       # CPU, batch 8, 1 warm-up + 3 timed steps per model
    python benchmarks/train_step.py --device cuda         # bf16 autocast, SDPA (flash attention), 3 warm-up + 10
    python benchmarks/train_step.py --models ssast_patch,mae_ast_patch --batch 4 --repeats 2 --json out.json
    python benchmarks/train_step.py --tiny                # the *_tiny.yaml models (seconds; used by the tests)

A step is what the trainer does per update: forward + loss (the project's criteria: InfoNCE + 10 x MSE for
SSAST / MAE-AST, EAT's UFO) + backward + AdamW step (+ EAT's EMA teacher update). The models are the core models
(``maeast_fairseq.checkpoint.CORE_MODELS``) built from the ``model:`` section of ``examples/pretrain/<name>.yaml``
at the papers' base settings (12 x 768, 1024 x 128 input = 512 tokens, their mask ratios, EAT 16 clones).

Every model is measured in a fresh subprocess, so its peak memory is its own: on CPU ``ru_maxrss`` of that
process (``peak_rss_mb``, including the Python / torch runtime, ``base_rss_mb`` = the RSS before the model is built)
and on CUDA ``torch.cuda.max_memory_allocated``.

FLOPs per clip are counted analytically (matmuls and convolutions only, multiply-add = 2 FLOPs, backward = 2x
forward, EAT's teacher forward-only) from the token counts: see :func:`flops_per_clip`.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(ROOT, "examples", "pretrain")

# benchmark name -> (config file stem, model overrides, criterion settings)
SPECS = {
    "ssast_patch": ("ssast_patch", {"passes": "one"}, {"nce_orientation": "targets"}),
    "ssast_patch_two_pass": ("ssast_patch", {"passes": "two"}, {"nce_orientation": "predictions"}),
    "ssast_frame": ("ssast_frame", {"passes": "one"}, {"nce_orientation": "targets"}),
    "ssast_frame_two_pass": ("ssast_frame", {"passes": "two"}, {"nce_orientation": "predictions"}),
    "mae_ast_patch": ("mae_ast_patch", {}, {"nce_orientation": "targets"}),
    "mae_ast_frame": ("mae_ast_frame", {}, {"nce_orientation": "targets"}),
    # diagnostic: MAE-AST's recipe trains with dropout 0.1 (attention too); SSAST's with none. On CPU, attention
    # dropout sends SDPA to its math path (the (B, H, T, T) probabilities and dropout mask are kept for backward)
    "mae_ast_patch_no_dropout": ("mae_ast_patch", {"dropout": 0.0, "attention_dropout": 0.0, "dropout_input": 0.0},
                                 {"nce_orientation": "targets"}),
    "eat_base": ("eat_base", {}, {}),
}
DEFAULT_MODELS = "ssast_patch,ssast_patch_two_pass,mae_ast_patch,mae_ast_frame,eat_base"
REFERENCE = "ssast_patch_two_pass"  # SSAST as the official code runs it (two forward passes)

# the result keys every model row carries (tests check them)
ROW_KEYS = ("model", "config", "batch", "device", "step_s_median", "step_s_min", "step_s_max", "step_s_iqr",
            "step_times_s", "clips_per_s", "student_views_per_s", "peak_mem_mb", "params_trainable",
            "flops_per_clip", "flops_per_step", "achieved_tflops", "loss")


# -- configs ----------------------------------------------------------------------------------------------------------
def load_config(name: str, tiny: bool = False):
    """(core model name, model config dict, task config dict, criterion settings) of benchmark ``name``."""
    from omegaconf import OmegaConf

    stem, overrides, crit = SPECS[name]
    path = os.path.join(CONFIG_DIR, f"{stem}{'_tiny' if tiny else ''}.yaml")
    cfg = OmegaConf.load(path)
    model = OmegaConf.to_container(cfg.model, resolve=False)
    task = OmegaConf.to_container(cfg.task, resolve=False)
    core = model.pop("_name")
    model.update(overrides)
    return core, model, task, dict(crit), path


def input_frames(core: str, model: dict, task: dict, tiny: bool) -> int:
    """Frames per clip: the task's fixed length; MAE-AST (crop to the shortest clip) gets SSAST's 1024 (256 tiny)."""
    if task.get("length_policy", "fixed") == "fixed":
        return int(task.get("target_frames", 1024))
    return 256 if tiny else 1024


# -- analytical FLOPs -------------------------------------------------------------------------------------------------
def linear_flops(n: float, d_in: int, d_out: int) -> float:
    return 2.0 * n * d_in * d_out


def layer_flops(n: float, d: int, ffn: int) -> float:
    """One transformer layer over n tokens: q/k/v/out projections, QK^T and AV, the two FFN matmuls."""
    return 4 * linear_flops(n, d, d) + 2 * 2.0 * n * n * d + linear_flops(n, d, ffn) + linear_flops(n, ffn, d)


def token_counts(core: str, model: dict, frames: int) -> Dict[str, int]:
    n_time = frames // int(model["patch_time"])
    n_freq = int(model["num_mel_bins"]) // int(model["patch_freq"])
    n = n_time * n_freq
    ratio = float(model["mask_ratio"])
    if core == "eat":
        visible = int(n * (1.0 - ratio))  # EAT keeps int(N * (1 - p)) cells (102 of 512)
    else:
        visible = n - int(round(n * ratio))  # SSAST 400 of 512 masked, MAE-AST 384
    return {"tokens": n, "visible": visible, "masked": n - visible, "n_time": n_time, "n_freq": n_freq}


def flops_per_clip(core: str, model: dict, frames: int) -> Dict[str, float]:
    """Forward FLOPs per clip by part and the training total (trainable parts x3: forward + backward; EAT teacher x1).

    SSAST: patch embed on N tokens, encoder over N + extra tokens (every pass), two MLP heads (D->D->P) on the masked
    tokens (every pass). MAE-AST: patch embed, encoder over the visible tokens, decoder over all N, two linear heads
    (D->P) on the masked tokens. EAT: patch embed (student and teacher), student encoder over visible + CLS tokens of
    every clone, conv decoder (per clone: each layer k*k*C_in/groups*C_out per position, then Linear D->D), teacher
    encoder over N + CLS once per clip, forward only.
    """
    t = token_counts(core, model, frames)
    n, vis, masked = t["tokens"], t["visible"], t["masked"]
    p = int(model["patch_time"]) * int(model["patch_freq"])
    parts: Dict[str, float] = {}
    if core == "ssast":
        d, f, layers = int(model["embed_dim"]), int(model["ffn_dim"]), int(model["encoder_layers"])
        passes = 2 if model.get("passes", "one") == "two" else 1
        extra = int(model.get("num_extra_tokens", 2))
        parts["patch_embed"] = linear_flops(n, p, d)
        parts["encoder"] = passes * layers * layer_flops(n + extra, d, f)
        parts["heads"] = passes * 2 * (linear_flops(masked, d, d) + linear_flops(masked, d, p))
        trainable = sum(parts.values())
        teacher = 0.0
    elif core == "mae_ast":
        d, f, layers = int(model["embed_dim"]), int(model["ffn_dim"]), int(model["encoder_layers"])
        dd = int(model.get("decoder_embed_dim", d))
        df = int(model.get("decoder_ffn_dim", f))
        parts["patch_embed"] = linear_flops(n, p, d)
        parts["encoder"] = layers * layer_flops(vis, d, f)
        parts["decoder"] = int(model["decoder_layers"]) * layer_flops(n, dd, df)
        if dd != d:
            parts["post_encoder_proj"] = linear_flops(vis, d, dd)
        parts["heads"] = 2 * linear_flops(masked, dd, p)
        trainable = sum(parts.values())
        teacher = 0.0
    elif core == "eat":
        d, layers, k = int(model["embed_dim"]), int(model["encoder_layers"]), int(model["clones"])
        f = int(model["ffn_dim"])
        dd, dl = int(model.get("decoder_embed_dim", d)), int(model["decoder_layers"])
        kern, groups = int(model.get("decoder_kernel", 3)), int(model.get("decoder_groups", 16))
        parts["patch_embed"] = linear_flops(n, p, d)
        parts["encoder"] = k * layers * layer_flops(vis + 1, d, f)
        conv = sum(2.0 * n * kern * kern * ((d if i == 0 else dd) // groups) * dd for i in range(dl))
        parts["decoder"] = k * (conv + linear_flops(n, dd, d))
        trainable = sum(parts.values())
        parts["teacher"] = linear_flops(n, p, d) + layers * layer_flops(n + 1, d, f)
        teacher = parts["teacher"]
    else:
        raise ValueError(f"unknown core model {core!r}")
    out = {f"forward_{k}": v for k, v in parts.items()}
    out["forward_trainable"] = trainable
    out["training"] = 3.0 * trainable + teacher
    out.update({f"{k}": v for k, v in t.items()})
    return out


# -- one model, in this process -------------------------------------------------------------------------------------
def _loss(core: str, out: dict, crit: dict):
    from maeast_fairseq.core.losses import nce_mse_loss, ufo_loss

    if core == "eat":
        return ufo_loss(out, 1.0)[0] / out["num_masked"].clamp(min=1)  # the trainer divides by sample_size = M
    return nce_mse_loss(out, 1.0, 10.0, crit.get("nce_orientation", "targets"))[0]


def row_key(name: str, precision: str) -> str:
    """Result key of a (model, precision) pair: the model name for float32, ``name@bf16`` otherwise."""
    return name if precision == "fp32" else f"{name}@{precision}"


def split_key(key: str):
    name, _, prec = key.partition("@")
    return name, prec or "fp32"


def interleaved(names: List[str], batch: int, repeats: int, warmup: int, device: str, tiny: bool,
                precisions: Sequence[str] = ("fp32",), adamw: str = "auto") -> dict:
    """All (model, precision) pairs in one process, one step of each in turn (round robin): other load on a shared
    machine then slows every pair alike, so the time *ratios* stay fair. No memory figures (use the subprocess
    mode)."""
    keys = [row_key(n, p) for n in names for p in precisions]
    steppers = {k: measure(split_key(k)[0], batch, 0, warmup, device, tiny, return_stepper=True,
                           precision=split_key(k)[1], adamw=adamw) for k in keys}
    times = {k: [] for k in keys}
    for i in range(repeats):
        for k in keys:
            times[k].append(steppers[k](warmup + i)[0])
    out = {}
    for k in keys:
        n = split_key(k)[0]
        core, model_cfg, task_cfg, _, _ = load_config(n, tiny)
        fl = flops_per_clip(core, model_cfg, input_frames(core, model_cfg, task_cfg, tiny))["training"]
        med = statistics.median(times[k])
        out[k] = {"model": n, "precision": split_key(k)[1], "step_s_median": med, "step_s_min": min(times[k]),
                  "step_s_max": max(times[k]), "step_times_s": times[k], "clips_per_s": batch / med,
                  "flops_per_clip": fl}
    return out


def measure(name: str, batch: int, repeats: int, warmup: int, device: str, tiny: bool, seed: int = 1,
            return_stepper: bool = False, precision: str = "auto", frames: Optional[int] = None,
            model_overrides: Optional[dict] = None, adamw: str = "auto") -> dict:
    """One model's training step: ``precision`` auto | fp32 | bf16 (see :mod:`maeast_fairseq.precision`),
    ``frames`` per clip (default: the recipe's), ``model_overrides`` on top of the benchmark's model config,
    ``adamw`` the optimizer kernel: auto (fused where torch has it) | fused | foreach | for_loop (what the official
    code's optimizers do on CPU: torch's Adam default there, fairseq's adam without apex)."""
    import torch

    from maeast_fairseq.checkpoint import build_core
    from maeast_fairseq.core.rng import MaskRNG
    from maeast_fairseq.precision import resolve_precision

    base_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    torch.manual_seed(seed)
    core, model_cfg, task_cfg, crit, path = load_config(name, tiny)
    model_cfg.update(model_overrides or {})
    frames = int(frames or input_frames(core, model_cfg, task_cfg, tiny))
    dev = torch.device(device)
    prec = resolve_precision(precision, dev, width=int(model_cfg["embed_dim"]))
    model = build_core(core, model_cfg).to(dev).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt_kw = {"lr": 1e-4, "betas": (0.9, 0.98), "eps": 1e-6, "weight_decay": 0.01}
    from maeast_fairseq.optim.kernels import fused_supported

    if adamw == "auto":
        adamw = "fused" if fused_supported(params) else "foreach"  # fused: one pass over memory (CPU, CUDA)
    opt_kw["fused"] = True if adamw == "fused" else None
    opt_kw["foreach"] = adamw == "foreach"
    opt = torch.optim.AdamW(params, **opt_kw)
    x = torch.randn(batch, frames, int(model_cfg["num_mel_bins"]), device=dev)
    gen = torch.Generator().manual_seed(seed)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def step(i: int) -> float:
        rng = MaskRNG.from_generator(gen, batch, dev)
        sync()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with prec.autocast(dev):
            out = model(x, None, rng)
            loss = _loss(core, out, crit)
        loss.backward()
        opt.step()
        if core == "eat":
            model.ema_step(i + 1)
        sync()
        return time.perf_counter() - t0, float(loss.detach())

    for i in range(warmup):
        step(i)
    if return_stepper:
        return step
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    for i in range(repeats):
        dt, l = step(warmup + i)
        times.append(dt)
        losses.append(l)
    if dev.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    try:
        load = list(os.getloadavg())
    except OSError:  # pragma: no cover
        load = None
    med = statistics.median(times)
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    fl = flops_per_clip(core, model_cfg, frames)
    clones = int(model_cfg.get("clones", 1)) if core == "eat" else None
    return {
        "model": name,
        "config": os.path.relpath(path, ROOT),
        "core": core,
        "batch": batch,
        "frames": frames,
        "device": device,
        "warmup": warmup,
        "repeats": repeats,
        "step_s_median": med,
        "step_s_min": min(times),
        "step_s_max": max(times),
        "step_s_iqr": q[2] - q[0],
        "step_times_s": times,
        "clips_per_s": batch / med,
        "student_views_per_s": (batch * clones / med) if clones else None,
        "peak_mem_mb": peak_mb,
        "peak_mem_kind": "cuda.max_memory_allocated" if dev.type == "cuda" else "ru_maxrss (whole process)",
        "base_rss_mb": base_rss_mb,
        "params_trainable": sum(p.numel() for p in params),
        "flops_per_clip": fl,
        "flops_per_step": fl["training"] * batch,
        "achieved_tflops": fl["training"] * batch / med / 1e12,
        "loss": losses[-1],
        "precision": prec.name,
        "precision_reason": prec.describe(),
        "adamw": adamw,
        "loadavg_after": load,
    }


# -- driver -----------------------------------------------------------------------------------------------------------
#: the CPU flags that decide matmul speed, named in every result
CPU_FLAGS_OF_INTEREST = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def matmul_peak(device: str, n: int = 2048, seconds: float = 1.0) -> Dict[str, float]:
    """Measured GFLOP/s of one n x n matmul in float32 and bfloat16 with the current threads: the machine's
    practical peak, against which a step's ``achieved_tflops`` is read."""
    import torch

    dev = torch.device(device)
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(n, n, device=dev).to(dtype)
        b = torch.randn(n, n, device=dev).to(dtype)
        for _ in range(2):
            a @ b
        if dev.type == "cuda":
            torch.cuda.synchronize()
        k, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds or k < 3:
            a @ b
            k += 1
        if dev.type == "cuda":
            torch.cuda.synchronize()
        out[name] = 2.0 * n ** 3 * k / (time.perf_counter() - t0) / 1e9
    return out


def environment(device: str) -> dict:
    import torch

    from maeast_fairseq.precision import bf16_support, cpu_flags, cpu_model_name

    flags, sup = cpu_flags(), bf16_support(device)
    env = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
           "processor": platform.processor(), "cpu_model": cpu_model_name(), "cpu_count": os.cpu_count(),
           "cpu_flags": [f for f in CPU_FLAGS_OF_INTEREST if f in flags],
           "bf16_support": sup.detail, "bf16_native": sup.native,
           "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "torch_threads": torch.get_num_threads(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}
    try:
        import fairseq

        env["fairseq"] = fairseq.__version__
    except Exception:  # pragma: no cover
        pass
    try:
        env["loadavg_1_5_15"] = list(os.getloadavg())  # other work on the machine shows here
    except OSError:  # pragma: no cover
        pass
    if device == "cuda" and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def run_worker(script: str, argv: List[str], error_row: dict) -> dict:
    """``python script argv`` in a fresh interpreter (so its peak memory is its own): the JSON row it prints last, or
    ``error_row`` with the end of its error output."""
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, os.path.abspath(script)] + argv, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return dict(error_row, error=(proc.stderr or proc.stdout)[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_one_subprocess(key: str, args) -> dict:
    name, prec = split_key(key)
    argv = ["--_worker", name, "--precision", prec, "--batch", str(args.batch), "--repeats", str(args.repeats),
            "--warmup", str(args.warmup), "--device", args.device, "--adamw", args.adamw] + (["--tiny"] * args.tiny)
    return run_worker(__file__, argv, {"model": name, "precision": prec})


def ratios(rows: Dict[str, dict]) -> Dict[str, dict]:
    """time / memory / FLOPs of every model divided by each SSAST variant present (MAE-AST/SSAST, EAT/SSAST), within
    each precision."""
    out = {}
    for key_a, a in rows.items():
        ref, prec = split_key(key_a)
        if ref not in ("ssast_patch_two_pass", "ssast_patch", "ssast_frame_two_pass", "ssast_frame"):
            continue
        for key, r in rows.items():
            name, p = split_key(key)
            if p != prec or name.startswith("ssast") or "error" in r or "error" in a:
                continue
            out[f"{key}/{key_a}"] = {
                "step_time": r["step_s_median"] / a["step_s_median"],
                "speedup": a["step_s_median"] / r["step_s_median"],
                "speedup_best": a["step_s_min"] / r["step_s_min"],  # best-of-N: least disturbed by other load
                "peak_mem": r["peak_mem_mb"] / a["peak_mem_mb"],
                "memory_reduction": a["peak_mem_mb"] / r["peak_mem_mb"],
                "flops_per_clip": r["flops_per_clip"]["training"] / a["flops_per_clip"]["training"],
                "clips_per_s": r["clips_per_s"] / a["clips_per_s"],
            }
    return out


def precision_ratios(rows: Dict[str, dict]) -> Dict[str, dict]:
    """Per model: the bf16 step against the float32 step of the same model (speed-up, peak-memory ratio)."""
    out = {}
    for key, r in rows.items():
        name, prec = split_key(key)
        base = rows.get(name)
        if prec == "fp32" or base is None or "error" in r or "error" in base:
            continue
        out[f"{name}: {prec}/fp32"] = {
            "speedup": base["step_s_median"] / r["step_s_median"],
            "speedup_best": base["step_s_min"] / r["step_s_min"],
            "peak_mem": (r["peak_mem_mb"] / base["peak_mem_mb"]) if "peak_mem_mb" in r else None,
        }
    return out


def format_table(result: dict) -> str:
    rows = result["models"]
    env = result["environment"]
    lines = [f"device {result['device']}, batch {result['batch']}, {result['warmup']} warm-up + "
             f"{result['repeats']} timed steps; torch {env['torch']}, {env['torch_threads']} threads",
             f"CPU: {env.get('bf16_support', env.get('processor'))}; flags: {' '.join(env.get('cpu_flags', []))}"]
    peak = result.get("matmul_peak_gflops")
    if peak:
        lines.append(f"matmul peak (2048^2, these threads): fp32 {peak['fp32']:.0f} GFLOP/s, bf16 {peak['bf16']:.0f} "
                     f"GFLOP/s ({peak['bf16'] / peak['fp32']:.1f}x)")
    lines.append(f"{'model':<27}{'step s (med)':>13}{'min-max':>16}{'clips/s':>9}{'views/s':>9}{'peak MB':>10}"
                 f"{'GFLOP/clip':>12}{'TFLOP/s':>9}{'of peak':>9}")
    for name, r in rows.items():
        if "error" in r:
            lines.append(f"{name:<27} ERROR: {r['error'].strip().splitlines()[-1] if r['error'].strip() else '?'}")
            continue
        views = f"{r['student_views_per_s']:.2f}" if r.get("student_views_per_s") else "-"
        frac = "-"
        if peak and r.get("precision", "fp32") in peak:
            frac = f"{100 * r['achieved_tflops'] * 1e3 / peak[r.get('precision', 'fp32')]:.0f} %"
        lines.append(f"{name:<27}{r['step_s_median']:>13.3f}{r['step_s_min']:>8.3f}-{r['step_s_max']:<7.3f}"
                     f"{r['clips_per_s']:>9.3f}{views:>9}{r['peak_mem_mb']:>10.0f}"
                     f"{r['flops_per_clip']['training'] / 1e9:>12.1f}{r['achieved_tflops']:>9.3f}{frac:>9}")
    if result["ratios"]:
        lines.append("")
        lines.append(f"{'ratio':<50}{'speed-up':>10}{'(best)':>8}{'mem. red.':>11}{'FLOPs ratio':>13}"
                     f"{'clips/s ratio':>15}")
        for k, v in result["ratios"].items():
            lines.append(f"{k:<50}{v['speedup']:>10.2f}{v.get('speedup_best', float('nan')):>8.2f}"
                         f"{v['memory_reduction']:>11.2f}{v['flops_per_clip']:>13.3f}{v['clips_per_s']:>15.3f}")
    if result.get("precision_ratios"):
        lines.append("")
        lines.append(f"{'precision':<50}{'speed-up':>10}{'(best)':>8}{'peak mem':>11}")
        for k, v in result["precision_ratios"].items():
            mem = f"{v['peak_mem']:.2f}x" if v.get("peak_mem") else "-"
            lines.append(f"{k:<50}{v['speedup']:>10.2f}{v['speedup_best']:>8.2f}{mem:>11}")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> dict:
    from maeast_fairseq.precision import PRECISIONS

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=DEFAULT_MODELS, help=f"comma-separated, of {sorted(SPECS)}")
    ap.add_argument("--precision", default="fp32,bf16",
                    help="comma-separated, of fp32, bf16, auto (default fp32,bf16: both, side by side; bf16 = "
                         "torch.autocast bfloat16 with float32 weights, on CPU as on CUDA)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--adamw", default="auto", choices=["auto", "fused", "foreach", "for_loop"],
                    help="AdamW kernel (default auto: fused where torch has it; for_loop is what the official code's "
                         "optimizers run on CPU)")
    ap.add_argument("--repeats", type=int, default=None, help="timed steps (default 3 on CPU, 10 on CUDA)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 1 on CPU, 3 on CUDA)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--tiny", action="store_true", help="the *_tiny.yaml models (smoke test)")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--interleave", action="store_true",
                    help="time all models in one process, one step of each in turn (fair ratios on a loaded "
                         "machine; no memory figures)")
    ap.add_argument("--table", default=None, help="only print the table (and ratios) of an existing JSON")
    ap.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.repeats is None:
        args.repeats = 10 if args.device == "cuda" else 3
    if args.warmup is None:
        args.warmup = 3 if args.device == "cuda" else 1
    if args.table:
        with open(args.table) as f:
            result = json.load(f)
        result["ratios"] = ratios(result["models"])
        result["precision_ratios"] = precision_ratios(result["models"])
        print(format_table(result))
        return result
    precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    for p in precisions:
        if p not in PRECISIONS:
            ap.error(f"unknown precision {p!r}; choose from {PRECISIONS}")
    if args._worker:
        print(json.dumps(measure(args._worker, args.batch, args.repeats, args.warmup, args.device, args.tiny,
                                 precision=precisions[0], adamw=args.adamw)))
        return {}
    from maeast_fairseq.precision import resolve_precision

    names = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in names:
        if m not in SPECS:
            ap.error(f"unknown model {m!r}; choose from {sorted(SPECS)}")
    # "auto" resolves here, per model width, so the row keys say what ran
    keys = []
    for n in names:
        width = int(load_config(n, args.tiny)[1]["embed_dim"])
        for p in precisions:
            prec = resolve_precision(p, args.device, width=width)
            if p == "auto":
                print(f"[{n}] {prec.describe()}", file=sys.stderr, flush=True)
            k = row_key(n, prec.name)
            if k not in keys:
                keys.append(k)
    env = environment(args.device)
    print(f"CPU: {env['bf16_support']}; flags: {' '.join(env['cpu_flags'])}", file=sys.stderr, flush=True)
    peak = matmul_peak(args.device)
    if args.interleave:
        rows = interleaved(names, args.batch, args.repeats, args.warmup, args.device, args.tiny,
                           precisions=sorted({split_key(k)[1] for k in keys}, key=["fp32", "bf16"].index),
                           adamw=args.adamw)
        result = dict(_result(args, {}, env, peak), models=rows, mode="interleaved")
        result["ratios"] = {f"{a}/{b}": {"speedup": rows[b]["step_s_median"] / rows[a]["step_s_median"],
                                         "speedup_best": rows[b]["step_s_min"] / rows[a]["step_s_min"],
                                         "flops_per_clip": rows[a]["flops_per_clip"] / rows[b]["flops_per_clip"]}
                            for b in rows if b.startswith("ssast") for a in rows
                            if not a.startswith("ssast") and split_key(a)[1] == split_key(b)[1]}
        result["precision_ratios"] = precision_ratios(rows)
        for n, r in rows.items():
            print(f"{n:<27} median {r['step_s_median']:8.2f} s  best {r['step_s_min']:8.2f} s  "
                  f"{r['flops_per_clip'] / 1e9:8.1f} GFLOP/clip")
        for k, v in result["ratios"].items():
            print(f"{k:<50} speed-up {v['speedup']:.2f}x (best {v['speedup_best']:.2f}x), "
                  f"FLOPs expect {1 / v['flops_per_clip']:.2f}x")
        for k, v in result["precision_ratios"].items():
            print(f"{k:<50} speed-up {v['speedup']:.2f}x (best {v['speedup_best']:.2f}x)")
        if args.json:
            _write(args.json, result)
        return result
    rows = {}
    for k in keys:
        t0 = time.time()
        rows[k] = run_one_subprocess(k, args)
        print(f"[{k}] done in {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
        if args.json:  # partial results survive an interrupted run
            _write(args.json, _result(args, rows, env, peak))
    result = _result(args, rows, env, peak)
    print(format_table(result))
    if args.json:
        _write(args.json, result)
    return result


def _result(args, rows, env, peak):
    return {"device": args.device, "batch": args.batch, "repeats": args.repeats, "warmup": args.warmup,
            "tiny": args.tiny, "adamw": args.adamw, "command": " ".join([os.path.relpath(__file__, ROOT)] + sys.argv[1:]),
            "environment": env, "matmul_peak_gflops": peak, "models": rows, "ratios": ratios(rows),
            "precision_ratios": precision_ratios(rows)}


def _write(path, result):
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
