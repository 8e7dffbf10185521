"""``make demo``: the whole life of the method on real recordings, with pictures.

1. fetch real recordings from Debian packages (``apt-get download`` + ``dpkg -x`` into ``.cache/audio``; cached):
   instrument and drum samples (sonic-pi-samples, lmms-common), the recorded samples inside the FluidR3 General-MIDI
   SoundFont (fluid-soundfont-gm: 128 instruments and its drum kits, read straight from the .sf2) and the Hydrogen
   drum kits (downstream only). ``AUDIO_DIR=/some/folder`` (or ``--audio-dir``) pretrains on any folder of audio
   instead. Without apt the demo falls back to a synthetic corpus, and says so loudly.
2. the downstream task: drum-instrument type (kick / snare / hi-hat / tom / cymbal) from the Hydrogen kits'
   ``drumkit.xml``, 5-fold cross-validation over groups of WHOLE kits (kits sharing recordings are one group), and a
   leak check (no drum clip's recording is in the pretraining audio or in another fold);
3. corpus log-mel statistics (maeast-stats), then small MAE-AST, EAT and SSAST pretrainings (fairseq-hydra-train,
   the tiny configs widened to 128 x 4 layers, two jobs at a time; ~18 min for everything on 2 CPU cores,
   ``QUICK=1`` / ``--quick`` ~6 min);
4. SUPERB-style frozen evaluation (maeast-evaluate: weighted layer sum, linear head, 5 head seeds, in every fold)
   of every pretrained model, its random-init twin, its checkpoints at 1/4 and 1/2 of its updates (accuracy against
   pretraining updates; 3 head seeds) and a log-mel baseline; each evaluation starts as soon as its pretraining is
   done;
5. ``results.md``, ``results.json`` and PNG figures in ``--out`` (default ``runs/demo``).

These are small-data CPU figures: they are not comparable to the papers' numbers.
"""
import argparse
import glob
import json
import os
import shutil
import sys
import time

from maeast_fairseq.demo import fetch as F
from maeast_fairseq.demo import pipeline as P

REPO = P.REPO
LOUD = "!" * 100


def loud(msg: str) -> None:
    print(f"\n{LOUD}\n!! {msg}\n{LOUD}\n", flush=True)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="maeast-demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo", help="results folder (default: runs/demo)")
    p.add_argument("--quick", action="store_true", default=_env_flag("QUICK"),
                   help="the ~5 minute version (also env QUICK=1)")
    p.add_argument("--recipe", choices=sorted(P.RECIPES), default=None, help=argparse.SUPPRESS)
    p.add_argument("--audio-dir", default=os.environ.get("AUDIO_DIR") or None,
                   help="pretrain on every audio file under this folder instead of the Debian packages "
                        "(also env AUDIO_DIR)")
    p.add_argument("--downstream-data", default=os.environ.get("DOWNSTREAM_DATA") or None,
                   help="a labelled folder (train/valid/test .tsv + .lbl) to evaluate on instead of the drum kits")
    p.add_argument("--synthetic", action="store_true", help="use the synthetic corpus only (no network)")
    p.add_argument("--cache", default=os.environ.get("MAEAST_AUDIO_CACHE", os.path.join(REPO, ".cache", "audio")),
                   help="where the Debian packages are unpacked (default: .cache/audio)")
    p.add_argument("--methods", default=",".join(P.METHODS), help="methods to pretrain (default: all three)")
    p.add_argument("--updates", type=int, default=None, help="pretraining updates for every method (override)")
    p.add_argument("--pretrain-minutes", type=float, default=None, help="pretraining audio in minutes (override)")
    return p


# ----------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------


def synthetic_pretraining(out: str, minutes: float) -> dict:
    from maeast_fairseq.data.synthetic import make_corpus
    root = os.path.join(out, "synthetic", "pretrain")
    shutil.rmtree(root, ignore_errors=True)
    n = max(16, int(minutes * 60 / 2.25))
    make_corpus(root, n, seed=0)
    return {"synthetic": F.audio_files(root)}


def synthetic_downstream(out: str) -> dict:
    """Labelled synthetic sound kinds; train / valid / test clips drawn with different seeds."""
    import soundfile as sf

    from maeast_fairseq.data.manifest import write_label_list, write_labels, write_manifest
    from maeast_fairseq.data.synthetic import make_corpus
    root = os.path.join(out, "synthetic", "downstream")
    shutil.rmtree(root, ignore_errors=True)
    data = os.path.join(out, "data", "downstream")
    os.makedirs(data, exist_ok=True)
    classes = set()
    sizes = {}
    for split, seed, n in (("train", 10, 24), ("valid", 11, 10), ("test", 12, 10)):
        made = make_corpus(os.path.join(root, split), n, seed=seed, rates=(16000,))
        rows = [(os.path.relpath(p, root), sf.info(p).frames, kind) for p, kind in made]
        write_manifest(os.path.join(data, f"{split}.tsv"), root, [(r, n_) for r, n_, _ in rows])
        write_labels(os.path.join(data, f"{split}.lbl"), [[k] for _, _, k in rows])
        classes |= {k for _, _, k in rows}
        sizes[split] = len(rows)
    write_label_list(os.path.join(data, "labels.txt"), sorted(classes))
    return {"data": data, "classes": sorted(classes), "clips": sizes, "kits": None,
            "name": "synthetic sound kinds (tone/chirp/noise/clicks...), splits drawn with different seeds"}


def get_data(args, out: str, recipe: P.Recipe) -> dict:
    info = {"fallback": None}
    pkgs = {}
    want_pkgs = not args.synthetic
    if want_pkgs:
        names = list(F.DRUM_PACKAGES) if args.downstream_data is None else []
        if not args.audio_dir:
            names = list(F.PRETRAIN_PACKAGES) + names
        if names:
            P.step(f"fetching Debian packages ({', '.join(names)}) into {args.cache} (cached after the first run)")
            try:
                pkgs = F.fetch_packages(names, args.cache)
            except F.FetchError as exc:
                loud(f"COULD NOT FETCH THE REAL RECORDINGS: {exc}\n!! FALLING BACK TO THE SYNTHETIC CORPUS: the "
                     "numbers below are NOT a result on real audio.")
                info["fallback"] = str(exc)

    # -- pretraining audio ------------------------------------------------------------------------------------------
    kits = F.find_kits([pkgs[p] for p in F.DRUM_PACKAGES if p in pkgs])
    if args.audio_dir:
        sources = {"audio_dir": F.audio_files(args.audio_dir)}
        if not sources["audio_dir"]:
            raise SystemExit(f"demo: no audio files ({', '.join(F.AUDIO_EXTS)}) under --audio-dir {args.audio_dir}")
        desc = f"every audio file under {os.path.abspath(args.audio_dir)}"
    elif args.synthetic or not all(p in pkgs for p in F.PRETRAIN_PACKAGES):
        sources = synthetic_pretraining(out, recipe.pretrain_minutes)
        desc = "SYNTHETIC corpus (melodies, chirps, noise, clicks)"
    else:
        sources = {}
        for p in F.PRETRAIN_PACKAGES:
            if p in F.SOUNDFONT_PACKAGES:  # the recorded samples inside the bank(s), written out as wav once
                banks = sorted(f for ext in ("sf2", "sf3")
                               for f in glob.glob(os.path.join(pkgs[p], "**", f"*.{ext}"), recursive=True))
                if not banks:
                    raise SystemExit(f"demo: no .sf2 / .sf3 SoundFont in the unpacked package {pkgs[p]}")
                sources[p] = [f for b in banks for f in F.soundfont_samples(
                    b, os.path.join(args.cache, "prepared", "soundfont", os.path.splitext(os.path.basename(b))[0]))]
            else:
                sources[p] = F.audio_files(pkgs[p])
        # no drum-kit audio at all: every kit is a test kit in one fold of the downstream task
        desc = ("Debian packages: " + ", ".join(sources) + " (no Hydrogen kit: each is held out in one fold)")
    P.step(f"pretraining corpus: {desc}; a bounded subset of {recipe.pretrain_minutes:g} min cut into <= 3 s "
           "16 kHz pieces")
    tag = "audio_dir" if args.audio_dir else "synthetic" if "synthetic" in sources else "debian"
    corpus = os.path.join(args.cache if tag == "debian" else out, "prepared", f"pretrain_{tag}")
    _, seconds = F.prepare_pretraining(sources, corpus, max_seconds=recipe.pretrain_minutes * 60)
    manifest = os.path.join(out, "data", "pretrain")
    sizes = F.write_unlabelled_manifest(corpus, manifest)
    print(f"   manifests in {manifest}: {sizes}", flush=True)
    info["pretrain"] = {"description": desc, "seconds_per_source": seconds, "clips": sizes, "manifest": manifest}

    # -- downstream -------------------------------------------------------------------------------------------------
    if args.downstream_data:
        # its manifests, labels and lists (not the audio: manifests hold absolute roots) under out/data/downstream,
        # where the README's Downstream commands look
        dest = os.path.join(out, "data", "downstream")
        shutil.rmtree(dest, ignore_errors=True)
        os.makedirs(dest)
        for name in sorted(os.listdir(args.downstream_data)):
            src = os.path.join(args.downstream_data, name)
            if os.path.isfile(src) and name.endswith((".tsv", ".lbl", ".txt")):
                shutil.copy(src, dest)
        info["downstream"] = {"data": dest, "name": f"user data ({os.path.abspath(args.downstream_data)})",
                              "kits": None}
    elif kits:
        P.step(f"drum-instrument task from {len(kits)} Hydrogen kits (drumkit.xml -> kick/snare/hihat/tom/cymbal), "
               f"{len(F.KIT_FOLDS)}-fold cross-validation over groups of whole kits")
        d = F.prepare_drums(kits, os.path.join(args.cache, "prepared", "drums"))
        dest = os.path.join(out, "data", "downstream")
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(d["data"], dest)
        d["data"] = dest
        d["name"] = (f"Hydrogen drum kits, drum-instrument type, {len(d['folds'])}-fold cross-validation over groups "
                     "of whole kits")
        d["first_fold_splits"] = write_first_fold_splits(dest)
        info["downstream"] = d
        print(f"   clips per fold {d['clips']}; kits {d['kits']}; classes {d['classes']}", flush=True)
        print(f"   {dest}/train|valid|test.tsv + .lbl: the cross-validation's first fold "
              f"{d['first_fold_splits']}", flush=True)
        info["leak_check"] = leak_check(dest, corpus)
    else:
        P.step("downstream: SYNTHETIC labelled sound kinds (no drum kits available)")
        info["downstream"] = synthetic_downstream(out)
    return info


def write_first_fold_splits(downstream: str) -> dict:
    """``train`` / ``valid`` / ``test`` manifests + labels beside ``all.tsv``: the first fold of the k-fold
    evaluation (``maeast-evaluate --folds K --fold-file folds.txt``: test = the first fold id in its order, valid =
    the next, train = the rest), so whole kits never straddle splits. For the commands that take one split (the
    README's Downstream section: ``maeast-embed``, fine-tuning, ``maeast-predict``, ``fairseq-validate``,
    ``maeast-evaluate --test test``). Returns {split: fold ids}."""
    from maeast_fairseq.cli.evaluate import fold_order, read_fold_ids
    from maeast_fairseq.data.manifest import read_labels, read_manifest, write_labels, write_manifest
    from maeast_fairseq.evaluation.superb import fold_roles
    tsv = os.path.join(downstream, "all.tsv")
    root, entries = read_manifest(tsv)
    labels = read_labels(os.path.join(downstream, "all.lbl"), len(entries), manifest_path=tsv)
    ids = read_fold_ids(os.path.join(downstream, "folds.txt"), len(entries))
    order = fold_order(ids)
    roles = fold_roles(0, len(order))
    out = {}
    for split in ("train", "valid", "test"):
        wanted = {order[f] for f in roles[split]}
        keep = [i for i, fid in enumerate(ids) if fid in wanted]
        write_manifest(os.path.join(downstream, f"{split}.tsv"), root,
                       [(entries[i].rel, entries[i].num_samples) for i in keep])
        write_labels(os.path.join(downstream, f"{split}.lbl"), [labels[i] for i in keep])
        out[split] = [order[f] for f in roles[split]]
    return out


def leak_check(downstream: str, corpus: str) -> dict:
    """Can a model win by recognising the recording? Onset fingerprints (cosine) of every drum clip against every
    pretraining piece, and against the clips of the OTHER folds. Kits that share recordings score >= 0.99 (the
    GMRockKit / The Black Pearl pairs, which is why they are one fold): that is what a copy looks like."""
    import torch

    from maeast_fairseq.data.manifest import read_manifest
    P.step("leak check: onset fingerprints of every drum clip vs the pretraining pieces and the other folds' clips")
    clips = [e.path for e in read_manifest(os.path.join(downstream, "all.tsv"))[1]]
    with open(os.path.join(downstream, "folds.txt")) as f:
        folds = [line.strip() for line in f]
    prints = F.onset_prints(clips)
    vs_corpus = F.nearest_duplicate(clips, F.audio_files(corpus), held_out_prints=prints)
    sim = prints @ prints.T
    fold_ids = {f: i for i, f in enumerate(dict.fromkeys(folds))}
    fid = torch.tensor([fold_ids[f] for f in folds])
    same = fid[:, None] == fid[None, :]
    cross = sim.masked_fill(same, -1.0)
    within = sim.masked_fill(~same | torch.eye(len(clips), dtype=torch.bool), -1.0)
    res = {"vs_pretraining": vs_corpus, "cross_fold_max": round(float(cross.max()), 4),
           "cross_fold_pairs_at_threshold": int((cross >= 0.99).sum()) // 2,
           "within_fold_pairs_at_threshold": int((within >= 0.99).sum()) // 2, "threshold": 0.99}
    res["leak"] = bool(vs_corpus.get("max_similarity", 0) >= 0.99 or res["cross_fold_pairs_at_threshold"] > 0)
    print(f"   nearest pretraining piece of any drum clip: {vs_corpus.get('max_similarity')}; nearest clip of another "
          f"fold: {res['cross_fold_max']} ({res['cross_fold_pairs_at_threshold']} pairs >= 0.99); within a fold "
          f"{res['within_fold_pairs_at_threshold']} pairs >= 0.99 (kits sharing recordings: what a copy scores) -> "
          + ("POSSIBLE LEAK" if res["leak"] else "no held-out recording is heard in training"), flush=True)
    return res


# ----------------------------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------------------------


def _fmt(t: dict) -> str:
    return f"{100 * t['mean']:.1f} ± {100 * t['std']:.1f}"


def write_results(out: str, info: dict, runs: dict, evals: dict, recipe: P.Recipe, wall: float,
                  precision=None) -> dict:
    ds = info["downstream"]
    any_eval = next(iter(evals.values()))
    protocol = any_eval["protocol"]
    curve = P.curve_table(runs, evals)
    rows = []
    for name, res in evals.items():
        if "@" in name:  # an intermediate checkpoint: the accuracy-against-updates table
            continue
        method = name.split(":")[-1]
        kind = "logmel" if name == "logmel" else ("random init" if name.startswith("random:") else "pretrained")
        t = res["test"]
        rows.append({"upstream": name, "method": P.TITLES.get(method, "log-mel + linear") if name != "logmel"
                     else "log-mel + linear", "init": kind, "protocol": protocol,
                     "data": ds.get("name", ds["data"]), "metric": t["metric"], "mean": t["mean"], "std": t["std"],
                     "values": t["values"], "lrs": res["lrs"],
                     "pretraining_seconds": runs[method]["seconds"] if kind == "pretrained" else None,
                     "pretraining_updates": runs[method]["updates"] if kind == "pretrained" else None})
    verdicts = {}
    for m in runs:
        a, b = evals.get(m), evals.get(f"random:{m}")
        if a and b:
            gap = a["test"]["mean"] - b["test"]["mean"]
            spread = max(a["test"]["std"], b["test"]["std"])
            verdicts[m] = {"pretrained": a["test"]["mean"], "random": b["test"]["mean"], "gap": gap,
                           "seed_spread": spread, "beats_random_by_more_than_spread": gap > spread}
    chance = any_eval.get("chance")
    summary = {
        "title": "maeast-fairseq demo: pretraining on real recordings, frozen evaluation on held-out drum kits (k-fold)",
        "note": "small-data CPU figures (small models, minutes of pretraining); NOT comparable to the papers' numbers",
        "recipe": recipe.__dict__, "wall_seconds": round(wall, 1),
        "pretraining_data": info["pretrain"], "fallback": info.get("fallback"),
        "downstream": {k: v for k, v in ds.items() if k != "per_kit"}, "per_kit": ds.get("per_kit"),
        "protocol": protocol, "chance": chance, "rows": rows, "verdicts": verdicts,
        "leak_check": info.get("leak_check"),
        "pretraining": {m: {k: v for k, v in r.items() if k != "curve"} for m, r in runs.items()},
        "accuracy_vs_updates": curve,
        "precision": None if precision is None else {"name": precision.name, "describe": precision.describe(),
                                                     "evaluation": any_eval.get("features", {}).get("precision")},
        "evaluation_seconds": {name: res.get("_seconds") for name, res in evals.items()},
    }
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(summary, f, indent=2)

    L = ["# maeast-fairseq demo results", ""]
    if info.get("fallback"):
        L += [f"> **FALLBACK: synthetic data** ({info['fallback']}). These numbers are not a result on real audio.", ""]
    sizes = sorted({f"{P.model_size(recipe, m)}" for m in runs})
    L += [f"Small-data CPU figures ({' / '.join(sizes)} models, minutes of pretraining on "
          f"{sum(info['pretrain']['seconds_per_source'].values()) / 60:.0f} min of audio): **not comparable to the "
          "papers' numbers**.", "",
          f"- pretraining audio: {info['pretrain']['description']} "
          f"({', '.join(f'{k} {v / 60:.1f} min' for k, v in info['pretrain']['seconds_per_source'].items())})",
          f"- downstream: {ds.get('name', ds['data'])}; classes {', '.join(ds.get('classes') or [])}; "
          f"clips {ds.get('clips')}"]
    if ds.get("kits"):
        L.append("- folds (groups of whole kits; each is the test fold once, the next one validates, the rest train): "
                 + "; ".join(f"**{f}** {', '.join(k) or '-'} ({ds['clips'][f]} clips)" for f, k in ds["kits"].items()))
    lc = info.get("leak_check")
    if lc:
        L.append(f"- leak check (onset log-mel fingerprints, cosine; a copy scores >= 0.99): nearest pretraining piece "
                 f"of any drum clip {lc['vs_pretraining'].get('max_similarity')}, nearest clip of another fold "
                 f"{lc['cross_fold_max']}; within folds {lc['within_fold_pairs_at_threshold']} pairs of kits' shared "
                 "recordings score >= 0.99 (why those kits are one fold): "
                 + ("**POSSIBLE LEAK**" if lc["leak"] else "no test recording is heard in pretraining or head training"))
    where = ("on the validation fold" if ds.get("folds") else "on dev")
    what = ("accuracy on the test fold averaged over the folds" if ds.get("folds") else "accuracy on the test split")
    L += [f"- protocol: {protocol}; lr picked {where} from {recipe.lr_sweep}; {recipe.head_steps} head steps; "
          f"head seeds {recipe.seeds}; {what}, mean ± std over head seeds"
          + (f"; chance (majority class) {100 * chance:.1f}%" if chance is not None else ""),
          f"- whole demo wall time: {wall / 60:.1f} min (recipe `{recipe.name}`)"]
    if precision is not None:
        L.append(f"- upstream arithmetic: {precision.describe()}")
    L += ["",
          "| method | init | test accuracy (%) | pretraining |", "|---|---|---|---|"]
    for r in rows:
        pt = (f"{r['pretraining_updates']} updates, {r['pretraining_seconds'] / 60:.1f} min CPU"
              if r["pretraining_seconds"] is not None else "-")
        L.append(f"| {r['method']} | {r['init']} | {_fmt(r)} | {pt} |")
    L += ["", "Pretrained vs random-init twin (same architecture, same head protocol):", ""]
    for m, v in verdicts.items():
        L.append(f"- {P.TITLES[m]}: {100 * v['pretrained']:.1f} vs {100 * v['random']:.1f} "
                 f"(gap {100 * v['gap']:+.1f}, seed spread {100 * v['seed_spread']:.1f}) -> "
                 f"{'beats it by more than the spread' if v['beats_random_by_more_than_spread'] else 'NOT clearly better'}")
    if any(r["updates"] not in (0, runs[r["method"]]["updates"]) for r in curve):
        seeds = sorted({r["seeds"] for r in curve if r["seeds"]})
        L += ["", "Accuracy against pretraining updates (checkpoints of the same run: the learning-rate schedule"
              + (" and EAT's teacher EMA anneal" if "eat" in runs else "") + " span all the updates; update 0 is the "
              "random-init twin; `figures/accuracy_vs_updates.png`):", "",
              "| method | updates | pretraining | head seeds | test accuracy (%) |", "|---|---|---|---|---|"]
        for r in curve:
            pt = ("random init" if r["updates"] == 0
                  else f"{100 * r['fraction']:.0f} %, {r['pretraining_seconds'] / 60:.1f} min CPU")
            L.append(f"| {r['title']} | {r['updates']} | {pt} | {r['seeds']} | {_fmt(r)} |")
        if len(seeds) > 1:
            L += ["", "Fewer head seeds for the intermediate checkpoints (time); their ± is the spread over those "
                  "seeds."]
    figs = ["loss_curves"] + (["accuracy_vs_updates"] if curve else []) \
        + [f"{m}_reconstruction" for m in ("mae_ast", "ssast") if m in runs] \
        + (["eat_mask_and_targets"] if "eat" in runs else [])
    L += ["", "Figures: " + ", ".join(f"`figures/{f}.png`" for f in figs) + ".", ""]
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write("\n".join(L))
    return summary


# ----------------------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    recipe = P.RECIPES[args.recipe or ("quick" if args.quick else "full")]
    if args.updates is not None:
        recipe.updates = {m: args.updates for m in recipe.updates}
    if args.pretrain_minutes is not None:
        recipe.pretrain_minutes = args.pretrain_minutes
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    out = os.path.abspath(args.out)
    if args.downstream_data and os.path.abspath(args.downstream_data).startswith(os.path.join(out, "data") + os.sep):
        raise SystemExit(f"demo: --downstream-data {args.downstream_data} is inside {out}/data, which the demo "
                         "rewrites: give a folder outside it")
    for sub in ("checkpoints", "hydra", "eval", "figures", "logs", "data", "synthetic"):
        shutil.rmtree(os.path.join(out, sub), ignore_errors=True)
    os.makedirs(os.path.join(out, "figures"), exist_ok=True)
    t0 = time.time()
    print(f"maeast-fairseq demo (recipe {recipe.name}); outputs in {out}", flush=True)
    from maeast_fairseq.precision import resolve_precision
    # what maeast-evaluate's --precision auto picks for these models (the pretrainings run in float32)
    prec = resolve_precision("auto", "cpu", width=P.model_width(recipe, methods))
    print(f"   {prec.describe()}", flush=True)

    info = get_data(args, out, recipe)
    P.step("corpus log-mel statistics (maeast-stats) for SSAST / EAT's dataset normalisation")
    stats = P.corpus_stats(info["pretrain"]["manifest"], out, recipe.stats_clips)

    runs, evals = P.run_all(methods, info["pretrain"]["manifest"], info["downstream"]["data"], out, recipe, stats)

    P.step("figures")
    from maeast_fairseq.audio import load_audio
    from maeast_fairseq.data.manifest import read_manifest
    from maeast_fairseq.demo import plots
    figs = os.path.join(out, "figures")
    print("   " + plots.loss_curves(runs, os.path.join(figs, "loss_curves.png"), P.TITLES), flush=True)
    curve = P.curve_table(runs, evals)
    if curve:
        print("   " + plots.accuracy_vs_updates(curve, os.path.join(figs, "accuracy_vs_updates.png"),
                                                baseline=evals["logmel"]["test"]), flush=True)
    _, entries = read_manifest(os.path.join(info["pretrain"]["manifest"], "valid.tsv"))
    # the figures' clip: a long speech piece when there is one (the most readable spectrogram), else the longest
    entries = sorted(entries, key=lambda e: ("fillets" not in e.path, -e.num_samples))
    wav = load_audio(entries[0].path, 16000)
    for m in ("mae_ast", "ssast"):
        if m in runs:
            print("   " + plots.reconstruction(runs[m]["checkpoint"], wav,
                                               os.path.join(figs, f"{m}_reconstruction.png"),
                                               f"{P.TITLES[m]} after {runs[m]['updates']} updates: "
                                               f"{os.path.basename(entries[0].path)}"), flush=True)
    if "eat" in runs:
        print("   " + plots.eat_figure(runs["eat"]["checkpoint"], runs["eat"]["curve"],
                                       os.path.join(figs, "eat_mask_and_targets.png")), flush=True)
        clips = [load_audio(e.path, 16000) for e in entries[:8]]
        cos = plots.teacher_student_cosine(runs["eat"]["checkpoint"], clips)
        runs["eat"]["teacher_student_cosine_end"] = cos
        print(f"   EAT: cosine(student prediction, teacher target) at masked patches, end of training: {cos:.3f}",
              flush=True)

    wall = time.time() - t0
    summary = write_results(out, info, runs, evals, recipe, wall, precision=prec)
    P.step(f"done in {wall / 60:.1f} min: {out}/results.md, results.json, figures/*.png")
    print(open(os.path.join(out, "results.md")).read(), flush=True)
    return 0 if summary else 1


if __name__ == "__main__":
    sys.exit(main())
