"""The official SSAST and MAE-AST checkpoints, converted, reproduce the official code's outputs.

Fixtures (``tests/fixtures/official/``, README there): small files saved by the official code bases themselves and
the official code's outputs on fixed inputs (per-layer hidden states, pooled outputs, pretraining predictions and
losses under recorded masks, SSAST fine-tuning with other patch strides).

Tolerance: ``REL_TOL = 1e-5`` on ``max |ours - ref|_F / |ref|_F`` (Frobenius norms; scalars: relative difference).
Both sides compute in float32 (unit roundoff ``u = 2^-24``) but sum in another order (BLAS blocking, SDPA versus an
explicit softmax, a fused versus three separate q/k/v projections). A length-``K`` float32 reduction carries a
relative rounding error of about ``sqrt(K) u`` (random-walk accumulation); the longest reduction in these models
is ``K_MAX = 768`` (SSAST-tiny's MLP), and a 2-layer encoder chains about ``OPS = 12`` such products (q/k/v, scores,
weights x values, output projection, 2 MLP layers, per layer), whose independent errors add in quadrature
(LayerNorms rescale each layer, so they do not compound multiplicatively): ``sqrt(OPS * K_MAX) u = 5.8e-6 < 1e-5``.
Measured on the fixtures: 1e-7 .. 4e-7. (A mismatch of mapping or semantics gives 1e-2 .. 1: e.g. positions
missing on one clip -> 0.73.)
"""
import math
import os

import numpy as np
import pytest
import torch

from maeast_fairseq.checkpoint import model_from_converted as build_model
from maeast_fairseq.core.classifier import AudioClassifier, ClassifierConfig, apply_patch_strides
from maeast_fairseq.core.losses import info_nce, masked_mse, ssast_logged_accuracy
from maeast_fairseq.official import read_official

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "official")
U = 2.0 ** -24
K_MAX, OPS = 768, 12
REL_TOL = 1e-5
assert math.sqrt(OPS * K_MAX) * U < REL_TOL

SSAST = ["ssast_patch_tiny2", "ssast_frame_tiny2"]
MAE_AST = ["maeast_chunk_patch_2L", "maeast_random_frame_2L"]


def rel(ours, ref) -> float:
    a = torch.as_tensor(np.asarray(ours.detach() if torch.is_tensor(ours) else ours)).double()
    b = torch.as_tensor(np.asarray(ref)).double()
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def inputs():
    return dict(np.load(os.path.join(FIXTURES, "inputs.npz")))


def _load(name: str, ext: str):
    conv = read_official(os.path.join(FIXTURES, name + ext))
    refs = dict(np.load(os.path.join(FIXTURES, name + ".refs.npz")))
    return conv, build_model(conv).eval(), refs


def _mask_from(indices: np.ndarray, n_tokens: int) -> torch.Tensor:
    idx = torch.as_tensor(indices)
    return torch.zeros(idx.shape[0], n_tokens, dtype=torch.bool).scatter_(1, idx, True)


def _rows_sorted(ref: np.ndarray, indices: np.ndarray) -> torch.Tensor:
    """Reference rows in drawn order -> ascending token order (ours gathers masked tokens in token order)."""
    order = torch.argsort(torch.as_tensor(indices), dim=1)
    t = torch.as_tensor(ref)
    return t.gather(1, order[..., None].expand(-1, -1, t.shape[-1]))


# ------------------------------------------------------------------------------------------------------- SSAST
@pytest.mark.parametrize("name", SSAST)
def test_ssast_conversion_infers_the_config(name):
    conv, model, _ = _load(name, ".pth")
    c = conv.model_cfg
    assert (c["embed_dim"], c["num_heads"], c["encoder_layers"], c["ffn_dim"]) == (192, 3, 2, 768)
    assert (c["num_mel_bins"], c["target_frames"], c["num_extra_tokens"]) == (128, 256, 2)
    assert (c["patch_freq"], c["patch_time"]) == ((16, 16) if "patch" in name else (128, 2))
    assert c["mask_type"] == ("cluster" if "patch" in name else "random")
    assert set(conv.dropped) == {"v.head.weight", "v.head.bias", "v.head_dist.weight", "v.head_dist.bias",
                                 "p_input_fdim", "p_input_tdim"}
    assert conv.frontend["window_type"] == "hanning" and conv.frontend["norm"] == "dataset"
    assert any("heads" in n for n in conv.notes) and any("front end" in n for n in conv.notes)


@pytest.mark.parametrize("name", SSAST)
def test_ssast_pretraining_passes_match_official(name, inputs):
    _, model, r = _load(name, ".pth")
    x = torch.as_tensor(inputs["ssast_pretrain_x"])
    n_tokens = model.tokenizer.n_freq * model.tokenizer.n_time(x.shape[1])
    seen = {}
    hooks = [model.encoder.blocks[0].register_forward_hook(lambda m, a, o: seen.__setitem__("block0", o[0])),
             model.encoder.final_norm.register_forward_hook(lambda m, a, o: seen.__setitem__("final", o))]
    with torch.no_grad():
        mpc = model(x, mask=_mask_from(r["mpc_mask_index"], n_tokens))
        assert rel(seen["block0"], r["mpc_block0_out"]) < REL_TOL
        assert rel(seen["final"], r["mpc_final_norm_out"]) < REL_TOL
        mpg = model(x, mask=_mask_from(r["mpg_mask_index"], n_tokens))
    for h in hooks:
        h.remove()
    assert rel(mpc["nce_pred"], _rows_sorted(r["mpc_pred"], r["mpc_mask_index"])) < REL_TOL
    assert rel(mpg["pred"], _rows_sorted(r["mpg_pred"], r["mpg_mask_index"])) < REL_TOL
    # losses as the official code computes them: InfoNCE with the softmax over the predictions, MSE
    nce, _ = info_nce(mpc["nce_pred"], mpc["target"], mpc["target_valid"], orientation="predictions")
    assert rel(nce, r["mpc_nce"][0]) < REL_TOL
    assert rel(masked_mse(mpg["pred"], mpg["target"], mpg["target_valid"]), r["mpg_mse"][0]) < REL_TOL
    # SSAST's logged accuracy is a count of argmax hits: equal exactly (half a hit of slack for the float compare)
    acc = ssast_logged_accuracy(mpc["nce_pred"], mpc["target"], mpc["target_valid"])
    hits = mpc["target_valid"].sum().item()
    assert abs(float(acc) - float(r["mpc_acc"][0])) < 0.5 / hits


FT_CASES = {"ssast_patch_tiny2": [("ft_s10_t100", 10, 10, 100), ("ft_s10_t200", 10, 10, 200)],
            "ssast_frame_tiny2": [("ft_f128t1_t100", 1, 128, 100), ("ft_f128t1_t200", 1, 128, 200)]}


@pytest.mark.parametrize("name,case,stride_time,stride_freq,frames",
                         [(n, *c) for n, cases in FT_CASES.items() for c in cases])
def test_ssast_finetuning_geometry_pooling_and_head_match_official(name, case, stride_time, stride_freq, frames,
                                                                  inputs):
    conv, _, r = _load(name, ".pth")
    results = {}
    for pooling in ("mean", "cls"):
        core = build_model(conv)
        core.remove_pretraining_modules()
        apply_patch_strides(core, stride_time, stride_freq, frames)
        assert rel(core.positions.table, r[f"{case}_pos_embed"]) < REL_TOL
        clf = AudioClassifier(ClassifierConfig(num_classes=5, pooling=pooling, encoder_name="ssast"), core).eval()
        assert clf.head_norm.eps == 1e-5  # SSAST's mlp_head LayerNorm: PyTorch's default eps
        head = {"head_norm.weight": "0.weight", "head_norm.bias": "0.bias", "head.weight": "1.weight",
                "head.bias": "1.bias"}
        clf.load_state_dict({**{k: v for k, v in clf.state_dict().items() if k.startswith("encoder.")},
                             **{ours: torch.as_tensor(r[f"{case}_mlp_head.{theirs}"]) for ours, theirs in head.items()}})
        x = torch.as_tensor(inputs[f"ssast_ft_x_{frames}"])
        with torch.no_grad():
            feats = core.extract_features(x)
            results[pooling] = (clf.pool(feats), clf(x)["logits"], feats)
    assert rel(results["mean"][0], r[f"{case}_avgtok_pooled"]) < REL_TOL
    assert rel(results["mean"][1], r[f"{case}_avgtok_logits"]) < REL_TOL
    assert rel(results["cls"][0], r[f"{case}_cls_pooled"]) < REL_TOL
    assert rel(results["cls"][1], r[f"{case}_cls_logits"]) < REL_TOL
    if f"{case}_final_norm_out" in r:  # patch tokens after the final LayerNorm (the ref keeps the 2 extra first)
        assert rel(results["mean"][2]["x"], r[f"{case}_final_norm_out"][:, 2:]) < REL_TOL


# ----------------------------------------------------------------------------------------------------- MAE-AST
@pytest.mark.parametrize("name", MAE_AST)
def test_mae_ast_conversion_infers_the_config(name):
    conv, model, r = _load(name, ".pt")
    c = conv.model_cfg
    assert (c["embed_dim"], c["num_heads"], c["encoder_layers"], c["decoder_layers"], c["ffn_dim"]) == (64, 4, 2, 1, 128)
    assert (c["decoder_ffn_dim"], c["decoder_heads"]) == (128, 4)  # the official decoder reuses the encoder's
    assert (c["patch_time"], c["patch_freq"]) == ((16, 16) if "patch" in name else (2, 128))
    assert c["token_padding_rule"] == "all" and c["mask_ratio"] == 0.75
    assert (c["mask_type"], c["mask_same_for_batch"]) == (("cluster", True) if "chunk" in name else ("random", False))
    assert set(conv.dropped) == {"encoder_mask_emb", "layer_norm.weight", "layer_norm.bias", "enc_sine_pos_embed.pe",
                                 "dec_sine_pos_embed.pe", "batch_norm.num_batches_tracked"}
    assert conv.frontend["window_type"] == "povey" and conv.frontend["norm"] == "none"
    assert not conv.frontend["subtract_waveform_mean"]
    assert float(model.input_norm.running_mean) == float(r["bn_running_mean"][0])
    assert float(model.input_norm.running_var) == float(r["bn_running_var"][0])


@pytest.mark.parametrize("name", MAE_AST)
def test_mae_ast_features_match_official(name, inputs):
    _, model, r = _load(name, ".pt")
    with torch.no_grad():
        f = model.extract_features(torch.as_tensor(inputs["maeast_x"]))
    assert rel(f["x"], r["features_last_hidden_state"]) < REL_TOL
    # official hidden_states: the output of every layer (ours lead with the stack input)
    for i in range(2):
        assert rel(f["hidden_states"][i + 1], r[f"features_hidden_state_{i}"]) < REL_TOL


@pytest.mark.parametrize("name", MAE_AST)
def test_mae_ast_padded_batch_token_padding_and_encoder_match_official(name, inputs):
    """The official token padding rule (a token is padding only when all its frames are) is the converted default.

    The official forward drops the positional encoding of the *whole batch* as soon as one token of it is padding
    (clip 0, unpadded, then differs by 0.73 relative from its own output in an unpadded batch); ours keeps
    positions on every valid token, so that a clip's features do not depend on its batch. The official padded
    outputs are therefore reproduced here from our embedding and encoder without positions."""
    _, model, r = _load(name, ".pt")
    x = torch.as_tensor(inputs["maeast_x_padded"])
    frame_padding = torch.as_tensor(inputs["maeast_x_padded_padding_mask"]).bool()
    token_padding = torch.as_tensor(r["features_padded_token_padding_mask"]).bool()
    with torch.no_grad():
        f = model.extract_features(x, frame_padding)
        assert torch.equal(f["padding_mask"], token_padding)
        tokens, _, _ = model.embed(x, frame_padding)
        y, hidden, _ = model.encoder(tokens, token_padding, return_hidden=True)
    assert rel(y, r["features_padded_last_hidden_state"]) < REL_TOL
    for i in range(2):
        assert rel(hidden[i + 1], r[f"features_padded_hidden_state_{i}"]) < REL_TOL
    # the any-frame rule of models trained here also pads a partial token (100 frames: the patch model's 7th)
    any_rule = model.tokenizer.token_padding(frame_padding, model.tokenizer.n_time(x.shape[1]))
    partial = 100 % model.tokenizer.patch_time != 0
    assert int(any_rule.sum()) == int(token_padding.sum()) + (model.tokenizer.n_freq if partial else 0)


@pytest.mark.parametrize("name", MAE_AST)
def test_mae_ast_pretraining_pass_matches_official(name, inputs):
    _, model, r = _load(name, ".pt")
    x = torch.as_tensor(inputs["maeast_x"])
    n_tokens = r["features_last_hidden_state"].shape[1]
    seen = {}
    hooks = [model.encoder.register_forward_hook(lambda m, a, o: seen.__setitem__("encoder", o[0])),
             model.decoder.register_forward_hook(lambda m, a, o: seen.__setitem__("decoder", o[0]))]
    hooks += [block.register_forward_hook(lambda m, a, o, i=i: seen.__setitem__(f"layer{i}", o[0]))
              for i, block in enumerate(model.encoder.blocks)]
    with torch.no_grad():
        out = model(x, mask=_mask_from(r["pretrain_masked_idx"], n_tokens))
    for h in hooks:
        h.remove()
    # the encoder sees the retained tokens in token order (official: drawn order; attention is order-free)
    retained = r["pretrain_retained_idx_drawn_order"]
    assert rel(seen["encoder"], _rows_sorted(r["pretrain_encoder_out"], retained)) < REL_TOL
    for i in range(2):
        assert rel(seen[f"layer{i}"], _rows_sorted(r[f"pretrain_encoder_hidden_state_{i}"], retained)) < REL_TOL
    assert rel(seen["decoder"], r["pretrain_decoder_out"]) < REL_TOL
    assert rel(out["pred"], r["pretrain_logit_m_list_recon"]) < REL_TOL
    assert rel(out["nce_pred"], r["pretrain_logit_m_list_class"]) < REL_TOL
    assert rel(out["target"], r["pretrain_target_m_list"]) < REL_TOL
    nce, _ = info_nce(out["nce_pred"], out["target"], out["target_valid"], orientation="targets")
    mse = masked_mse(out["pred"], out["target"], out["target_valid"])
    assert rel(nce, r["pretrain_loss_info_nce"][0]) < REL_TOL
    assert rel(mse, r["pretrain_loss_recon"][0]) < REL_TOL
    assert rel(nce + 10 * mse, r["pretrain_loss"][0]) < REL_TOL


# ---------------------------------------------------------------------------------- reproduction switches
def _tiny_mae_ast(**kw):
    from maeast_fairseq.core.mae_ast import MaeAst, MaeAstConfig

    cfg = dict(encoder_layers=1, embed_dim=64, num_heads=4, ffn_dim=128, decoder_layers=1, decoder_embed_dim=64,
               decoder_ffn_dim=128, decoder_heads=4, dropout=0.0, attention_dropout=0.0, dropout_input=0.0,
               encoder_layerdrop=0.0)
    cfg.update(kw)
    return MaeAst(MaeAstConfig(**cfg))


def test_mae_ast_official_init_keeps_pytorch_default_for_patch_projection_and_heads():
    torch.manual_seed(0)
    bert, official = _tiny_mae_ast(), _tiny_mae_ast(init="official")
    # PyTorch's default Linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), std = bound / sqrt(3); BERT: N(0, 0.02).
    # 16384 weights per matrix: the sample std is within 1 % of the true one (relative error ~ 1/sqrt(2n) = 0.55 %)
    for name in ("patch_embed.proj", "reconstruction_head", "classification_head"):
        w_bert = bert.get_submodule(name).weight.detach()
        w_off = official.get_submodule(name).weight.detach()
        bound = 1 / math.sqrt(w_off.shape[1])
        assert float(w_off.abs().max()) <= bound
        assert abs(float(w_off.std()) / (bound / math.sqrt(3)) - 1) < 0.03
        assert abs(float(w_bert.std()) / 0.02 - 1) < 0.03
    # every other Linear keeps the BERT init under both settings
    fc1 = official.encoder.blocks[0].ffn.fc1.weight.detach()
    assert abs(float(fc1.std()) / 0.02 - 1) < 0.03


def test_mae_ast_input_dropout_drops_embeddings_only_positions_added_after():
    from maeast_fairseq.core.positions import sinusoid_1d

    torch.manual_seed(0)
    model = _tiny_mae_ast(dropout_input=0.5).train()
    x = torch.randn(2, 64, 128)
    seen = {}
    model.encoder.register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0]))
    n = 32  # 4 x 8 patches; nothing masked: every token enters the encoder in token order
    model(x, mask=torch.zeros(2, n, dtype=torch.bool))
    with torch.no_grad():
        tokens, _, _ = model.embed(x)
    pos = sinusoid_1d(n, 64)[None]
    kept = seen["x"] - pos
    dropped = kept == 0
    assert 0.4 < float(dropped.float().mean()) < 0.6
    # where an embedding value was dropped, the position is still there, exactly; elsewhere it is scaled by 2
    torch.testing.assert_close(seen["x"][dropped], pos.expand_as(kept)[dropped], rtol=0, atol=0)
    torch.testing.assert_close(kept[~dropped], 2 * tokens[~dropped], rtol=1e-6, atol=1e-6)


def test_explicit_masks_replace_the_drawn_ones():
    from maeast_fairseq.core.ssast import Ssast, SsastConfig

    model = Ssast(SsastConfig(encoder_layers=1, embed_dim=32, num_heads=2, ffn_dim=64, target_frames=64,
                              passes="two")).eval()
    n = model.tokenizer.n_freq * model.tokenizer.n_time(64)
    first = torch.zeros(2, n, dtype=torch.bool)
    first[:, :5] = True
    second = torch.zeros(2, n, dtype=torch.bool)
    second[:, -7:] = True
    with torch.no_grad():
        out = model(torch.randn(2, 64, 128), mask=(first, second))
    assert torch.equal(out["terms"]["nce"]["mask"], first) and torch.equal(out["terms"]["mse"]["mask"], second)
    with pytest.raises(ValueError, match="mask must be"):
        model(torch.randn(2, 64, 128), mask=torch.zeros(2, n + 1, dtype=torch.bool))
    mae = _tiny_mae_ast().eval()
    with pytest.raises(ValueError, match="mask must be"):
        mae(torch.randn(2, 64, 128), mask=torch.zeros(2, 5, dtype=torch.bool))


@pytest.mark.parametrize("name", SSAST)
def test_criterion_logs_ssast_accuracy_beside_ours_with_the_predictions_orientation(name, inputs):
    pytest.importorskip("fairseq")
    from maeast_fairseq.criterions.masked_recon_nce import MaskedReconNceConfig, MaskedReconNceCriterion

    _, model, r = _load(name, ".pth")
    x = torch.as_tensor(inputs["ssast_pretrain_x"])
    mask = _mask_from(r["mpc_mask_index"], model.tokenizer.n_freq * model.tokenizer.n_time(x.shape[1]))
    sample = {"net_input": {"fbank": x, "mask": mask}}
    logs = {}
    for orientation in ("predictions", "targets"):
        crit = MaskedReconNceCriterion(MaskedReconNceConfig(nce_orientation=orientation,
                                                            loss_normalization="per_process"), task=None)
        with torch.no_grad():
            _, _, logs[orientation] = crit(model, sample)
    assert abs(float(logs["predictions"]["acc_ssast"]) - float(r["mpc_acc"][0])) < 0.5 / mask.sum().item()
    assert rel(logs["predictions"]["nce"], r["mpc_nce"][0]) < REL_TOL
    assert "acc_ssast" not in logs["targets"]
