"""``make demo`` (for now): a short MAE-AST pretraining on a small synthetic corpus the command makes itself, then
features extracted from the checkpoint without fairseq. Every step prints what it does; outputs go to ``--out``."""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def step(msg: str) -> None:
    print(f"\n==> {msg}", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--clips", type=int, default=64, help="synthetic clips to make (default: 64)")
    p.add_argument("--updates", type=int, default=300, help="pretraining updates (default: 300)")
    p.add_argument("--config", default="mae_ast_patch_tiny", help="config in examples/pretrain")
    args = p.parse_args(argv)
    out = os.path.abspath(args.out)
    for sub in ("audio", "heldout", "data", "checkpoints", "hydra"):  # a fresh run each time (no resume of an old demo)
        shutil.rmtree(os.path.join(out, sub), ignore_errors=True)
    os.makedirs(out, exist_ok=True)
    t0 = time.time()

    step(f"making {args.clips} synthetic clips (melodies, chirps, noise, clicks; 8/16/22.05 kHz) in {out}/audio")
    from maeast_fairseq.data.synthetic import make_corpus
    make_corpus(os.path.join(out, "audio"), args.clips, seed=0)

    step("writing manifests with maeast-manifest (labels = the sound kind, from the folder names)")
    data = os.path.join(out, "data")
    subprocess.run([sys.executable, "-m", "manifests", os.path.join(out, "audio"), "--dest", data,
                    "--ext", "wav", "--valid-percent", "0.2", "--seed", "1", "--labels-from", "parent"], check=True)
    step("making a held-out test split (other clips, another seed) for the downstream examples")
    make_corpus(os.path.join(out, "heldout"), max(8, args.clips // 4), seed=1)
    subprocess.run([sys.executable, "-m", "manifests", os.path.join(out, "heldout"), "--dest",
                    os.path.join(out, "heldout_data"), "--ext", "wav", "--valid-percent", "0", "--labels-from",
                    "parent"], check=True)
    for ext in ("tsv", "lbl"):
        shutil.move(os.path.join(out, "heldout_data", f"train.{ext}"), os.path.join(data, f"test.{ext}"))
    shutil.rmtree(os.path.join(out, "heldout_data"))

    step(f"pretraining MAE-AST ({args.config}, {args.updates} updates) with fairseq-hydra-train")
    env = dict(os.environ, MAEAST_USER_DIR=os.path.join(REPO, "maeast_fairseq"))
    env.setdefault("OMP_NUM_THREADS", "1")  # a tiny model: more threads only add overhead
    ckpt_dir = os.path.join(out, "checkpoints")
    cmd = [os.path.join(os.path.dirname(sys.executable), "fairseq-hydra-train"),
           "--config-dir", os.path.join(REPO, "examples", "pretrain"), "--config-name", args.config,
           f"task.data={os.path.join(out, 'data')}", f"checkpoint.save_dir={ckpt_dir}",
           f"hydra.run.dir={os.path.join(out, 'hydra')}", f"optimization.max_update={args.updates}",
           "checkpoint.save_interval_updates=100", "common.log_interval=25"]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=env)

    step("extracting features from checkpoint_last.pt (no fairseq involved)")
    import numpy as np
    from maeast_fairseq.audio import load_audio
    from maeast_fairseq.checkpoint import load_pretrained
    from maeast_fairseq.data.manifest import read_manifest
    model = load_pretrained(os.path.join(ckpt_dir, "checkpoint_last.pt"))
    _, entries = read_manifest(os.path.join(out, "data", "valid.tsv"))
    wavs = [load_audio(e.path, model.frontend.sample_rate) for e in entries]
    emb = model.embed(wavs)
    np.save(os.path.join(out, "valid_clip_embeddings.npy"), emb["clip"].numpy())
    summary = {
        "checkpoint": os.path.join(ckpt_dir, "checkpoint_last.pt"),
        "clips": len(wavs), "clip_embedding_shape": list(emb["clip"].shape),
        "token_features_shape": list(emb["x"].shape), "hidden_states": len(emb["hidden_states"]),
        "seconds": round(time.time() - t0, 1),
    }
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(json.dumps(summary, indent=2))
    step(f"done in {summary['seconds']} s; outputs in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
