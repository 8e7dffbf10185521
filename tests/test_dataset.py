"""The fairseq dataset: front-end policies, and clear errors naming the file and line for bad input."""
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

pytest.importorskip("fairseq")

from conftest import BLOCK_FAIRSEQ, REPO  # noqa: E402

from maeast_fairseq.audio import AudioError  # noqa: E402
from maeast_fairseq.data.fbank_dataset import FbankDataset  # noqa: E402
from maeast_fairseq.data.manifest import ManifestError  # noqa: E402
from maeast_fairseq.frontend import FrontendConfig  # noqa: E402


def write(tmp_path, lines):
    path = tmp_path / "train.tsv"
    path.write_text("\n".join([str(tmp_path)] + lines) + "\n")
    return str(path)


def wav(tmp_path, name, seconds, sr=16000):
    x = (0.1 * np.random.default_rng(0).standard_normal(int(seconds * sr))).astype(np.float32)
    sf.write(str(tmp_path / name), x, sr)
    return f"{name}\t{len(x)}"


def test_line_without_tab_names_file_and_line(tmp_path):
    path = write(tmp_path, [wav(tmp_path, "a.wav", 1), "b.wav 16000"])
    with pytest.raises(ManifestError, match=r"train\.tsv.*line 3.*tab"):
        FbankDataset(path, FrontendConfig())


def test_missing_and_unreadable_files_name_manifest_line_and_path(tmp_path):
    (tmp_path / "junk.wav").write_bytes(b"this is not audio at all" * 100)
    path = write(tmp_path, [wav(tmp_path, "a.wav", 1), "missing.wav\t16000", "junk.wav\t16000"])
    ds = FbankDataset(path, FrontendConfig())
    assert ds[0]["fbank"].shape == (98, 128)
    with pytest.raises(AudioError, match=r"train\.tsv:3:.*missing\.wav"):
        ds[1]
    with pytest.raises(AudioError, match=r"train\.tsv:4:.*junk\.wav"):
        ds[2]


def test_clip_shorter_than_one_patch(tmp_path):
    path = write(tmp_path, [wav(tmp_path, "a.wav", 1), wav(tmp_path, "tiny.wav", 0.1)])
    with pytest.raises(ValueError, match=r"train\.tsv:3: .*tiny\.wav.*fewer than one patch"):
        FbankDataset(path, FrontendConfig(), min_frames=16)
    # the length filter drops it instead, and says how many it dropped
    ds = FbankDataset(path, FrontendConfig(), min_frames=16, min_sample_size=8000)
    assert len(ds) == 1


def test_fixed_policy_pads_in_logmel_space_before_normalising(tmp_path):
    path = write(tmp_path, [wav(tmp_path, "a.wav", 1), wav(tmp_path, "b.wav", 12)])
    cfg = FrontendConfig(length_policy="fixed", target_frames=1024, norm="dataset", norm_mean=-4.0, norm_std=5.0)
    ds = FbankDataset(path, cfg, shuffle=False)
    batch = ds.collater([ds[0], ds[1]])
    x, pad = batch["net_input"]["fbank"], batch["net_input"]["frame_padding"]
    assert x.shape == (2, 1024, 128)
    assert pad[0].sum() == 1024 - 98 and not pad[1].any()  # 12 s clip truncated to 1024 frames
    torch.testing.assert_close(x[0, 98:], torch.full((1024 - 98, 128), 4.0 / 10.0))  # (0 - mean) / (2 std)


def test_crop_to_shortest_is_deterministic_per_epoch(tmp_path):
    path = write(tmp_path, [wav(tmp_path, "a.wav", 2), wav(tmp_path, "b.wav", 3)])
    cfg = FrontendConfig(length_policy="crop_to_shortest", norm="none")
    ds = FbankDataset(path, cfg, shuffle=False, seed=5)
    a = ds.collater([ds[0], ds[1]])["net_input"]["fbank"]
    assert a.shape == (2, 198, 128)
    assert torch.equal(a, ds.collater([ds[0], ds[1]])["net_input"]["fbank"])
    ds.set_epoch(2)
    assert not torch.equal(a[1], ds.collater([ds[0], ds[1]])["net_input"]["fbank"][1])


def test_core_imports_without_fairseq():
    """The core (features, masking, model modules, losses, checkpoint loading) never imports fairseq."""
    code = BLOCK_FAIRSEQ + (
        "import torch\n"
        "import maeast_fairseq, maeast_fairseq.audio, maeast_fairseq.fbank, maeast_fairseq.frontend\n"
        "import maeast_fairseq.checkpoint, maeast_fairseq.data.manifest, maeast_fairseq.data.synthetic\n"
        "from maeast_fairseq.core import blocks, losses, masking, positions, rng, tokenizer, norm, mae_ast, ssast, eat\n"
        "m = mae_ast.MaeAst(mae_ast.MaeAstConfig(embed_dim=32, ffn_dim=64, num_heads=4, encoder_layers=1,\n"
        "    decoder_layers=1, decoder_embed_dim=32, decoder_ffn_dim=64, decoder_heads=4))\n"
        "out = m(torch.randn(2, 100, 128))\n"
        "assert 'fairseq' not in sys.modules\n"
        "print('ok', tuple(out['target'].shape))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok")
