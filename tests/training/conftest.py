"""Fixtures shared by the training tests."""

import random

import pytest

from atp_latent.config import load_config
from atp_latent.data.formats import write_jsonl
from atp_latent.data.records import Problem


@pytest.fixture(scope="session")
def toy(tmp_path_factory):
    """A tiny addition task and an ATP SFT checkpoint (ROOT/sft) that gets part of it right, so RL rewards differ
    within a group (an RL test on a model that earns equal rewards everywhere updates nothing)."""
    from atp_latent.training.sft import train

    root = tmp_path_factory.mktemp("toy")
    rng = random.Random(0)

    def rec():
        a, b = rng.randint(1, 4), rng.randint(1, 4)
        return Problem(question=f"Ann has {a} cats and gets {b} more. How many cats?", steps=[f"{a}+{b}={a + b}"],
                       answer=str(a + b))

    write_jsonl(root / "train.jsonl", [rec() for _ in range(256)])
    write_jsonl(root / "val.jsonl", [rec() for _ in range(16)])
    sets = [f"data.train={root / 'train.jsonl'}", f"data.val={root / 'val.jsonl'}", "method.name=atp",
            "method.latents_per_step=1", "curriculum.max_latent_stage=1", "curriculum.stage_offset=2",
            "optim.lr=0.003", "optim.batch_size=32", "train.epochs=5", "data.max_val=16", f"output_dir={root}",
            "name=sft"]
    train(load_config(None, sets))
    return root


def _rl_sets(root, name, **over) -> list[str]:
    """--set overrides of a small RL run from the toy checkpoint."""
    sets = {"data.train": root / "train.jsonl", "data.val": root / "val.jsonl", "data.max_val": 8,
            "method.name": "atp-rl", "model.init_from": root / "sft", "rl.questions_per_step": 4,
            "rl.group_size": 4, "rl.minibatch_size": 8, "rl.steps": 2, "rl.lr": 5e-4, "rl.val_every": 100,
            "train.threads": 1, "output_dir": root, "name": name} | over
    return [f"{k}={v}" for k, v in sets.items()]


@pytest.fixture(scope="session")
def rl_sets():
    return _rl_sets


@pytest.fixture
def fp16_on_cpu(monkeypatch):
    """train.mixed_precision=fp16 on this CPU as accelerate does it on a GPU: float16 autocast and a GradScaler (on a
    CPU accelerate makes neither, and fp16 trains in fp32). Accelerate's process-wide state is cleared after."""
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from atp_latent.training import sft

    class Fp16Accelerator(Accelerator):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            if self.mixed_precision == "fp16":
                self.native_amp, self.scaler = True, torch.amp.GradScaler("cpu")

    monkeypatch.setattr(sft, "Accelerator", Fp16Accelerator)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


class Killed(Exception):
    """A run stopped right after it wrote a checkpoint, as if killed there."""


@pytest.fixture
def kill_after_checkpoint():
    """kill(cfg, step): run SFT on `cfg` until it has written checkpoints/step-N, and stop it there."""
    from atp_latent.training import sft

    def kill(cfg, step: int) -> None:
        real = sft.save_checkpoint

        def save(path, *args, **kwargs):
            real(path, *args, **kwargs)
            if path.name == f"step-{step:08d}":
                raise Killed(path)

        with pytest.MonkeyPatch.context() as m:
            m.setattr(sft, "save_checkpoint", save)
            with pytest.raises(Killed):
                sft.train(cfg)

    return kill


@pytest.fixture
def script_answers(monkeypatch):
    """script(model, tok, texts): the model's generation replaced by `texts`, one per row, each ending in eos (the
    latents stay real and sampled); returns the texts' token ids."""
    import torch

    from atp_latent.modeling.engine import Generation

    def script(model, tok, texts):
        real_answer = model.answer
        enc = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in texts]
        assert [tok.decode(e[:-1]) for e in enc] == list(texts)

        def scripted(*args, **kw):
            state, gen = real_answer(*args, **kw)
            width = max(map(len, enc))
            tokens = torch.full((len(enc), width), tok.pad_token_id)
            mask = torch.zeros(len(enc), width, dtype=torch.bool)
            for i, e in enumerate(enc):
                tokens[i, : len(e)], mask[i, : len(e)] = torch.tensor(e), True
            return state, Generation(tokens, torch.zeros(tokens.shape), mask, mask.sum(-1) - 1, gen.n_passes)

        monkeypatch.setattr(model, "answer", scripted)
        return enc

    return script
