"""RL with the real rollouts, recording what each process rolled out (a helper for the loop tests).

Each call of `rl.rollout` appends one line to RUN_DIR/rollouts-rank<R>.jsonl: the questions it rolled out and the
latent slots plus answer tokens it sampled (before dynamic sampling keeps some groups). Run as a script: `python
recorded_questions.py RECORD_DIR --set ...` (under `accelerate launch` for several processes)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from atp_latent.training import rl

_real_rollout = rl.rollout


def install(record_dir: Path, rank: int) -> None:
    def recording_rollout(model, builder, problems, cfg, generator, device, text_embed=None):
        traj = _real_rollout(model, builder, problems, cfg, generator, device, text_embed)
        sampled = int(traj.batch["rl_token_mask"].sum() + traj.batch["rl_active"].sum())
        with open(record_dir / f"rollouts-rank{rank}.jsonl", "a") as f:
            f.write(json.dumps({"questions": [p.question for p in problems], "sampled": sampled}) + "\n")
        return traj

    rl.rollout = recording_rollout


if __name__ == "__main__":
    import os

    from atp_latent.config import load_config

    install(Path(sys.argv[1]), int(os.environ.get("RANK", 0)))
    rl.train_rl(load_config(None, sys.argv[2:]))
