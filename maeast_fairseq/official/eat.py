"""EAT's released fairseq checkpoints (``cwx-worst-one/EAT``) -> our ``eat`` core or a ``maeast_classifier``.

Two official formats, told apart by the stored model name *and* the keys (never by the file name):

* **pretraining** (``cfg.model._name == "data2vec_multi"``, keys ``modality_encoders.IMAGE.*`` / ``blocks.*`` /
  ``_ema``): the student encoder, the CNN decoder and, under ``_ema`` (a plain dict of tensors), the EMA teacher.
  It becomes our ``eat`` model with all three (so it can be pretrained further). By default the **student** is the
  encoder (what EAT's own ``feature_extract.py`` and its fine-tuning use); ``ema=True`` puts the teacher there
  instead (an explicit choice: the teacher only ever produced targets during pretraining).
* **fine-tuning** (``cfg.model._name == "mae_image_classification"``, keys ``model.*`` + ``fc_norm`` + ``head``):
  the student encoder with a ``LayerNorm -> Linear`` head on the CLS token. It becomes our ``maeast_classifier``
  (``encoder.`` = the EAT core without decoder / teacher, ``head_norm`` <- ``fc_norm``, ``head`` <- ``head``); the
  encoder's config is the pretraining config stored under ``cfg.model.pretrained_model_args``. ``labels=`` names a
  label file (AudioSet's ``class_labels_indices.csv``: columns ``index, mid, display_name``; or one name per line)
  so that predictions print class names.

Strict: every stored tensor is mapped or on :data:`DROPPED` with its reason; a missing, unknown or mis-shaped key
raises :class:`~maeast_fairseq.official.common.OfficialFormatError` naming the key and the file, and so does a
stored setting our core does not implement (ALiBi, pre-LN blocks, a transformer decoder, ...).

Key mapping (``<E>`` = ``modality_encoders.IMAGE.``; blocks ``i``):

====================================================  ==========================================================
official                                              ours (relative to the encoder / teacher)
====================================================  ==========================================================
``<E>extra_tokens`` (1, 1, D)                         ``cls_token``
``<E>local_encoder.proj.weight`` (D, 1, 16, 16)       ``patch_embed.proj.weight`` (D, 256), reshaped (the Conv2d
                                                      runs on (B, 1, T, F): time-major inside the patch, as ours)
``<E>local_encoder.proj.bias``                        ``patch_embed.proj.bias``
``<E>context_encoder.norm.*``                         ``transformer.input_norm.*``
``blocks.i.{norm1,norm2,attn.qkv,attn.proj}.*``       ``transformer.blocks.i.{same}.*``
``blocks.i.mlp.fc{1,2}.*``                            ``transformer.blocks.i.ffn.fc{1,2}.*``
``<E>decoder.blocks.i.0.*`` / ``<E>decoder.proj.*``   ``decoder.convs.i.*`` / ``decoder.proj.*``
``_ema.<encoder keys>``                               ``teacher.<same>``
``model.<encoder keys>`` (fine-tuned)                 ``encoder.encoder.<same>``
``fc_norm.*`` / ``head.*`` (fine-tuned)               ``head_norm.*`` / ``head.*``
====================================================  ==========================================================
"""
from __future__ import annotations

import csv
import os
from typing import Any, Dict, List, Optional, Tuple

import torch

from .common import Converted, OfficialFormatError
from .reader import fairseq_config

FAMILY = "eat"
PRETRAIN_MODEL = "data2vec_multi"
FINETUNE_MODEL = "mae_image_classification"
CLASSIFIER_MODEL = "maeast_classifier"

#: EAT's ``feature_extract.py`` defaults (AudioSet log-mel statistics), used with ``(x - mean) / (2 * std)``
EAT_NORM_MEAN = -4.268
EAT_NORM_STD = 4.569

ENC = "modality_encoders.IMAGE."
TEACHER = "_ema"
#: official key (suffix, relative to the encoder's prefix) -> why it is not carried over
DROPPED = {
    ENC + "fixed_positional_encoder.positions":
        "fixed 2-D sin-cos table (a frozen parameter in EAT): recomputed from the config (a non-persistent buffer "
        "here); checked equal to ours before it is dropped",
}
#: fine-tuning pooling of EAT (``prediction_mode``) -> ours
POOLING = {"CLS_TOKEN": "cls", "MEAN_POOLING": "mean"}
#: head LayerNorm eps of EAT's ``fc_norm``
HEAD_NORM_EPS = 1e-6

# the official settings our core implements, and the value it needs ("model" = cfg.model, "image" =
# cfg.model.modalities.image, "decoder" = its decoder); anything else raises
_REQUIRED = {
    "model": {"layer_norm_first": False, "norm_affine": True, "end_of_block_targets": False,
              "layer_norm_target_layer": False, "batch_norm_target_layer": False, "instance_norm_targets": False,
              "loss_beta": 0.0, "recon_loss": 0.0, "utterance_level": False, "decoder_group": False,
              "shared_decoder": None},
    "image": {"prenet_depth": 0, "num_extra_tokens": 1, "in_chans": 1, "use_alibi_encoder": False,
              "learned_alibi": False, "fixed_positions": True, "transformer_decoder": False,
              "enc_dec_transformer": False, "inverse_mask": True, "add_masks": False, "remove_masks": False,
              "keep_masked_pct": 0.0, "mask_channel_prob": 0.0, "ema_local_encoder": True},
    "decoder": {"add_positions_masked": False, "add_positions_all": False, "decoder_residual": True,
                "projection_layers": 1},
}


# ------------------------------------------------------------------------------------------------ reading helpers
def _cfg(raw: Any) -> dict:
    """The config as plain dicts (a plain dict, an OmegaConf container or only ``args``: see :mod:`.reader`)."""
    return fairseq_config(raw) if isinstance(raw, dict) else {}


def _model_name(raw: Any) -> Optional[str]:
    return (_cfg(raw).get("model") or {}).get("_name")


def _weights(raw: Any) -> dict:
    state = raw.get("model") if isinstance(raw, dict) else None
    return state if isinstance(state, dict) else {}


def matches(raw: Any) -> bool:
    """An EAT pretraining (``data2vec_multi``) or fine-tuning (``mae_image_classification``) checkpoint: the model
    name in its config and the image modality encoder's patch projection among its weights."""
    name, weights = _model_name(raw), _weights(raw)
    if name == PRETRAIN_MODEL:
        return ENC + "local_encoder.proj.weight" in weights
    if name == FINETUNE_MODEL:
        return "model." + ENC + "local_encoder.proj.weight" in weights
    return False


# ------------------------------------------------------------------------------------------------------ config
def _check_supported(model_cfg: dict, source: str) -> Tuple[dict, dict]:
    image = ((model_cfg.get("modalities") or {}).get("image")) or {}
    if not image:
        raise OfficialFormatError(f"{source}: cfg.model.modalities.image is absent: not an EAT audio checkpoint "
                                  "(EAT stores its audio encoder as the data2vec 2.0 'image' modality)")
    decoder = image.get("decoder") or {}
    parts = {"model": (model_cfg, "cfg.model."), "image": (image, "cfg.model.modalities.image."),
             "decoder": (decoder, "cfg.model.modalities.image.decoder.")}
    for part, required in _REQUIRED.items():
        values, where = parts[part]
        for key, want in required.items():
            if key in values and values[key] != want and not (want is None and values[key] in ("", None)):
                raise OfficialFormatError(
                    f"{source}: {where}{key} = {values[key]!r}; our EAT core implements only {key} = {want!r} (the "
                    "released EAT models' setting). This checkpoint uses a variant that cannot be converted.")
    return image, decoder


def eat_config(model_cfg: dict, source: str = "checkpoint") -> Dict[str, Any]:
    """Our :class:`~maeast_fairseq.core.eat.EatConfig` fields from EAT's pretraining ``cfg.model``
    (``data2vec_multi``). Raises :class:`OfficialFormatError` on a setting our core does not implement."""
    image, decoder = _check_supported(model_cfg, source)
    patch = int(image.get("patch_size", 16))
    dim = int(model_cfg.get("embed_dim", 768))
    if int(image.get("embed_dim", dim)) != dim:
        raise OfficialFormatError(f"{source}: cfg.model.modalities.image.embed_dim ({image.get('embed_dim')}) "
                                  f"differs from cfg.model.embed_dim ({dim})")
    return {
        "patch_time": patch,
        "patch_freq": patch,
        "num_mel_bins": 128,
        "max_time_patches": int(image.get("max_length", 768)),
        "embed_dim": dim,
        "encoder_layers": int(model_cfg.get("depth", 12)),
        "num_heads": int(model_cfg.get("num_heads", 12)),
        "ffn_dim": int(dim * float(model_cfg.get("mlp_ratio", 4.0))),  # timm's Mlp: int(dim * mlp_ratio)
        "norm_eps": float(model_cfg.get("norm_eps") or 1e-6),
        "dropout": float(model_cfg.get("encoder_dropout", 0.0)),
        "attention_dropout": float(model_cfg.get("attention_dropout", 0.0)),
        "activation_dropout": float(model_cfg.get("activation_dropout", 0.0)),
        "drop_path": float(model_cfg.get("end_drop_path_rate", 0.0)),
        "encoder_layerdrop": float(model_cfg.get("layerdrop", 0.0)),
        "clones": int(model_cfg.get("clone_batch", 16)),
        "mask_ratio": float(image.get("mask_prob", 0.8)),
        "mask_prob_adjust": float(image.get("mask_prob_adjust", 0.07)),
        "mask_block": int(image.get("mask_length", 5)),
        "decoder_embed_dim": int(decoder.get("decoder_dim", 768)),
        "decoder_layers": int(decoder.get("decoder_layers", 6)),
        "decoder_kernel": int(decoder.get("decoder_kernel", 3)),
        "decoder_groups": int(decoder.get("decoder_groups", 16)),
        "mask_noise_std": float(image.get("mask_noise_std", 0.01)),
        "average_top_k_layers": int(model_cfg.get("average_top_k_layers", 12)),
        "instance_norm_targets": bool(model_cfg.get("instance_norm_target_layer", True)),
        "layer_norm_targets": bool(model_cfg.get("layer_norm_targets", True)),
        "ema_decay": float(model_cfg.get("ema_decay", 0.9998)),
        "ema_end_decay": float(model_cfg.get("ema_end_decay", 0.99999)),
        "ema_anneal_end_step": int(model_cfg.get("ema_anneal_end_step", 100000)),
    }


def eat_frontend(target_frames: int) -> Dict[str, Any]:
    """EAT's front end (``feature_extract.py`` / its dataset): Kaldi fbank, 128 mel bins, hanning window, waveform
    mean removed, ``(x - (-4.268)) / (2 * 4.569)``, clips cut / zero-padded (log-mel) to ``target_frames``, padding
    treated as data (EAT passes no padding mask)."""
    return {"sample_rate": 16000, "num_mel_bins": 128, "window_type": "hanning", "subtract_waveform_mean": True,
            "norm": "dataset", "norm_mean": EAT_NORM_MEAN, "norm_std": EAT_NORM_STD, "length_policy": "fixed",
            "target_frames": int(target_frames), "max_frames": 0, "padding_mask": False}


def _frontend_notes(target_frames: int, where: str) -> List[str]:
    return [
        f"front end assumed (EAT's feature_extract.py): Kaldi fbank 128 mel, hanning window, waveform mean removed, "
        f"(x - {EAT_NORM_MEAN}) / (2 * {EAT_NORM_STD}); target_frames = {target_frames} (from {where}); padding "
        "is data as in EAT (padding_mask false). The statistics are not stored in the file: override them if the "
        "model was trained on other data.",
    ]


# ------------------------------------------------------------------------------------------------------ weights
def _our_encoder_key(official: str) -> Optional[str]:
    """Official encoder key (without ``_ema.`` / ``model.``) -> ours relative to the encoder, or None."""
    if official.startswith(ENC):
        rest = official[len(ENC):]
        if rest == "extra_tokens":
            return "cls_token"
        if rest.startswith("local_encoder.proj."):
            return "patch_embed.proj." + rest[len("local_encoder.proj."):]
        if rest.startswith("context_encoder.norm."):
            return "transformer.input_norm." + rest[len("context_encoder.norm."):]
        return None
    if official.startswith("blocks."):
        parts = official.split(".")
        if len(parts) >= 4 and parts[1].isdigit():
            rest = ".".join(parts[2:])
            if rest.startswith("mlp."):
                rest = "ffn." + rest[len("mlp."):]
            return f"transformer.blocks.{parts[1]}.{rest}"
    return None


def _our_decoder_key(official: str) -> Optional[str]:
    prefix = ENC + "decoder."
    if not official.startswith(prefix):
        return None
    parts = official[len(prefix):].split(".")
    if len(parts) == 4 and parts[0] == "blocks" and parts[1].isdigit() and parts[2] == "0":
        return f"decoder.convs.{parts[1]}.{parts[3]}"
    if len(parts) == 2 and parts[0] == "proj":
        return "decoder.proj." + parts[1]
    return None


def _expected_shapes(model_name: str, cfg: Dict[str, Any], classifier: Optional[dict] = None) -> Dict[str, tuple]:
    """Our state-dict shapes for this config, from a model built on the meta device (no memory, no init cost)."""
    from ..core.eat import Eat, EatConfig

    with torch.device("meta"):
        core = Eat(EatConfig(**cfg))
    if model_name == CLASSIFIER_MODEL:
        core.remove_pretraining_modules()
        shapes = {"encoder." + k: tuple(v.shape) for k, v in core.state_dict().items()}
        d, c = cfg["embed_dim"], classifier["num_classes"]
        shapes.update({"head_norm.weight": (d,), "head_norm.bias": (d,), "head.weight": (c, d), "head.bias": (c,)})
        return shapes
    return {k: tuple(v.shape) for k, v in core.state_dict().items()}


class _Mapper:
    """Collects ``ours <- official`` tensors, checks shapes and that nothing in the file is left unexplained."""

    def __init__(self, weights: dict, expected: Dict[str, tuple], source: str):
        self.weights, self.expected, self.source = weights, expected, source
        self.state: Dict[str, torch.Tensor] = {}
        self.consumed: set = set()
        self.dropped: Dict[str, str] = {}

    def get(self, key: str, container: Optional[dict] = None, shown: Optional[str] = None,
            unmapped: Optional[List[str]] = None) -> torch.Tensor:
        where = self.weights if container is None else container
        name = shown or key
        if key not in where:
            extra = (f"; keys of the file that map to nothing: {unmapped[:8]}" if unmapped else "")
            raise OfficialFormatError(f"{self.source}: key {name!r} is missing from the file (EAT stores it in "
                                      "every checkpoint of this kind); the file is truncated, edited or of another "
                                      f"version{extra}")
        value = where[key]
        if not isinstance(value, torch.Tensor):
            raise OfficialFormatError(f"{self.source}: key {name!r} holds a {type(value).__name__}, not a tensor")
        return value

    def put(self, ours: str, official_shown: str, value: torch.Tensor) -> None:
        want = self.expected.get(ours)
        if want is None:
            raise OfficialFormatError(f"{self.source}: key {official_shown!r} maps to {ours!r}, which the model "
                                      "built from the file's config does not have (the config and the weights "
                                      "disagree, e.g. model.depth)")
        if ours.endswith("patch_embed.proj.weight"):
            if value.dim() != 4 or value.shape[1] != 1:
                raise OfficialFormatError(f"{self.source}: key {official_shown!r} has shape {tuple(value.shape)}, "
                                          "expected a Conv2d weight (D, 1, patch, patch)")
            value = value.reshape(value.shape[0], -1)
        if tuple(value.shape) != tuple(want):
            raise OfficialFormatError(f"{self.source}: key {official_shown!r} has shape {tuple(value.shape)}; the "
                                      f"config stored with it implies {tuple(want)} (for our {ours!r})")
        self.state[ours] = value.detach().to(torch.float32).clone()

    def check_positions(self, official_shown: str, value: torch.Tensor, cfg: Dict[str, Any]) -> None:
        """The stored sin-cos table must be the one we recompute (same layout); a float32 angle of at most
        ``max_time_patches`` radians is rounded by <= max_pos * 2^-24 (< 1e-4 for 768 rows), a layout difference
        is O(1)."""
        from ..core.positions import sincos_2d

        n_freq = cfg["num_mel_bins"] // cfg["patch_freq"]
        ours = sincos_2d(cfg["max_time_patches"], n_freq, cfg["embed_dim"])
        if tuple(value.shape) != (1,) + tuple(ours.shape):
            raise OfficialFormatError(
                f"{self.source}: key {official_shown!r} has shape {tuple(value.shape)}; the config (max_length "
                f"{cfg['max_time_patches']} x {n_freq} frequency patches, dim {cfg['embed_dim']}) implies "
                f"{(1,) + tuple(ours.shape)}")
        tol = 1e-3
        err = float((value[0].float() - ours).abs().max())
        if not err <= tol:
            raise OfficialFormatError(
                f"{self.source}: key {official_shown!r} differs from the 2-D sin-cos table our EAT core computes "
                f"(max |diff| {err:.3g} > {tol}): another position layout, which this converter does not know")

    def finish(self, extra_allowed: Tuple[str, ...] = ()) -> None:
        unknown = sorted(k for k in self.weights if k not in self.consumed and k not in extra_allowed)
        if unknown:
            raise OfficialFormatError(
                f"{self.source}: {len(unknown)} key(s) of the file are neither mapped nor known to be droppable: "
                + ", ".join(repr(k) for k in unknown[:8]) + (" ..." if len(unknown) > 8 else "")
                + " (a variant of EAT this converter does not know; nothing was converted)")
        missing = sorted(k for k in self.expected if k not in self.state)
        if missing:  # pragma: no cover - every expected key is looked up explicitly above
            raise OfficialFormatError(f"{self.source}: no official tensor for our {missing[:8]}")


def _map_encoder(m: _Mapper, container: dict, official_prefix: str, ours_prefix: str, cfg: Dict[str, Any],
                 shown_prefix: str) -> None:
    """Every encoder tensor of ours under ``ours_prefix`` from ``container`` (the file's weights, or its ``_ema``
    dict) under ``official_prefix``; the stored position table is checked and dropped."""
    in_file = container is m.weights
    wanted = [k[len(ours_prefix):] for k in m.expected if k.startswith(ours_prefix)]
    known = {official_prefix + _official_encoder_key(k) for k in wanted} | {official_prefix + r for r in DROPPED}
    unmapped = [shown_prefix + k for k in container if k.startswith(official_prefix) and k not in known
                and not (in_file and (k == TEACHER or _our_decoder_key(k) is not None
                                      or k.startswith(("fc_norm.", "head."))))]
    for ours in wanted:
        official = official_prefix + _official_encoder_key(ours)
        shown = shown_prefix + official
        m.put(ours_prefix + ours, shown, m.get(official, container, shown, unmapped))
        if in_file:
            m.consumed.add(official)
    for rel, why in DROPPED.items():
        official = official_prefix + rel
        shown = shown_prefix + official
        m.check_positions(shown, m.get(official, container, shown), cfg)
        m.dropped[shown] = why
        if in_file:
            m.consumed.add(official)
    if not in_file:  # the _ema dict: everything in it must be one of the encoder's tensors
        known = {official_prefix + _official_encoder_key(k[len(ours_prefix):])
                 for k in m.expected if k.startswith(ours_prefix)} | {official_prefix + r for r in DROPPED}
        unknown = sorted(k for k in container if k not in known)
        if unknown:
            raise OfficialFormatError(
                f"{m.source}: {len(unknown)} key(s) under {shown_prefix.rstrip('.')!r} are neither mapped nor known "
                "to be droppable: " + ", ".join(repr(shown_prefix + k) for k in unknown[:8])
                + (" ..." if len(unknown) > 8 else "") + " (e.g. more blocks than cfg.model.depth; nothing was "
                "converted)")


def _official_encoder_key(ours: str) -> str:
    """Inverse of :func:`_our_encoder_key` (for the 'missing key' message)."""
    if ours == "cls_token":
        return ENC + "extra_tokens"
    if ours.startswith("patch_embed.proj."):
        return ENC + "local_encoder.proj." + ours[len("patch_embed.proj."):]
    if ours.startswith("transformer.input_norm."):
        return ENC + "context_encoder.norm." + ours[len("transformer.input_norm."):]
    if ours.startswith("transformer.blocks."):
        parts = ours.split(".")
        rest = ".".join(parts[3:])
        if rest.startswith("ffn."):
            rest = "mlp." + rest[len("ffn."):]
        return f"blocks.{parts[2]}.{rest}"
    return ours


def _map_decoder(m: _Mapper) -> None:
    inverse = {}
    for k in m.weights:
        ours = _our_decoder_key(k)
        if ours is not None:
            inverse[ours] = k
    for ours in [k for k in m.expected if k.startswith("decoder.")]:
        if ours in inverse:
            official = inverse[ours]
        elif ours.startswith("decoder.convs."):
            i, what = ours.split(".")[2], ours.split(".")[3]
            official = f"{ENC}decoder.blocks.{i}.0.{what}"
        else:
            official = f"{ENC}decoder.{ours[len('decoder.'):]}"
        m.put(ours, official, m.get(official))
        m.consumed.add(official)


# ------------------------------------------------------------------------------------------------------ labels
def read_labels(path: str, num_classes: int) -> List[str]:
    """Class names from a label file: a CSV with a header naming ``index`` and ``display_name`` (AudioSet's
    ``class_labels_indices.csv``; the ``mid`` column is ignored), or one name per line in class order."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"label file {path!r} does not exist")
    with open(path, newline="", encoding="utf-8") as f:
        text = f.read()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    header = next(csv.reader([lines[0]])) if lines else []
    fields = [h.strip().lower() for h in header]
    if "display_name" in fields:
        rows = list(csv.DictReader(lines, fieldnames=fields))[1:]
        names: Dict[int, str] = {}
        for line_no, row in enumerate(rows, start=2):
            try:
                index = int(row["index"]) if "index" in fields else line_no - 2
            except (TypeError, ValueError):
                raise ValueError(f"{path}:{line_no}: column 'index' is {row.get('index')!r}, not an integer") from None
            if index in names:
                raise ValueError(f"{path}:{line_no}: index {index} appears twice")
            names[index] = (row.get("display_name") or "").strip()
        if sorted(names) != list(range(len(names))):
            raise ValueError(f"{path}: the 'index' column must hold 0 .. {len(names) - 1} once each")
        result = [names[i] for i in range(len(names))]
    else:
        result = [ln.strip() for ln in lines]
    if len(result) != num_classes:
        raise ValueError(f"{path}: {len(result)} class names for a head with {num_classes} classes; give the label "
                         "file the model was fine-tuned with (AudioSet: class_labels_indices.csv, 527 rows)")
    return result


# ------------------------------------------------------------------------------------------------------ convert
def convert(raw: Any, source: str, *, ema: bool = False, labels: Optional[str] = None,
            num_heads: Optional[int] = None) -> Converted:
    """An EAT checkpoint (already read, see :mod:`.reader`) -> :class:`Converted`.

    ``ema=True`` (pretraining files only) makes the EMA teacher the encoder; ``labels`` (fine-tuned files) a label
    file whose names the classifier carries; ``num_heads`` the attention heads of a fine-tuned file saved without
    its pretraining config (otherwise the stored value is used, and a different ``num_heads`` is an error).
    """
    name = _model_name(raw)
    if not matches(raw):
        raise OfficialFormatError(
            f"{source}: not an EAT checkpoint (cfg.model._name {name!r}; EAT files are fairseq checkpoints of "
            f"{PRETRAIN_MODEL!r} or {FINETUNE_MODEL!r} holding {ENC}local_encoder.proj.weight)")
    if name == PRETRAIN_MODEL:
        if labels is not None:
            raise OfficialFormatError(f"{source}: labels= applies to fine-tuned EAT files; this one is a pretraining "
                                      "checkpoint (no classification head)")
        return _check_heads(_convert_pretraining(raw, source, ema=ema), num_heads)
    if ema:
        raise OfficialFormatError(f"{source}: ema=True selects the EMA teacher of a pretraining file; a fine-tuned "
                                  "EAT file holds only the fine-tuned student")
    return _check_heads(_convert_finetuned(raw, source, labels=labels, num_heads=num_heads), num_heads)


def _check_heads(conv: Converted, num_heads: Optional[int]) -> Converted:
    if num_heads is not None and int(num_heads) != conv.model_cfg["num_heads"]:
        raise OfficialFormatError(f"{conv.source}: num_heads={num_heads} given, but the file's config stores "
                                  f"{conv.model_cfg['num_heads']} heads")
    return conv


def _convert_pretraining(raw: dict, source: str, *, ema: bool) -> Converted:
    cfg_all = _cfg(raw)
    model_cfg, task_cfg = cfg_all.get("model") or {}, cfg_all.get("task") or {}
    cfg = eat_config(model_cfg, source)
    weights = _weights(raw)
    expected = _expected_shapes("eat", cfg)
    m = _Mapper(weights, expected, source)
    notes: List[str] = []
    teacher = weights.get(TEACHER)
    if teacher is not None and not isinstance(teacher, dict):
        raise OfficialFormatError(f"{source}: key {TEACHER!r} holds a {type(teacher).__name__}; EAT stores its "
                                  "EMA teacher there as a dict of tensors")
    # the encoder: the student (default) or the EMA teacher
    if ema:
        if teacher is None:
            raise OfficialFormatError(f"{source}: ema=True but the file has no {TEACHER!r} entry (no EMA teacher "
                                      "was saved); load the student (ema=False)")
        _map_encoder(m, teacher, "", "encoder.", cfg, TEACHER + ".")
        notes.append("encoder = the EMA teacher (_ema), chosen explicitly with ema=True; EAT's own feature "
                     "extraction and fine-tuning use the student")
    else:
        _map_encoder(m, weights, "", "encoder.", cfg, "")
        notes.append("encoder = the student (EAT's feature_extract.py and its fine-tuning use the student; "
                     "ema=True selects the EMA teacher)")
    # the teacher (always kept, for further pretraining)
    if teacher is not None:
        _map_encoder(m, teacher, "", "teacher.", cfg, TEACHER + ".")
    else:
        for k in [k for k in expected if k.startswith("teacher.")]:
            m.state[k] = m.state["encoder." + k[len("teacher."):]].clone()
        notes.append(f"the file has no {TEACHER!r} teacher: the teacher starts as a copy of the student (as a "
                     "fresh EAT run does)")
    if ema:  # the student's own encoder keys are in the file too: they are the alternative, not lost silently
        for k in weights:
            if k != TEACHER and _our_encoder_key(k) is not None:
                m.consumed.add(k)
                m.dropped[k] = "student encoder (ema=True loads the EMA teacher instead)"
        for rel in DROPPED:
            if rel in weights:
                m.consumed.add(rel)
                m.dropped[rel] = DROPPED[rel]
    _map_decoder(m)
    m.finish(extra_allowed=(TEACHER,))
    target_frames = int(task_cfg.get("target_length") or (model_cfg.get("modalities") or {}).get("image", {})
                        .get("target_length") or 1024)
    cfg["decoder_proj_init"] = "pytorch"  # what EAT leaves on it (relevant only to a fresh init)
    notes += _frontend_notes(target_frames, "cfg.task.target_length")
    notes.append(f"the decoder is kept for further pretraining; EAT's loss weights (cls_loss "
                 f"{model_cfg.get('cls_loss', 1.0)}, d2v_loss {model_cfg.get('d2v_loss', 1.0)}) belong to the "
                 "criterion (eat_ufo's utterance weight), not to the model")
    return Converted(
        family=FAMILY, variant="teacher (EMA)" if ema else "student", model_name="eat", model_cfg=cfg,
        state=m.state, frontend=eat_frontend(target_frames), dropped=m.dropped, notes=notes, source=source,
    )


def _encoder_cfg_from_weights(weights: dict, source: str, num_heads: Optional[int] = None) -> Tuple[dict, str]:
    """A ``data2vec_multi`` config for a fine-tuned file that lacks ``pretrained_model_args``: sizes from the tensor
    shapes; the number of heads (not in the shapes) given, or from EAT's head width of 64 (base 768 / 12, large
    1024 / 16)."""
    prefix = "model."
    tokens = weights.get(prefix + ENC + "extra_tokens")
    fc1 = weights.get(prefix + "blocks.0.mlp.fc1.weight")
    positions = weights.get(prefix + ENC + "fixed_positional_encoder.positions")
    proj = weights.get(prefix + ENC + "local_encoder.proj.weight")
    if not all(isinstance(t, torch.Tensor) for t in (tokens, fc1, positions, proj)):
        raise OfficialFormatError(
            f"{source}: cfg.model.pretrained_model_args is absent and the encoder's sizes cannot be read from the "
            f"weights either (key {prefix + ENC + 'extra_tokens'!r} or its siblings missing)")
    dim, patch = int(tokens.shape[-1]), int(proj.shape[-1])
    depth = 1 + max(int(k.split(".")[2]) for k in weights if k.startswith(prefix + "blocks.")
                    and k.split(".")[2].isdigit())
    heads = int(num_heads) if num_heads else max(dim // 64, 1)
    model_cfg = {
        "_name": PRETRAIN_MODEL, "embed_dim": dim, "depth": depth, "num_heads": heads,
        "mlp_ratio": fc1.shape[0] / dim, "average_top_k_layers": depth,
        "modalities": {"image": {"patch_size": patch, "embed_dim": dim,
                                 "max_length": int(positions.shape[1]) // (128 // patch)}},
    }
    note = (f"cfg.model.pretrained_model_args is absent: encoder sizes read from the weights (dim {dim}, {depth} "
            f"blocks, FFN {fc1.shape[0]}); "
            + (f"num_heads = {heads} as given" if num_heads else
               f"num_heads = {heads} ASSUMED from EAT's head width 64 (not stored; pass num_heads= otherwise)"))
    return model_cfg, note


def _convert_finetuned(raw: dict, source: str, *, labels: Optional[str], num_heads: Optional[int] = None
                       ) -> Converted:
    cfg_all = _cfg(raw)
    ft_cfg, task_cfg = cfg_all.get("model") or {}, cfg_all.get("task") or {}
    weights = _weights(raw)
    pretrain_args = ft_cfg.get("pretrained_model_args")
    pretrain_model_cfg = (pretrain_args or {}).get("model") if isinstance(pretrain_args, dict) else None
    inferred_note = None
    if not pretrain_model_cfg:
        pretrain_model_cfg, inferred_note = _encoder_cfg_from_weights(weights, source, num_heads)
    elif pretrain_model_cfg.get("_name") != PRETRAIN_MODEL:
        raise OfficialFormatError(
            f"{source}: cfg.model.pretrained_model_args.model is a {pretrain_model_cfg.get('_name')!r} config; a "
            f"fine-tuned EAT file stores its encoder's {PRETRAIN_MODEL!r} config there")
    cfg = eat_config(pretrain_model_cfg, source)
    # the fine-tuning overrides of the encoder (EAT applies them to the pretrained config)
    for ours, theirs in (("dropout", "encoder_dropout"), ("attention_dropout", "attention_dropout"),
                         ("activation_dropout", "activation_dropout"), ("encoder_layerdrop", "layerdrop")):
        if ft_cfg.get(theirs) is not None:
            cfg[ours] = float(ft_cfg[theirs])
    if ft_cfg.get("norm_eps") is not None:
        cfg["norm_eps"] = float(ft_cfg["norm_eps"])
    cfg["drop_path"] = 0.0  # the classifier's own drop_path rises over the blocks
    if ft_cfg.get("use_fc_norm") is False:
        raise OfficialFormatError(f"{source}: cfg.model.use_fc_norm = False; our classifier head is LayerNorm -> "
                                  "Linear (EAT's released fine-tuned models use fc_norm)")
    mode = ft_cfg.get("prediction_mode", "CLS_TOKEN")
    if mode not in POOLING:
        raise OfficialFormatError(f"{source}: cfg.model.prediction_mode = {mode!r}; supported: {sorted(POOLING)}")
    head = weights.get("head.weight")
    if not isinstance(head, torch.Tensor) or head.dim() != 2:
        raise OfficialFormatError(f"{source}: key 'head.weight' is missing from the file (a fine-tuned EAT file "
                                  "holds the classification head there)")
    num_classes = int(head.shape[0])
    if ft_cfg.get("num_classes") not in (None, num_classes):
        raise OfficialFormatError(f"{source}: key 'head.weight' has {num_classes} rows but cfg.model.num_classes "
                                  f"is {ft_cfg.get('num_classes')}")
    target_frames = int(ft_cfg.get("target_length") or task_cfg.get("target_length") or 1024)
    class_names = read_labels(labels, num_classes) if labels else None
    mask_ratio = float(ft_cfg.get("mask_ratio", 0.0)) if ft_cfg.get("specaug") else 0.0
    classifier = {
        "num_classes": num_classes,
        "pooling": POOLING[mode],
        "class_names": class_names,
        "multi_label": True,
        "target_frames": target_frames,
        "head_norm_eps": HEAD_NORM_EPS,
        "drop_path": float(ft_cfg.get("drop_path_rate", 0.0) or 0.0),
        "layer_decay": float(ft_cfg.get("layer_decay", 1.0) or 1.0),
        "layer_decay_rule": "blocks_only",
        "mixup_alpha": float(ft_cfg.get("mixup", 0.0) or 0.0),
        "mixup_prob": float(ft_cfg.get("mixup_prob", 1.0) or 1.0),
        "specaug_freq": mask_ratio,
        "specaug_time": mask_ratio,
    }
    expected = _expected_shapes(CLASSIFIER_MODEL, cfg, classifier)
    m = _Mapper(weights, expected, source)
    _map_encoder(m, weights, "model.", "encoder.encoder.", cfg, "")
    for official, ours in (("fc_norm.weight", "head_norm.weight"), ("fc_norm.bias", "head_norm.bias"),
                           ("head.weight", "head.weight"), ("head.bias", "head.bias")):
        m.put(ours, official, m.get(official))
        m.consumed.add(official)
    m.finish()
    notes = [
        f"fine-tuned EAT: encoder (student) + fc_norm (LayerNorm eps {HEAD_NORM_EPS}) + head, pooling "
        f"{POOLING[mode]!r} (prediction_mode {mode}), {num_classes} classes, multi-label (sigmoid; EAT trains "
        "with BCE)",
        "class names: " + (f"from {labels}" if labels else "none given (indices are printed; pass a label file, "
                           "e.g. AudioSet's class_labels_indices.csv)"),
        "encoder config from cfg.model.pretrained_model_args.model; fine-tuning settings (drop_path_rate, "
        "layer_decay, mixup, specaug mask_ratio) carried over for further fine-tuning",
    ]
    if inferred_note:
        notes.append(inferred_note)
    notes += _frontend_notes(target_frames, "cfg.model.target_length")
    return Converted(
        family=FAMILY, variant="fine-tuned", model_name=CLASSIFIER_MODEL, model_cfg=cfg, state=m.state,
        frontend=eat_frontend(target_frames), dropped=m.dropped, notes=notes, classifier=classifier, source=source,
    )


__all__ = ["FAMILY", "matches", "convert", "eat_config", "eat_frontend", "read_labels", "DROPPED",
           "EAT_NORM_MEAN", "EAT_NORM_STD"]
