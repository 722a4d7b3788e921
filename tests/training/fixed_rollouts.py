"""RL with rollouts that do not depend on which process draws them (a helper for the 1- vs 2-process test).

`train_rl` gives each process its own random stream, so a 2-process run samples other trajectories than a
1-process run on the same questions. Here each question's G rollouts are drawn alone, from a generator seeded by
the question and the step, and the per-question buffers are padded and joined: the two runs then see the same
trajectories and must end with the same weights. The reward is replaced by a deterministic function of each
trajectory's sampled answer tokens, so that every group carries a signal (the toy model's real rewards are mostly
equal within a group, and a group of equal rewards contributes no gradient whichever process drew it). Run as a script: `python fixed_rollouts.py --set ...` (under
`accelerate launch` for several processes).
"""

from __future__ import annotations

import sys
import zlib

import torch

from atp_latent.training import rl

_real_rollout = rl.rollout
_calls = {"n": 0}


def _pad(xs: list[torch.Tensor], value, left: bool = False) -> torch.Tensor:
    width = max(x.shape[1] for x in xs)
    out = []
    for x in xs:
        fill = torch.full((x.shape[0], width - x.shape[1], *x.shape[2:]), value, dtype=x.dtype, device=x.device)
        out.append(torch.cat([fill, x] if left else [x, fill], dim=1))
    return torch.cat(out)


def join(trajs: list, pad_id: int):
    """One Trajectories from several, padded as one rollout would pad them (prompts left, the rest right)."""
    b = [t.batch for t in trajs]
    batch = {
        "prefix_ids": _pad([x["prefix_ids"] for x in b], pad_id, left=True),
        "prefix_mask": _pad([x["prefix_mask"] for x in b], 0, left=True),
        "n_slots": torch.cat([x["n_slots"] for x in b]),
        "rl_z": _pad([x["rl_z"] for x in b], 0.0),
        "rl_tokens": _pad([x["rl_tokens"] for x in b], pad_id),
    }
    for k in ("rl_active", "rl_consulted", "rl_stopped", "rl_token_mask"):
        batch[k] = _pad([x[k] for x in b], False)
    for k, v in b[0].items():
        if k not in batch:  # scalars: end_id, temperature, ...
            batch[k] = v
    logps = {k: _pad([t.rollout_logps[k] for t in trajs], 0.0) for k in trajs[0].rollout_logps}
    return rl.Trajectories(batch, logps, torch.cat([t.rewards for t in trajs]),
                           {k: torch.cat([t.terms[k] for t in trajs]) for k in trajs[0].terms},
                           torch.cat([t.latents_used for t in trajs]), sum(t.sigma for t in trajs) / len(trajs))


def per_question_rollout(model, builder, problems, cfg, generator, device, text_embed=None):
    step = _calls["n"]
    _calls["n"] += 1
    trajs = []
    for p in problems:
        g = torch.Generator(device=device).manual_seed(zlib.crc32(p.question.encode()) + 7919 * step)
        trajs.append(_real_rollout(model, builder, [p], cfg, g, device, text_embed))
    traj = join(trajs, builder.tok.pad_token_id)
    tokens = traj.batch["rl_tokens"].cpu()
    traj.rewards = ((tokens[:, 0] * 7 + tokens[:, 1]) % 5).float() / 4
    return traj


def install() -> None:
    _calls["n"] = 0
    rl.rollout = per_question_rollout


if __name__ == "__main__":
    from atp_latent.config import load_config

    install()
    rl.train_rl(load_config(None, sys.argv[1:]))
