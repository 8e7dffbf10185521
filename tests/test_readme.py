"""The README is a contract: every command block it shows runs as written.

``README.md``'s fenced ```bash / ```sh / ```console / ```python blocks are extracted in order and run, one after the
other, in ONE working folder laid out like the repository root (``maeast_fairseq``, ``examples`` and ``.venv`` linked
in) that also holds a test-size ``make demo`` output (``runs/demo``: the demo's own code, recipe ``test``, on fake
Hydrogen kits and synthetic pretraining audio) and the small official-format checkpoints of
``tests/fixtures/official`` under the release names the README uses. Later blocks use what earlier ones wrote
(``data/``, ``ckpt/``, ``outputs/tiny``), as a reader following the README would.

What the test changes is declared here, and nowhere else:

* :data:`SUBSTITUTIONS`: exact README text -> the text run, each with its reason (placeholders such as
  ``/path/to/audio`` and training lengths cut to test size). Every entry must match README text, so a stale entry
  fails the fast test.
* :data:`PROVIDED`: files a README reader brings themselves (the released checkpoints, ``my_audio/``).
* a block that cannot run in a test carries ``<!-- readme-test: skip (REASON) -->`` on the line before it in the
  README: skips are visible there and counted here.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import List, Optional

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")
OFFICIAL = os.path.join(REPO, "tests", "fixtures", "official")
RUN_LANGS = ("bash", "sh", "console", "python")
SKIP_MARK = re.compile(r"^<!--\s*readme-test:\s*skip\s*\((?P<reason>.+)\)\s*-->$")
BLOCK_TIMEOUT_S = 300

#: (README text, text run instead, reason). Applied to every runnable block, in this order, exact string matches.
SUBSTITUTIONS = [
    ("make test                                   # or: tools/bootstrap.sh",
     ": make test  # (readme-test: the stack is installed; this test is part of make test)",
     "the suite itself runs this test: the set-up is already done"),
    ("/path/to/audio", "$README_TEST_AUDIO",
     "placeholder: 16 synthetic clips (1.5-3 s; 8 / 16 / 22.05 kHz; mono and stereo)"),
    ("/path/to/kits", "$README_TEST_KITS",
     "placeholder: the test-size demo's drum clips (<kit>/<n>_<class>.wav, 6 fake Hydrogen kits)"),
    ("hydra.run.dir=$PWD/outputs/tiny\n", "hydra.run.dir=$PWD/outputs/tiny optimization.max_update=2\n",
     "test size: 2 updates instead of the tiny yaml's 150"),
    ("--max-update 400000 --max-tokens 1400000 --save-dir",
     "--max-update 2 --max-tokens 64000 --encoder-layers 1 --decoder-layers 1 --embed-dim 64 --ffn-dim 128 "
     "--num-heads 4 --decoder-embed-dim 64 --decoder-ffn-dim 128 --decoder-heads 4 --save-dir",
     "test size: the base MAE-AST frame model narrowed to 64 x 1 layer, 2 updates of 4 s of audio"),
    ("hydra.run.dir=$PWD/runs/demo/finetune/hydra", "hydra.run.dir=$PWD/runs/demo/finetune/hydra "
     "optimization.max_update=4", "test size: 4 updates instead of small_data_tiny's 60"),
    ("--seeds 0,1,2 --json runs/demo/eval.json", "--seeds 0,1,2 --json runs/demo/eval.json --steps 20 --eval-every 10",
     "test size: 20 head updates instead of 3000"),
    ("--data runs/demo/data/downstream --test test ", "--data runs/demo/data/downstream --test test --steps 20 "
     "--eval-every 10 ", "test size: 20 head updates instead of 3000"),
    ("--data $PWD/data --test test --json eval.json",
     "--data $PWD/runs/demo/data/downstream --test test --json eval.json --steps 20 --eval-every 10",
     "'your labelled data' (the Quickstart's data/ has no labels): the demo's labelled split; 20 head updates"),
    ("--config-name small_data task.data=$PWD/data \\",
     "--config-name small_data task.data=$PWD/runs/demo/data/downstream optimization.max_update=2 \\",
     "'your labelled data': the demo's labelled split; test size: 2 updates instead of 3000"),
    ("--config-name mae_ast_patch task.data=$PWD/data \\",
     "--config-name mae_ast_patch_tiny task.data=$PWD/data optimization.max_update=2 \\",
     "the stand-in release is 2 layers x 64 wide (tests/fixtures/official): the release config's tiny twin; "
     "2 updates"),
]

#: files the README reader brings: README name -> (source, reason)
PROVIDED = {
    "SSAST-Base-Patch-400.pth": (os.path.join(OFFICIAL, "ssast_patch_tiny2.pth"),
                                 "saved by the official SSAST code, DeiT-tiny cut to 2 blocks"),
    "chunk_patch_75_12LayerEncoder.pt": (os.path.join(OFFICIAL, "maeast_chunk_patch_2L.pt"),
                                         "saved by the official MAE-AST code, 2 layers x 64"),
}


@dataclass
class Block:
    line: int               # 1-based line of the opening fence in README.md
    lang: str
    text: str
    skip: Optional[str]     # the reason of a <!-- readme-test: skip (...) --> marker, or None


def readme_blocks(path: str = README) -> List[Block]:
    """Every fenced block of a runnable language, in order, with its skip marker (the last non-blank line before
    the fence)."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    blocks, i = [], 0
    while i < len(lines):
        m = re.match(r"^```(\S*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m.group(1).lower()
        j = i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        if j == len(lines):
            raise AssertionError(f"README.md:{start + 1}: a ``` fence that is never closed")
        if lang in RUN_LANGS:
            k = start - 1
            while k >= 0 and not lines[k].strip():
                k -= 1
            mark = SKIP_MARK.match(lines[k].strip()) if k >= 0 else None
            blocks.append(Block(start + 1, lang, "\n".join(lines[start + 1:j]) + "\n",
                                mark.group("reason").strip() if mark else None))
        i = j + 1
    return blocks


def substitute(text: str) -> str:
    for old, new, _ in SUBSTITUTIONS:
        text = text.replace(old, new)
    return text


def console_commands(text: str) -> str:
    """A ```console block: the lines after a ``$ `` prompt (the rest is shown output)."""
    return "\n".join(line[2:] for line in text.split("\n") if line.startswith("$ ")) + "\n"


def test_readme_blocks_and_substitution_table_are_consistent():
    """Fast: the README parses, every skip marker has a reason and sits before a runnable block, every
    substitution and provided file matches README text (a stale entry is an error), no runnable block is empty."""
    blocks = readme_blocks()
    assert len(blocks) >= 10
    text = "\n".join(b.text for b in blocks if not b.skip)
    for old, _, reason in SUBSTITUTIONS:
        assert old in text, f"substitution {old!r} ({reason}) matches no runnable README block: remove or update it"
        assert reason.strip()
    for name in PROVIDED:
        assert name in text, f"provided file {name} is not used by any runnable README block"
        assert os.path.isfile(PROVIDED[name][0])
    with open(README, encoding="utf-8") as f:
        lines = f.read().split("\n")
    fences = {b.line for b in blocks}
    for n, line in enumerate(lines, 1):
        if "readme-test" in line:
            assert SKIP_MARK.match(line.strip()), f"README.md:{n}: malformed marker {line!r}: " \
                                                  "<!-- readme-test: skip (REASON) -->"
            nxt = next(k for k in range(n, len(lines)) if lines[k].strip())
            assert nxt + 1 in fences, f"README.md:{n}: a skip marker not followed by a runnable block"
    for b in blocks:
        body = console_commands(b.text) if b.lang == "console" else b.text
        assert body.strip(), f"README.md:{b.line}: an empty ```{b.lang} block"


# ----------------------------------------------------------------------------------------------------------------
# The prepared working folder
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def readme_workdir(tmp_path_factory):
    """A folder laid out like the repository root after ``make demo`` (at test size), with the reader's files."""
    pytest.importorskip("fairseq")
    pytest.importorskip("matplotlib")
    from test_demo import _fake_kits

    from maeast_fairseq.cli import demo
    from maeast_fairseq.data.synthetic import make_corpus
    from maeast_fairseq.demo import fetch

    base = tmp_path_factory.mktemp("readme")
    work = base / "repo"
    work.mkdir()
    for name in ("maeast_fairseq", "examples"):
        os.symlink(os.path.join(REPO, name), work / name)
    venv = os.path.dirname(os.path.dirname(sys.executable))
    if os.path.isfile(os.path.join(venv, "bin", "activate")):
        os.symlink(venv, work / ".venv")
    else:  # an interpreter outside a virtualenv: `source .venv/bin/activate` only puts it first on PATH
        (work / ".venv" / "bin").mkdir(parents=True)
        (work / ".venv" / "bin" / "activate").write_text(f'export PATH="{os.path.dirname(sys.executable)}:$PATH"\n')
    for name, (src, _) in PROVIDED.items():
        shutil.copy(src, work / name)
    make_corpus(str(work / "my_audio"), 3, seed=5, rates=(16000, 44100))

    audio = base / "audio"
    make_corpus(str(audio), 16, seed=0)
    # the demo at test size: fake Hydrogen kits for the drum task (6 kits, 3 kit-group folds), MAE-AST only
    _fake_kits(base / "kits", ["KitA", "KitA2", "KitB", "KitB2", "KitC", "KitC2"])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fetch, "fetch_packages", lambda names, cache: {n: str(base / "kits") for n in names})
        mp.setattr(fetch, "KIT_FOLDS", (("a", ("KitA", "KitA2")), ("b", ("KitB", "KitB2")), ("c", ())))
        mp.setenv("OMP_NUM_THREADS", "1")
        pretrain_audio = base / "pretrain_audio"
        make_corpus(str(pretrain_audio), 16, seed=1, seconds=(1.0, 2.0))
        rc = demo.main(["--recipe", "test", "--out", str(work / "runs" / "demo"), "--audio-dir", str(pretrain_audio),
                        "--cache", str(base / "cache"), "--methods", "mae_ast"])
    assert rc == 0
    kits = base / "cache" / "prepared" / "drums" / "audio"
    assert kits.is_dir()

    env = {k: v for k, v in os.environ.items() if k not in ("MAEAST_USER_DIR", "VIRTUAL_ENV", "PWD")}
    env.update(PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""), OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1", MPLBACKEND="Agg", README_TEST_AUDIO=str(audio), README_TEST_KITS=str(kits),
               PYTHONUNBUFFERED="1")
    return {"dir": str(work), "env": env}


def _run_block(block: Block, work: str, env: dict) -> subprocess.CompletedProcess:
    text = substitute(block.text)
    if block.lang == "python":
        script = os.path.join(work, f".readme_block_{block.line}.py")
        with open(script, "w") as f:
            f.write(text)
        cmd = [sys.executable, script]
    else:
        body = console_commands(text) if block.lang == "console" else text
        cmd = ["bash", "-c", "set -eo pipefail\n" + body]
    return subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)


@pytest.mark.slow  # every README command: fairseq-hydra-train, fairseq-train, maeast-* tools (about 3-4 min)
def test_every_readme_command_block_runs_as_written(readme_workdir, capsys):
    work, env = readme_workdir["dir"], readme_workdir["env"]
    ran, skipped = [], []
    for block in readme_blocks():
        if block.skip:
            skipped.append(f"README.md:{block.line} ({block.skip})")
            continue
        try:
            proc = _run_block(block, work, env)
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"README.md:{block.line}: the ```{block.lang} block ran past {BLOCK_TIMEOUT_S} s:\n"
                        f"{substitute(block.text)}\n--- output ---\n{(exc.stdout or '')[-3000:]}")
        if proc.returncode != 0:
            pytest.fail(f"README.md:{block.line}: the ```{block.lang} block failed (exit {proc.returncode}); as run "
                        f"(after the substitutions of tests/test_readme.py):\n{substitute(block.text)}\n"
                        f"--- output (tail) ---\n{(proc.stdout + proc.stderr)[-5000:]}")
        ran.append(block.line)
    summary = f"README command blocks: {len(ran)} ran, {len(skipped)} skipped: " + "; ".join(skipped)
    with capsys.disabled():  # shown in make test's output, not only with -s
        print("\n" + summary)
    assert ran, "no README block ran"
    # what the Downstream section promises after `make demo`: the first fold of the kit-group cross-validation as
    # train / valid / test (test: fold a = KitA + KitA2, valid: fold b, train: the rest), no kit in two splits
    from maeast_fairseq.data.manifest import read_manifest
    data = os.path.join(work, "runs", "demo", "data", "downstream")
    kits = {split: {e.rel.split("/")[0] for e in read_manifest(os.path.join(data, f"{split}.tsv"))[1]}
            for split in ("train", "valid", "test", "all")}
    assert (kits["test"], kits["valid"], kits["train"]) == ({"KitA", "KitA2"}, {"KitB", "KitB2"}, {"KitC", "KitC2"})
    assert kits["train"] | kits["valid"] | kits["test"] == kits["all"]
    down = os.path.join(work, "runs", "demo")
    for path in ("emb.npz", "eval.json", "finetune/checkpoint_best.pt", "finetune/test/predictions.csv",
                 "finetune/test/report.json", "finetune/test/confusion.png"):
        assert os.path.isfile(os.path.join(down, path)), path
