"""Official MAE-AST fairseq checkpoints (``chunk_patch_75_12LayerEncoder.pt``, ``random_frame_75_12LayerEncoder.pt``)
-> our ``mae_ast``.

The official model is also registered as ``mae_ast`` in fairseq, so the file is told apart from ours by its keys
(``post_extract_proj``, ``encoder.layers.<i>.self_attn.q_proj``) and config fields (``ast_kernel_size_time``), never by
the name. Mapping (official -> ours): ``post_extract_proj`` -> ``patch_embed.proj`` (same time-major patch vector);
``batch_norm.running_mean|var`` (1,) -> ``input_norm.running_mean|var`` (); ``{encoder,decoder}.layer_norm`` ->
``{encoder,decoder}.input_norm`` (post-LN: the LayerNorm on the stack input); per layer ``self_attn.{q,k,v}_proj``
concatenated (in that order) into ``attn.qkv``, ``self_attn.out_proj`` -> ``attn.proj``, ``self_attn_layer_norm`` ->
``norm1``, ``final_layer_norm`` -> ``norm2``, ``fc1`` / ``fc2`` -> ``ffn.fc1`` / ``ffn.fc2``; ``decoder_mask_emb`` ->
``decoder_mask_embed``; ``final_proj_reconstruction`` / ``final_proj_classification`` -> ``reconstruction_head`` /
``classification_head``.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Dict

import torch

from .common import Converted, OfficialFormatError, apply_table, concat0, same
from .reader import fairseq_config

FAMILY = "mae_ast"

DROPPED = {
    "encoder_mask_emb": "dead in the official code: written into masked slots that are removed before the encoder",
    "layer_norm.weight": "a LayerNorm over the 128 mel bins that the official forward never calls",
    "layer_norm.bias": "a LayerNorm over the 128 mel bins that the official forward never calls",
    "enc_sine_pos_embed.pe": "fixed sinusoid table: recomputed (same values)",
    "dec_sine_pos_embed.pe": "fixed sinusoid table: recomputed (same values)",
    "batch_norm.num_batches_tracked": "BatchNorm step counter, unused with the default momentum",
}


def _model(raw: Any) -> Dict[str, torch.Tensor]:
    m = raw.get("model") if isinstance(raw, dict) else None
    return m if isinstance(m, dict) else {}


def matches(raw: Any) -> bool:
    m = _model(raw)
    if "post_extract_proj.weight" in m and any(re.match(r"encoder\.layers\.\d+\.self_attn\.q_proj\.", str(k))
                                               for k in m):
        return True
    model_cfg = fairseq_config(raw).get("model") or {} if isinstance(raw, dict) and "model" in raw else {}
    return isinstance(model_cfg, dict) and "ast_kernel_size_time" in model_cfg and bool(m)


def _layers(m: Dict[str, torch.Tensor], stack: str):
    return sorted({int(g.group(1)) for k in m for g in [re.match(rf"{stack}\.layers\.(\d+)\.", str(k))] if g})


def convert(raw: Any, source: str = "", **options) -> Converted:
    from ..core.mae_ast import MaeAst, MaeAstConfig

    if options:
        raise TypeError(f"MAE-AST conversion takes no options; got {sorted(options)}")
    m = _model(raw)
    cfg_all = fairseq_config(raw)
    mc, tc = dict(cfg_all.get("model") or {}), dict(cfg_all.get("task") or {})
    need = ("ast_kernel_size_time", "ast_kernel_size_chan", "encoder_attention_heads")
    absent = [k for k in need if k not in mc]
    if absent:
        raise OfficialFormatError(f"{source}: MAE-AST checkpoint without the config fields {absent} "
                                  "(cfg.model or args); the patch shape and heads cannot be inferred. Nothing was loaded.")
    pt, pf = int(mc["ast_kernel_size_time"]), int(mc["ast_kernel_size_chan"])
    st, sf = int(mc.get("ast_kernel_stride_time", pt)), int(mc.get("ast_kernel_stride_chan", pf))
    if (st, sf) != (pt, pf):
        raise OfficialFormatError(f"{source}: MAE-AST with overlapping patches (ast_kernel_stride_time/chan = "
                                  f"{st}/{sf}, sizes {pt}/{pf}) is not supported: strides must equal the sizes")
    notes = []
    for flag, ok in (("enc_conv_pos", False), ("dec_conv_pos", False), ("enc_sine_pos", True), ("dec_sine_pos", True),
                     ("layer_norm_first", False)):
        if flag in mc and bool(mc[flag]) != ok:
            raise OfficialFormatError(f"{source}: MAE-AST with {flag}={mc[flag]} is not supported (released models: "
                                      f"{flag}={ok})")
    enc, dec = _layers(m, "encoder"), _layers(m, "decoder")
    proj = m.get("post_extract_proj.weight")
    if proj is None or not enc:
        raise OfficialFormatError(f"{source}: MAE-AST checkpoint without post_extract_proj.weight or encoder layers")
    dim = int(proj.shape[0])
    dec_dim = int(m["decoder_mask_emb"].shape[0]) if "decoder_mask_emb" in m else int(mc.get("decoder_embed_dim", dim))
    mel = int(tc.get("feature_dim", 128))
    mask_type_official = str(tc.get("mask_type", "chunk_mask"))
    if mask_type_official == "chunk_mask":
        mask_type, same_for_batch = "cluster", True
    else:
        mask_type, same_for_batch = "random", False
        if mask_type_official != "random_mask":
            notes.append(f"official mask_type {mask_type_official!r} has no equivalent here: further pretraining "
                         "masks uniformly at random")
    ffn = int(m["encoder.layers.0.fc1.weight"].shape[0]) if "encoder.layers.0.fc1.weight" in m else int(
        mc.get("encoder_ffn_embed_dim", 3072))
    heads = int(mc["encoder_attention_heads"])
    cfg = MaeAstConfig(
        patch_time=pt, patch_freq=pf, num_mel_bins=mel, input_norm="batchnorm", encoder_layers=len(enc),
        embed_dim=dim, ffn_dim=ffn, num_heads=heads, decoder_layers=len(dec), decoder_embed_dim=dec_dim,
        decoder_ffn_dim=ffn, decoder_heads=heads, dropout=float(mc.get("dropout", 0.1)),
        attention_dropout=float(mc.get("attention_dropout", 0.1)),
        activation_dropout=float(mc.get("activation_dropout", 0.0)),
        dropout_input=float(mc.get("dropout_input", 0.1)), encoder_layerdrop=float(mc.get("encoder_layerdrop", 0.05)),
        decoder_layerdrop=float(mc.get("decoder_layerdrop", 0.0)), mask_ratio=float(mc.get("random_mask_prob", 0.75)),
        mask_type=mask_type, mask_same_for_batch=same_for_batch, token_padding_rule="all", init="official")
    notes.append("token padding: the official rule, token_padding_rule=all (a token is padding only when all its "
                 "frames are: in a padded training batch a clip's last partial patch is data, completed with padding); "
                 "ours is token_padding_rule=any. Embeddings (load_pretrained) see whole patches only: no difference")
    notes.append(f"decoder: {len(dec)} layer(s), feed-forward width and heads of the encoder (the official decoder "
                 "reuses the encoder's settings)")
    expected = MaeAst(cfg).state_dict()

    def rs(t):
        return t[0].reshape(())

    rows = [
        ("patch_embed.proj.weight", ["post_extract_proj.weight"], same),
        ("patch_embed.proj.bias", ["post_extract_proj.bias"], same),
        ("input_norm.running_mean", ["batch_norm.running_mean"], rs),
        ("input_norm.running_var", ["batch_norm.running_var"], rs),
        ("decoder_mask_embed", ["decoder_mask_emb"], same),
    ]
    for ours, theirs in (("reconstruction_head", "final_proj_reconstruction"),
                         ("classification_head", "final_proj_classification")):
        rows += [(f"{ours}.{p}", [f"{theirs}.{p}"], same) for p in ("weight", "bias")]
    for stack, idx in (("encoder", enc), ("decoder", dec)):
        rows += [(f"{stack}.input_norm.{p}", [f"{stack}.layer_norm.{p}"], same) for p in ("weight", "bias")]
        for i in idx:
            a, b = f"{stack}.layers.{i}", f"{stack}.blocks.{i}"
            for p in ("weight", "bias"):
                rows.append((f"{b}.attn.qkv.{p}", [f"{a}.self_attn.{x}_proj.{p}" for x in "qkv"], concat0))
                for theirs, ours in (("self_attn.out_proj", "attn.proj"), ("self_attn_layer_norm", "norm1"),
                                     ("final_layer_norm", "norm2"), ("fc1", "ffn.fc1"), ("fc2", "ffn.fc2")):
                    rows.append((f"{b}.{ours}.{p}", [f"{a}.{theirs}.{p}"], same))
    state = apply_table(source, m, rows, DROPPED, expected, FAMILY)
    frontend = dict(sample_rate=int(tc.get("sample_rate", 16000)), num_mel_bins=mel, window_type="povey",
                    subtract_waveform_mean=False, norm="none", length_policy="crop_to_shortest")
    mean, var = float(state["input_norm.running_mean"]), float(state["input_norm.running_var"])
    notes.append(f"front end assumed: MAE-AST's: Kaldi fbank {mel} mel, povey window, waveform mean kept, no dataset "
                 f"normalisation (the model's BatchNorm normalises with the checkpoint's running statistics, mean "
                 f"{mean:.4g}, var {var:.4g}, then x 0.5), batches cropped to their shortest clip")
    kind = "patch" if pf < mel else "frame"
    variant = f"{kind} {pt}x{pf} (time x freq), {len(enc)}-layer encoder, {mask_type_official}"
    dropped = {k: v for k, v in DROPPED.items() if k in m}
    return Converted(family=FAMILY, variant=variant, model_name="mae_ast", model_cfg=dataclasses.asdict(cfg),
                     state=state, frontend=frontend, dropped=dropped, notes=notes, source=source)
