"""`atp-latent quickstart`: the main job on the embedded default (synthetic data, tiny model, CPU).

CoT-SFT and No-CoT side by side, then ATP-Latent SFT and Coconut from the CoT checkpoint, then ATP-Latent
RL from the ATP checkpoint; every model on every synthetic test split; one table. See suite.py.
"""

from atp_latent.suite import run_quickstart

__all__ = ["run_quickstart"]
