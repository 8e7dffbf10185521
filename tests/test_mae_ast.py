"""MAE-AST core: shapes, masking ratio, padding masks (never masked, scored or used as negatives)."""
import functools

import torch
from conftest import NO_DROPOUT, tiny_core

from maeast_fairseq.core.losses import info_nce, masked_mse
from maeast_fairseq.core.rng import MaskRNG

tiny = functools.partial(tiny_core, "mae_ast", **NO_DROPOUT)  # tiny(**overrides): seeded, without dropout


def test_patch_shapes_and_ratio_at_paper_size():
    m = tiny()
    x = torch.randn(2, 1024, 128)
    out = m(x, None, MaskRNG.from_ids(1, 1, torch.arange(2)))
    assert out["mask"].shape == (2, 512)
    assert out["mask"].sum(1).tolist() == [384, 384]  # 75 % of 64 x 8 tokens
    assert out["pred"].shape == out["nce_pred"].shape == out["target"].shape == (2, 384, 256)
    assert out["target_valid"].all()


def test_frame_model_shapes():
    m = tiny(patch_time=2, patch_freq=128, mask_type="random")
    out = m(torch.randn(3, 1024, 128), None, MaskRNG.from_ids(1, 1, torch.arange(3)))
    assert out["mask"].shape == (3, 512) and out["mask"].sum(1).tolist() == [384] * 3
    assert out["target"].shape == (3, 384, 256)


def test_targets_are_the_masked_normalised_patches():
    m = tiny().eval()
    x = torch.randn(2, 160, 128)
    out = m(x, None, MaskRNG.from_ids(3, 1, torch.arange(2)))
    patches = m.tokenizer.patchify(m.input_norm(x))
    for b in range(2):
        idx = out["mask"][b].nonzero().squeeze(1)
        torch.testing.assert_close(out["target"][b, : len(idx)], patches[b, idx])


def _loss(out):
    nce, _ = info_nce(out["nce_pred"], out["target"], out["target_valid"])
    return nce + 10 * masked_mse(out["pred"], out["target"], out["target_valid"])


def test_padding_never_masked_scored_or_negative():
    m = tiny(input_norm="batchnorm")
    x = torch.randn(3, 320, 128)
    pad = torch.zeros(3, 320, dtype=torch.bool)
    pad[1, 200:] = True  # clip 1 has 200 real frames: time patches 12..19 are padding
    pad[2, 100:] = True
    rng = MaskRNG.from_ids(0, 1, torch.arange(3))
    out = m(x, pad, rng)
    tok_pad = out["padding_mask"]
    assert tok_pad.sum(1).tolist() == [0, 8 * 8, 14 * 8]  # partial patches are padding too
    assert not (out["mask"] & tok_pad).any(), "a padded token was masked"
    # per-clip counts follow the valid tokens: 75 % of them
    n_valid = (~tok_pad).sum(1)
    assert out["mask"].sum(1).tolist() == (n_valid - (0.25 * n_valid).floor().long()).tolist()
    assert out["target_valid"].sum(1).tolist() == out["mask"].sum(1).tolist()
    # scored slots hold only masked tokens: the invalid slots of short clips are excluded from loss and negatives
    loss = _loss(out)
    # padded content is invisible: changing it changes neither the loss nor any valid output
    x2 = x.clone()
    x2[pad] = 100.0 * torch.randn(int(pad.sum()), 128)
    out2 = m(x2, pad, MaskRNG.from_ids(0, 1, torch.arange(3)))
    torch.testing.assert_close(_loss(out2), loss)
    valid = out["target_valid"]
    torch.testing.assert_close(out2["nce_pred"][valid], out["nce_pred"][valid])


def test_pad_as_data_flag_masks_padding():
    """Without a padding mask (official pad-as-data), padded tokens are ordinary tokens and get masked."""
    m = tiny()
    x = torch.randn(4, 320, 128)
    out = m(x, None, MaskRNG.from_ids(0, 1, torch.arange(4)))
    assert out["padding_mask"] is None
    assert out["mask"][:, 13 * 8:].any()


def test_extract_features_all_layers_and_padding():
    m = tiny().eval()
    x = torch.randn(2, 200, 128)
    pad = torch.zeros(2, 200, dtype=torch.bool)
    pad[1, 120:] = True
    f = m.extract_features(x, pad)
    assert f["x"].shape == (2, 12 * 8, 32) and len(f["hidden_states"]) == 3
    # clip 1 alone (unpadded, trimmed) gives the same valid outputs as inside the padded batch
    alone = m.extract_features(x[1:2, :120], None)["x"]
    torch.testing.assert_close(f["x"][1, : alone.shape[1]], alone[0], atol=1e-5, rtol=1e-4)
