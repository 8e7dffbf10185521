"""SSAST: the pure-torch core (shapes, token order, masking, padding, passes, features, parameters) and the two tiny
configs through fairseq-hydra-train."""
import os
import subprocess
import sys

import pytest
import torch
from conftest import SSAST_FRAME, SSAST_PATCH, TINY_CORE_KWARGS, tiny_core

from maeast_fairseq.core.losses import info_nce, masked_mse
from maeast_fairseq.core.rng import MaskRNG
from maeast_fairseq.core.ssast import Ssast, SsastConfig

try:  # the fixed tiny overfit set and the CLI helpers of the MAE-AST CLI tests (that module needs fairseq)
    from test_pretrain_cli import assert_overfits, overfit_set, run  # noqa: F401  (overfit_set is a fixture)
except pytest.skip.Exception:  # fairseq missing: only the CLI tests below are skipped
    overfit_set = None

PATCH, FRAME = SSAST_PATCH, SSAST_FRAME
SMALL = TINY_CORE_KWARGS["ssast"]


def small(kind=PATCH, **kw):
    """conftest's tiny SSAST in layout ``kind`` (seeded), in eval mode."""
    return tiny_core("ssast", **{**kind, **kw}).eval()


def rng_for(ids, seed=3, epoch=1):
    return MaskRNG.from_ids(seed, epoch, torch.as_tensor(ids))


def joint_loss(out, orientation="targets"):
    terms = out.get("terms")
    a, b = (terms["nce"], terms["mse"]) if terms else (out, out)
    nce, _ = info_nce(a["nce_pred"], a["target"], a["target_valid"], orientation=orientation)
    return nce + 10 * masked_mse(b["pred"], b["target"], b["target_valid"])


# ------------------------------------------------------------------------------------------------- shapes / order
@pytest.mark.parametrize("kind", [PATCH, FRAME], ids=["patch", "frame"])
def test_shapes_and_exact_counts_at_1024x128(kind):
    m = small(kind)
    x = torch.randn(3, 1024, 128)
    for seed in range(4):
        out = m(x, None, rng_for([0, 1, 2], seed=seed))
        assert out["mask"].shape == (3, 512)
        assert out["mask"].sum(1).tolist() == [400, 400, 400]  # 400 of 512 (78.125 %), every clip
        for k in ("pred", "nce_pred", "target"):
            assert out[k].shape == (3, 400, 256)
        assert out["target_valid"].all() and out["padding_mask"] is None
        assert "terms" not in out
    f = m.extract_features(x)
    assert f["x"].shape == (3, 512, 32) and f["cls"].shape == (3, 32)
    assert len(f["hidden_states"]) == SMALL["encoder_layers"] + 1
    assert all(h.shape == (3, 512, 32) for h in f["hidden_states"])
    assert torch.equal(f["hidden_states"][-1], f["x"])


def test_tokens_are_freq_major_and_targets_are_the_masked_patches():
    x = torch.randn(2, 1024, 128)
    m = small(PATCH)
    _, patches, _ = m.embed(x)
    # token f * 64 + t = frames 16t..16t+15, bins 16f..16f+15, flattened freq-major inside the patch (df * 16 + dt),
    # i.e. nn.Unfold on (B, 1, F, T) = the layout of SSAST's Conv2d weights and targets
    for f, t in [(0, 0), (0, 1), (1, 0), (7, 63), (3, 17)]:
        ref = x[:, 16 * t:16 * t + 16, 16 * f:16 * f + 16].transpose(1, 2).reshape(2, 256)
        assert torch.equal(patches[:, f * 64 + t], ref)
    unfold = torch.nn.functional.unfold(x.transpose(1, 2).unsqueeze(1), kernel_size=16, stride=16).transpose(1, 2)
    assert torch.equal(patches, unfold)
    # frame model: one frequency row, token t = frames 2t, 2t+1, freq-major inside (bin * 2 + dt)
    fm = small(FRAME)
    _, fpatches, _ = fm.embed(x)
    assert fpatches.shape == (2, 512, 256)
    assert torch.equal(fpatches[:, 5], x[:, 10:12, :].transpose(1, 2).reshape(2, 256))
    # targets = the masked patches in token order
    out = m(x, None, rng_for([4, 5]))
    for b in range(2):
        idx = out["mask"][b].nonzero().squeeze(1)
        assert torch.equal(out["target"][b], patches[b, idx])


def test_masked_tokens_become_the_mask_embedding():
    """The encoder sees every token; masked ones carry mask_embed whatever their content."""
    m = small(PATCH)
    x = torch.randn(1, 1024, 128)
    out = m(x, None, rng_for([7]))
    masked = out["mask"][0]
    # change the content of masked patches only: same mask (same keys), so the outputs must not move
    patches = m.tokenizer.patchify(x)
    noisy = patches.clone()
    noisy[0, masked] = torch.randn_like(noisy[0, masked]) * 10
    x2 = m.tokenizer.unpatchify(noisy, 64)
    out2 = m(x2, None, rng_for([7]))
    assert torch.equal(out2["mask"], out["mask"])
    assert torch.allclose(out2["nce_pred"], out["nce_pred"], atol=1e-5)
    assert torch.allclose(out2["pred"], out["pred"], atol=1e-5)
    assert not torch.allclose(out2["target"], out["target"])  # the targets do change


def test_cluster_masks_are_clustered_and_random_masks_are_not():
    """Rate at which an unmasked token's next time step is unmasked too: the gaps between square clusters are
    contiguous (patch model, ~0.64), while uniform masking leaves isolated tokens (frame model: 111/511 = 0.22)."""
    x = torch.randn(8, 1024, 128)

    def kept_neighbour_rate(mask, n_freq, n_time):
        k = (~mask).view(-1, n_freq, n_time).float()  # freq-major
        return float((k[:, :, 1:] * k[:, :, :-1]).sum() / k[:, :, :-1].sum())

    mp = small(PATCH)(x, None, rng_for(range(8)))["mask"]
    mr = small(FRAME)(x, None, rng_for(range(8)))["mask"]
    assert kept_neighbour_rate(mp, 8, 64) > 0.5
    assert abs(kept_neighbour_rate(mr, 1, 512) - 111 / 511) < 0.06


# ------------------------------------------------------------------------------------------------- padding
@pytest.mark.parametrize("kind", [PATCH, FRAME], ids=["patch", "frame"])
def test_padding_never_masked_nor_scored_and_padded_content_is_inert(kind):
    m = small(kind)
    torch.manual_seed(1)
    x = torch.randn(3, 1024, 128)
    valid_frames = torch.tensor([1024, 512, 160])  # multiples of the patch length: tokens are all-data or all-pad
    pad = torch.arange(1024)[None] >= valid_frames[:, None]
    out = m(x, pad, rng_for([0, 1, 2]))
    tp = out["padding_mask"]
    n_valid = (~tp).sum(1)
    assert n_valid.tolist() == [512, 256, 80]  # patch: 8 x 64/32/10; frame: 1 x 512/256/80
    assert not (out["mask"] & tp).any()  # padded tokens are never masked
    expected = n_valid - torch.clamp(torch.floor(n_valid * (1 - 400 / 512) + 1e-6).long(), min=1)
    assert out["mask"].sum(1).tolist() == expected.tolist()  # exact count of the valid tokens
    assert out["target_valid"].sum(1).tolist() == expected.tolist()  # only masked valid tokens are scored
    # padded frames' content changes nothing: same masks, same predictions, same loss
    x2 = x.clone()
    x2[pad] = torch.randn_like(x2[pad]) * 100 + 7
    out2 = m(x2, pad, rng_for([0, 1, 2]))
    assert torch.equal(out2["mask"], out["mask"])
    v = out["target_valid"]
    assert torch.allclose(out2["nce_pred"][v], out["nce_pred"][v], atol=1e-5)
    assert torch.allclose(out2["pred"][v], out["pred"][v], atol=1e-5)
    for orientation in ("targets", "predictions"):
        assert torch.allclose(joint_loss(out2, orientation), joint_loss(out, orientation), atol=1e-5)
    # and the same holds for the features of the valid tokens
    f, f2 = m.extract_features(x, pad), m.extract_features(x2, pad)
    assert torch.allclose(f["x"][~tp], f2["x"][~tp], atol=1e-5) and torch.allclose(f["cls"], f2["cls"], atol=1e-5)


def test_mask_depends_on_clip_key_not_on_batch():
    m = small(PATCH)
    x = torch.randn(3, 1024, 128)
    a = m(x, None, rng_for([10, 11, 12]))["mask"]
    b = m(x[1:2], None, rng_for([11]))["mask"]
    assert torch.equal(a[1:2], b)
    c = m(x, None, rng_for([10, 11, 12], epoch=2))["mask"]
    assert not torch.equal(a, c)


# ------------------------------------------------------------------------------------------------- two passes
@pytest.mark.parametrize("kind", [PATCH, FRAME], ids=["patch", "frame"])
def test_two_passes_use_two_independent_masks(kind):
    one, two = small(kind, passes="one"), small(kind, passes="two")
    two.load_state_dict(one.state_dict())
    x = torch.randn(2, 1024, 128)
    o1 = one(x, None, rng_for([0, 1]))
    o2 = two(x, None, rng_for([0, 1]))
    t = o2["terms"]
    m1, m2 = t["nce"]["mask"], t["mse"]["mask"]
    assert m1.sum(1).tolist() == [400, 400] and m2.sum(1).tolist() == [400, 400]
    assert not torch.equal(m1, m2)
    overlap = (m1 & m2).sum(1).float() / 400
    assert (overlap < 0.95).all()  # independent draws, not the same mask
    # the first pass is the one-pass model's pass; top-level keys are pass 1
    assert torch.equal(o2["mask"], o1["mask"]) and torch.equal(m1, o1["mask"])
    assert torch.allclose(o2["nce_pred"], o1["nce_pred"]) and torch.allclose(t["nce"]["nce_pred"], o1["nce_pred"])
    # the second pass's targets are its own masked patches
    patches = two.tokenizer.patchify(x)
    assert torch.equal(t["mse"]["target"][0], patches[0, m2[0]])
    # reproducible: same keys -> same two masks
    again = two(x, None, rng_for([0, 1]))["terms"]
    assert torch.equal(again["mse"]["mask"], m2)
    # the joint loss takes InfoNCE from pass 1 and MSE from pass 2; every parameter gets a gradient
    two.train()
    loss = joint_loss(two(x, None, rng_for([0, 1])))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in two.parameters())


def test_criterion_uses_pass_one_for_nce_and_pass_two_for_mse():
    pytest.importorskip("fairseq")
    from maeast_fairseq.criterions.masked_recon_nce import MaskedReconNceConfig, MaskedReconNceCriterion

    m = small(PATCH, passes="two")
    x = torch.randn(2, 1024, 128)
    crit = MaskedReconNceCriterion(MaskedReconNceConfig(nce_orientation="predictions",
                                                        loss_normalization="per_process"), None)
    sample = {"net_input": {"fbank": x, "frame_padding": None, "mask_rng": rng_for([0, 1])}}
    loss, _, log = crit(m, sample)
    out = m(x, None, rng_for([0, 1]))
    nce, acc = info_nce(out["terms"]["nce"]["nce_pred"], out["terms"]["nce"]["target"], orientation="predictions")
    mse = masked_mse(out["terms"]["mse"]["pred"], out["terms"]["mse"]["target"])
    assert torch.allclose(loss, nce + 10 * mse)
    assert torch.allclose(log["acc"], acc) and int(log["masked_tokens"]) == 800


# ------------------------------------------------------------------------------------------------- features
def test_extract_features_other_lengths_crop_or_interpolate_positions():
    m = small(PATCH)
    table = m.positions.table.detach()  # (1, 2 + 512, D), freq-major grid 8 x 64
    grid = table[:, 2:].reshape(1, 8, 64, -1)
    # shorter input (300 frames -> 18 time patches), default 'start': the first 18 time columns of every freq row
    pos = m.position_table(18)
    assert torch.equal(pos[:, :2], table[:, :2])
    assert torch.equal(pos[:, 2:].reshape(1, 8, 18, -1), grid[:, :, :18])
    # 'center': SSAST fine-tuning's centre crop of the time axis
    mc = small(PATCH, position_crop="center")
    start = (64 - 18) // 2
    pos_c = mc.position_table(18)
    grid_c = mc.positions.table[:, 2:].reshape(1, 8, 64, -1)
    assert torch.equal(pos_c[:, 2:].reshape(1, 8, 18, -1), grid_c[:, :, start:start + 18])
    # the full grid is the table itself; a longer input (1600 frames -> 100 time patches) interpolates it
    assert m.position_table(64) is m.positions.table
    pos_long = m.position_table(100)
    assert pos_long.shape == (1, 2 + 800, table.shape[-1]) and torch.equal(pos_long[:, :2], table[:, :2])
    for model in (m, mc):
        for frames, n_time in [(300, 18), (1024, 64), (1600, 100)]:
            f = model.extract_features(torch.randn(2, frames, 128))
            assert f["x"].shape == (2, 8 * n_time, 32) and f["cls"].shape == (2, 32)
            assert len(f["hidden_states"]) == 3 and all(h.shape == f["x"].shape for h in f["hidden_states"])
            assert all(torch.isfinite(h).all() for h in f["hidden_states"])
    # the frame model too (1 x n_time grid), and its pretraining forward on a short input
    fm = small(FRAME)
    assert fm.extract_features(torch.randn(1, 200, 128))["x"].shape == (1, 100, 32)
    out = fm(torch.randn(1, 200, 128), None, rng_for([0]))
    assert out["mask"].sum().item() == 100 - 21  # floor(100 * 112/512) = 21 kept


@pytest.mark.parametrize("kind", [PATCH, FRAME], ids=["patch", "frame"])
def test_features_of_a_short_clip_do_not_depend_on_batch_padding(kind):
    """With position_crop='start' a 96-frame clip gets the same features alone and padded to 400 frames in a batch
    (its tokens keep their positions; padded tokens are not attended to)."""
    m = small(kind)
    clip = torch.randn(1, 96, 128)
    alone = m.extract_features(clip)
    batch = torch.cat([torch.nn.functional.pad(clip, (0, 0, 0, 304)), torch.randn(1, 400, 128)])
    pad = torch.zeros(2, 400, dtype=torch.bool)
    pad[0, 96:] = True
    padded = m.extract_features(batch, pad)
    n = alone["x"].shape[1]
    valid = ~padded["padding_mask"][0]
    assert int(valid.sum()) == n
    assert torch.allclose(padded["x"][0, valid], alone["x"][0], atol=1e-5)
    assert torch.allclose(padded["cls"][0], alone["cls"][0], atol=1e-5)


def test_cls_is_the_mean_of_the_extra_tokens_and_nokd_has_one():
    m = small(PATCH, num_extra_tokens=1)
    assert m.extra_tokens.shape == (1, 1, 32) and m.positions.table.shape == (1, 513, 32)
    f = m.extract_features(torch.randn(1, 1024, 128))
    assert f["cls"].shape == (1, 32)
    with pytest.raises(ValueError):
        small(PATCH, num_extra_tokens=0)
    with pytest.raises(ValueError):
        small(PATCH, passes="three")
    with pytest.raises(ValueError):
        small(PATCH, mask_type="chunk")
    with pytest.raises(ValueError):
        small(PATCH, position_crop="left")


# ------------------------------------------------------------------------------------------------- parameters
def test_parameter_count_at_base_settings():
    """Base (DeiT-B, 768 x 12, 2 extra tokens, 514 learned positions, both heads): 87,225,344 trainable parameters,
    -2.0 % from the README's "89M". SSAST's checkpoint also carries timm's two unused ImageNet heads
    (head, head_dist: 2 x Linear(768, 1000) = 1,538,000), which we do not build: with them, 88,763,344 (-0.3 %)."""
    m = Ssast(SsastConfig())
    count = {n: sum(p.numel() for p in mod.parameters()) for n, mod in m.named_children()}
    assert count == {"patch_embed": 197_376, "positions": 394_752, "encoder": 85_056_000,
                     "cpred": 787_456, "gpred": 787_456}
    total = sum(p.numel() for p in m.parameters() if p.requires_grad)
    assert total == sum(count.values()) + 768 + 2 * 768 == 87_225_344  # + mask_embed + CLS/DIST
    assert not [b for b in m.buffers()]  # no frozen tables: positions are learned
    assert abs(total / 89e6 - 1) <= 0.02
    from maeast_fairseq.cli.params import paper_parameter_count

    rules = list(paper_parameter_count(m).values())
    assert rules == [85_649_664, 87_225_344, 87_225_344 + 2 * (768 * 1000 + 1000)]
    assert abs(rules[-1] / 89e6 - 1) <= 0.003  # 88.76M: the README's 89M within 0.3 %


def test_core_imports_without_fairseq():
    code = ("import sys; import maeast_fairseq.core.ssast as s; s.Ssast(s.SsastConfig(embed_dim=8, ffn_dim=8, "
            "num_heads=2, encoder_layers=1)); assert not any(k.startswith('fairseq') for k in sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------------------------- fairseq CLI
@pytest.mark.slow
@pytest.mark.parametrize("config", ["ssast_patch_tiny", "ssast_frame_tiny"])
def test_tiny_config_overfits_through_hydra_train(config, overfit_set, tmp_path, monkeypatch):
    """~9 s each on 2 CPU cores. One intra-op thread: with two OpenMP threads on two shared cores a busy machine
    slows these runs 10-20x (threads spin-waiting for each other), while one thread loses little on a quiet one."""
    pytest.importorskip("fairseq")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    from conftest import REPO, console

    ckpt = tmp_path / "ckpt"
    log = run([console("fairseq-hydra-train"), "--config-dir", os.path.join(REPO, "examples/pretrain"),
               "--config-name", config, f"task.data={overfit_set / 'data'}", f"checkpoint.save_dir={ckpt}",
               f"hydra.run.dir={tmp_path / 'hydra'}", "common.log_interval=1"], cwd=tmp_path)
    assert_overfits(log)
    assert (ckpt / "checkpoint_last.pt").is_file() and (ckpt / "checkpoint_best.pt").is_file()
    assert "valid on 'valid' subset" in log and "best_acc" in log
    # the checkpoint loads into the pure-torch core with its front end, and embeds raw audio
    from maeast_fairseq.checkpoint import load_pretrained

    pre = load_pretrained(str(ckpt / "checkpoint_last.pt"))
    assert type(pre.model) is Ssast and pre.frontend.window_type == "hanning" and pre.model.cfg.target_frames == 256
    out = pre.embed([torch.randn(16000), torch.randn(24000)])
    assert out["clip"].shape == (2, 64) and out["cls"].shape == (2, 64) and torch.isfinite(out["x"]).all()
