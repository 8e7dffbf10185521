"""Reading official files safely and strictly: tampered files, other formats, pickled code, older fairseq layouts."""
import argparse
import enum
import os
import sys
import types

import numpy as np
import pytest
import torch

from maeast_fairseq.checkpoint import CheckpointError, load_pretrained, read_checkpoint
from maeast_fairseq.official import OfficialFormatError, detect_family, read_official
from maeast_fairseq.official.reader import Inert, fairseq_config, plain, read_raw

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "official")
SSAST_PATCH = os.path.join(FIXTURES, "ssast_patch_tiny2.pth")
MAE_AST_PATCH = os.path.join(FIXTURES, "maeast_chunk_patch_2L.pt")


def _ssast_state():
    return torch.load(SSAST_PATCH, map_location="cpu", weights_only=True)


def _mae_ast_ckpt():
    return torch.load(MAE_AST_PATCH, map_location="cpu", weights_only=True)


def _save(obj, tmp_path, name="tampered.pt"):
    path = str(tmp_path / name)
    torch.save(obj, path)
    return path


# --------------------------------------------------------------------------------------------- detection
def test_families_are_detected_from_contents_not_names(tmp_path):
    # the file name says nothing: a MAE-AST file under an SSAST-like name is still MAE-AST
    path = _save(_mae_ast_ckpt(), tmp_path, "SSAST-Base-Patch-400.pth")
    assert read_official(path).family == "mae_ast"
    path = _save(_ssast_state(), tmp_path, "chunk_patch_75_12LayerEncoder.pt")
    assert read_official(path).family == "ssast"


def test_our_own_checkpoints_are_not_taken_for_official_ones(tmp_path):
    from maeast_fairseq.core.mae_ast import MaeAst, MaeAstConfig

    ours = MaeAst(MaeAstConfig(encoder_layers=1, embed_dim=32, num_heads=2, ffn_dim=64, decoder_layers=1,
                               decoder_embed_dim=32, decoder_ffn_dim=64, decoder_heads=2))
    state = {"cfg": {"model": {"_name": "mae_ast"}}, "model": ours.state_dict()}
    assert detect_family(state) is None  # same registered name as the official model, other keys


# ------------------------------------------------------------------------------------------- tampered files
@pytest.mark.parametrize("family", ["ssast", "mae_ast"])
def test_a_removed_key_is_named(family, tmp_path):
    if family == "ssast":
        state, key, named = _ssast_state(), "module.v.blocks.1.attn.proj.weight", "v.blocks.1.attn.proj.weight"
        del state[key]
    else:
        state, named = _mae_ast_ckpt(), "encoder.layers.1.self_attn.k_proj.weight"
        del state["model"][named]
    path = _save(state, tmp_path)
    with pytest.raises(OfficialFormatError, match="missing") as err:
        read_official(path)
    assert named in str(err.value) and path in str(err.value)
    with pytest.raises(CheckpointError, match=named.replace(".", r"\.")):  # the same through load_pretrained
        load_pretrained(path)


@pytest.mark.parametrize("family", ["ssast", "mae_ast"])
def test_a_renamed_key_is_named(family, tmp_path):
    if family == "ssast":
        state = _ssast_state()
        state["module.cpredlayer.9.weight"] = state.pop("module.cpredlayer.0.weight")
        old, new = "cpredlayer.0.weight", "cpredlayer.9.weight"
    else:
        state = _mae_ast_ckpt()
        state["model"]["decoder.layers.0.fc9.bias"] = state["model"].pop("decoder.layers.0.fc1.bias")
        old, new = "decoder.layers.0.fc1.bias", "decoder.layers.0.fc9.bias"
    path = _save(state, tmp_path)
    with pytest.raises(OfficialFormatError) as err:
        read_official(path)
    msg = str(err.value)
    assert old in msg and new in msg and "does not know" in msg


@pytest.mark.parametrize("family", ["ssast", "mae_ast"])
def test_a_tensor_of_another_shape_is_named(family, tmp_path):
    if family == "ssast":
        state, key = _ssast_state(), "module.v.blocks.1.mlp.fc2.weight"
        state[key] = torch.zeros(192, 700)
        named = "v.blocks.1.mlp.fc2.weight"
    else:
        state, named = _mae_ast_ckpt(), "encoder.layers.1.self_attn.v_proj.weight"
        state["model"][named] = torch.zeros(64, 60)
    path = _save(state, tmp_path)
    with pytest.raises(OfficialFormatError, match="shape") as err:
        read_official(path)
    assert named in str(err.value)


def test_files_of_other_formats_say_what_they_hold(tmp_path):
    path = _save({"weights": torch.zeros(3), "step": 7}, tmp_path, "other.pt")
    with pytest.raises(OfficialFormatError, match="not a known format") as err:
        read_official(path)
    assert "'weights'" in str(err.value) and "'step'" in str(err.value)
    with pytest.raises(CheckpointError, match="not a known format"):
        load_pretrained(path)
    # a fairseq file of another model: its name and keys are reported
    path = _save({"cfg": {"model": {"_name": "wav2vec2"}}, "model": {"feature_extractor.conv.0.weight": torch.zeros(2)},
                  "args": None}, tmp_path, "w2v.pt")
    with pytest.raises(OfficialFormatError, match="not a known format") as err:
        read_official(path)
    assert "'wav2vec2'" in str(err.value) and "feature_extractor.conv.0.weight" in str(err.value)
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    with pytest.raises(OfficialFormatError, match="not a known format"):
        read_official(str(text))
    with pytest.raises(CheckpointError, match="not a known format"):
        read_checkpoint(str(text))


# ----------------------------------------------------------------------------------------------- pickled code
class _CreatesFileWhenUnpickled:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_pickle_that_would_run_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "side_effect.txt"
    state = _mae_ast_ckpt()
    state["extra_state"] = {"payload": _CreatesFileWhenUnpickled(str(marker))}
    path = _save(state, tmp_path, "evil.pt")
    with pytest.raises(OfficialFormatError, match="refusing to unpickle") as err:
        read_official(path)
    assert "open" in str(err.value)
    with pytest.raises(CheckpointError):
        load_pretrained(path)
    assert not marker.exists()


def test_allowed_foreign_names_become_inert_and_never_run(tmp_path, monkeypatch):
    """Even a function under an admitted name (here a fake ``fairseq`` module) is replaced, never called."""
    marker = tmp_path / "side_effect.txt"
    fake = types.ModuleType("fairseq.fake_meters")

    def touch(path):  # what a malicious file would want to run
        open(path, "w").close()

    touch.__module__, touch.__qualname__ = "fairseq.fake_meters", "touch"
    fake.touch = touch

    class Payload:
        def __reduce__(self):
            return (touch, (str(marker),))

    monkeypatch.setitem(sys.modules, "fairseq.fake_meters", fake)
    state = _mae_ast_ckpt()
    state["extra_state"] = {"payload": Payload()}
    path = _save(state, tmp_path, "meters.pt")
    raw = read_raw(path)
    assert isinstance(raw["extra_state"]["payload"], Inert) and raw["extra_state"]["payload"].args == (str(marker),)
    assert read_official(path).family == "mae_ast"
    assert not marker.exists()


# --------------------------------------------------------------------------------- older fairseq file layouts
class _Color(enum.Enum):
    RED = "red"


def test_dictconfig_namespace_meters_numpy_scalars_and_enums_read_as_plain_values(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    meters = types.ModuleType("fairseq.meters")

    class AverageMeter:  # what fairseq < 0.10 pickles as the meter object itself
        def __init__(self):
            self.val, self.sum, self.count = 1.5, 3.0, 2

    AverageMeter.__module__, AverageMeter.__qualname__ = "fairseq.meters", "AverageMeter"
    meters.AverageMeter = AverageMeter
    monkeypatch.setitem(sys.modules, "fairseq.meters", meters)
    monkeypatch.setattr(_Color, "__module__", "fairseq.dataclass.fake_enums", raising=False)
    enums = types.ModuleType("fairseq.dataclass.fake_enums")
    enums._Color = _Color
    monkeypatch.setitem(sys.modules, "fairseq.dataclass.fake_enums", enums)

    original = _mae_ast_ckpt()
    reference = read_official(MAE_AST_PATCH)
    # (1) cfg as an OmegaConf DictConfig (older fairseq), meters and numpy scalars in extra_state, an enum
    state = dict(original)
    state["cfg"] = OmegaConf.create(original["cfg"])
    state["extra_state"] = {"meters": {"loss": AverageMeter()}, "best": np.float64(2.5), "n": np.int64(7),
                            "color": _Color.RED}
    path = _save(state, tmp_path, "dictconfig.pt")
    raw = read_raw(path)
    assert plain(raw["extra_state"]["best"]) == 2.5 and plain(raw["extra_state"]["n"]) == 7
    assert plain(raw["extra_state"]["color"]) == "red"
    assert isinstance(raw["extra_state"]["meters"]["loss"], Inert)
    assert fairseq_config(raw)["model"]["ast_kernel_size_time"] == 16
    conv = read_official(path)
    assert conv.model_cfg == reference.model_cfg
    assert all(torch.equal(conv.state[k], reference.state[k]) for k in reference.state)
    # (2) only ``args``, an argparse Namespace (pre-hydra fairseq): the same flat fields for model and task
    flat = dict(original["cfg"]["task"], **original["cfg"]["model"])
    flat.update(arch="mae_ast", task="mae_ast_pretraining")
    state = dict(original, cfg=None, args=argparse.Namespace(**flat))
    conv = read_official(_save(state, tmp_path, "args.pt"))
    assert conv.model_cfg == reference.model_cfg


# ---------------------------------------------------------------------------- fairseq model-name collisions
def test_a_foreign_model_registered_under_our_name_fails_loudly():
    """fairseq keeps the first class registered under a name: the official MAE-AST plugin's ``mae_ast`` loaded
    first must not silently replace ours."""
    import subprocess

    pytest.importorskip("fairseq")
    code = ("from fairseq.models import BaseFairseqModel, register_model\n"
            "@register_model('mae_ast')\n"
            "class OfficialMaeAst(BaseFairseqModel):\n"
            "    pass\n"
            "import maeast_fairseq.models.mae_ast\n")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo, timeout=300)
    assert proc.returncode != 0
    assert "ForeignModelRegistrationError" in proc.stderr and "OfficialMaeAst" in proc.stderr, proc.stderr[-2000:]
