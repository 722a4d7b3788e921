"""Experiment trackers through accelerate: TensorBoard by default, W&B / MLflow by `train.report_to`,
metrics.jsonl always."""

import json
import os
import subprocess
import sys

import pytest
from accelerate.utils import LoggerType

from atp_latent.cli import main
from atp_latent.config import load_config
from atp_latent.data.synthetic import SynthConfig, write_benchmark
from atp_latent.training import runs
from atp_latent.training.runs import RunDir, check_trackers
from atp_latent.training.sft import train


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    write_benchmark(out, SynthConfig(seed=5, n_train=48, n_val=8, n_test=8, n_ood=8))
    return out


def sets(data, tmp, name, *extra):
    return [f"data.train={data / 'train.jsonl'}", f"data.val={data / 'val.jsonl'}", "method.name=nocot",
            "optim.batch_size=16", "train.epochs=2", "train.log_every=1", "data.max_val=4", "eval.batch_size=8",
            f"output_dir={tmp}", f"name={name}", *extra]


def tb_scalars(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def jsonl_scalars(run):
    """What TensorBoard held before the trackers went through accelerate: every finite number of metrics.jsonl."""
    out = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        for k, v in rec.items():
            if k != "step" and isinstance(v, int | float):
                out.setdefault(k, []).append((rec["step"], float(v)))
    return out


def test_tensorboard_scalars_match_metrics_jsonl(data, tmp_path):
    run = train(load_config(None, sets(data, tmp_path, "tb", "train.report_to=[tensorboard]")))
    got, want = tb_scalars(run / "tb"), jsonl_scalars(run)
    assert set(got) == set(want) and {"train/loss", "train/ce", "eval/val_accuracy", "train/finished"} <= set(got)
    for tag, points in want.items():
        assert [s for s, _ in got[tag]] == [s for s, _ in points], tag
        assert [v for _, v in got[tag]] == pytest.approx([v for _, v in points], rel=1e-6), tag
    assert [p.name for p in (run / "tb").iterdir()] == [next((run / "tb").glob("events.out.tfevents.*")).name]


def test_default_is_tensorboard_and_empty_list_is_none(data, tmp_path):
    assert load_config(None, []).train.report_to == ["tensorboard"]
    run = train(load_config(None, sets(data, tmp_path, "none", "train.report_to=[]", "train.epochs=1")))
    assert not list((run / "tb").iterdir())
    assert any("train/loss" in line for line in (run / "metrics.jsonl").read_text().splitlines())


def test_missing_tracker_package_is_one_line_before_anything_is_written(data, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("accelerate.tracking._available_trackers", [LoggerType.TENSORBOARD])
    with pytest.raises(ValueError, match=r"'wandb' needs the wandb package \(pip install 'atp-latent\[wandb\]'\)"):
        check_trackers(["tensorboard", "wandb"])
    args = ["train", "--set", "train.report_to=[tensorboard, mlflow]", *sum((["--set", s] for s in sets(
        data, tmp_path, "r")), [])]
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: train.report_to: 'mlflow' needs the mlflow package (pip install 'atp-latent[mlflow]')"]
    assert not (tmp_path / "r").exists()


def test_report_to_may_change_on_resume():
    assert any("train.report_to".startswith(p) for p in runs.RESUMABLE_CHANGES)


def test_rundir_on_its_own_logs_histograms_to_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with RunDir.create(tmp_path, name="h") as run:
        run.log({"x": 1.0, "nan": float("nan"), "s": "text", "b": True}, step=1)
        run.log_histogram("lat", [1, 2, 2, 3], step=1)
    acc = EventAccumulator(str(run.path / "tb"))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {"x", "b"} and acc.Tags()["histograms"] == ["lat"]
    assert not acc.Tags()["tensors"]  # strings stay in metrics.jsonl, as before (no text summaries)
    assert run.read_metrics()[1] == {"step": 1, "lat/hist": "[0, 1, 2, 1]"}


def test_wandb_offline(data, tmp_path):
    pytest.importorskip("wandb")
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DISABLE_GIT": "true",
           "WANDB_CONSOLE": "off"}
    args = ["train", "--set", "train.report_to=[tensorboard, wandb]"]
    for s in sets(data, tmp_path, "wb", "train.epochs=1"):
        args += ["--set", s]
    proc = subprocess.run([sys.executable, "-m", "atp_latent.cli", *args], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = tmp_path / "wb"
    logs = list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(logs) == 1, list((run / "wandb").rglob("*"))
    blob = logs[0].read_bytes()
    assert b"train/loss" in blob and b"eval/val_accuracy" in blob  # metrics
    assert b"optim.lr" in blob and b"method.name" in blob  # the run's config, flattened
    assert tb_scalars(run / "tb").keys() == jsonl_scalars(run).keys()  # TensorBoard alongside


def test_mlflow_local(data, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow 3 wants a database; a folder suits a test
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "atp-test")
    run = train(load_config(None, sets(data, tmp_path, "ml", "train.report_to=[mlflow]", "train.epochs=1")))
    import mlflow

    runs_ = mlflow.search_runs(experiment_names=["atp-test"], output_format="list")
    assert len(runs_) == 1 and runs_[0].info.run_name == "ml"
    assert "train/loss" in runs_[0].data.metrics and runs_[0].data.params["method.name"] == "nocot"
    assert not list((run / "tb").iterdir())
