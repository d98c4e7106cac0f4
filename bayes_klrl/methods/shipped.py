r"""The shipped methods: the trainer factories and recipe presets, and the order in which every method is
registered (the order of ``compare --methods`` choices)."""

from __future__ import annotations

import dataclasses

from ..infer.svi import SVITrainer, check_options
from ..rl import DPGTrainer, PPOTrainer, ReinforceTrainer
from ..rl.recipes import PRESETS, Recipe
from .registry import register
from .samplers import ExactMethod, ImportanceMethod, MCMCMethod
from .smc import SMCMethod
from .trained import TrainedMethod

__all__ = ["RECIPE_OPTIONS"]


def _svi(task, policy, num_sequences, **kwargs):
    return SVITrainer(task, policy, num_sequences, **kwargs)


def _reinforce(task, policy, num_sequences, **kwargs):
    return ReinforceTrainer(task, policy, num_sequences, **kwargs)


def _check_svi(num_sequences: int, **options) -> None:
    check_options(**options)


def _check_recipe(num_sequences: int, **options) -> None:
    Recipe(**options).check_batch(num_sequences)


def _ppo(task, policy, num_sequences, **kwargs):
    return PPOTrainer(task, policy, num_sequences, **kwargs)


def _dpg(task, policy, num_sequences, **kwargs):
    return DPGTrainer(task, policy, num_sequences, **kwargs)


def _recipe_preset(name: str) -> dict:
    return PRESETS[name].as_dict()


#: the compare settings a recipe trainer reads (each overrides the preset's value when given): Recipe's fields
RECIPE_OPTIONS = tuple(f.name for f in dataclasses.fields(Recipe))


def _recipe(name: str, label: str, description: str, **changes) -> TrainedMethod:
    return TrainedMethod(
        name,
        label,
        description,
        _reinforce,
        RECIPE_OPTIONS,
        fixed={**_recipe_preset(name if not changes else "rl"), **changes},
        validate=_check_recipe,
    )


register(ExactMethod())
register(
    TrainedMethod(
        "svi",
        "SVI (Pyro)",
        "stochastic variational inference, the policy as guide",
        _svi,
        ("estimator", "kl_gradient", "sites", "replay"),
        validate=_check_svi,
    )
)
register(_recipe("rl", "REINFORCE (RLOO)", "REINFORCE, k1 KL in the reward, leave-one-out baseline (RLOO)"))
register(
    TrainedMethod(
        "ppo",
        "PPO",
        "PPO-clip, per-token KL in the reward, optional adaptive KL controller",
        _ppo,
        ("kl_estimator", "kl_target", "epochs", "minibatches", "clip"),
    )
)
register(_recipe("grpo", "GRPO", "GRPO: group-standardized advantage, k3 KL in the loss"))
register(_recipe("grpo_corr", "GRPO + ratio correction", "GRPO with the in-loss k3 multiplied by q/q_old"))
register(
    _recipe(
        "drgrpo_k3",
        "Dr. GRPO advantage + k3 KL",
        "a hybrid: Dr. GRPO's group-centred advantage and constant normalization with GRPO's k3 KL in the loss",
    )
)
register(_recipe("drgrpo", "Dr. GRPO advantage + k3 KL", "the old name of drgrpo_k3 (kept for earlier runs)"))
register(_recipe("drgrpo_beta0", "Dr. GRPO", "Dr. GRPO as published: group-centred advantage, no KL term (beta = 0)"))
register(_recipe("reinforce_pp", "REINFORCE++", "REINFORCE++: k1 KL in the reward, batch-whitened advantage"))
register(_recipe("gspo", "GSPO", "GSPO: sequence-level ratio, group-standardized advantage, no KL term"))
register(
    _recipe("dapo", "DAPO (no dynamic sampling)", "DAPO: clip-higher, token-mean loss, group-std advantage, no KL")
)
register(TrainedMethod("dpg", "DPG", "distributional policy gradient: forward KL(pi*||q)", _dpg))
register(
    _recipe(
        "rl_no_kl",
        "REINFORCE without KL",
        "plain reward maximization (no KL term): collapses onto argmax r",
        kl_in="none",
    )
)
register(
    TrainedMethod(
        "dpg_batch",
        "DPG (batch-normalized)",
        "DPG with weights self-normalized within each batch",
        _dpg,
        fixed={"normalize": "batch"},
    )
)
register(ImportanceMethod())
register(MCMCMethod())
register(SMCMethod())
