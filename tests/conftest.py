import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """24 synthetic clips (1.5-3 s, mixed rates / channels) + train/valid manifests (fixed: seed 0)."""
    from maeast_fairseq.data.synthetic import make_corpus

    root = tmp_path_factory.mktemp("corpus")
    audio = root / "audio"
    make_corpus(str(audio), n_clips=24, seed=0)
    data = root / "data"
    subprocess.run(
        [sys.executable, "-m", "manifests", str(audio), "--dest", str(data), "--ext", "wav",
         "--valid-percent", "0.25", "--seed", "1", "--labels-from", "parent"],
        check=True, capture_output=True, text=True,
    )
    return data


def fairseq_env():
    env = dict(os.environ)
    env["MAEAST_USER_DIR"] = os.path.join(REPO, "maeast_fairseq")
    env.setdefault("OMP_NUM_THREADS", "1")  # tiny models: threads only add contention on 2 cores
    env["HYDRA_FULL_ERROR"] = "1"
    return env


def run_cli(cmd, cwd, env=None, timeout=600) -> str:
    """Run a command (a fairseq / torchrun CLI) and return its stdout + stderr; the test fails with the output's
    tail when it exits non-zero. ``env`` defaults to :func:`fairseq_env`."""
    proc = subprocess.run(cmd, cwd=cwd, env=fairseq_env() if env is None else env, capture_output=True, text=True,
                          timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out


def console(name: str) -> str:
    """Path of a console script installed next to this interpreter."""
    path = os.path.join(os.path.dirname(sys.executable), name)
    if not os.path.exists(path):
        pytest.fail(f"{name} is not installed next to {sys.executable}; run `make test` (it installs the stack)")
    return path


# Python source to put first in a `python -c` program: from then on, importing fairseq raises ImportError.
BLOCK_FAIRSEQ = (
    "import sys\n"
    "class _BlockFairseq:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name.split('.')[0] == 'fairseq':\n"
    "            raise ImportError('fairseq is blocked in this test')\n"
    "sys.meta_path.insert(0, _BlockFairseq())\n"
)
