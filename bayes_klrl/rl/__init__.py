r"""The plain-torch trainers, written the way RLHF practitioners write them (no Pyro), one algorithm per file.

- :mod:`~bayes_klrl.rl.reinforce`: REINFORCE with the KL in the reward and a leave-one-out baseline (RLOO);
- :mod:`~bayes_klrl.rl.ppo`: PPO-clip with a per-token KL penalty and the adaptive KL controller;
- :mod:`~bayes_klrl.rl.dpg`: the distributional policy gradient (forward KL);
- :mod:`~bayes_klrl.rl.kl`: the per-token KL estimators k1, k2, k3.

Every trainer is a :class:`~bayes_klrl.training.Trainer` run by :func:`~bayes_klrl.training.fit`.
"""

from .dpg import DPGTrainer, dpg_coefficients, dpg_surrogate
from .kl import KL_ESTIMATORS, kl_per_token
from .ppo import PPOTrainer
from .reinforce import ReinforceTrainer

__all__ = [
    "KL_ESTIMATORS",
    "DPGTrainer",
    "PPOTrainer",
    "ReinforceTrainer",
    "dpg_coefficients",
    "dpg_surrogate",
    "kl_per_token",
]
