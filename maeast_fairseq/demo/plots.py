"""The demo's figures (matplotlib, Agg backend): loss curves, downstream accuracy against pretraining updates,
MAE-AST / SSAST spectrogram + mask + reconstruction, EAT's inverse block mask and the teacher/student statistics over
training."""
from __future__ import annotations

import os
from typing import Dict, List, Optional

import numpy as np
import torch


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def loss_curves(runs: Dict[str, Dict], path: str, titles: Dict[str, str]) -> str:
    """One panel per run: ``run["curve"]`` (training records with ``num_updates``, ``loss`` and, when logged, the
    loss terms) and, when given, ``run["valid"]`` (validation records, drawn as points) and ``run["seconds"]`` (in the
    title)."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs), 3.2), squeeze=False)
    for ax, (method, run) in zip(axes[0], runs.items()):
        curve = run["curve"]
        if curve:
            u = [r["num_updates"] for r in curve]
            ax.plot(u, [r["loss"] for r in curve], label="loss", color="C0")
            for key, c in (("nce", "C1"), ("mse", "C2"), ("frame_loss", "C1"), ("utterance_loss", "C2")):
                if key in curve[0]:
                    ax.plot(u, [r.get(key, np.nan) for r in curve], label=key, color=c, alpha=0.7, lw=1)
            valid = [r for r in run.get("valid") or [] if "loss" in r]
            if valid:
                ax.plot([r["num_updates"] for r in valid], [r["loss"] for r in valid], "o-", label="valid loss",
                        color="C3", ms=3)
            ax.legend(fontsize=7)
            if min(r["loss"] for r in curve + valid) > 0:
                ax.set_yscale("log")
        seconds = run.get("seconds")
        ax.set_title(titles.get(method, method) + (f": {seconds:.0f} s CPU" if seconds is not None else ""),
                     fontsize=9)
        ax.set_xlabel("update")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("training loss")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def accuracy_vs_updates(rows: List[Dict], path: str, baseline: Optional[Dict] = None) -> str:
    """One panel per method: downstream test accuracy against pretraining updates.

    ``rows``: :func:`maeast_fairseq.demo.pipeline.curve_table` (``method``, ``title``, ``updates``, ``mean``, ``std``,
    ``pretraining_seconds``, ``seeds``); update 0 is the random-init twin. The line is the mean, the band and bars
    +- the std over head seeds; a dotted line carries the twin's level across the panel (where the curve crosses it,
    pretraining starts to pay) and a dashed line with its band is ``baseline`` (``mean``, ``std``: the log-mel
    features). Tick labels: the update counts and the pretraining minutes at them."""
    plt = _plt()
    methods = list(dict.fromkeys(r["method"] for r in rows))
    if not methods:
        raise ValueError("accuracy_vs_updates: no rows to draw")
    fig, axes = plt.subplots(1, len(methods), figsize=(4.2 * len(methods), 3.9), squeeze=False, sharey=True)
    for ax, method in zip(axes[0], methods):
        pts = sorted((r for r in rows if r["method"] == method), key=lambda r: r["updates"])
        u = np.array([r["updates"] for r in pts], dtype=float)
        m = 100 * np.array([r["mean"] for r in pts])
        sd = 100 * np.array([r["std"] for r in pts])
        if baseline is not None:
            b, bs = 100 * baseline["mean"], 100 * baseline["std"]
            ax.axhspan(b - bs, b + bs, color="gray", alpha=0.12, lw=0)
            ax.axhline(b, color="gray", ls="--", lw=1.2, label="log-mel + linear (± seed std)")
        ax.fill_between(u, m - sd, m + sd, color="C0", alpha=0.2, lw=0)
        ax.errorbar(u, m, yerr=sd, fmt="o-", color="C0", ms=4, capsize=3,
                    label="pretrained checkpoints (mean ± head-seed std)")
        if pts[0]["updates"] == 0:
            ax.axhline(m[0], color="C1", ls=":", lw=1.2, label="random-init twin's level")
            ax.plot([0], [m[0]], "s", color="C1", ms=7, label="random-init twin (update 0)", zorder=5)
        ax.set_xticks(u, ["0\nrandom init" if x == 0 else f"{int(x)}\n{r['pretraining_seconds'] / 60:.1f} min"
                          for x, r in zip(u, pts)], fontsize=7)
        seeds = [r["seeds"] for r in pts if r.get("seeds")]
        inner = {r["seeds"] for r in pts[1:-1] if r.get("seeds")}
        note = f" (head seeds {' / '.join(sorted(inner))} between)" if inner and inner != {seeds[-1]} else ""
        ax.set_title(pts[0].get("title", method) + note, fontsize=9)
        ax.set_xlabel("pretraining updates (CPU minutes at that update)", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"test {rows[0].get('metric', 'accuracy')} (%)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _clip_fbank(pre, wav: torch.Tensor, frames: int) -> torch.Tensor:
    """The clip's normalised log-mel (1, frames, F), cropped / zero-padded to ``frames`` as in pretraining."""
    from maeast_fairseq.frontend import normalise
    lm = pre.log_mel(pre.prepare([wav], pre.sample_rate))[0]  # the demo's clips are at the model's rate
    if lm.shape[0] >= frames:
        lm = lm[:frames]
    else:
        lm = torch.cat([lm, torch.zeros(frames - lm.shape[0], lm.shape[1])])
    return normalise(lm, pre.frontend)[None]


def reconstruction(ckpt: str, wav: torch.Tensor, path: str, title: str, frames: int = 256, seed: int = 0) -> str:
    """MAE-AST / SSAST: input spectrogram (model space), its mask, the reconstruction of the masked patches."""
    from maeast_fairseq.checkpoint import load_pretrained
    pre = load_pretrained(ckpt, keep_pretraining_modules=True)
    fig = reconstruction_figure(pre.model.eval(), _clip_fbank(pre, wav, frames), title, seed)
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def figure_array(fig) -> np.ndarray:
    """A matplotlib figure as an (H, W, 3) uint8 image (for tensorboard), the figure closed."""
    fig.canvas.draw()
    img = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    _plt().close(fig)
    return img


def reconstruction_figure(model, x: torch.Tensor, title: str, seed: int = 0):
    """The figure of :func:`reconstruction` for a core model (in eval mode) and one normalised log-mel ``x``
    (1, T, F) without padding; models without a reconstruction output (EAT) get the input spectrogram alone."""
    from maeast_fairseq.core.rng import MaskRNG
    plt = _plt()
    out = {}
    if hasattr(model, "embed"):  # MAE-AST / SSAST (EAT's model has no patch targets to reconstruct)
        torch.manual_seed(seed)
        with torch.no_grad():
            out = model(x, None, MaskRNG.from_generator(torch.Generator().manual_seed(seed), 1, x.device))
            _, patches, _ = model.embed(x, None)
    if not out:  # EAT: no patch reconstruction (its ``pred`` are teacher features), the input alone
        fig, ax = plt.subplots(figsize=(7, 2.6))
        ax.imshow(x[0].T.float().cpu().numpy(), origin="lower", aspect="auto", interpolation="nearest", cmap="magma")
        ax.set_title(f"{title}: input (normalised log-mel)", fontsize=9)
        ax.set_xlabel("frame (10 ms)")
        ax.set_ylabel("mel bin")
        fig.tight_layout()
        return fig
    tok = model.tokenizer
    n_time = tok.n_time(x.shape[1])
    mask = out["mask"][0]                               # (N,) True = masked
    recon = patches[0].clone()
    recon[mask] = out["pred"][0][: int(mask.sum())].to(recon.dtype)
    orig_img = tok.unpatchify(patches, n_time)[0]       # (T, F): the targets (model-normalised input)
    rec_img = tok.unpatchify(recon[None], n_time)[0]
    mask_img = tok.unpatchify(mask[None, :, None].float().expand(-1, -1, patches.shape[-1]), n_time)[0]
    vmin, vmax = float(orig_img.min()), float(orig_img.max())
    fig, axes = plt.subplots(3, 1, figsize=(7, 6.5), sharex=True)
    for ax, img, name in ((axes[0], orig_img, "input (normalised log-mel, the target)"),
                          (axes[1], mask_img, f"mask: {100 * float(mask.float().mean()):.0f}% of patches hidden (black)"),
                          (axes[2], rec_img, "visible patches + the model's reconstruction of the hidden ones")):
        kw = dict(vmin=0, vmax=1, cmap="gray_r") if img is mask_img else dict(vmin=vmin, vmax=vmax, cmap="magma")
        ax.imshow(img.T.float().cpu().numpy(), origin="lower", aspect="auto", interpolation="nearest", **kw)
        ax.set_title(name, fontsize=9)
        ax.set_ylabel("mel bin")
    axes[-1].set_xlabel("frame (10 ms)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def eat_figure(ckpt: str, curve: List[Dict], path: str, frames: int = 256, seed: int = 0) -> str:
    """EAT: one inverse block mask on the clip's patch grid (and the 1024-frame base grid), and the teacher/student
    statistics the criterion logs over training (frame loss = student-prediction vs teacher-target MSE; target and
    prediction variance)."""
    from maeast_fairseq.checkpoint import load_pretrained
    from maeast_fairseq.core.masking import inverse_block_mask
    from maeast_fairseq.core.rng import MaskRNG
    plt = _plt()
    pre = load_pretrained(ckpt)
    cfg = pre.model.cfg
    tok = pre.tokenizer
    grid = (tok.n_time(frames), tok.n_freq)
    g = torch.Generator().manual_seed(seed)
    m_small = inverse_block_mask(MaskRNG.from_generator(g, 1, torch.device("cpu")), grid, cfg.mask_ratio,
                                 cfg.mask_prob_adjust, cfg.mask_block)[0].reshape(grid)
    m_base = inverse_block_mask(MaskRNG.from_generator(g, 1, torch.device("cpu")), (64, 8), 0.8, 0.07,
                                5)[0].reshape(64, 8)
    fig = plt.figure(figsize=(11, 6))
    ax1 = fig.add_subplot(2, 2, 1)
    ax1.imshow(m_small.T.float().numpy(), origin="lower", aspect="auto", cmap="gray_r", vmin=0, vmax=1)
    ax1.set_title(f"inverse block mask, demo grid {grid[0]}x{grid[1]} patches "
                  f"({100 * float(m_small.float().mean()):.0f}% masked; white = kept)", fontsize=8)
    ax1.set_xlabel("time patch")
    ax1.set_ylabel("freq patch")
    ax2 = fig.add_subplot(2, 2, 2)
    ax2.imshow(m_base.T.float().numpy(), origin="lower", aspect="auto", cmap="gray_r", vmin=0, vmax=1)
    ax2.set_title(f"the same on EAT-base's 64x8 grid (10 s clips; {100 * float(m_base.float().mean()):.0f}% masked)",
                  fontsize=8)
    ax2.set_xlabel("time patch")
    ax3 = fig.add_subplot(2, 2, 3)
    ax4 = fig.add_subplot(2, 2, 4)
    if curve:
        u = [r["num_updates"] for r in curve]
        for key, c in (("frame_loss", "C0"), ("utterance_loss", "C1")):
            if key in curve[0]:
                ax3.plot(u, [r[key] for r in curve], label=key, color=c)
        ax3.set_yscale("log")
        ax3.set_title("student vs teacher: frame (patch) and utterance (CLS) regression losses", fontsize=8)
        ax3.legend(fontsize=7)
        for key, c in (("target_var", "C2"), ("pred_var", "C3")):
            if key in curve[0]:
                ax4.plot(u, [r[key] for r in curve], label=key, color=c)
        if "ema_decay" in curve[0]:
            ax4b = ax4.twinx()
            ax4b.plot(u, [r["ema_decay"] for r in curve], color="gray", ls="--", lw=1, label="EMA decay")
            ax4b.set_ylabel("teacher EMA decay", fontsize=7)
        ax4.set_title("teacher target / student prediction variance", fontsize=8)
        ax4.legend(fontsize=7, loc="upper left")
    for ax in (ax3, ax4):
        ax.set_xlabel("update")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def teacher_student_cosine(ckpt: str, wavs: List[torch.Tensor], frames: int = 256, seed: int = 0) -> float:
    """Mean cosine similarity between the EMA teacher's targets and the student's predictions at masked patches of
    a few clips, at this checkpoint (needs the pretraining modules)."""
    from maeast_fairseq.checkpoint import load_pretrained
    from maeast_fairseq.core.rng import MaskRNG
    pre = load_pretrained(ckpt, keep_pretraining_modules=True)
    model = pre.model.eval()
    x = torch.cat([_clip_fbank(pre, w, frames) for w in wavs])
    with torch.no_grad():
        out = model(x, None, MaskRNG.from_generator(torch.Generator().manual_seed(seed), x.shape[0], x.device))
    pred, tgt = out.get("pred"), out.get("target")
    if pred is None or tgt is None or pred.shape != tgt.shape:
        return float("nan")
    return float(torch.nn.functional.cosine_similarity(pred.flatten(0, -2), tgt.flatten(0, -2), dim=-1).mean())


def confusion_figure(confusion, classes: List[str], path: str, title: str = "") -> str:
    """A confusion matrix (rows: true class, columns: predicted) as a PNG: cells coloured by the row-normalised
    fraction (recall along the diagonal), annotated with the clip counts when there are at most 30 classes."""
    plt = _plt()
    n = len(classes)
    size = min(4 + 0.35 * n, 16)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    draw_confusion(fig, ax, confusion, classes, title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def draw_confusion(fig, ax, confusion, classes: List[str], title: str = "") -> None:
    """:func:`confusion_figure`'s panel on a given matplotlib axis (for figures with other panels beside it)."""
    conf = np.asarray(confusion, dtype=np.float64)
    norm = conf / np.maximum(conf.sum(1, keepdims=True), 1)
    n = len(classes)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), classes, rotation=90, fontsize=7)
    ax.set_yticks(range(n), classes, fontsize=7)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if conf[i, j]:
                    ax.text(j, i, f"{int(conf[i, j])}", ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax.set_title(title or "confusion matrix", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of the true class")
