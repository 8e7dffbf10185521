"""The demo pipeline: data -> corpus statistics -> three pretrainings -> frozen SUPERB-style evaluation -> results.

Every step prints what it does; outputs go to one folder (``runs/demo`` by default):
``results.md``, ``results.json``, ``figures/*.png``, ``logs/*.log``, ``checkpoints/<method>/``, ``data/``.

Besides each method's last checkpoint, the checkpoints at ``Recipe.curve_fractions`` of its updates are kept and
evaluated the same way (accuracy against pretraining updates). Pretrainings and evaluations share the machine's two
cores as one queue (:func:`run_jobs`): an evaluation starts as soon as its checkpoint's pretraining is done.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

METHODS = ("mae_ast", "eat", "ssast")
CONFIGS = {"mae_ast": "mae_ast_patch_tiny", "eat": "eat_base_tiny", "ssast": "ssast_patch_tiny"}
TITLES = {"mae_ast": "MAE-AST (patch)", "eat": "EAT", "ssast": "SSAST (patch)"}


@dataclass
class Recipe:
    """How much of everything: the budget knobs of one demo mode."""
    name: str
    pretrain_minutes: float            # audio in the pretraining corpus
    updates: Dict[str, int]            # pretraining updates per method
    batch_size: int = 16
    lr: Dict[str, float] = field(default_factory=dict)
    head_steps: int = 1000
    lr_sweep: str = "1e-3,1e-4"
    seeds: str = "0,1,2"
    stats_clips: int = 300
    overrides: Dict[str, List[str]] = field(default_factory=dict)  # extra hydra overrides per method (model size...)
    parallel: int = 2                  # jobs (pretrainings, evaluations) run at once, one thread each: the 2 cores
    #: fractions of each method's updates (0 < f < 1) whose checkpoints are kept and evaluated with the same protocol
    #: (the accuracy-against-updates figure; the last checkpoint and the random-init twin, update 0, always are)
    curve_fractions: Tuple[float, ...] = ()
    curve_seeds: str = ""              # head seeds for those intermediate checkpoints ("" = ``seeds``)


#: the demo's models: the tiny configs widened to 128 x 4 layers (FFN 512). At 64 x 2 the pretrained features did
#: not beat random-init ones on the drum task by more than the head-seed spread.
WIDE = {
    "mae_ast": ["model.embed_dim=128", "model.encoder_layers=4", "model.ffn_dim=512", "model.decoder_embed_dim=128",
                "model.decoder_ffn_dim=512"],
    "eat": ["model.embed_dim=128", "model.encoder_layers=4", "model.ffn_dim=512", "model.decoder_embed_dim=128",
            "model.average_top_k_layers=4"],  # all the layers, as EAT
    "ssast": ["model.embed_dim=128", "model.encoder_layers=4", "model.ffn_dim=512"],
}

#: ``full``: MAE-AST's update is the cheapest (the encoder sees 25 % of the tokens), so it gets 3x the updates in the
#: same wall time as EAT's 2000. Measured on the drum task (gap over the random-init twin, head-seed spread): 2000
#: updates on the 32 min corpus +1.7 (1.9); 6000 updates +3.8 (1.4); 2000 updates with the MuseScore bank added
#: (74 min) +3.2 (2.1), but with that corpus SSAST's gap fell to +1.3 (1.7) and MAE-AST at 6000 updates gave +2.1
#: (1.7): not kept. Fixed 256-frame crops instead of crop-to-shortest +0.6, a 2-layer decoder +0.3, mask ratio 0.5
#: +1.2: not kept either. SSAST's gap with 1500 updates: +4.4 (1.7) and +3.9 (1.9) with pretraining seeds 1 and 2.
#: ``full`` evaluates its 6 intermediate checkpoints with 3 head seeds instead of 5 (time): an evaluation's cost is
#: head training (features are extracted in 2 s), which grows with the seeds: one evaluation of a 128-wide model
#: with 5 seeds x 2 lrs x 1000 steps x 5 folds took 149-156 s on the 2-core Intel Xeon, with 3 seeds 92-96 s.
#: ``quick`` uses its 3 seeds everywhere.
#: Updates: MAE-AST 6000 and EAT 2000 made the demo 25 min on the Intel Xeon (17 min on the AMD EPYC it was tuned
#: on), over its 20-minute budget. The accuracy-against-updates curve of that run (gap over the random-init twin):
#: MAE-AST +5.2 at 1500 updates, +3.8 at 3000, +3.5 at 6000; EAT -1.2 at 500, -0.5 at 1000, -3.0 at 2000; SSAST
#: -0.8 at 375, -0.9 at 750, +0.7 at 1500. So MAE-AST keeps 3000 and EAT 1000 (their gains were there by then) and
#: SSAST its 1500 (still rising).
RECIPES = {
    "full": Recipe("full", pretrain_minutes=45.0, updates={"mae_ast": 3000, "eat": 1000, "ssast": 1500},
                   lr={"mae_ast": 1e-3, "eat": 1e-3, "ssast": 1e-3}, seeds="0,1,2,3,4", overrides=WIDE,
                   curve_fractions=(0.25, 0.5), curve_seeds="0,1,2"),
    "quick": Recipe("quick", pretrain_minutes=15.0, updates={"mae_ast": 1200, "eat": 400, "ssast": 400},
                    lr={"mae_ast": 1e-3, "eat": 1e-3, "ssast": 1e-3}, head_steps=600, lr_sweep="1e-3", stats_clips=150,
                    overrides=WIDE, curve_fractions=(0.25, 0.5)),
    "test": Recipe("test", pretrain_minutes=1.0, updates={"mae_ast": 6, "eat": 6, "ssast": 6}, batch_size=4,
                   head_steps=20, lr_sweep="1e-3", seeds="0,1,2", stats_clips=20, curve_fractions=(0.5,),
                   curve_seeds="0,1",
                   overrides={"mae_ast": ["model.encoder_layers=1"],
                              "eat": ["model.encoder_layers=1", "model.average_top_k_layers=1"]}),
}


def step(msg: str) -> None:
    print(f"\n==> [{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _console(name: str) -> str:
    local = os.path.join(os.path.dirname(sys.executable), name)
    return local if os.path.exists(local) else name


# ----------------------------------------------------------------------------------------------------------------
# Pretraining
# ----------------------------------------------------------------------------------------------------------------


def curve_updates(recipe: Recipe, method: str) -> List[int]:
    """The update counts of ``method``'s intermediate checkpoints: ``recipe.curve_fractions`` of its updates, rounded,
    strictly between 0 and the last update (duplicates merged)."""
    total = recipe.updates[method]
    bad = [f for f in recipe.curve_fractions if not 0.0 < f < 1.0]
    if bad:
        raise ValueError(f"recipe {recipe.name}: curve_fractions must lie strictly between 0 and 1, got {bad}")
    return sorted({u for u in (round(f * total) for f in recipe.curve_fractions) if 0 < u < total})


#: fairseq's line after every checkpoint save: the file written first (the others are copies of it), epoch, update
SAVED = re.compile(r"Saved checkpoint (.+?) \(epoch (\d+) @ (\d+) updates")
_INTERVAL_NAME = re.compile(r"checkpoint_\d+_\d+\.pt")


def note_saved(line: str, points: List[int], saved: Dict[int, Dict], seconds: float) -> None:
    """Keeps the checkpoint of an update in ``points`` when fairseq's log ``line`` reports its save.

    fairseq writes ``checkpoint_<epoch>_<update>.pt`` at every ``save_interval_updates``, except when the update ends
    an epoch: then only ``checkpoint_last.pt`` is written, which the next save overwrites. That file is copied at
    once to the name fairseq would have used (the next save is ``save_interval_updates`` updates later; every kept
    file's update count is checked after training by :func:`checkpoint_updates`)."""
    m = SAVED.search(line)
    if not m or int(m.group(3)) not in points:
        return
    path, epoch, update = m.group(1), int(m.group(2)), int(m.group(3))
    if not _INTERVAL_NAME.fullmatch(os.path.basename(path)):
        keep = os.path.join(os.path.dirname(path), f"checkpoint_{epoch}_{update}.pt")
        shutil.copyfile(path, keep)
        path = keep
    saved[update] = {"updates": update, "checkpoint": path, "seconds": round(seconds, 1)}


def checkpoint_updates(path: str) -> int:
    """The number of updates a fairseq checkpoint was saved after (its optimizer history)."""
    from maeast_fairseq.checkpoint import read_fairseq_file
    return int(read_fairseq_file(path)["optimizer_history"][-1]["num_updates"])


def pretrain(method: str, data: str, out: str, recipe: Recipe, stats: Dict[str, float]) -> Dict:
    """fairseq-hydra-train with the tiny config + overrides; streams progress, keeps the log, returns a summary
    (``points``: the intermediate checkpoints of :func:`curve_updates`, each checked to hold its update count)."""
    ckpt_dir = os.path.join(out, "checkpoints", method)
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    log_path = os.path.join(out, "logs", f"pretrain_{method}.log")
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    updates = recipe.updates[method]
    points = curve_updates(recipe, method)
    lr = recipe.lr.get(method)
    # saves every gcd(points, updates) updates, all kept (-1); the ones between the points are removed afterwards
    interval = math.gcd(updates, *points)
    over = [f"task.data={data}", f"checkpoint.save_dir={ckpt_dir}",
            f"hydra.run.dir={os.path.join(out, 'hydra', method)}", f"optimization.max_update={updates}",
            f"dataset.batch_size={recipe.batch_size}", "common.log_format=json",
            f"common.log_interval={max(1, min(25, updates // 20))}",
            f"checkpoint.save_interval_updates={interval}", f"checkpoint.keep_interval_updates={-1 if points else 1}",
            "checkpoint.save_interval=100000",
            "dataset.validate_interval_updates=0", "dataset.validate_interval=100000",
            "dataset.disable_validation=true"]
    if method == "mae_ast":  # MAE-AST normalises in the model (BatchNorm); crops of 2.56 s like the others
        over += ["task.max_frames=256", "task.min_sample_size=4000"]
    else:
        over += [f"task.norm_mean={stats['mean']:.6f}", f"task.norm_std={stats['std']:.6f}", "task.min_sample_size=4000"]
    if method == "eat":  # the teacher EMA anneals over the whole run
        over += [f"model.ema_anneal_end_step={max(1, updates)}"]
        if lr:
            over += [f"optimizer.groups.default.lr_float={lr}", f"optimizer.groups.no_decay.lr_float={lr}"]
    elif lr:
        over += [f"optimization.lr=[{lr}]"]
    over += list(recipe.overrides.get(method, []))
    cmd = [_console("fairseq-hydra-train"), "--config-dir", os.path.join(REPO, "examples", "pretrain"),
           "--config-name", CONFIGS[method]] + over
    env = dict(os.environ, MAEAST_USER_DIR=os.path.join(REPO, "maeast_fairseq"))
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    print(f"   {method}: {TITLES[method]} ({CONFIGS[method]} + overrides, {updates} updates"
          + (f"; checkpoints kept at {', '.join(map(str, points))}" if points else "") + "):\n   " + " ".join(cmd),
          flush=True)
    t0 = time.time()
    last_print = 0.0
    saved: Dict[int, Dict] = {}
    with open(log_path, "w") as logf:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=out)
        for line in proc.stdout:
            logf.write(line)
            if points:
                note_saved(line, points, saved, time.time() - t0)
            rec = parse_train_line(line)
            if rec and time.time() - last_print > 10:
                last_print = time.time()
                print(f"   {method}: update {rec['num_updates']}/{updates}  loss {rec['loss']:.4f}  "
                      f"({time.time() - t0:.0f} s)", flush=True)
        rc = proc.wait()
    seconds = time.time() - t0
    if rc != 0:
        tail = open(log_path).read()[-3000:]
        raise RuntimeError(f"pretraining {method} failed (exit {rc}); log {log_path}:\n{tail}")
    curve = read_curve(log_path)
    ckpt = os.path.join(ckpt_dir, "checkpoint_last.pt")
    kept = [saved[u]["checkpoint"] for u in points if u in saved]
    for path in os.listdir(ckpt_dir):  # the saves between the points
        m = re.fullmatch(r"checkpoint_\d+_(\d+)\.pt", path)
        if m and int(m.group(1)) != updates and os.path.join(ckpt_dir, path) not in kept:
            os.remove(os.path.join(ckpt_dir, path))
    for u, path in [(u, saved[u]["checkpoint"]) for u in points if u in saved] + [(updates, ckpt)]:
        found = checkpoint_updates(path)
        if found != u:
            raise RuntimeError(f"pretraining {method}: {path} holds the model after {found} updates, not {u}")
    missing = [u for u in points if u not in saved]
    if missing:
        raise RuntimeError(f"pretraining {method}: no checkpoint saved at update(s) {missing} (no 'Saved checkpoint' "
                           f"line for them in {log_path})")
    print(f"   {method}: {updates} updates in {seconds:.0f} s; loss {curve[0]['loss'] if curve else '?'} -> "
          f"{curve[-1]['loss'] if curve else '?'}; {ckpt}"
          + "".join(f"; update {u}: {saved[u]['checkpoint']} ({saved[u]['seconds']:.0f} s)" for u in points),
          flush=True)
    return {"method": method, "config": CONFIGS[method], "updates": updates, "seconds": round(seconds, 1),
            "checkpoint": ckpt, "log": log_path, "overrides": over, "curve": curve,
            "points": [saved[u] for u in points]}


def _workers(recipe: Recipe, jobs: int) -> int:
    return max(1, min(recipe.parallel, jobs, os.cpu_count() or 1))


@dataclass
class Job:
    """One step of the demo's queue: ``fn()``, or ``fn(result of after)`` when it needs another job's result."""
    key: str
    fn: Callable[..., Any]
    after: Optional[str] = None


def run_jobs(jobs: List[Job], workers: int) -> Dict[str, Any]:
    """Runs ``jobs`` ``workers`` at a time (threads waiting on subprocesses): whenever a slot is free, the first job
    in list order whose ``after`` job has finished starts. Returns {key: result}. After a failure no new job starts;
    the running ones finish and the first error is raised."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
    keys = {j.key for j in jobs}
    unknown = [f"{j.key} -> {j.after}" for j in jobs if j.after is not None and j.after not in keys]
    if unknown or len(keys) != len(jobs):
        raise ValueError(f"run_jobs: duplicate keys or unknown dependencies {unknown}")
    done: Dict[str, Any] = {}
    pending = list(jobs)
    running: Dict[Any, str] = {}
    error: Optional[BaseException] = None
    with ThreadPoolExecutor(max_workers=workers) as pool:
        while running or (pending and error is None):
            for job in [] if error is not None else list(pending):
                if len(running) >= workers:
                    break
                if job.after is None or job.after in done:
                    pending.remove(job)
                    args = () if job.after is None else (done[job.after],)
                    running[pool.submit(job.fn, *args)] = job.key
            if not running:
                raise ValueError(f"run_jobs: circular dependencies among {[j.key for j in pending]}")
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for f in finished:
                key = running.pop(f)
                try:
                    done[key] = f.result()
                except BaseException as exc:  # noqa: B036 - re-raised below, once the running jobs are done
                    error = error or exc
    if error is not None:
        raise error
    return done


def pretrain_order(methods: List[str], recipe: Recipe) -> List[str]:
    """The longest pretraining first (estimated cost: updates x per-update cost x width squared)."""
    return sorted(methods, key=lambda m: -recipe.updates[m] * COST.get(m, 1.0)
                  * float(_override(recipe, m, "model.embed_dim", 64) / 64) ** 2)


def run_all(methods: List[str], pretrain_data: str, data: str, out: str, recipe: Recipe,
            stats: Dict[str, float]) -> Tuple[Dict[str, Dict], Dict[str, Dict]]:
    """Every pretraining and every evaluation in one queue, ``recipe.parallel`` at a time: the pretrainings first
    (longest first), then each method's evaluations as soon as its pretraining is done (its last checkpoint, its
    random-init twin, its intermediate checkpoints), and the log-mel baseline. Returns (runs, evals) with evals keyed
    ``method``, ``random:method``, ``method@update`` and ``logmel``."""
    order = pretrain_order(methods, recipe)
    jobs = [Job(f"pretrain:{m}", _bind(pretrain, m, pretrain_data, out, recipe, stats)) for m in order]
    for m in order:
        after = f"pretrain:{m}"
        jobs += [Job(m, lambda run, m=m: evaluate(run["checkpoint"], data, out, m, recipe), after),
                 Job(f"random:{m}", lambda run, m=m: evaluate(f"random:{run['checkpoint']}", data, out,
                                                              f"random_{m}", recipe), after)]
        jobs += [Job(f"{m}@{u}", lambda run, m=m, i=i: evaluate(run["points"][i]["checkpoint"], data, out,
                                                                f"{m}@{run['points'][i]['updates']}", recipe,
                                                                seeds=recipe.curve_seeds or recipe.seeds), after)
                 for i, u in enumerate(curve_updates(recipe, m))]
    jobs.append(Job("logmel", _bind(evaluate, "logmel", data, out, "logmel", recipe)))
    workers = _workers(recipe, len(jobs))
    n_eval = len(jobs) - len(methods)
    step(f"pretraining {', '.join(TITLES[m] for m in order)} and {n_eval} evaluations, {workers} jobs at a time "
         f"(one thread each); an evaluation starts once its checkpoint's pretraining is done. Evaluation: frozen, "
         f"weighted layer sum + linear head, head seeds {recipe.seeds}"
         + (f" ({recipe.curve_seeds} for the intermediate checkpoints)" if recipe.curve_seeds else ""))
    done = run_jobs(jobs, workers)
    runs = {m: done[f"pretrain:{m}"] for m in methods}
    evals = {j.key: done[j.key] for j in jobs if not j.key.startswith("pretrain:")}
    return runs, evals


def _bind(fn: Callable[..., Any], *args) -> Callable[[], Any]:
    return lambda: fn(*args)


#: relative cost of one update of the tiny configs (seconds per update, measured: MAE-AST 1, SSAST 2.5, EAT 3)
COST = {"mae_ast": 1.0, "ssast": 2.5, "eat": 3.0}


def _override(recipe: Recipe, method: str, key: str, default: float) -> float:
    for o in recipe.overrides.get(method, []):
        if o.startswith(key + "="):
            return float(o.split("=", 1)[1])
    return default


def model_width(recipe: Recipe, methods: Optional[List[str]] = None) -> int:
    """The widest of the demo's models (embedding dimension; the tiny configs: 64)."""
    return int(max(_override(recipe, m, "model.embed_dim", 64) for m in (methods or list(recipe.updates))))


def curve_table(runs: Dict[str, Dict], evals: Dict[str, Dict]) -> List[Dict]:
    """Accuracy against pretraining updates, one row per (method, update count): the random-init twin at 0, the
    intermediate checkpoints, the last one; with the pretraining seconds at that update and the head seeds."""
    rows = []
    for m, run in runs.items():
        points = [(0, f"random:{m}", 0.0)] + [(p["updates"], f"{m}@{p['updates']}", p["seconds"])
                                              for p in run.get("points", [])] + [(run["updates"], m, run["seconds"])]
        for updates, key, seconds in points:
            res = evals.get(key)
            if res is None:
                continue
            t = res["test"]
            rows.append({"method": m, "title": TITLES.get(m, m), "upstream": key, "updates": updates,
                         "fraction": updates / run["updates"], "init": "random init" if updates == 0 else "pretrained",
                         "pretraining_seconds": seconds, "mean": t["mean"], "std": t["std"], "values": t["values"],
                         "seeds": res.get("_seeds"), "metric": t["metric"]})
    return rows


def model_size(recipe: Recipe, method: str) -> str:
    """'128-wide 4-layer' from the recipe's overrides (the tiny configs: 64 wide, 2 layers)."""
    layers = _override(recipe, method, "model.encoder_layers", 2)
    return f"{_override(recipe, method, 'model.embed_dim', 64):.0f}-wide {layers:.0f}-layer"


def parse_train_line(line: str) -> Optional[Dict]:
    if "train_inner" not in line or "{" not in line:
        return None
    try:
        rec = json.loads(line[line.index("{"):].strip())
    except ValueError:
        return None
    out = {}
    for k, v in rec.items():
        try:
            out[k] = float(v)
        except (TypeError, ValueError):
            pass
    if "num_updates" not in out or "loss" not in out:
        return None
    out["num_updates"] = int(out["num_updates"])
    return out


def read_curve(log_path: str) -> List[Dict]:
    with open(log_path) as f:
        return [r for r in (parse_train_line(line) for line in f) if r]


# ----------------------------------------------------------------------------------------------------------------
# Statistics, evaluation
# ----------------------------------------------------------------------------------------------------------------


def corpus_stats(data: str, out: str, clips: int) -> Dict[str, float]:
    path = os.path.join(out, "logs", "corpus_stats.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cmd = [sys.executable, "-m", "maeast_fairseq.cli.stats", data, "--split", "train", "--window", "hanning",
           "--max-clips", str(clips), "--json", path, "--workers", "2", "--progress-every", "100"]
    print("   " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    with open(path) as f:
        st = json.load(f)
    mean = st.get("mean", st.get("norm_mean"))
    std = st.get("std", st.get("norm_std"))
    print(f"   corpus log-mel mean {mean:.4f}, std {std:.4f} (hanning window, {clips} clips at most)", flush=True)
    return {"mean": float(mean), "std": float(std), "json": path}


def evaluate(upstream: str, data: str, out: str, name: str, recipe: Recipe, seeds: Optional[str] = None) -> Dict:
    """``maeast-evaluate`` in a subprocess (one thread): k-fold over kit groups when ``data`` has a ``folds.txt``;
    head seeds ``seeds`` (default: the recipe's)."""
    path = os.path.join(out, "eval", f"{name}.json")
    argv = [upstream, "--data", data, "--lr-sweep", recipe.lr_sweep, "--seeds", seeds or recipe.seeds,
            "--steps", str(recipe.head_steps), "--eval-every", "25", "--json", path, "--quiet",
            "--cache", os.path.join(out, "eval", "cache"), "--device", "cpu", "--threads", "1",
            "--extract-batch-size", "16"]
    folds = os.path.join(data, "folds.txt")
    if os.path.isfile(folds):  # the drum task: k-fold over groups of whole kits, the SUPERB head in every fold
        with open(folds) as f:
            k = len({line.strip() for line in f if line.strip()})
        argv += ["--folds", str(k), "--fold-file", folds, "--fold-split", "all", "--protocol", "superb"]
    log_path = os.path.join(out, "logs", f"eval_{name}.log")
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    t0 = time.time()
    with open(log_path, "w") as logf:
        rc = subprocess.run([sys.executable, "-m", "maeast_fairseq.cli.evaluate"] + argv, stdout=logf,
                            stderr=subprocess.STDOUT, env=env).returncode
    if rc != 0:
        tail = open(log_path).read()[-3000:]
        raise RuntimeError(f"maeast-evaluate {' '.join(argv)} failed (exit {rc}); log {log_path}:\n{tail}")
    with open(path) as f:
        res = json.load(f)
    res["_seconds"] = round(time.time() - t0, 1)
    res["_seeds"] = seeds or recipe.seeds
    t = res["test"]
    print(f"   {name}: accuracy {100 * t['mean']:.1f} ± {100 * t['std']:.1f} ({res['_seconds']:.0f} s; "
          f"log {log_path})", flush=True)
    return res
