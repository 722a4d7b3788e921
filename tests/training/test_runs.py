import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from atp_latent.configtools import load_yaml
from atp_latent.training.runs import (
    COMPLETE_MARKER,
    RunDir,
    atomic_checkpoint,
    checkpoint_dir_for,
    environment_info,
    latest_checkpoint,
    prune_checkpoints,
)


@dataclass
class _Optim:
    lr: float = 1e-3


@dataclass
class _Cfg:
    seed: int = 0
    optim: _Optim = field(default_factory=_Optim)


def _make_ckpt(run: RunDir, step: int, complete: bool = True):
    path = run.checkpoint_dir_for(step)
    if complete:
        with atomic_checkpoint(path) as tmp:
            (tmp / "model.bin").write_text(str(step))
    else:
        path.mkdir(parents=True)
        (path / "model.bin").write_text("partial")
    return path


def test_environment_info_keys():
    info = environment_info()
    for key in ("python", "platform", "packages", "git", "hostname", "timestamp"):
        assert key in info
    assert set(info["packages"]) == {"torch", "transformers", "accelerate", "tokenizers", "safetensors"}
    assert info["packages"]["torch"] is not None
    assert info["git"] is None or set(info["git"]) == {"commit", "dirty"}
    # the hardware: a CPU model name where the OS tells it, and torch's kernel instruction set
    assert set(info["hardware"]) == {"cpu", "cpu_capability", "gpu"}
    import torch

    assert info["hardware"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    if Path("/proc/cpuinfo").is_file() and "model name" in Path("/proc/cpuinfo").read_text():
        assert info["hardware"]["cpu"]
    json.dumps(info)


def test_environment_info_without_git(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    info = environment_info()
    assert info["git"] is None


def test_create_layout(tmp_path):
    run = RunDir.create(tmp_path, name="exp1")
    assert run.path == tmp_path / "exp1"
    for name in ("environment.json", "metrics.jsonl"):
        assert (run.path / name).is_file()
    for name in ("tb", "checkpoints"):
        assert (run.path / name).is_dir()
    env = json.loads((run.path / "environment.json").read_text())
    assert "python" in env
    cfg = _Cfg(seed=4, optim=_Optim(lr=3e-4))
    run.save_config(cfg)
    assert load_yaml(run.path / "config.yaml", _Cfg) == cfg
    run.close()


def test_create_default_name_and_existing(tmp_path):
    a = RunDir.create(tmp_path)
    b = RunDir.create(tmp_path)
    assert a.path != b.path and a.path.parent == tmp_path
    with pytest.raises(FileExistsError):
        RunDir.create(tmp_path, name=a.path.name)
    c = RunDir.create(tmp_path, name=a.path.name, resume=True)
    assert c.path == a.path


def test_log_metrics_jsonl_and_tensorboard(tmp_path):
    run = RunDir.create(tmp_path, name="r")
    run.log({"loss": 1.5, "acc": 0.25, "n": 3, "phase": "sft"}, step=10)
    # each line is flushed immediately
    lines = (run.path / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[0]) == {"step": 10, "loss": 1.5, "acc": 0.25, "n": 3, "phase": "sft"}
    run.log({"loss": 1.0}, step=20)
    run.close()
    lines = (run.path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [10, 20]
    assert run.read_metrics()[1] == {"step": 20, "loss": 1.0}
    events = list((run.path / "tb").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_log_torch_scalars_and_rejects_other(tmp_path):
    torch = pytest.importorskip("torch")
    with RunDir.create(tmp_path, name="r", tensorboard=False) as run:
        run.log({"loss": torch.tensor(0.5)}, step=1)
        with pytest.raises(TypeError):
            run.log({"bad": [1, 2]}, step=2)
    assert run.read_metrics() == [{"step": 1, "loss": 0.5}]
    assert not list((run.path / "tb").iterdir())  # writer never created


def test_resume_appends_metrics(tmp_path):
    run = RunDir.create(tmp_path, name="r", tensorboard=False)
    run.log({"loss": 2.0}, step=1)
    run.close()
    run2 = RunDir.create(tmp_path, name="r", resume=True, tensorboard=False)
    run2.log({"loss": 1.0}, step=2)
    run2.close()
    assert [r["step"] for r in run2.read_metrics()] == [1, 2]


def test_checkpoint_dir_for(tmp_path):
    run = RunDir(tmp_path)
    assert run.checkpoint_dir_for(1234) == tmp_path / "checkpoints" / "step-00001234"
    assert checkpoint_dir_for(tmp_path, 5).name == "step-00000005"


def test_atomic_checkpoint_success_and_replace(tmp_path):
    target = tmp_path / "checkpoints" / "step-00000010"
    with atomic_checkpoint(target) as tmp:
        assert tmp.name == f".tmp-step-00000010-{os.getpid()}"
        assert tmp.parent == target.parent
        assert not target.exists()
        (tmp / "weights.bin").write_text("v1")
    assert (target / "weights.bin").read_text() == "v1"
    assert (target / COMPLETE_MARKER).is_file()
    assert not tmp.exists()

    with atomic_checkpoint(target) as tmp:
        (tmp / "weights.bin").write_text("v2")
    assert (target / "weights.bin").read_text() == "v2"
    assert sorted(p.name for p in target.parent.iterdir()) == ["step-00000010"]


def test_atomic_checkpoint_failure(tmp_path):
    target = tmp_path / "checkpoints" / "step-00000010"
    with atomic_checkpoint(target) as tmp:
        (tmp / "weights.bin").write_text("good")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_checkpoint(target) as tmp:
            (tmp / "weights.bin").write_text("bad")
            raise RuntimeError("boom")
    assert not tmp.exists()
    assert (target / "weights.bin").read_text() == "good"  # old checkpoint untouched
    new = tmp_path / "checkpoints" / "step-00000020"
    with pytest.raises(KeyError):
        with atomic_checkpoint(new):
            raise KeyError("x")
    assert not new.exists()
    assert sorted(p.name for p in target.parent.iterdir()) == ["step-00000010"]


def test_latest_checkpoint_ignores_incomplete(tmp_path):
    run = RunDir.create(tmp_path, name="r")
    assert latest_checkpoint(run.path) is None
    _make_ckpt(run, 100)
    _make_ckpt(run, 300)
    _make_ckpt(run, 200)
    _make_ckpt(run, 400, complete=False)
    (run.checkpoints_dir / ".tmp-step-00000500-1").mkdir()
    (run.checkpoints_dir / "notes").mkdir()
    assert latest_checkpoint(run.path) == run.checkpoint_dir_for(300)
    assert latest_checkpoint(run) == run.checkpoint_dir_for(300)
    assert run.latest_checkpoint() == run.checkpoint_dir_for(300)


def test_prune_keeps_last_n_and_best(tmp_path):
    run = RunDir.create(tmp_path, name="r")
    paths = [_make_ckpt(run, s) for s in (100, 200, 300, 400, 500)]
    incomplete = _make_ckpt(run, 600, complete=False)
    stale = run.checkpoints_dir / ".tmp-step-00000700-999999999"  # dead pid
    stale.mkdir()
    (stale / "x").write_text("junk")
    best = paths[1]
    removed = prune_checkpoints(run.path, keep_last=2, keep={best})
    remaining = sorted(p.name for p in run.checkpoints_dir.iterdir())
    assert remaining == ["step-00000200", "step-00000400", "step-00000500", "step-00000600"]
    assert set(removed) == {paths[0], paths[2], stale}
    assert incomplete.exists()
    # idempotent
    assert prune_checkpoints(run.path, keep_last=2, keep={best}) == []
    # keep_last=0 keeps only the explicit ones
    prune_checkpoints(run, keep_last=0, keep=[str(best)])
    assert [p.name for p in run.checkpoints_dir.iterdir() if (p / COMPLETE_MARKER).exists()] == [
        "step-00000200"
    ]
    with pytest.raises(ValueError):
        prune_checkpoints(run, keep_last=-1)


def test_prune_does_not_remove_active_tmp(tmp_path):
    run = RunDir.create(tmp_path, name="r")
    _make_ckpt(run, 1)
    with atomic_checkpoint(run.checkpoint_dir_for(2)) as tmp:
        prune_checkpoints(run, keep_last=1)
        assert tmp.exists()
        (tmp / "w").write_text("x")
    assert latest_checkpoint(run) == run.checkpoint_dir_for(2)


def test_git_info_in_temp_repo(tmp_path):
    import shutil
    import subprocess

    from atp_latent.training.runs import git_info

    if shutil.which("git") is None:
        pytest.skip("git not installed")
    assert git_info(tmp_path) is None  # not a repository
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True, env=env)
    (tmp_path / "f").write_text("1")
    subprocess.run(["git", "add", "f"], cwd=tmp_path, check=True, env=env)
    subprocess.run(["git", "commit", "-q", "-m", "x"], cwd=tmp_path, check=True, env=env)
    info = git_info(tmp_path)
    assert len(info["commit"]) == 40 and info["dirty"] is False
    (tmp_path / "f").write_text("2")
    assert git_info(tmp_path)["dirty"] is True


def test_trackers_through_the_accelerator(tmp_path):
    from accelerate import Accelerator

    from atp_latent.training.runs import tracker_log_with

    accelerator = Accelerator(cpu=True, log_with=tracker_log_with(["tensorboard"], tmp_path / "r"))
    assert not (tmp_path / "r").exists()  # nothing is written before the run directory is opened
    run = RunDir.create(tmp_path, name="r", report_to=["tensorboard"])
    run.start_trackers(accelerator, config={"optim": {"lr": 0.1}})
    assert [t.name for t in accelerator.trackers] == ["tensorboard"] and run.trackers == accelerator.trackers
    run.log({"loss": 1.0}, step=1)
    run.close()
    assert accelerator.trackers == []
    events = list((run.path / "tb").glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0
    assert not [p for p in (run.path / "tb").iterdir() if p.is_dir()]  # no hparams sub-run: scalars only


def test_no_trackers(tmp_path):
    with RunDir.create(tmp_path, name="r", report_to=[]) as run:
        run.log({"loss": 1.0}, step=1)
        assert run.trackers == []
    assert not list((run.path / "tb").iterdir()) and run.read_metrics() == [{"step": 1, "loss": 1.0}]


def test_a_resumed_run_keeps_its_budget(tmp_path):
    """A checkpoint records the budget its learning-rate schedule was made for; resuming with another is a one-line
    error naming each changed key with both values. A checkpoint that predates the record is accepted."""
    from atp_latent.training.runs import check_resume_budget

    ckpt = tmp_path / "run" / "checkpoints" / "step-00000004"
    budget = {"train.epochs": 2, "train.max_steps": None, "scheduled_steps": 8}
    check_resume_budget(ckpt, {"step": 4, "budget": dict(budget)}, budget)
    check_resume_budget(ckpt, {"step": 4}, budget | {"train.epochs": 3})
    with pytest.raises(ValueError) as err:
        check_resume_budget(ckpt, {"step": 4, "budget": dict(budget)}, budget | {"train.epochs": 3, "scheduled_steps": 12})
    msg = str(err.value)
    assert "\n" not in msg and str(ckpt) in msg and "train.max_steps" not in msg
    assert "train.epochs 2 -> 3" in msg and "scheduled_steps 8 -> 12" in msg
