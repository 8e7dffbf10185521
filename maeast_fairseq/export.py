"""Exports of a :class:`~maeast_fairseq.embed.Pretrained` model: safetensors + JSON, and ONNX.

``export_safetensors(pretrained, out_dir)`` writes

* ``model.safetensors``: the encoder weights only (decoder, teacher and prediction heads are never written), with
  the model name in the file's metadata;
* ``config.json``: ``{"format": "maeast-fairseq-export", "model_name", "model": <core config>, "frontend": <front-end
  config: window, mel bins, mean removal, normalisation statistics, length policy>, "embedding": <default pooling,
  chunk length, frame rate>}``.

``load_pretrained(out_dir)`` reads it back with no pickle anywhere, bit-exact.

``export_onnx(pretrained, path, frames=1024)`` exports the encoder from the **normalised log-mel** ``fbank``
``(batch, time, mel)`` -- what :meth:`Pretrained.features` returns, i.e. after the checkpoint's normalisation (MAE-AST's
BatchNorm is inside the graph) -- to ``last_hidden_state`` (batch, tokens, D) in the model's token order, ``frames``
(batch, time steps, n_freq * D) (the time sequence of :meth:`Pretrained.embed`) and, for CLS models, ``cls``
(batch, D). Batch and time are dynamic axes when the model exports that way (time from one patch up to ``frames``);
otherwise the time axis is fixed at ``frames`` and the result says so. The graph has no padding input: run clips of
different lengths one at a time (or chunk them as :meth:`Pretrained.embed` does). A sidecar ``<path>.json``
holds the front-end config needed to compute the input.
"""
from __future__ import annotations

import contextlib
import json
import os
import warnings
from typing import Dict, List, Optional

import torch

from .checkpoint import CONFIG_NAME, WEIGHTS_NAME, export_config
from .embed import Pretrained

__all__ = ["export_safetensors", "export_onnx", "OnnxEncoder", "check_onnx"]


def export_safetensors(pretrained: Pretrained, out_dir: str) -> Dict[str, str]:
    """Write ``model.safetensors`` (encoder weights) + ``config.json`` into ``out_dir``; returns their paths."""
    from safetensors.torch import save_file

    os.makedirs(out_dir, exist_ok=True)
    model = pretrained.model
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
             if not model.is_pretraining_only(k)}
    cfg = export_config(pretrained)
    weights = os.path.join(out_dir, WEIGHTS_NAME)
    save_file(state, weights, metadata={"format": cfg["format"], "model_name": pretrained.name})
    os.chmod(weights, 0o666 & ~_umask())  # safetensors creates the file 0600; give it the usual permissions
    config = os.path.join(out_dir, CONFIG_NAME)
    with open(config, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    return {"weights": weights, "config": config}


def _umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class OnnxEncoder(torch.nn.Module):
    """normalised fbank (B, T, F) -> last hidden state (B, N, D), frames (B, T_p, n_freq*D)[, cls (B, D)]."""

    def __init__(self, pretrained: Pretrained):
        super().__init__()
        self.model = pretrained.model
        self.tokenizer = pretrained.tokenizer
        self.has_cls = pretrained.has_cls

    def forward(self, fbank: torch.Tensor):
        out = self.model.extract_features(fbank, None)
        x = out["x"]
        tok = self.tokenizer
        b, n, d = x.shape
        if tok.token_order == "time_major":
            frames = x.reshape(b, -1, tok.n_freq * d)
        else:
            frames = x.reshape(b, tok.n_freq, -1, d).transpose(1, 2).reshape(b, -1, tok.n_freq * d)
        if self.has_cls:
            return x, frames, out["cls"]
        return x, frames


@contextlib.contextmanager
def _symbolic_n_time(tokenizer):
    """``Tokenizer.n_time`` without ``int()`` (which would freeze a symbolic time length to the example's)."""
    def n_time(num_frames):
        if isinstance(num_frames, torch.Tensor):
            return torch.clamp((num_frames - tokenizer.patch_time) // tokenizer.stride_time + 1, min=0)
        return (num_frames - tokenizer.patch_time) // tokenizer.stride_time + 1

    tokenizer.n_time = n_time
    try:
        yield
    finally:
        del tokenizer.n_time


def _input_dims(path: str) -> List[Optional[int]]:
    import onnx

    m = onnx.load(path, load_external_data=False)
    dims = m.graph.input[0].type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else None for d in dims]


def export_onnx(pretrained: Pretrained, path: str, frames: int = 1024, *, opset: int = 18,
                dynamic: bool = True, check: bool = True, atol: float = 1e-4) -> Dict[str, object]:
    """Export the encoder to ONNX (see the module docstring). Returns ``{"path", "outputs", "dynamic_batch",
    "dynamic_time", "exporter", "max_abs_diff"}`` (the last from :func:`check_onnx` when ``check``)."""
    tok = pretrained.tokenizer
    if frames < tok.patch_time:
        raise ValueError(f"frames={frames} is shorter than one patch ({tok.patch_time})")
    module = OnnxEncoder(pretrained).eval()
    param = next(pretrained.model.parameters())
    example = torch.randn(2, frames, tok.num_mel_bins, device=param.device, dtype=param.dtype)
    outputs = ["last_hidden_state", "frames"] + (["cls"] if module.has_cls else [])
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    attempts = []
    if dynamic:
        attempts.append(("dynamo", True))
    attempts += [("dynamo", False), ("torchscript", False)]
    errors = []
    result = None
    for exporter, dyn_time in attempts:
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                if exporter == "dynamo":
                    batch = torch.export.Dim("batch", min=1, max=4096)
                    shapes = {0: batch}
                    if dyn_time:
                        shapes[1] = torch.export.Dim("time", min=tok.patch_time, max=frames)
                    ctx = _symbolic_n_time(tok) if dyn_time else contextlib.nullcontext()
                    with ctx:
                        torch.onnx.export(module, (example,), path, input_names=["fbank"], output_names=outputs,
                                          dynamic_shapes={"fbank": shapes}, opset_version=opset, dynamo=True,
                                          verbose=False)
                else:
                    torch.onnx.export(module, (example,), path, input_names=["fbank"], output_names=outputs,
                                      dynamic_axes={"fbank": {0: "batch"}}, opset_version=min(opset, 17),
                                      dynamo=False)
            dims = _input_dims(path)
            if dyn_time and dims[1] is not None:
                raise RuntimeError(f"the time axis was fixed to {dims[1]} in the exported graph")
            result = {"path": path, "outputs": outputs, "dynamic_batch": dims[0] is None,
                      "dynamic_time": dims[1] is None, "exporter": exporter, "frames": frames}
            break
        except Exception as err:  # try the next, more conservative export
            errors.append(f"{exporter}{' (dynamic time)' if dyn_time else ''}: {type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''}")
    if result is None:
        raise RuntimeError("ONNX export failed: " + " | ".join(errors))
    if errors:
        result["fallbacks"] = errors
    with open(path + ".json", "w") as f:
        json.dump(dict(export_config(pretrained), onnx={k: v for k, v in result.items() if k != "path"}), f,
                  indent=2, sort_keys=True)
    if check:
        lengths = [frames] + ([max(tok.patch_time, frames // 2 + 3)] if result["dynamic_time"] else [])
        result["max_abs_diff"] = check_onnx(pretrained, path, lengths=lengths, atol=atol)
    return result


def check_onnx(pretrained: Pretrained, path: str, lengths=(1024,), batch: int = 2, atol: float = 1e-4,
               seed: int = 0) -> float:
    """Run the ONNX file with onnxruntime on random fbanks and compare every output with torch; returns the largest
    absolute difference, raising ``AssertionError`` above ``atol``."""
    import numpy as np
    import onnxruntime as ort

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    module = OnnxEncoder(pretrained).eval()
    device = next(pretrained.model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    worst = 0.0
    for t in lengths:
        x = torch.randn(batch, t, pretrained.tokenizer.num_mel_bins, generator=g)
        got = sess.run(None, {"fbank": x.numpy()})
        with torch.no_grad():
            want = module(x.to(device))
        for name, a, b in zip([o.name for o in sess.get_outputs()], got, want):
            b = b.float().cpu().numpy()
            if a.shape != b.shape:
                raise AssertionError(f"ONNX output {name} has shape {a.shape}, torch {b.shape} (time {t})")
            diff = float(np.abs(a - b).max()) if a.size else 0.0
            worst = max(worst, diff)
            if not diff <= atol:
                raise AssertionError(f"ONNX output {name} differs from torch by {diff:.3g} > {atol} (time {t})")
    return worst
