"""Frozen-upstream evaluation heads and their training loops (pure torch): the SUPERB protocol and the HEAR / ESC-50
MLP protocol.

* :class:`WeightedLayerSum`: s3prl's Featurizer, ``sum_i softmax(w)_i * h_i`` with ``w`` initialised to zeros (so
  every layer weighs ``1 / (L + 1)`` at the start), optionally each ``h_i`` layer-normed over ``D`` first (off by
  default, as in s3prl).
* :class:`SuperbHead`: ``Linear(D, 256)`` -> mean over the valid frames -> ``Linear(256, C)``; no nonlinearity.
* :class:`HearMLP`: mean pool -> 2 x [``Linear(1024)`` -> ``BatchNorm1d`` -> ``Dropout(0.1)`` -> ``ReLU``] ->
  ``Linear(C)``.

**Why the heads train on one vector per layer and clip.** The weighted sum, ``Linear(D, 256)`` and the mean over the
valid frames are all linear maps, so they commute::

    mean_t W (sum_i a_i h_i[t]) + b  =  W (sum_i a_i mean_t h_i[t]) + b

The SUPERB head on the full frame sequences therefore gives exactly the same logits (and gradients, for every
parameter including the layer weights ``a = softmax(w)``) as the same head on the per-layer means over the valid
frames. The HEAR MLP mean-pools first anyway. So the features are extracted once, reduced to an ``(L + 1, D)`` tensor
per clip (:mod:`maeast_fairseq.evaluation.features`), and a head trains on an ``(N, L + 1, D)`` tensor in seconds. The
one non-linear option, the per-layer layer norm, is applied to every frame *before* the mean, at extraction time, so
it stays exact too (it has no trainable parameters: ``F.layer_norm`` without affine, as s3prl's Featurizer).

Training (:func:`train_heads`): Adam (SUPERB: lr 1e-4; HEAR MLP: 1e-3), no schedule, gradient-norm clipping
(SUPERB 1.0), mini-batches of 32 drawn epoch by epoch from a seeded permutation (or class-balanced sampling),
evaluation on the dev set every ``eval_every`` updates and at the end, and the state with the best dev metric (ties:
lower dev loss, then the earlier step) is the one tested. All the runs of an lr sweep x head seeds are trained as one
batched computation (parameters stacked on a run axis, per-run Adam and clipping), which costs about as much as one
run; each run is still exactly the plain loop of its own seed (``tests/test_superb.py`` checks it against
``torch.optim.Adam`` + ``clip_grad_norm_``). :func:`run_protocol` picks the lr with the best mean dev metric and
reports test mean +- std (sample std, ddof 1) over the head seeds.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..core.metrics import accuracy, average_precision, mean_average_precision  # noqa: F401 (re-exported)

PROTOCOLS = ("superb", "hear-mlp")
#: the label printed beside every number a protocol produces
PROTOCOL_LABELS = {
    "superb": "frozen / weighted-sum / linear (SUPERB head)",
    "hear-mlp": "frozen / weighted-sum / HEAR MLP",
}
#: default learning rate and number of updates of each protocol
PROTOCOL_DEFAULTS = {
    "superb": {"lr": 1e-4, "steps": 3000, "grad_clip": 1.0},
    "hear-mlp": {"lr": 1e-3, "steps": 4000, "grad_clip": 0.0},
}


def protocol_label(protocol: str, layer: Optional[int] = None) -> str:
    label = PROTOCOL_LABELS[protocol]
    if layer is not None:
        label = label.replace("weighted-sum", f"layer {layer}")
    return label


# ----------------------------------------------------------------------------------------------------------------
# Modules
# ----------------------------------------------------------------------------------------------------------------


class WeightedLayerSum(nn.Module):
    """``sum_i softmax(w)_i * h_i`` over the layer axis (``dim=-2`` of ``(..., L+1, D)`` or a list of tensors)."""

    def __init__(self, num_layers: int, layer_norm: bool = False):
        super().__init__()
        self.weights = nn.Parameter(torch.zeros(num_layers))
        self.layer_norm = layer_norm

    def normalised_weights(self) -> torch.Tensor:
        return torch.softmax(self.weights, dim=0)

    def forward(self, hidden) -> torch.Tensor:
        if isinstance(hidden, (list, tuple)):
            hidden = torch.stack(list(hidden), dim=-2)  # (..., L+1, D)
        if hidden.shape[-2] != self.weights.numel():
            raise ValueError(f"expected {self.weights.numel()} layers, got {hidden.shape[-2]}")
        if self.layer_norm:
            hidden = F.layer_norm(hidden, hidden.shape[-1:])
        w = self.normalised_weights().to(hidden.dtype)
        return (w[:, None] * hidden).sum(dim=-2)


def masked_mean(x: torch.Tensor, padding: Optional[torch.Tensor]) -> torch.Tensor:
    """Mean of ``x`` (B, T, D) over the valid frames (``padding`` (B, T), True = pad); 0 for a clip with none."""
    if padding is None:
        return x.mean(dim=1)
    valid = (~padding).to(x.dtype).unsqueeze(-1)
    return (x * valid).sum(1) / valid.sum(1).clamp(min=1)


class SuperbHead(nn.Module):
    """SUPERB's utterance classifier: ``Linear(D, 256)`` -> mean over the valid frames -> ``Linear(256, C)``."""

    def __init__(self, dim: int, num_classes: int, hidden: int = 256):
        super().__init__()
        self.proj = nn.Linear(dim, hidden)
        self.out = nn.Linear(hidden, num_classes)

    def forward(self, frames: torch.Tensor, padding: Optional[torch.Tensor] = None) -> torch.Tensor:
        """frames (B, T, D) -> logits (B, C): the head as SUPERB runs it, on every frame."""
        return self.out(masked_mean(self.proj(frames), padding))

    def forward_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        """The same head on the mean over the valid frames (B, D): identical logits (see the module docstring)."""
        return self.out(self.proj(pooled))


class HearMLP(nn.Module):
    """HEAR / ESC-50 MLP: mean pool -> ``layers`` x [Linear -> BatchNorm1d -> Dropout -> ReLU] -> Linear(C)."""

    def __init__(self, dim: int, num_classes: int, hidden: int = 1024, layers: int = 2, dropout: float = 0.1):
        super().__init__()
        blocks: List[nn.Module] = []
        d = dim
        for _ in range(layers):
            blocks += [nn.Linear(d, hidden), nn.BatchNorm1d(hidden), nn.Dropout(dropout), nn.ReLU()]
            d = hidden
        self.body = nn.Sequential(*blocks)
        self.out = nn.Linear(d, num_classes)

    def forward(self, frames: torch.Tensor, padding: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.forward_pooled(masked_mean(frames, padding))

    def forward_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(pooled))


class PooledClassifier(nn.Module):
    """Weighted layer sum (or one fixed layer) + head, on cached per-layer means ``(B, L+1, D)``."""

    def __init__(self, protocol: str, num_layers: int, dim: int, num_classes: int, layer: Optional[int] = None):
        super().__init__()
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        self.layer = layer
        self.featurizer = WeightedLayerSum(num_layers) if layer is None else None
        self.head = SuperbHead(dim, num_classes) if protocol == "superb" else HearMLP(dim, num_classes)

    def layer_weights(self) -> Optional[List[float]]:
        if self.featurizer is None:
            return None
        return [float(v) for v in self.featurizer.normalised_weights().detach().cpu()]

    def forward(self, pooled_layers: torch.Tensor) -> torch.Tensor:
        x = pooled_layers[:, self.layer] if self.featurizer is None else self.featurizer(pooled_layers)
        return self.head.forward_pooled(x)


# ----------------------------------------------------------------------------------------------------------------
# Metrics: accuracy and mAP as fractions, from maeast_fairseq.core.metrics (one definition for the whole project)
# ----------------------------------------------------------------------------------------------------------------


def chance_level(train_y: torch.Tensor, test_y: torch.Tensor, multilabel: bool) -> Dict[str, float]:
    """Chance: multi-class, the accuracy of always answering the majority class of the *test* set (the best constant
    answer, an upper bound on chance); multi-label, the mAP of a random ranking (expected AP = class prevalence)."""
    if multilabel:
        prev = test_y.float().mean(0)
        prev = prev[prev > 0]
        return {"chance": float(prev.mean()) if prev.numel() else float("nan"),
                "chance_rule": "mAP of a random ranking (mean class prevalence on test)"}
    counts = torch.bincount(test_y, minlength=int(max(test_y.max(), train_y.max())) + 1).float()
    train_major = int(torch.bincount(train_y).argmax())
    return {"chance": float(counts.max() / counts.sum()),
            "chance_rule": "majority class on test",
            "chance_train_majority": float((test_y == train_major).float().mean())}


def metric_name(multilabel: bool) -> str:
    return "mAP" if multilabel else "accuracy"


# ----------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    protocol: str = "superb"
    lr: float = 1e-4
    steps: int = 3000
    batch_size: int = 32
    eval_every: int = 50
    grad_clip: float = 1.0  # 0 = none
    seed: int = 0
    balanced: bool = False  # class-balanced sampling (SUPERB KS); multi-class only
    layer: Optional[int] = None  # a fixed layer instead of the weighted sum
    patience: int = 0  # stop after this many evaluations without improvement (0 = never)


@dataclass
class RunResult:
    config: TrainConfig
    best_step: int
    dev_metric: float
    dev_loss: float
    test_metric: Optional[float] = None
    test_loss: Optional[float] = None
    layer_weights: Optional[List[float]] = None
    history: List[Dict[str, float]] = field(default_factory=list)
    model: Optional[nn.Module] = None
    test_scores: Optional[torch.Tensor] = None  #: the selected state's test logits (N, C), for per-class reports

    def to_json(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k not in ("model", "history", "config", "test_scores")}
        d.update(lr=self.config.lr, seed=self.config.seed)
        return d


def _loss(logits: torch.Tensor, y: torch.Tensor, multilabel: bool, reduction: str = "mean") -> torch.Tensor:
    if multilabel:
        return F.binary_cross_entropy_with_logits(logits, y.float(), reduction=reduction)
    return F.cross_entropy(logits, y, reduction=reduction)


def _metric(logits: torch.Tensor, y: torch.Tensor, multilabel: bool) -> float:
    return mean_average_precision(logits, y) if multilabel else accuracy(logits, y)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, multilabel: bool,
             batch_size: int = 4096) -> Dict[str, float]:
    """``{"metric", "loss"}`` of a classifier on pooled features (eval mode, in chunks)."""
    if not len(x):
        return {"metric": float("nan"), "loss": float("nan")}
    was_training = model.training
    model.eval()
    logits = torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return {"metric": _metric(logits, y, multilabel), "loss": float(_loss(logits, y, multilabel))}


class _HeadStack:
    """S heads of one shape (``PooledClassifier`` instances) trained as one batched computation.

    Every parameter and buffer is stacked on a leading run axis; the forward pass is the modules' own math, batched
    (``WeightedLayerSum`` -> ``SuperbHead.forward_pooled`` / ``HearMLP.forward_pooled``, BatchNorm with per-run batch
    statistics and running averages, dropout with per-run generators), and Adam (PyTorch's update rule, defaults
    betas (0.9, 0.999), eps 1e-8) and gradient-norm clipping (``clip_grad_norm_``'s rule) are applied per run. A run's
    trajectory depends only on its own lr and seed, never on which other runs share the stack."""

    def __init__(self, models: List[PooledClassifier], lrs: Sequence[float], generators: List[torch.Generator]):
        self.models, self.generators = models, generators
        self.protocol = "superb" if isinstance(models[0].head, SuperbHead) else "hear-mlp"
        self.layer = models[0].layer
        device = next(models[0].parameters()).device
        self.params = {n: torch.stack([dict(m.named_parameters())[n].detach() for m in models]).clone()
                       .requires_grad_(True) for n, _ in models[0].named_parameters()}
        self.buffers = {n: torch.stack([dict(m.named_buffers())[n] for m in models]).clone()
                        for n, _ in models[0].named_buffers()}
        self.lr = torch.tensor([float(v) for v in lrs], device=device)
        self.exp_avg = {n: torch.zeros_like(p) for n, p in self.params.items()}
        self.exp_avg_sq = {n: torch.zeros_like(p) for n, p in self.params.items()}
        self.t = 0
        # runs of one lr are consecutive (run_protocol orders them lr-major): each such block of the stacked tensors
        # is updated by torch's fused Adam kernel in one pass (views of the stack), when this torch has it
        self.lr_blocks: List[Tuple[float, slice]] = []
        for i, v in enumerate(float(x) for x in lrs):
            if self.lr_blocks and self.lr_blocks[-1][0] == v:
                self.lr_blocks[-1] = (v, slice(self.lr_blocks[-1][1].start, i + 1))
            else:
                self.lr_blocks.append((v, slice(i, i + 1)))
        fused = getattr(torch, "_fused_adam_", None)
        self._fused = fused if fused is not None and device.type in ("cpu", "cuda") else None
        self._steps = [[torch.zeros((), device=device) for _ in self.params] for _ in self.lr_blocks]
        if self.protocol == "hear-mlp":
            body = models[0].head.body
            self.blocks = [(f"head.body.{i}", f"head.body.{i + 1}", body[i + 2].p, body[i + 1].eps,
                            body[i + 1].momentum) for i in range(0, len(body), 4)]

    @staticmethod
    def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))  # (S, B, in) -> (S, B, out)

    def forward(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        """x: (S, B, L+1, D) per-run batches, or (B, L+1, D) shared by every run -> logits (S, B, C)."""
        P = self.params
        if self.layer is None:
            a = torch.softmax(P["featurizer.weights"], dim=-1)
            z = torch.einsum("sl,sbld->sbd" if x.dim() == 4 else "sl,bld->sbd", a, x)
        else:
            z = x[..., self.layer, :]
            if z.dim() == 2:
                z = z.unsqueeze(0).expand(len(self.models), -1, -1)
        if self.protocol == "superb":
            h = self._linear(z, P["head.proj.weight"], P["head.proj.bias"])
            return self._linear(h, P["head.out.weight"], P["head.out.bias"])
        h = z
        for lin, bn, p_drop, eps, momentum in self.blocks:
            h = self._linear(h, P[f"{lin}.weight"], P[f"{lin}.bias"])
            rm, rv = self.buffers[f"{bn}.running_mean"], self.buffers[f"{bn}.running_var"]
            if train:
                mean, var = h.mean(1), h.var(1, unbiased=False)
                n = h.shape[1]
                with torch.no_grad():
                    rm.lerp_(mean.detach(), momentum)
                    rv.lerp_(var.detach() * n / max(n - 1, 1), momentum)
                    self.buffers[f"{bn}.num_batches_tracked"] += 1
            else:
                mean, var = rm, rv
            h = (h - mean.unsqueeze(1)) * torch.rsqrt(var.unsqueeze(1) + eps)
            h = h * P[f"{bn}.weight"].unsqueeze(1) + P[f"{bn}.bias"].unsqueeze(1)
            if train and p_drop > 0:
                keep = torch.stack([torch.rand(h.shape[1:], generator=g) for g in self.generators]).to(h.device)
                h = h * (keep >= p_drop).to(h.dtype) / (1 - p_drop)
            h = torch.relu(h)
        return self._linear(h, P["head.out.weight"], P["head.out.bias"])

    @torch.no_grad()
    def step(self, grad_clip: float, betas=(0.9, 0.999), eps: float = 1e-8) -> None:
        # in place, one temporary per parameter: the stacked weights are MBs, and every fresh MB-sized tensor per
        # step costs more in allocation (page faults) than the arithmetic (a full evaluation: 233 s -> 125 s)
        grads = {n: p.grad for n, p in self.params.items()}
        if grad_clip > 0:
            norm = torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads.values()]).norm(dim=0)
            coef = torch.clamp(grad_clip / (norm + 1e-6), max=1.0)
            for g in grads.values():
                g.mul_(coef.view(-1, *([1] * (g.dim() - 1))))
        self.t += 1
        b1, b2 = betas
        if self._fused is not None:  # one pass over each parameter block (PyTorch's Adam update, per-block lr)
            names = list(self.params)
            for (lr, block), steps in zip(self.lr_blocks, self._steps):
                torch._foreach_add_(steps, 1.0)
                self._fused([self.params[n][block] for n in names], [grads[n][block] for n in names],
                            [self.exp_avg[n][block] for n in names], [self.exp_avg_sq[n][block] for n in names], [],
                            steps, lr=lr, beta1=b1, beta2=b2, weight_decay=0.0, eps=eps, amsgrad=False,
                            maximize=False)
            for p in self.params.values():
                p.grad = None
            return
        bc1, bc2 = 1 - b1 ** self.t, 1 - b2 ** self.t
        for n, p in self.params.items():
            g = grads[n]
            m, v = self.exp_avg[n], self.exp_avg_sq[n]
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            upd = v.sqrt().div_(math.sqrt(bc2)).add_(eps)  # denominator, then the update, in one buffer
            torch.div(m, upd, out=upd).mul_((self.lr / bc1).view(-1, *([1] * (p.dim() - 1))))
            p.sub_(upd)
            p.grad = None

    def state(self, s: int) -> Dict[str, torch.Tensor]:
        return {**{n: p[s].detach().clone() for n, p in self.params.items()},
                **{n: b[s].clone() for n, b in self.buffers.items()}}


def _batch_indices(n: int, y: torch.Tensor, cfg: TrainConfig, generator: torch.Generator, multilabel: bool):
    """Endless mini-batch indices: epochs of a seeded permutation, or class-balanced draws with replacement."""
    bs = min(cfg.batch_size, n)
    if cfg.balanced and not multilabel:
        weights = (1.0 / torch.bincount(y.cpu()).float().clamp(min=1))[y.cpu()]
        while True:
            yield torch.multinomial(weights, bs, replacement=True, generator=generator)
    while True:
        perm = torch.randperm(n, generator=generator)
        for i in range(0, n - bs + 1, bs):  # the incomplete tail is dropped (BatchNorm needs > 1 item)
            yield perm[i:i + bs]


@torch.no_grad()
def _evaluate_stack(stack: _HeadStack, x: torch.Tensor, y: torch.Tensor, multilabel: bool, chunk: int = 512):
    logits = torch.cat([stack.forward(x[i:i + chunk], train=False) for i in range(0, len(x), chunk)], dim=1)
    s = logits.shape[0]
    yy = y.unsqueeze(0).expand(s, *y.shape)
    losses = _loss(logits.flatten(0, 1), yy.flatten(0, 1), multilabel, reduction="none")
    losses = losses.view(s, -1).mean(1)
    metrics = [_metric(logits[i], y, multilabel) for i in range(s)]
    return metrics, losses.tolist()


def train_heads(train_x: torch.Tensor, train_y: torch.Tensor, dev_x: torch.Tensor, dev_y: torch.Tensor,
                num_classes: int, configs: Sequence[TrainConfig], multilabel: bool = False,
                test_x: Optional[torch.Tensor] = None, test_y: Optional[torch.Tensor] = None) -> List[RunResult]:
    """Train one head per config on pooled per-layer features ``(N, L+1, D)``, all at once (the configs may differ
    in ``lr`` and ``seed`` only), and keep for each the state with the best dev metric (ties: lower dev loss; then the
    earlier evaluation).

    Labels: ``(N,)`` class indices, or ``(N, C)`` 0/1 for multi-label (BCE, mAP). Each run is deterministic in its
    ``seed`` (initialisation, batches, dropout); the global RNG state is left untouched."""
    first = configs[0]
    shared = {k: v for k, v in asdict(first).items() if k not in ("lr", "seed")}
    for c in configs:
        if {k: v for k, v in asdict(c).items() if k not in ("lr", "seed")} != shared:
            raise ValueError("train_heads: the configs may differ only in lr and seed")
    device = train_x.device
    models = []
    for c in configs:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(c.seed)
            models.append(PooledClassifier(c.protocol, train_x.shape[1], train_x.shape[2], num_classes,
                                           c.layer).to(device))
    batch_gens = [torch.Generator().manual_seed(c.seed) for c in configs]
    drop_gens = [torch.Generator().manual_seed(c.seed + 7919) for c in configs]
    stack = _HeadStack(models, [c.lr for c in configs], drop_gens)
    streams = [_batch_indices(len(train_x), train_y, first, g, multilabel) for g in batch_gens]
    s_runs = len(configs)
    best_metric = [-math.inf] * s_runs
    best_loss = [math.inf] * s_runs
    best_step = [0] * s_runs
    best_state = [stack.state(s) for s in range(s_runs)]
    since_best = [0] * s_runs
    active = [True] * s_runs
    histories: List[List[Dict[str, float]]] = [[] for _ in range(s_runs)]
    for step in range(1, first.steps + 1):
        idx = torch.stack([next(st) for st in streams]).to(device)  # (S, B)
        logits = stack.forward(train_x[idx], train=True)
        losses = _loss(logits.flatten(0, 1), train_y[idx].flatten(0, 1), multilabel, reduction="none")
        per_run = losses.view(s_runs, -1).mean(1)
        per_run.sum().backward()
        stack.step(first.grad_clip)
        if step % first.eval_every == 0 or step == first.steps:
            metrics, dev_losses = _evaluate_stack(stack, dev_x, dev_y, multilabel)
            train_losses = per_run.tolist()
            for s in range(s_runs):
                if not active[s]:
                    continue
                m, l = metrics[s], dev_losses[s]
                histories[s].append({"step": step, "train_loss": train_losses[s], "dev_metric": m, "dev_loss": l})
                if m > best_metric[s] or (m == best_metric[s] and l < best_loss[s]):
                    best_metric[s], best_loss[s], best_step[s], since_best[s] = m, l, step, 0
                    best_state[s] = stack.state(s)
                else:
                    since_best[s] += 1
                    if first.patience and since_best[s] >= first.patience:
                        active[s] = False
            if not any(active):
                break
    results = []
    for s, (c, model) in enumerate(zip(configs, models)):
        model.load_state_dict(best_state[s])
        model.eval()
        r = RunResult(c, best_step[s], best_metric[s], best_loss[s], layer_weights=model.layer_weights(),
                      history=histories[s], model=model)
        if test_x is not None:
            ev = evaluate(model, test_x, test_y, multilabel)
            r.test_metric, r.test_loss = ev["metric"], ev["loss"]
        results.append(r)
    return results


def train_head(train_x, train_y, dev_x, dev_y, num_classes: int, cfg: TrainConfig, multilabel: bool = False,
               test_x=None, test_y=None) -> RunResult:
    """One head (see :func:`train_heads`)."""
    return train_heads(train_x, train_y, dev_x, dev_y, num_classes, [cfg], multilabel, test_x, test_y)[0]


def mean_std(values: Sequence[float]) -> Dict[str, float]:
    """Mean and sample std (ddof 1; 0 for one value) of finite values."""
    vals = [float(v) for v in values]
    return {"mean": statistics.fmean(vals) if vals else float("nan"),
            "std": statistics.stdev(vals) if len(vals) > 1 else 0.0, "n": len(vals)}


def run_protocol(train_x, train_y, dev_x, dev_y, test_x, test_y, num_classes: int, *, lrs: Sequence[float],
                 seeds: Sequence[int], base: TrainConfig, multilabel: bool = False, log=None) -> dict:
    """The lr sweep x head seeds on one train/dev/test split.

    The lr with the best mean dev metric over the seeds is selected (ties: the lower mean dev loss); its test metrics
    over the seeds are the result. Returns a JSON-ready dict (``selected_lr``, ``dev`` / ``test`` mean-std-values,
    ``layer_weights`` (mean over seeds and per seed), ``per_lr``, ``runs``) plus ``test_scores``: the selected runs'
    test logits ``(S, N, C)`` (a tensor, for per-class scores; drop it before writing JSON)."""
    configs = [TrainConfig(**{**asdict(base), "lr": float(lr), "seed": int(seed)}) for lr in lrs for seed in seeds]
    # runs share one batched computation, in groups that keep the (S, B, L+1, D) batch under ~256 MB
    per_run_bytes = 4 * 3 * min(base.batch_size, len(train_x)) * train_x.shape[1] * train_x.shape[2]
    group = max(1, (256 << 20) // max(per_run_bytes, 1))
    results: List[RunResult] = []
    for g in range(0, len(configs), group):
        results += train_heads(train_x, train_y, dev_x, dev_y, num_classes, configs[g:g + group], multilabel,
                               test_x, test_y)
    per_lr = []
    for i, lr in enumerate(lrs):
        runs = results[i * len(seeds):(i + 1) * len(seeds)]
        for r in runs:
            if r.model is not None and test_x is not None and len(test_x):
                with torch.no_grad():
                    r.test_scores = r.model(test_x).float().cpu()
            r.model = None
            if log:
                log(f"    lr {lr:g} seed {r.config.seed}: best dev {r.dev_metric:.4f} at step {r.best_step}, "
                    f"test {r.test_metric:.4f}")
        per_lr.append({"lr": float(lr), "dev": mean_std([r.dev_metric for r in runs]),
                       "test": mean_std([r.test_metric for r in runs]), "runs": runs})
    for p in per_lr:
        p["dev_loss"] = statistics.fmean(r.dev_loss for r in p["runs"])
    best = max(range(len(per_lr)), key=lambda i: (per_lr[i]["dev"]["mean"], -per_lr[i]["dev_loss"], -i))
    sel = per_lr[best]
    weights = [r.layer_weights for r in sel["runs"]]
    mean_w = None if weights[0] is None else [statistics.fmean(col) for col in zip(*weights)]
    return {
        "selected_lr": sel["lr"],
        "dev": {**sel["dev"], "values": [r.dev_metric for r in sel["runs"]]},
        "test": {**sel["test"], "values": [r.test_metric for r in sel["runs"]]},
        "best_steps": [r.best_step for r in sel["runs"]],
        "layer_weights": {"mean_over_seeds": mean_w, "per_seed": weights},
        "test_scores": (torch.stack([r.test_scores for r in sel["runs"]])
                        if all(r.test_scores is not None for r in sel["runs"]) else None),
        "per_lr": [{"lr": p["lr"], "dev": p["dev"], "dev_loss": p["dev_loss"], "test": p["test"],
                    "runs": [r.to_json() for r in p["runs"]]}
                   for p in per_lr],
    }


# ----------------------------------------------------------------------------------------------------------------
# k-fold
# ----------------------------------------------------------------------------------------------------------------


def fold_roles(k: int, num_folds: int) -> Dict[str, List[int]]:
    """ESC-50 / s3prl rule: test fold ``k``, validation fold ``(k + 1) mod K``, the others train (0-based)."""
    if num_folds < 3:
        raise ValueError(f"k-fold needs at least 3 folds (test, validation, train), got {num_folds}")
    if not 0 <= k < num_folds:
        raise ValueError(f"fold {k} out of range for {num_folds} folds")
    valid = (k + 1) % num_folds
    return {"test": [k], "valid": [valid], "train": [f for f in range(num_folds) if f not in (k, valid)]}
