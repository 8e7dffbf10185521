"""Reliability of training through fairseq (issue 7, parts 2 and 3).

* kill -9 of a pretraining run in the middle of an epoch, at a random update once a checkpoint exists, then the same
  command again: it resumes from the last (mid-epoch) checkpoint and continues *bit for bit* as an uninterrupted run with the same seed (logged losses equal as printed,
  final weights and optimizer state ``torch.equal``). Exact, because a resumed run recomputes the same float32 ops in
  the same order: the masks are a function of (seed, epoch, clip id), fairseq reseeds the global RNG with
  ``seed + num_updates`` before every update, the data order is a function of (seed, epoch), and the checkpoint holds
  the exact weights, Adam moments, BatchNorm statistics, LR-scheduler and iterator state.
* checkpoints are never half-written: processes killed at random moments while they run fairseq's own
  ``save_checkpoint`` leave every ``checkpoint*.pt`` loadable.
* 2 processes (torchrun, gloo, ``OMP_NUM_THREADS=1`` per rank) with half the batch each give the loss curve of one
  process with the whole batch, and a 2-process run resumes (without ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``) onto the
  same curve. Tolerance: one unit of the last logged digit (fairseq logs ``round(x, 4)``). Not exact, because a
  split batch sums its float32 gradients in another order (two half-batch sums, then gloo's all-reduce): rounding
  differences of ~1e-7 relative, far under the logged precision over these 30 updates (observed: loss / nce / mse
  identical as printed; acc, a multiple of 1/800, off by one unit where it sits on a rounding tie; final weights within
  1e-6, except the attention key biases, whose gradient is ~0 in exact arithmetic and which Adam's normalisation turns
  into 2e-5 of drift — why the weights are not compared here).

* 1 vs 2 vs 4 processes, for each method, on clips of different lengths (padding): the same loss curve, because the
  loss is a sum over masked patches divided by their global count (decision D24), MAE-AST's input BatchNorm takes
  the global batch's moments (D25) and EAT's utterance term the global masked count (D26, an option). What still
  depends on the split (``crop_to_shortest``, dropout / layerdrop / EAT's mask noise drawn by batch position, the
  grouping of clips into updates when an epoch has several) is in the README's table ("Two CPU processes").
* SSAST's plateau scheduler steps at every validation, on the checkpoint metric, and resumes its patience count.
"""
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import types

import pytest
import torch
from conftest import REPO, console, fairseq_env, run_cli

pytest.importorskip("fairseq")

INNER = re.compile(r"\[train_inner\]\[INFO\] - epoch \d+:\s+\d+ / \d+ (.*)$", re.M)
LOADED = re.compile(r"Loaded checkpoint \S*checkpoint_last\.pt \(epoch (\d+) @ (\d+) updates\)")
LOGGED = ("loss", "nce", "mse", "acc")


def ddp_args(processes):
    """fairseq-hydra-train overrides for ``torchrun --nproc_per_node=<processes>`` on CPU (gloo): the README's."""
    return [f"distributed_training.distributed_world_size={processes}",
            "distributed_training.distributed_backend=gloo", "distributed_training.distributed_init_method=env://",
            "distributed_training.distributed_no_spawn=true", "distributed_training.distributed_rank=${oc.env:RANK}",
            "distributed_training.device_id=${oc.env:LOCAL_RANK}"]


def torchrun(processes):
    return [os.path.join(os.path.dirname(sys.executable), "torchrun"), "--standalone",
            f"--nproc_per_node={processes}"]


def env():
    e = fairseq_env()
    e["OMP_NUM_THREADS"] = "1"  # per process / rank
    e.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)  # the resume must work with torch's safe default
    e.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
    return e


def run(cmd, cwd):
    return run_cli(cmd, cwd, env())


def curve(log, keys=LOGGED):
    """{num_updates: {key: logged string}} of the train_inner lines (log_interval=1)."""
    rows = {}
    for m in INNER.finditer(log):
        kv = dict(item.split("=", 1) for item in m.group(1).split(", "))
        rows[int(kv["num_updates"])] = {k: kv[k] for k in keys}
    return rows


def hydra(config, data, save_dir, tmp_path, *extra):
    return [console("fairseq-hydra-train"), "--config-dir", os.path.join(REPO, "examples/pretrain"),
            "--config-name", config, f"task.data={data}", f"checkpoint.save_dir={save_dir}",
            f"hydra.run.dir={tmp_path / 'hydra'}", "common.log_interval=1", *extra]


def corpus(root, n, seconds, valid_percent):
    from maeast_fairseq.data.synthetic import make_corpus

    make_corpus(str(root / "audio"), n, seed=0, rates=(16000,), kinds=("tone", "chirp"), seconds=seconds)
    subprocess.run([sys.executable, "-m", "manifests", str(root / "audio"), "--dest", str(root / "data"), "--ext",
                    "wav", "--valid-percent", str(valid_percent), "--seed", "1"], check=True, capture_output=True)
    return root / "data"


def trainer_state(path):
    ckpt = torch.load(path, map_location="cpu", weights_only=True)  # the file itself needs no allow-list
    return ckpt["model"], ckpt["last_optimizer_state"], ckpt["optimizer_history"][-1]["num_updates"]


def assert_same_tensors(a, b, where=""):
    if torch.is_tensor(a):
        assert torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same_tensors(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{where}/{i}")
    else:
        assert a == b, where


# ---------------------------------------------------------------------------------------------------- kill -9
@pytest.mark.slow
def test_kill_9_mid_epoch_at_a_random_update_then_same_command_resumes_bit_exactly(tmp_path):
    """MAE-AST patch tiny, one process, 12 training clips in batches of 3 = 4 updates per epoch, a checkpoint every 3
    updates (none at epoch ends: save_interval 1000), so the checkpoints at 15, 18 and 21 are 3, 2 and 1 updates into
    an epoch. The run is killed -9 once the log shows a randomly drawn update in 16..20 (it may run on a little before
    the kill lands), i.e. after a mid-epoch checkpoint exists; the same command then resumes from it: data iterator
    position, RNG, Adam moments, BatchNorm statistics and schedulers continue, and every later logged value and the
    final weights and optimizer state equal the uninterrupted run's exactly (``torch.equal``; the resumed run
    recomputes the same float32 operations in the same order, see the module docstring). 29 s of 2 cores."""
    import random

    data = corpus(tmp_path / "set", 16, (1.5, 3.0), 0.25)  # 12 train clips
    assert sum(1 for _ in open(data / "train.tsv")) - 1 == 12
    max_update, per_epoch = 24, 4
    extra = [f"optimization.max_update={max_update}", "dataset.batch_size=3", "checkpoint.save_interval=1000",
             "checkpoint.save_interval_updates=3", "checkpoint.keep_interval_updates=1"]
    ref_log = run(hydra("mae_ast_patch_tiny", data, tmp_path / "ref", tmp_path, *extra), cwd=tmp_path)
    ref = curve(ref_log)
    assert sorted(ref) == list(range(1, max_update + 1)), ref_log[-3000:]

    kill_after = random.SystemRandom().randint(16, 20)  # a random update, after the mid-epoch checkpoint at 15
    ckpt = tmp_path / "ckpt"
    cmd = hydra("mae_ast_patch_tiny", data, ckpt, tmp_path, *extra)
    with open(tmp_path / "killed.log", "w") as out:
        # unbuffered: what the killed run logged before the kill is in its log
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=dict(env(), PYTHONUNBUFFERED="1"), stdout=out,
                                stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while max(curve((tmp_path / "killed.log").read_text()), default=0) < kill_after:
            assert proc.poll() is None, "the run ended before the kill"
            assert time.monotonic() < deadline, f"update {kill_after} not reached within 300 s"
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(60) == -signal.SIGKILL
    killed = curve((tmp_path / "killed.log").read_text())
    assert killed and max(killed) < max_update, "the run finished before it was killed"
    state = torch.load(ckpt / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    saved_at = state["optimizer_history"][-1]["num_updates"]
    assert saved_at % 3 == 0 and saved_at % per_epoch != 0, saved_at  # a mid-epoch checkpoint ...
    assert state["extra_state"]["train_iterator"]["iterations_in_epoch"] == saved_at % per_epoch  # ... says so

    log = run(cmd, cwd=tmp_path)  # the same command again
    m = LOADED.search(log)
    assert m, log[-3000:]
    resumed_at = int(m.group(2))
    assert resumed_at == saved_at and 15 <= resumed_at <= max(killed), (kill_after, resumed_at, max(killed))
    after = curve(log)
    assert sorted(after) == list(range(resumed_at + 1, max_update + 1))
    # the killed run's updates and the resumed run's are the uninterrupted run's, to the last printed digit
    assert {u: ref[u] for u in killed} == killed
    assert {u: ref[u] for u in after} == after, (kill_after, resumed_at)
    # and bit for bit: weights, BatchNorm statistics, Adam moments and step counts
    ref_model, ref_opt, ref_n = trainer_state(tmp_path / "ref" / "checkpoint_last.pt")
    model, opt, n = trainer_state(ckpt / "checkpoint_last.pt")
    assert n == ref_n == max_update
    assert_same_tensors(model, ref_model, "model")
    assert_same_tensors(opt, ref_opt, "optimizer")


# ------------------------------------------------------------------------------------------ half-written files
KILL_DURING_SAVE = textwrap.dedent("""
    import os, random, signal, sys, time
    import torch
    import fairseq.checkpoint_utils as cu
    import maeast_fairseq
    from fairseq.dataclass.configs import CheckpointConfig

    maeast_fairseq.register()  # what --user-dir does in fairseq-train / fairseq-hydra-train
    save_dir, trials = sys.argv[1], int(sys.argv[2])
    # fairseq's own save path: checkpoint_1_<n>.pt written first (tmp + rename), then copied to checkpoint_last.pt
    cfg = CheckpointConfig(save_dir=save_dir, save_interval_updates=1, keep_interval_updates=1,
                           no_epoch_checkpoints=True)

    class EpochItr:
        epoch = 1
        def end_of_epoch(self): return False
        def state_dict(self): return {"epoch": 1}

    class Trainer:
        data_parallel_rank = 0
        should_save_checkpoint_on_current_rank = True
        always_call_state_dict_during_save_checkpoint = False
        checkpoint_suffix = ""
        task = None
        num_updates = 0
        def consolidate_optimizer(self): pass
        def get_num_updates(self): return self.num_updates
        def save_checkpoint(self, filename, extra_state):
            weights = torch.full((3_000_000,), float(self.num_updates))  # 12 MB: a save takes a while
            cu.torch_persistent_save({"n": self.num_updates, "w": weights, "extra": extra_state}, filename)

    last = os.path.join(save_dir, "checkpoint_last.pt")
    rng = random.Random(0)
    trainer = Trainer()
    for trial in range(trials):
        pid = os.fork()
        if pid == 0:  # the writer: saves forever
            while True:
                trainer.num_updates += 1
                cu.save_checkpoint(cfg, trainer, EpochItr(), None)
        while not os.path.exists(last):
            time.sleep(0.001)
        time.sleep(rng.uniform(0.0, 0.15))  # a random moment: inside a write, a copy, a delete, or between
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        for name in sorted(os.listdir(save_dir)):
            if name.endswith(".pt"):  # every checkpoint name is complete (*.tmp may be torn)
                state = torch.load(os.path.join(save_dir, name), weights_only=True)
                assert torch.equal(state["w"], torch.full((3_000_000,), float(state["n"]))), name
        trainer.num_updates = torch.load(last, weights_only=True)["n"]
    print("ok", trials)
""")


@pytest.mark.slow
def test_kill_during_fairseq_checkpoint_save_never_leaves_a_half_written_checkpoint(tmp_path):
    out = subprocess.run([sys.executable, "-c", KILL_DURING_SAVE, str(tmp_path), "12"], env=env(),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "ok 12" in out.stdout, (out.stdout + out.stderr)[-3000:]


def test_checkpoint_copy_is_atomic(tmp_path, monkeypatch):
    """A crash in the middle of fairseq's copy to checkpoint_last.pt leaves the previous file intact."""
    import shutil

    from fairseq.file_io import PathManager

    import maeast_fairseq
    from maeast_fairseq import fairseq_compat

    maeast_fairseq.register()
    src, dst = tmp_path / "checkpoint_best.pt", tmp_path / "checkpoint_last.pt"
    src.write_bytes(b"new" * 1000)
    dst.write_bytes(b"old" * 1000)

    class Killed(BaseException):
        pass

    def torn_copy(a, b):  # the process dies after writing part of the file
        with open(b, "wb") as f:
            f.write(open(a, "rb").read()[:100])
        raise Killed

    monkeypatch.setattr(fairseq_compat, "shutil", types.SimpleNamespace(copyfile=torn_copy))
    with pytest.raises(Killed):
        PathManager.copy(str(src), str(dst), overwrite=True)
    assert dst.read_bytes() == b"old" * 1000
    monkeypatch.setattr(fairseq_compat, "shutil", shutil)
    assert PathManager.copy(str(src), str(dst), overwrite=True)
    assert dst.read_bytes() == b"new" * 1000


# ------------------------------------------------------------------------------------------------ weights_only
def test_fairseq_rank_broadcast_of_a_checkpoint_loads_with_weights_only(tmp_path, monkeypatch):
    """The receiving side of fairseq's checkpoint broadcast (rank > 0), run in-process on a real trainer checkpoint
    state: it loads under weights_only=True once the plugin is registered; nothing else's allow-list is widened."""
    import io

    import fairseq.checkpoint_utils as cu
    from fairseq.distributed import utils as du
    from omegaconf import OmegaConf

    import maeast_fairseq
    from maeast_fairseq.checkpoint import CheckpointError, read_checkpoint

    maeast_fairseq.register()
    torch_allowed = set(map(str, torch.serialization.get_safe_globals()))  # torch.distributed adds a few itself
    path = tmp_path / "checkpoint_last.pt"
    # what fairseq's trainer writes (Trainer.state_dict): tensors and plain containers
    torch.save({"args": None, "cfg": {"model": {"_name": "ssast"}, "optimization": {"lr": [0.003], "max_update": 3}},
                "model": {"w": torch.ones(2)}, "criterion": {}, "task_state": {},
                "optimizer_history": [{"criterion_name": "MaskedReconNceCriterion", "optimizer_name": "FairseqAdam",
                                       "lr_scheduler_state": {"best": None}, "num_updates": 3}],
                "last_optimizer_state": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(2)}},
                                         "param_groups": [{"lr": 0.003, "params": [0]}]},
                "extra_state": {"train_iterator": {"epoch": 2, "iterations_in_epoch": 0}, "val_loss": None}}, path)
    state = cu.load_checkpoint_to_cpu(str(path))  # rank 0: the file is plain; cfg becomes a DictConfig
    tensors = []
    buffer = io.BytesIO()
    torch.save(du._split_tensors_from_obj(state, tensors), buffer)
    payload = buffer.getvalue()
    with pytest.raises(Exception, match="[Ww]eights only load failed"):  # what killed rank 1 before the fix
        torch.load(io.BytesIO(payload), weights_only=True)

    # rank 1 of a 2-rank group: fairseq's _broadcast_object_slow receives the length, then the bytes
    sent = iter([torch.LongTensor([len(payload)]), torch.frombuffer(bytearray(payload), dtype=torch.uint8)])

    def broadcast(tensor, src, group):
        tensor.copy_(next(sent))

    monkeypatch.setattr(du, "get_rank", lambda group: 1)
    monkeypatch.setattr(du, "broadcast", broadcast)
    obj = du._broadcast_object_slow(None, 0, None, torch.device("cpu"))
    assert OmegaConf.is_config(obj["cfg"]) and obj["cfg"].model._name == "ssast"
    assert obj["optimizer_history"][-1]["num_updates"] == 3 and obj["extra_state"]["train_iterator"]["epoch"] == 2
    # the allow-list was scoped to that call: torch's global one is untouched, our loaders stay strict
    assert set(map(str, torch.serialization.get_safe_globals())) == torch_allowed
    with pytest.raises(Exception, match="[Ww]eights only load failed"):
        torch.load(io.BytesIO(payload), weights_only=True)
    evil = tmp_path / "evil.pt"
    torch.save({"model": {}, "cfg": {"x": signal.Signals.SIGTERM}}, evil)  # a non-allow-listed class
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        read_checkpoint(str(evil))


# ------------------------------------------------------------------------------------ 1 vs 2 vs 4 processes
# each method's tiny config on a padded corpus, with the options that make a run independent of the split (the
# defaults for SSAST and MAE-AST; EAT's utterance term scaled by the global batch); validation and checkpoints off
SPLIT_INDEPENDENT = {
    "ssast": ("ssast_patch_tiny", [], LOGGED),
    # fixed length instead of crop_to_shortest (which crops to each process's shortest clip: README), so clips pad
    "mae_ast": ("mae_ast_patch_tiny", ["task.length_policy=fixed", "task.target_frames=256"], LOGGED),
    # mask_noise_std 0: EAT's decoder fills the masked slots with noise from each process's global RNG (README)
    "eat": ("eat_base_tiny", ["criterion.utterance_scale=global", "model.mask_noise_std=0"],
            ("loss", "frame_loss", "utterance_loss")),
}
SPLIT_UPDATES = 8


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(SPLIT_INDEPENDENT))
def test_one_two_and_four_processes_give_the_same_loss_curve_on_padded_clips(method, tmp_path):
    """Global batch 8 (all 8 training clips: one update per epoch, so every run's update sees the same clips):
    1 process x 8, torchrun 2 x 4 and 4 x 2, gloo (SSAST: the 2-process run stopped after 5 updates and resumed). Clips of 1.2-3.2 s under 256 frames (2.56 s): some are padded,
    and as the loader sorts by length the processes hold different numbers of valid frames and masked patches --
    what loss normalisation by the global count (decision D24), MAE-AST's synchronised BatchNorm (D25) and EAT's
    global utterance scale (D26) make irrelevant.

    Tolerance: one unit of fairseq's logged 4th decimal (the two printed roundings of values that differ by far less
    can land on either side of a rounding boundary) + the float32 reduction-order difference of the values
    themselves: sums over a few thousand terms in another grouping (per-process partial sums, then gloo's
    all-reduce) differ by ~1e-6 relative, grown over SPLIT_UPDATES Adam steps to well under 1e-5 relative; we allow
    2e-5 x |value| on top of 1e-4 (+ 5e-5 for the decimal parse)."""
    config, extra, keys = SPLIT_INDEPENDENT[method]
    data = corpus(tmp_path / "set", 10, (1.2, 3.2), 0.2)  # 8 train / 2 valid clips
    lines = (data / "train.tsv").read_text().splitlines()[1:]
    samples = sorted(int(line.split("\t")[1]) for line in lines)
    assert len(samples) == 8 and samples[0] < 2.56 * 16000 < samples[-1], samples  # padding present, not everywhere
    common = [f"optimization.max_update={SPLIT_UPDATES}", "dataset.disable_validation=true", "checkpoint.no_save=true",
              *extra]
    curves = {}
    for processes in (1, 2, 4):
        cmd = hydra(config, data, tmp_path / f"p{processes}", tmp_path, f"dataset.batch_size={8 // processes}", *common)
        if processes > 1:
            cmd = torchrun(processes) + cmd + ddp_args(processes)
        if method == "ssast" and processes == 2:
            # a 2-process resume onto the same curve (without TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD: rank 0's checkpoint
            # reaches rank 1 through fairseq's broadcast): stop at 5 updates (saved at the end), then the same
            # command with the full max_update (the README's)
            cmd.remove("checkpoint.no_save=true")
            first = curve(run(cmd + ["optimization.max_update=5"], cwd=tmp_path), keys)
            assert sorted(first) == list(range(1, 6))
            log = run(cmd, cwd=tmp_path)
            assert LOADED.search(log) and LOADED.search(log).group(2) == "5", log[-3000:]
            curves[processes] = {**first, **curve(log, keys)}
        else:
            log = run(cmd, cwd=tmp_path)
            curves[processes] = curve(log, keys)
        assert processes == 1 or f"distributed init (rank {processes - 1})" in log, log[-3000:]
        assert sorted(curves[processes]) == list(range(1, SPLIT_UPDATES + 1)), log[-3000:]
    one = curves[1]
    for processes in (2, 4):
        for u in range(1, SPLIT_UPDATES + 1):
            for k in keys:
                a, b = float(one[u][k]), float(curves[processes][u][k])
                assert abs(a - b) <= 1.5e-4 + 2e-5 * abs(a), (method, processes, u, k, one[u], curves[processes][u])
    # the curve does move: this is not a comparison of two flat lines
    assert float(one[SPLIT_UPDATES]["loss"]) != float(one[1]["loss"])


# --------------------------------------------------------------------------------------- SSAST's plateau schedule
def test_plateau_scheduler_steps_at_every_validation_on_the_checkpoint_metric_and_resumes():
    """``reduce_lr_on_plateau_per_validation`` (the SSAST yamls'): after the warm-up, each validation (the task's
    post_validate) is one plateau step on ``acc`` (maximised): patience 2 = the 3rd validation without a new best
    halves the lr, mid-epoch; fairseq's epoch-end call changes nothing; a second subset at the same update is not
    counted again; the state (best, bad validations) survives a checkpoint round trip."""
    from fairseq.optim.adam import FairseqAdam, FairseqAdamConfig
    from omegaconf import OmegaConf

    import maeast_fairseq
    from maeast_fairseq.optim.plateau import ReduceLROnPlateauPerValidation
    from maeast_fairseq.tasks.pretraining import PretrainingTask

    maeast_fairseq.register()

    def build():
        params = [torch.nn.Parameter(torch.zeros(2))]
        opt = FairseqAdam(OmegaConf.structured(FairseqAdamConfig(lr=[0.1], tpu=False)), params)
        cfg = OmegaConf.create({"lr_shrink": 0.5, "lr_patience": 2, "lr_threshold": 1e-4, "warmup_updates": 2,
                                "warmup_init_lr": -1, "lr": [0.1], "maximize_best_checkpoint_metric": True,
                                "best_checkpoint_metric": "acc"})
        return ReduceLROnPlateauPerValidation(cfg, opt), opt

    sched, opt = build()
    for u in range(1, 4):
        sched.step_update(u)  # past the warm-up
    assert opt.get_lr() == pytest.approx(0.1)
    task = PretrainingTask.__new__(PretrainingTask)  # post_validate needs no task state
    for update, acc in ((100, 0.5), (200, 0.4), (300, 0.45)):
        task.post_validate(None, {"num_updates": update, "acc": acc, "loss": 1.0}, None)
        task.post_validate(None, {"num_updates": update, "acc": 0.0}, None)  # 2nd subset: not counted
        sched.step(1, 0.0)  # fairseq's epoch-end call: no plateau step
    assert opt.get_lr() == pytest.approx(0.1)  # best 0.5, two bad validations: patience not exceeded
    state = sched.state_dict()
    resumed, resumed_opt = build()
    resumed.load_state_dict(state)
    resumed_opt.set_lr(opt.get_lr())  # the lr itself comes back with the optimizer state
    for s, o in ((sched, opt), (resumed, resumed_opt)):
        s.warmup_end = True
        s.validated({"num_updates": 400, "acc": 0.49})  # the 3rd validation without a new best
        assert o.get_lr() == pytest.approx(0.05)
    with pytest.raises(KeyError, match="best_checkpoint_metric"):
        sched.validated({"num_updates": 500, "loss": 1.0})


# ----------------------------------------------------------------------------- loss normalisation, in process
@pytest.mark.parametrize("normalization", ["global", "per_process"])
def test_global_count_normalisation_makes_a_split_padded_batch_give_the_whole_batchs_gradient(normalization):
    """What fairseq does with N workers, in one process: each part's loss is backpropagated and the summed gradient
    divided by the summed sample_size. With clips of different lengths (padding: fewer masked patches), 'global'
    gives the whole batch's gradient (to float32 reduction-order rounding: 1e-5 relative of the gradient's norm,
    ~100 x float32's 6e-8 for sums over ~1e3 terms), 'per_process' (the official per-forward mean) does not."""
    from conftest import SSAST_PATCH, tiny_core

    from maeast_fairseq.core.rng import MaskRNG
    from maeast_fairseq.criterions.masked_recon_nce import MaskedReconNceConfig, MaskedReconNceCriterion

    model = tiny_core("ssast", target_frames=128, **SSAST_PATCH)
    crit = MaskedReconNceCriterion(MaskedReconNceConfig(loss_normalization=normalization), None)
    lengths = torch.tensor([128, 128, 112, 64])  # two full clips, two padded ones
    torch.manual_seed(0)
    fbank = torch.randn(4, 128, 128)
    padding = torch.arange(128)[None] >= lengths[:, None]
    fbank = fbank.masked_fill(padding[..., None], 0.0)

    def gradient(parts):
        model.zero_grad()
        total = 0
        for part in parts:
            sample = {"net_input": {"fbank": fbank[part], "frame_padding": padding[part],
                                    "mask_rng": MaskRNG.from_ids(1, 1, torch.arange(4)[part])}}
            loss, sample_size, _ = crit(model, sample)
            loss.backward()
            total += float(sample_size)
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]) / total

    whole = gradient([slice(0, 4)])
    split = gradient([slice(0, 2), slice(2, 4)])
    error = float((split - whole).norm() / whole.norm())
    if normalization == "global":
        assert error < 1e-5, error
    else:  # the halves' means weigh equally, whatever their patch counts: a different gradient
        assert error > 1e-2, error
