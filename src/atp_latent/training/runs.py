"""Run directories: config snapshot, environment info, metrics log, experiment trackers, checkpoints.

Layout of a run directory::

    <root>/<name>/
        config.yaml         # RunDir.save_config(cfg)
        environment.json    # environment_info() at creation
        metrics.jsonl       # one {"step": ..., **metrics} object per line (always written)
        tb/                 # TensorBoard events (train.report_to: tensorboard, the default)
        wandb/              # W&B's local files (train.report_to: wandb)
        checkpoints/
            step-00001000/  # complete checkpoints contain a COMPLETE file
            .tmp-step-00002000-<pid>/   # being written (or stale after a crash)
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib.metadata
import json
import math
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from atp_latent import configtools

__all__ = [
    "RunDir",
    "tracker_log_with",
    "check_trackers",
    "environment_info",
    "checkpoint_dir_for",
    "atomic_checkpoint",
    "complete_checkpoints",
    "latest_checkpoint",
    "prune_checkpoints",
    "COMPLETE_MARKER",
]

COMPLETE_MARKER = "COMPLETE"
TMP_PREFIX = ".tmp-"
_STEP_RE = re.compile(r"step-(\d+)")
_TMP_RE = re.compile(r"\.tmp-.*-(\d+)")
_PACKAGES = ("torch", "transformers", "accelerate", "tokenizers", "safetensors")

# Temporary checkpoint directories being written by this process (never pruned).
_ACTIVE_TMP: set[Path] = set()


def save_training_checkpoint(path: Path, model, tokenizer, optimizer, progress: dict, rng: dict,
                             scaler: dict | None = None) -> None:
    """Weights (save_pretrained form, in model/) + optimizer + loop position + RNG states (+ the fp16 loss scaler's
    state when given), written atomically. With optimizer=None only the weights are written (not resumable)."""
    import torch

    with atomic_checkpoint(path) as tmp:
        model.save_pretrained(tmp / "model", tokenizer)
        if optimizer is not None:
            torch.save({"optimizer": optimizer.state_dict(), "progress": dict(progress), "rng": rng}
                       | ({"scaler": scaler} if scaler is not None else {}), tmp / "trainer_state.pt")


def replicas_in_sync(accelerator, model) -> bool:
    """True when every process holds the same parameters (a checksum per tensor, gathered and compared)."""
    import torch

    if accelerator.num_processes == 1:
        return True
    sums = torch.stack([p.detach().double().sum() for p in accelerator.unwrap_model(model).parameters()])
    gathered = accelerator.gather(sums[None].to(accelerator.device)).view(accelerator.num_processes, -1)
    return bool(torch.allclose(gathered, gathered[0:1].expand_as(gathered), rtol=0, atol=1e-6))


def _now() -> _dt.datetime:
    return _dt.datetime.now().astimezone()


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None
    except Exception:
        return None


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        proc = subprocess.run(
            ["git", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    return proc.stdout


def git_info(path: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """``{"commit": sha, "dirty": bool}`` for the repository containing ``path``; None if unavailable."""
    cwd = Path(path) if path is not None else Path(__file__).resolve().parent
    if cwd.is_file():
        cwd = cwd.parent
    commit = _git(["rev-parse", "HEAD"], cwd)
    if commit is None or not commit.strip():
        return None
    status = _git(["status", "--porcelain", "--untracked-files=no"], cwd)
    return {"commit": commit.strip(), "dirty": None if status is None else bool(status.strip())}


def hardware_info() -> dict[str, Any]:
    """What the run computed on: the CPU's model name, the instruction set torch's CPU kernels use (AVX2,
    AVX512, ...) and the GPU, if any. Training on a CPU is reproducible on one host, not across hosts: the same
    code, data, seed and package versions gave CoT-SFT 74.8% or 83.4% of the quickstart's `test` on two hosts
    (docs/experiment-log.md, 2026-11-28), so a bench must be able to tell its hosts apart. Never raises."""
    import torch

    info: dict[str, Any] = {"cpu": platform.processor() or None, "cpu_capability": None, "gpu": None}
    with contextlib.suppress(Exception):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(Exception):
        info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    with contextlib.suppress(Exception):
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    return info


def environment_info() -> dict[str, Any]:
    """Reproducibility information; never raises."""
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "python_full": sys.version,
        "platform": platform.platform(),
        "packages": {name: _package_version(name) for name in _PACKAGES},
        "git": None,
        "hostname": None,
        "hardware": None,
        "timestamp": _now().isoformat(timespec="seconds"),
        "argv": list(sys.argv),
    }
    with contextlib.suppress(Exception):
        info["git"] = git_info()
    with contextlib.suppress(Exception):
        info["hostname"] = socket.gethostname()
    with contextlib.suppress(Exception):
        info["hardware"] = hardware_info()
    return info


# ------------------------------------------------------------------------------------ checkpoints


def _checkpoints_root(run_dir: RunDir | str | os.PathLike) -> Path:
    """``run_dir/checkpoints`` (or ``run_dir`` itself when it has no such sub-directory)."""
    path = run_dir.path if isinstance(run_dir, RunDir) else Path(run_dir)
    sub = path / "checkpoints"
    return sub if sub.is_dir() or not path.is_dir() else path


def checkpoint_dir_for(run_dir: RunDir | str | os.PathLike, step: int) -> Path:
    """``<run_dir>/checkpoints/step-{step:08d}``."""
    path = run_dir.path if isinstance(run_dir, RunDir) else Path(run_dir)
    return path / "checkpoints" / f"step-{int(step):08d}"


def _step_of(path: Path) -> int | None:
    m = _STEP_RE.fullmatch(path.name)
    return int(m.group(1)) if m else None


def complete_checkpoints(run_dir: RunDir | str | os.PathLike) -> list[Path]:
    """Complete ``step-*`` checkpoint directories, sorted by step (ascending)."""
    root = _checkpoints_root(run_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        step = _step_of(child)
        if step is not None and child.is_dir() and (child / COMPLETE_MARKER).is_file():
            found.append((step, child))
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: RunDir | str | os.PathLike) -> Path | None:
    """The complete checkpoint with the highest step, or None."""
    ckpts = complete_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


@contextlib.contextmanager
def atomic_checkpoint(path: str | os.PathLike) -> Iterator[Path]:
    """Write a checkpoint directory atomically.

    Yields a temporary sibling directory ``.tmp-<name>-<pid>``. When the block succeeds, a
    ``COMPLETE`` file is written into it and it is renamed to ``path`` (an existing ``path`` is
    replaced). When the block raises, the temporary directory is removed and the exception
    propagates.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f"{TMP_PREFIX}{path.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    _ACTIVE_TMP.add(tmp.resolve())
    try:
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        with open(tmp / COMPLETE_MARKER, "w", encoding="utf-8") as fh:
            fh.write(_now().isoformat(timespec="seconds") + "\n")
            fh.flush()
            with contextlib.suppress(OSError):
                os.fsync(fh.fileno())
        old = None
        if path.exists():
            # Named like a temp dir so that prune_checkpoints cleans it up after a crash.
            old = path.parent / f"{TMP_PREFIX}old-{path.name}-{os.getpid()}"
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
        try:
            os.replace(tmp, path)
        except BaseException:
            if old is not None and not path.exists():
                os.replace(old, path)
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        _fsync_dir(path.parent)
    finally:
        _ACTIVE_TMP.discard(tmp.resolve())


def _fsync_dir(path: Path) -> None:
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def _is_stale_tmp(path: Path) -> bool:
    if path.resolve() in _ACTIVE_TMP:
        return False
    m = _TMP_RE.fullmatch(path.name)
    if m is None:
        return True
    pid = int(m.group(1))
    # Our own pid but not active here: left over from an earlier process with the same pid.
    return pid == os.getpid() or not _pid_alive(pid)


def prune_checkpoints(
    run_dir: RunDir | str | os.PathLike,
    keep_last: int,
    keep: Iterable[str | os.PathLike] = (),
) -> list[Path]:
    """Delete complete checkpoints older than the newest ``keep_last``, except those in ``keep``.

    Also removes stale ``.tmp-*`` directories (not being written by this process or by another
    live process). Incomplete ``step-*`` directories are left alone. Returns the removed paths.
    """
    if keep_last < 0:
        raise ValueError(f"keep_last must be >= 0, got {keep_last}")
    root = _checkpoints_root(run_dir)
    if not root.is_dir():
        return []
    protected = {Path(p).resolve() for p in keep}
    ckpts = complete_checkpoints(run_dir)
    if keep_last:
        protected.update(p.resolve() for p in ckpts[-keep_last:])
    removed: list[Path] = []
    for ckpt in ckpts:
        if ckpt.resolve() not in protected:
            shutil.rmtree(ckpt, ignore_errors=True)
            removed.append(ckpt)
    for child in root.iterdir():
        if child.name.startswith(TMP_PREFIX) and child.is_dir() and _is_stale_tmp(child):
            shutil.rmtree(child, ignore_errors=True)
            removed.append(child)
    return removed


# ----------------------------------------------------------------------------------- experiment trackers

# The project (W&B) / experiment (MLflow) runs are filed under; $WANDB_PROJECT and $MLFLOW_EXPERIMENT_NAME win.
TRACKER_PROJECT = "atp-latent"
_EXTRAS = {"wandb": "pip install 'atp-latent[wandb]'", "mlflow": "pip install 'atp-latent[mlflow]'"}


def check_trackers(report_to: Iterable[str] | None) -> list[str]:
    """`train.report_to` without repeats; a ValueError naming the package a tracker needs when it is missing
    (TensorBoard, a core dependency, is dropped with a warning instead: metrics.jsonl is always written)."""
    from accelerate.tracking import get_available_trackers

    available = {str(t) for t in get_available_trackers()}
    names = []
    for name in dict.fromkeys(report_to or []):
        if name in available:
            names.append(name)
        elif name == "tensorboard":
            warnings.warn("TensorBoard logging disabled: neither torch.utils.tensorboard nor tensorboardX imports",
                          stacklevel=2)
        else:
            raise ValueError(f"train.report_to: {name!r} needs the {name} package "
                             f"({_EXTRAS.get(name, f'pip install {name}')})")
    return names


def _tensorboard_tracker(path: Path):
    """accelerate's TensorBoardTracker writing PATH/tb (the run directory's layout); nothing is written before
    it is started."""
    from accelerate.tracking import TensorBoardTracker

    return TensorBoardTracker("tb", str(path))


def tracker_log_with(report_to: Iterable[str] | None, run_path: str | os.PathLike) -> list | None:
    """`Accelerator(log_with=...)` for `train.report_to`; RunDir.start_trackers starts them (init_trackers) once
    the run directory exists. Raises ValueError for a tracker whose package is missing."""
    names = check_trackers(report_to)
    return [_tensorboard_tracker(Path(run_path)) if n == "tensorboard" else n for n in names] or None


def _tracker_project() -> str:
    return os.environ.get("WANDB_PROJECT") or TRACKER_PROJECT


def _flat(config: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _scalars(record: dict[str, Any]) -> dict[str, int | float]:
    """What goes to the trackers: the finite numbers of a metrics record (strings stay in metrics.jsonl)."""
    return {k: v for k, v in record.items() if k != "step" and not isinstance(v, str)
            and not (isinstance(v, float) and not math.isfinite(v))}


# ---------------------------------------------------------------------------------------- RunDir


def _json_value(key: str, value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float | str):
        return value
    item = getattr(value, "item", None)  # torch / numpy scalars
    if callable(item):
        try:
            value = item()
        except (ValueError, RuntimeError) as exc:
            raise TypeError(f"metric {key!r}: expected a scalar, got {type(value).__name__}") from exc
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, int | float):
            return value
    raise TypeError(f"metric {key!r}: expected int, float or str, got {type(value).__name__}")


class RunDir:
    """A run directory; see the module docstring for the layout.

    Metrics go to metrics.jsonl and to the experiment trackers of `report_to` (accelerate's trackers:
    tensorboard, wandb, mlflow, ...). Training starts them with `start_trackers(accelerator, config)`, so that
    `accelerator.log` reaches them; a RunDir used on its own starts them at its first `log`.
    """

    def __init__(self, path: str | os.PathLike, tensorboard: bool = True, report_to: Iterable[str] | None = None):
        self.path = Path(path)
        self.report_to = list(report_to) if report_to is not None else (["tensorboard"] if tensorboard else [])
        self.tensorboard = "tensorboard" in self.report_to
        self.trackers: list = []  # started accelerate trackers
        self._accelerator = None
        self._trackers_started = False
        self._metrics_fh = None

    # -- creation ---------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        root: str | os.PathLike,
        name: str | None = None,
        resume: bool = False,
        tensorboard: bool = True,
        report_to: Iterable[str] | None = None,
    ) -> RunDir:
        """Create ``root/name`` (``name`` defaults to a timestamp) with its sub-directories.

        With ``resume=False`` an existing non-empty directory is an error (FileExistsError);
        with ``resume=True`` it is reused and metrics are appended. ``report_to`` (default: TensorBoard, or
        nothing with ``tensorboard=False``) names the experiment trackers.
        """
        root = Path(root)
        if name is None:
            base = _now().strftime("%Y%m%d-%H%M%S")
            name, n = base, 1
            while (root / name).exists() and not resume:
                name = f"{base}-{n}"
                n += 1
        path = root / name
        if path.exists() and any(path.iterdir()) and not resume:
            raise FileExistsError(f"run directory {path} already exists (pass resume=True to continue it)")
        path.mkdir(parents=True, exist_ok=True)
        (path / "checkpoints").mkdir(exist_ok=True)
        (path / "tb").mkdir(exist_ok=True)
        (path / "metrics.jsonl").touch(exist_ok=True)
        env = environment_info()
        env_path = path / "environment.json"
        if env_path.exists():
            stamp = _now().strftime("%Y%m%d-%H%M%S")
            env_path = path / f"environment-resume-{stamp}.json"
        env_path.write_text(json.dumps(env, indent=2, default=str) + "\n", encoding="utf-8")
        return cls(path, tensorboard=tensorboard, report_to=report_to)

    # -- paths ------------------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def tb_dir(self) -> Path:
        return self.path / "tb"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    def checkpoint_dir_for(self, step: int) -> Path:
        """``checkpoints/step-{step:08d}``."""
        return checkpoint_dir_for(self, step)

    def latest_checkpoint(self) -> Path | None:
        return latest_checkpoint(self)

    def prune_checkpoints(self, keep_last: int, keep: Iterable[str | os.PathLike] = ()) -> list[Path]:
        return prune_checkpoints(self, keep_last, keep)

    # -- config / metrics -------------------------------------------------------------------

    def save_config(self, cfg: Any) -> Path:
        """Write ``cfg`` (a config dataclass) to ``config.yaml``."""
        return configtools.save_yaml(cfg, self.config_path)

    def start_trackers(self, accelerator=None, config: dict | None = None) -> None:
        """Start the experiment trackers: `accelerator.init_trackers` when the accelerator was built with
        `log_with=tracker_log_with(...)`, else accelerate's tracker classes directly. `config` (nested dicts) is
        stored, flattened, by every tracker but TensorBoard (whose scalars stay as they were)."""
        if self._trackers_started:
            return
        self._trackers_started = True
        names = check_trackers(self.report_to)
        if not names:
            return
        try:
            self._start(names, accelerator, config)
        except Exception as exc:  # e.g. W&B online without a login: one line, not a traceback
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ValueError(f"train.report_to: cannot start the trackers {names}: {first}") from exc

    def _start(self, names: list[str], accelerator, config: dict | None) -> None:
        project = _tracker_project()
        init_kwargs = {"wandb": {"name": self.path.name, "dir": str(self.path)}, "mlflow": {"run_name": self.path.name}}
        if accelerator is not None and accelerator.log_with:
            accelerator.init_trackers(project, init_kwargs=init_kwargs)
            self._accelerator = accelerator
            self.trackers = list(accelerator.trackers)
        else:
            from accelerate.tracking import LOGGER_TYPE_TO_CLASS

            for name in names:
                if name == "tensorboard":
                    tracker = _tensorboard_tracker(self.path)
                else:
                    kind = LOGGER_TYPE_TO_CLASS[name]
                    args = (project, str(self.path)) if kind.requires_logging_directory else (project,)
                    tracker = kind(*args, **init_kwargs.get(name, {}))
                tracker.start()
                self.trackers.append(tracker)
        if config:
            for tracker in self.trackers:
                if tracker.name != "tensorboard":
                    tracker.store_init_configuration(_flat(config))

    def log(self, metrics: dict[str, Any], step: int) -> None:
        """Append ``{"step": step, **metrics}`` to metrics.jsonl and its finite numbers to the trackers."""
        step = int(step)
        record: dict[str, Any] = {"step": step}
        for key, value in metrics.items():
            if key == "step":
                raise ValueError("metric name 'step' is reserved")
            record[str(key)] = _json_value(str(key), value)
        if self._metrics_fh is None:
            self.path.mkdir(parents=True, exist_ok=True)
            self._metrics_fh = open(self.metrics_path, "a", encoding="utf-8")  # noqa: SIM115
        self._metrics_fh.write(json.dumps(record) + "\n")
        self._metrics_fh.flush()
        self.start_trackers()
        scalars = _scalars(record)
        if scalars and self._accelerator is not None:
            self._accelerator.log(scalars, step=step)
        elif scalars:
            for tracker in self.trackers:
                tracker.log(scalars, step=step)

    def truncate_metrics_after(self, step: int) -> None:
        """Drop metrics logged after `step` (a resumed run redoes those steps)."""
        if not self.metrics_path.is_file():
            return
        keep = [line for line in self.metrics_path.read_text(encoding="utf-8").splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        self.metrics_path.write_text("".join(line + "\n" for line in keep), encoding="utf-8")

    def log_histogram(self, name: str, values, step: int) -> None:
        """A histogram to TensorBoard and W&B, and its counts per integer value to metrics.jsonl (``name/hist``)."""
        import torch

        values = torch.as_tensor(values).flatten()
        counts = torch.bincount(values.long().clamp(min=0)).tolist() if values.numel() else []
        self.log({f"{name}/hist": json.dumps(counts)}, step)
        if not values.numel():
            return
        for tracker in self.trackers:  # accelerate's tracker API has no histograms: each tracker's own call
            if tracker.name == "tensorboard":
                tracker.writer.add_histogram(name, values.float(), global_step=int(step))
                tracker.writer.flush()
            elif tracker.name == "wandb":
                import wandb

                tracker.run.log({name: wandb.Histogram(values.float().numpy())}, step=int(step))

    def read_metrics(self) -> list[dict[str, Any]]:
        """All records in metrics.jsonl (a truncated last line is skipped)."""
        if not self.metrics_path.exists():
            return []
        records = []
        for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records

    def close(self) -> None:
        if self._metrics_fh is not None:
            self._metrics_fh.close()
            self._metrics_fh = None
        for tracker in self.trackers:
            tracker.finish()
        if self._accelerator is not None:
            self._accelerator.trackers = [t for t in self._accelerator.trackers if t not in self.trackers]
        self.trackers, self._accelerator, self._trackers_started = [], None, False

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"


# Settings that may change when a run is resumed: budgets and bookkeeping, not what is trained.
RESUMABLE_CHANGES = ("train.epochs", "train.max_steps", "train.max_minutes", "train.threads", "train.log_every",
                     "train.checkpoint_every", "train.keep_last", "train.report_to", "eval.", "rl.steps",
                     "rl.val_every", "rl.checkpoint_every")


def config_changes(old: dict, new: dict, prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += config_changes(a, b, f"{prefix}{k}.")
        elif a != b:
            keys.append(f"{prefix}{k}")
    return keys


def resume_point(run_path: Path, cfg) -> Path | None:
    """The last complete checkpoint of `run_path`, after checking the run's saved config still applies."""
    from atp_latent.configtools import load_yaml_dict, to_dict

    if not (run_path / "config.yaml").is_file():
        raise ValueError(f"{run_path}: nothing to resume (no config.yaml); drop --resume to start a new run")
    changed = [k for k in config_changes(load_yaml_dict(run_path / "config.yaml"), to_dict(cfg))
               if not k.startswith(RESUMABLE_CHANGES)]
    if changed:
        raise ValueError(f"{run_path}: --resume with a changed config ({', '.join(changed)}); "
                         "use a new --name or restore these settings")
    return latest_checkpoint(run_path)


def check_resume_budget(ckpt: Path, progress: dict, budget: dict[str, Any]) -> None:
    """Refuse to resume from `ckpt` with a budget other than the one its run was scheduled with: the learning-rate
    schedule is laid over the budget (train.epochs, train.max_steps, rl.steps...), so a change would move it mid-run.
    `progress` is the checkpoint's, whose "budget" the loop recorded; a checkpoint written before budgets were
    recorded has none and is accepted. Raises a one-line ValueError naming each changed key with both values."""
    def shown(value: Any) -> str:
        return "null" if value is None else str(value)

    saved = progress.get("budget")
    if saved is None:
        return
    changed = [f"{k} {shown(saved[k])} -> {shown(v)}" for k, v in budget.items() if k in saved and saved[k] != v]
    if changed:
        raise ValueError(f"{ckpt}: --resume with a changed budget ({', '.join(changed)}); a resumed run keeps the "
                         "budget its learning-rate schedule was laid over: restore it, or start a new --name")


def checkpoint_weights(run_or_ckpt: str | Path) -> Path:
    """Resolve RUN_DIR (-> best/model, final) or a checkpoint directory to a save_pretrained directory. A run whose
    best checkpoint was recorded (best/COMPLETE) but whose best/model is gone is an error, not its final/ weights:
    those are another checkpoint, and the caller asked for the run's best."""
    p = Path(run_or_ckpt)
    if (p / "best" / "COMPLETE").is_file() and not (p / "best" / "model" / "reasoner.json").is_file():
        raise ValueError(f"{p}: its best checkpoint (best/, picked on val) has no weights left in best/model; pass "
                         f"{p / 'final'} for the last step's weights")
    for cand in (p / "best" / "model", p / "final", p / "model", p):
        if (cand / "reasoner.json").is_file():
            return cand
    raise ValueError(f"{p}: no checkpoint found (expected reasoner.json in best/model, final/ or the folder itself)")


def run_dir_of(checkpoint: str | Path) -> Path:
    """The run directory a checkpoint belongs to: RUN for RUN, RUN/best/model, RUN/final, RUN/epoch-N/model and
    RUN/checkpoints/step-N/model; a checkpoint outside a run directory is its own."""
    p = Path(checkpoint).resolve()
    if p.name == "model":
        p = p.parent
    if p.name in ("best", "final") or _STEP_RE.fullmatch(p.name) or re.fullmatch(r"epoch-\d+", p.name):
        p = p.parent
    if p.name == "checkpoints":
        p = p.parent
    return p


def run_method(run: str | Path) -> str | None:
    """`method.name` in RUN/config.yaml (e.g. atp-rl, whose weights are an atp reasoner), or None."""
    from atp_latent.configtools import ConfigError, load_yaml_dict

    path = Path(run) / "config.yaml"
    try:
        method = load_yaml_dict(path).get("method", {}) if path.is_file() else {}
    except ConfigError:
        return None
    name = method.get("name") if isinstance(method, dict) else None
    return name if isinstance(name, str) else None
