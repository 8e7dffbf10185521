"""Every config in examples/pretrain composes and builds; every tiny config trains through fairseq-hydra-train."""
import glob
import os

import pytest
from conftest import REPO, console
from test_pretrain_cli import losses, overfit_set, run  # noqa: F401  (fixture)

CONFIGS = sorted(glob.glob(os.path.join(REPO, "examples", "pretrain", "*.yaml")))
TINY = [c for c in CONFIGS if c.endswith("_tiny.yaml")]


def test_every_config_has_a_tiny_twin():
    full = {os.path.basename(c)[:-5] for c in CONFIGS if c not in TINY}
    assert full and {f"{n}_tiny" for n in full} <= {os.path.basename(c)[:-5] for c in TINY}


@pytest.mark.parametrize("path", [c for c in CONFIGS if c not in TINY], ids=os.path.basename)
def test_paper_config_builds_the_model(path):
    """The model section of each paper config is a valid config of its core model (parameter counts print)."""
    from maeast_fairseq.cli.params import report

    counts = report(path)
    assert counts["trainable"] > 20_000_000


@pytest.mark.slow
@pytest.mark.parametrize("path", TINY, ids=os.path.basename)
def test_tiny_config_trains_with_hydra(path, overfit_set, tmp_path):  # noqa: F811
    name = os.path.basename(path)[:-5]
    log = run([console("fairseq-hydra-train"), "--config-dir", os.path.dirname(path), "--config-name", name,
               f"task.data={overfit_set / 'data'}", f"checkpoint.save_dir={tmp_path / 'ckpt'}",
               f"hydra.run.dir={tmp_path / 'hydra'}", "optimization.max_update=3", "common.log_interval=1"],
              cwd=tmp_path)
    assert [u for u, _ in losses(log)] == [1, 2, 3]
    assert (tmp_path / "ckpt" / "checkpoint_last.pt").is_file()
