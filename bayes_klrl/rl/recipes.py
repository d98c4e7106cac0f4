r"""The policy-gradient recipes practitioners run, as small pieces chained over one per-token batch record.

For a batch of :math:`N` sequences :math:`x_i` with rewards :math:`r_i`, per-token log-probabilities
:math:`\log q_{it}` (differentiable), :math:`\log q^{\text{old}}_{it}` (the policy that drew the batch) and
:math:`\log\pi_{0,it}`, a :class:`Recipe` (the user-facing record: flags, presets, checkpoints) is built once into a
:class:`Pipeline` of seven pieces, each a small function of a :class:`TokenBatch`:

1. **source** (how the batch is drawn and scored): on-policy; ``replay`` (this batch and the ``replay - 1``
   before it, rescored by the current policy and weighted by the self-normalized :math:`w_i\propto
   q(x_i)/q_{\text{behaviour}}(x_i)`); the whole next-token distributions when a piece needs them
   (``kl_gradient="analytic"``, the per-token entropy); ``reference_reset_every`` (:math:`\pi_0` replaced by the
   policy every K steps); a behaviour policy :math:`\mu` (``behaviour_lag``: the policy of K steps before,
   ``behaviour_temperature``: sampled at temperature :math:`\tau`), whose log-probabilities go with the batch;
2. **signal** :math:`R_i`: the reward, standardized first when ``reward_normalization`` asks
   (:math:`r' = (r - \bar r)/(s + 10^{-4})` over groups or the batch, *before* the KL is added), then
   :math:`R = r' - \beta\sum_t k_{it}` with the KL in the reward (``kl_in="reward"``; k1, k2 or k3, not
   differentiated), :math:`R = r'` with it in the loss or nowhere, minus :math:`\alpha\log q(x)` with a sequence
   entropy bonus (``entropy_coef``, ``entropy_estimator="sequence"``); with the analytic KL a per-position signal
   :math:`R_{is} = r'_i - \beta\sum_{t>s}\mathrm{KL}_t`;
3. **advantage**: leave-one-out :math:`A_i = R_i - \frac{1}{N-1}\sum_{j\ne i}R_j` (``loo``; per position with the
   analytic KL, importance-weighted under replay), group-centred :math:`A_i = R_i - \bar R_g` (``group``,
   Dr. GRPO), group-standardized :math:`(R_i - \bar R_g)/(s_g + 10^{-4})` (``group-std``, GRPO) over groups of
   ``group_size`` consecutive sequences, or batch-standardized (``batch-std``, REINFORCE++), :math:`s` the unbiased
   standard deviation;
4. **surrogate** (per token, to be minimized): :math:`-\rho_{it}A_i` with :math:`\rho = q/q^{\text{old}}` (1 in
   value, gradient :math:`A\nabla\log q`) for one update per batch; with several (``epochs``, ``minibatches``)
   the clipped :math:`-\min(\rho A, \mathrm{clip}(\rho, 1-\epsilon_{\text{low}}, 1+\epsilon_{\text{high}})A)`
   (``clip``, or ``clip_low``/``clip_high``: DAPO's clip-higher); ``ratio="sequence"`` uses GSPO's
   :math:`s_i = \exp(\frac{1}{|x_i|}\sum_t\log\rho_{it})` for every token of sequence :math:`i`;
5. **loss terms** (per token, differentiated): :math:`+\beta k_{it}` with the KL in the loss (times
   :math:`\rho_{it}` under ``kl_ratio_correction``), :math:`+\beta\mathrm{KL}_t` for the analytic KL (the exact
   per-token KL over the vocabulary), :math:`-\alpha H(q(\cdot|x_{<t}))` for the per-token entropy bonus
   (``entropy_estimator="token"``, prefix weights detached, as TRL and verl compute it);
6. **off-policy correction** of the per-token loss for a batch drawn by :math:`\mu`: none, each token times
   :math:`\min(q_t/\mu_t, C)` (``token-tis``, :data:`TIS_CAP`), or each sequence times :math:`q(x)/\mu(x)`
   (``sequence-is``, the one that keeps :math:`\nabla J`);
7. **aggregation**: a sequence's token terms summed and times :math:`1/|x_i|` (``sequence``, GRPO), 1
   (``constant``, Dr. GRPO and RLOO) or :math:`N/\sum_j|x_j|` (``token-mean``, DAPO), then averaged over the
   batch (or summed with the replay weights). With sequences of one fixed length, as in every task here, the three
   differ by the overall factor :math:`1/T`, which Adam all but ignores.

Each piece declares what it requires of the others (:meth:`Recipe.__post_init__` checks every requirement once,
where the recipe is built); the training step (:class:`~bayes_klrl.rl.reinforce.ReinforceTrainer`) runs the
chain and holds no branch on a recipe option. A new option is one :class:`Recipe` field (its flag, its row and
checkpoint entry and its help follow from the field) and one piece. What each choice's expected gradient is, and
where each recipe settles, is derived in docs/tutorial.md ("Which RLHF recipes sample the posterior?"), computed
exactly in :mod:`bayes_klrl.rl.theory` and checked against enumeration in tests/rl/test_recipes.py.

References: Shao et al. (2024) *DeepSeekMath* (GRPO); Liu et al. (2025) *Understanding R1-Zero-like training*
(Dr. GRPO); Ahmadian et al. (2024) *Back to basics* (RLOO); Schulman (2020) *Approximating KL divergence*;
Yu et al. (2025) *DAPO*; Zheng et al. (2025) *Group sequence policy optimization* (GSPO); Hu (2025)
*REINFORCE++*.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..estimators import (
    KL_GRADIENTS,
    check_replay,
    floor_infeasible,
    later_sum,
    leave_one_out_baseline,
    replay_advantages,
)
from .kl import KL_ESTIMATORS, kl_per_token

__all__ = [
    "ADVANTAGES",
    "ENTROPY_ESTIMATORS",
    "GROUP_STD_EPS",
    "KL_PLACES",
    "NORMALIZATIONS",
    "OFF_POLICY_CORRECTIONS",
    "PRESETS",
    "RATIOS",
    "REWARD_NORMALIZATIONS",
    "TIS_CAP",
    "Pipeline",
    "Recipe",
    "TokenBatch",
    "advantages",
    "build_pipeline",
    "clipped_surrogate",
    "kl_loss_terms",
    "learning_signal",
    "minibatch_indices",
    "normalize_rewards",
    "recipe_flags",
    "recipe_loss",
    "token_entropy",
]

KL_PLACES = ("reward", "loss", "none")
ADVANTAGES = ("loo", "group", "group-std", "batch-std")
NORMALIZATIONS = ("sequence", "constant", "token-mean")
REWARD_NORMALIZATIONS = ("none", "group-std", "batch-std")
RATIOS = ("token", "sequence")
OFF_POLICY_CORRECTIONS = ("none", "token-tis", "sequence-is")
#: the cap C of the truncated per-token importance weight min(q_t/μ_t, C) (``token-tis``)
TIS_CAP = 2.0
ENTROPY_ESTIMATORS = ("sequence", "token")
#: the ε of the standardized advantage and reward, (r − mean)/(std + ε)
GROUP_STD_EPS = 1e-4


def _field(default: Any, help: str, *, choices: tuple | None = None, recorded_when_set: bool = False, kind=None):
    """A :class:`Recipe` field: its ``compare`` flag's help and choices, and whether it is recorded (rows,
    checkpoints) only away from its default (options added after checkpoints were first written: a checkpoint
    written before the option existed still resumes, and a run that sets it is told apart)."""
    kind = kind or type(default)
    return dataclasses.field(
        default=default,
        metadata={"help": help, "choices": choices, "recorded_when_set": recorded_when_set, "kind": kind},
    )


@dataclass(frozen=True)
class Recipe:
    """The options of one policy-gradient recipe (see the module docstring); defaults are RLOO.

    Each field is one ``compare`` flag (``--kl-in`` …, :func:`recipe_flags`) whose help is the field's
    ``metadata["help"]``.

    :param str kl_in: ``"reward"``, ``"loss"`` or ``"none"``.
    :param str kl_estimator: ``"k1"``, ``"k2"`` or ``"k3"``.
    :param bool kl_ratio_correction: multiply an in-loss KL term by :math:`q/q_{\\text{old}}`.
    :param str advantage: ``"loo"``, ``"group"``, ``"group-std"`` or ``"batch-std"``.
    :param int group_size: sequences per group (``group`` advantages and reward normalization); divides the batch.
    :param str normalization: the loss aggregation, ``"sequence"`` (:math:`1/|x|`), ``"constant"`` or
        ``"token-mean"``.
    :param int epochs: passes over each batch.
    :param int minibatches: minibatches per pass.
    :param float clip: :math:`\\epsilon` of the clipped ratio (used when a batch is reused).
    :param str kl_gradient: ``"sampled"`` or ``"analytic"`` (the exact per-token KL, Rao-Blackwellized; KL in the
        reward, k1, leave-one-out advantage and one update per batch only).
    :param int replay: batches each gradient uses, this one included, importance-weighted (1: on-policy; KL in
        the reward, leave-one-out advantage, sampled KL gradient and one update per batch only).
    :param str reward_normalization: ``"none"``, ``"group-std"`` or ``"batch-std"``: standardize :math:`r`
        before the KL is added (OpenRLHF's ``group_norm``).
    :param float entropy_coef: :math:`\\alpha \\ge 0` of an entropy bonus :math:`+\\alpha H(q)`.
    :param str entropy_estimator: ``"sequence"`` (:math:`-\\alpha\\log q(x)` in the signal: the gradient of
        :math:`\\alpha H(q)`) or ``"token"`` (the per-token entropy over the vocabulary, differentiated directly).
    :param clip_low: :math:`\\epsilon_{\\text{low}}` of the clipped ratio (``None``: ``clip``).
    :param clip_high: :math:`\\epsilon_{\\text{high}}` of the clipped ratio (``None``: ``clip``).
    :param str ratio: ``"token"`` (PPO, GRPO) or ``"sequence"`` (GSPO's length-normalized sequence ratio).
    :param int reference_reset_every: replace :math:`\\pi_0` by the current policy every this many steps (0: never).
    :param str off_policy_correction: ``"none"``, ``"token-tis"`` (each token's loss times
        :math:`\\min(q_t/\\mu_t, C)`, :data:`TIS_CAP`) or ``"sequence-is"`` (each sequence's times
        :math:`q(x)/\\mu(x)`) for a batch drawn by a behaviour policy :math:`\\mu`.
    :param int behaviour_lag: :math:`\\mu` is the policy of this many steps before (0: the current one).
    :param float behaviour_temperature: :math:`\\mu` samples at this temperature.
    """

    kl_in: str = _field("reward", "recipes: the KL in the reward, in the loss, or none (none: the method's own)",
                        choices=KL_PLACES)  # fmt: skip
    kl_estimator: str = _field(
        "k1", "per-token KL estimator (none: each method's own, k1 for rl and ppo, k3 for the GRPO recipes)",
        choices=KL_ESTIMATORS)  # fmt: skip
    kl_ratio_correction: bool = _field(False, "recipes: multiply an in-loss KL term by q/q_old")
    advantage: str = _field("loo", "recipes: leave-one-out, group-centred, group- or batch-standardized advantage",
                            choices=ADVANTAGES)  # fmt: skip
    group_size: int = _field(16, "recipes: sequences per group of a group advantage (GRPO presets: 16)")
    normalization: str = _field(
        "constant", "recipes: the loss aggregation, a sequence's token terms x 1/|x| (sequence), x 1 (constant) or "
        "over all tokens of the batch (token-mean)", choices=NORMALIZATIONS)  # fmt: skip
    epochs: int = _field(1, "recipes and ppo: passes over each batch (clipped ratio when > 1)")
    minibatches: int = _field(1, "recipes and ppo: minibatches per pass")
    clip: float = _field(0.2, "recipes and ppo: clip range epsilon of the importance ratio")
    kl_gradient: str = _field(
        "sampled", "svi and the KL-in-reward recipes: the KL term's gradient from the sampled log-ratio or the exact "
        "per-token KL over the vocabulary (analytic, Rao-Blackwellized; none: sampled)", choices=KL_GRADIENTS)  # fmt: skip
    replay: int = _field(
        1, "svi and the KL-in-reward recipes: batches each gradient uses, this one included, importance-weighted by "
        "q/q_old (none: 1, on-policy)", recorded_when_set=True)  # fmt: skip
    reward_normalization: str = _field(
        "none", "recipes: standardize r over groups or the batch before the KL is added (OpenRLHF group_norm)",
        choices=REWARD_NORMALIZATIONS, recorded_when_set=True)  # fmt: skip
    entropy_coef: float = _field(0.0, "recipes: coefficient alpha of an entropy bonus +alpha H(q)",
                                 recorded_when_set=True)  # fmt: skip
    entropy_estimator: str = _field(
        "sequence", "recipes: the entropy bonus from -log q(x) in the signal (sequence) or the per-token entropy "
        "over the vocabulary, differentiated (token, as TRL and verl)", choices=ENTROPY_ESTIMATORS,
        recorded_when_set=True)  # fmt: skip
    clip_low: float | None = _field(None, "recipes: lower clip range of the ratio, 1 - clip_low (none: clip)",
                                    recorded_when_set=True, kind=float)  # fmt: skip
    clip_high: float | None = _field(None, "recipes: upper clip range of the ratio, 1 + clip_high (none: clip; "
                                     "DAPO: 0.28)", recorded_when_set=True, kind=float)  # fmt: skip
    ratio: str = _field("token", "recipes: per-token importance ratio (PPO, GRPO) or GSPO's length-normalized "
                        "sequence ratio", choices=RATIOS, recorded_when_set=True)  # fmt: skip
    reference_reset_every: int = _field(0, "recipes: replace the reference pi0 by the policy every K steps "
                                        "(0: never)", recorded_when_set=True)  # fmt: skip
    off_policy_correction: str = _field(
        "none", "recipes: reweight a batch drawn by a behaviour policy mu != q per token, min(q_t/mu_t, 2) "
        "(token-tis), or per sequence, q(x)/mu(x) (sequence-is)", choices=OFF_POLICY_CORRECTIONS,
        recorded_when_set=True)  # fmt: skip
    behaviour_lag: int = _field(0, "recipes: sample each batch with the policy of K steps before (asynchronous "
                                "rollouts; 0: the current one)", recorded_when_set=True)  # fmt: skip
    behaviour_temperature: float = _field(1.0, "recipes: sample each batch at this temperature (a sampler that "
                                          "differs from q; 1: q itself)", recorded_when_set=True)  # fmt: skip

    def __post_init__(self):
        for f in dataclasses.fields(self):
            allowed = f.metadata["choices"]
            if allowed is not None and getattr(self, f.name) not in allowed:
                raise ValueError(f"unknown {f.name} {getattr(self, f.name)!r}; choose from {', '.join(allowed)}")
        if isinstance(self.group_size, bool) or int(self.group_size) < 2:
            raise ValueError(f"group_size must be >= 2, got {self.group_size}")
        if int(self.epochs) < 1 or int(self.minibatches) < 1:
            raise ValueError("epochs and minibatches must be >= 1")
        for name in ("clip", "clip_low", "clip_high"):
            value = getattr(self, name)
            if value is not None and not 0 < value < 1:
                raise ValueError(f"{name} must be in (0, 1), got {value}")
        if not (isinstance(self.entropy_coef, (int, float)) and math.isfinite(self.entropy_coef)) or (
            self.entropy_coef < 0
        ):
            raise ValueError(f"entropy_coef must be a finite number >= 0, got {self.entropy_coef!r}")
        reset = self.reference_reset_every
        if isinstance(reset, bool) or not isinstance(reset, int) or reset < 0:
            raise ValueError(f"reference_reset_every must be a whole number of steps >= 0, got {reset!r}")
        check_replay(self.replay)
        lag = self.behaviour_lag
        if isinstance(lag, bool) or not isinstance(lag, int) or lag < 0:
            raise ValueError(f"behaviour_lag must be a whole number of steps >= 0, got {lag!r}")
        tau = self.behaviour_temperature
        if not (isinstance(tau, (int, float)) and math.isfinite(tau) and tau > 0):
            raise ValueError(f"behaviour_temperature must be a finite number > 0, got {tau!r}")
        for requirement in _requirements(self):  # each piece's requirements, checked once, here
            requirement()

    def check_batch(self, num_sequences: int) -> None:
        """Refuse a batch size the recipe cannot split (groups, minibatches of at least 2)."""
        grouped = [name for name in ("advantage", "reward_normalization") if getattr(self, name) == "group-std"]
        grouped += ["advantage"] if self.advantage == "group" else []
        if grouped and num_sequences % self.group_size:
            raise ValueError(
                f"num_sequences {num_sequences} is not a multiple of group_size {self.group_size} "
                f"({grouped[0]} {getattr(self, grouped[0])!r} standardizes within groups of consecutive sequences)"
            )
        if num_sequences // self.minibatches < 2:
            raise ValueError(f"{self.minibatches} minibatches of {num_sequences} sequences leave fewer than 2 each")

    @property
    def reuses_batches(self) -> bool:
        """Whether a batch feeds more than one update (then the clipped ratio matters)."""
        return self.epochs * self.minibatches > 1

    @property
    def off_policy(self) -> bool:
        """Whether batches are drawn by a behaviour policy other than the current one."""
        return self.behaviour_lag > 0 or self.behaviour_temperature != 1.0

    @property
    def clip_range(self) -> tuple[float, float]:
        r""":math:`(1-\epsilon_{\text{low}}, 1+\epsilon_{\text{high}})`."""
        low = self.clip if self.clip_low is None else self.clip_low
        high = self.clip if self.clip_high is None else self.clip_high
        return 1 - low, 1 + high

    def as_dict(self) -> dict:
        """The options as plain values (a run's recorded settings), less the fields recorded only when set
        (``metadata["recorded_when_set"]``) at their default."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if not (f.metadata["recorded_when_set"] and getattr(self, f.name) == f.default)
        }


def recipe_flags() -> dict[str, tuple[type, dataclasses.Field]]:
    """The ``compare`` flags of the recipe options, generated from :class:`Recipe`'s fields: name →
    ``(type | None, field)``, each defaulting to ``None`` ("the method's own"), with the field's help and choices
    (the format of :func:`bayes_klrl.config.option`)."""
    flags = {}
    for f in dataclasses.fields(Recipe):
        kind = f.metadata["kind"]
        flags[f.name] = (
            kind | None,
            dataclasses.field(default=None, metadata={"help": f.metadata["help"], "choices": f.metadata["choices"]}),
        )
    return flags


# ---------------------------------------------------------------------------------------------------------------
# each piece's requirements (checked once, in Recipe.__post_init__)
# ---------------------------------------------------------------------------------------------------------------


def _requirements(recipe: Recipe) -> list[Callable[[], None]]:
    checks = []
    if recipe.kl_ratio_correction:
        checks.append(_require(recipe.kl_in == "loss", "kl_ratio_correction applies to a KL term in the loss; "
                               "set kl_in='loss'"))  # fmt: skip
    if recipe.kl_gradient == "analytic":
        checks += [
            _require(
                recipe.kl_in == "reward",
                f"kl_gradient='analytic' is the exact KL's gradient with its score part for later tokens, for the KL "
                f"in the reward; kl_in={recipe.kl_in!r} has no such term (use kl_in='reward' or kl_gradient='sampled')",
            ),
            _require(
                recipe.kl_estimator == "k1",
                "kl_gradient='analytic' computes the KL exactly; kl_estimator applies to 'sampled' only",
            ),  # fmt: skip
            _require(
                recipe.advantage == "loo",
                "kl_gradient='analytic' centres each position by leave-one-out; it needs advantage='loo'",
            ),  # fmt: skip
            _require(
                not recipe.reuses_batches,
                "kl_gradient='analytic' takes one update per batch; set epochs=1 and minibatches=1",
            ),  # fmt: skip
        ]
    if recipe.replay > 1:
        checks += [
            _require(
                recipe.kl_in == "reward",
                f"replay importance-weights the KL-in-reward signal of earlier batches and needs kl_in='reward', "
                f"got kl_in={recipe.kl_in!r} (or set replay=1)",
            ),
            _require(
                recipe.kl_estimator == "k1",
                f"replay estimates the gradient of J, which needs the k1 log-ratio in the reward (with "
                f"{recipe.kl_estimator} its gradient is not zero at pi*); set kl_estimator='k1' or replay=1",
            ),
            _require(
                recipe.advantage == "loo",
                "replay centres each signal by the weighted leave-one-out mean; it needs advantage='loo'",
            ),  # fmt: skip
            _require(
                recipe.kl_gradient == "sampled",
                "replay takes the sampled KL gradient; set kl_gradient='sampled' or replay=1",
            ),  # fmt: skip
            _require(
                not recipe.reuses_batches,
                "replay already reuses earlier batches, importance-weighted; set epochs=1, minibatches=1",
            ),  # fmt: skip
            _require(
                recipe.reward_normalization == "none",
                "replay rescores kept batches whose reward statistics "
                "were those of their own batch; set reward_normalization='none' or replay=1",
            ),  # fmt: skip
            _require(
                recipe.reference_reset_every == 0,
                "replay keeps log pi0 of earlier batches, which a reference "
                "reset would change; set reference_reset_every=0 or replay=1",
            ),  # fmt: skip
        ]
    if recipe.off_policy:
        checks += [
            _require(
                recipe.replay == 1,
                "replay already weights earlier batches by q/q_behaviour; set replay=1 "
                "with behaviour_lag or behaviour_temperature",
            ),  # fmt: skip
            _require(
                recipe.kl_gradient == "sampled",
                "kl_gradient='analytic' scores the policy's own draws; set "
                "kl_gradient='sampled' with behaviour_lag or behaviour_temperature",
            ),  # fmt: skip
        ]
    if recipe.ratio == "sequence":
        checks.append(_require(recipe.kl_gradient == "sampled", "ratio='sequence' is a surrogate of the sampled "
                               "score; set ratio='token' with kl_gradient='analytic'"))  # fmt: skip
    return checks


def _require(condition: bool, message: str) -> Callable[[], None]:
    def check() -> None:
        if not condition:
            raise ValueError(message)

    return check


#: the named recipes usable in ``compare --methods``
PRESETS: dict[str, Recipe] = {
    "rl": Recipe(),
    "grpo": Recipe(kl_in="loss", kl_estimator="k3", advantage="group-std", normalization="sequence"),
    "grpo_corr": Recipe(
        kl_in="loss", kl_estimator="k3", kl_ratio_correction=True, advantage="group-std", normalization="sequence"
    ),
    # Dr. GRPO's advantage and aggregation with GRPO's k3 KL term in the loss: a hybrid (as published, Dr. GRPO
    # runs with beta = 0: drgrpo_beta0); "drgrpo" is its old name, kept for runs and checkpoints that use it
    "drgrpo_k3": Recipe(kl_in="loss", kl_estimator="k3", advantage="group", normalization="constant"),
    "drgrpo": Recipe(kl_in="loss", kl_estimator="k3", advantage="group", normalization="constant"),
    # as published: no KL term at all (TRL beta=0.0, verl use_kl_loss=False); its fixed point is argmax r
    "drgrpo_beta0": Recipe(kl_in="none", advantage="group", normalization="constant"),
    # REINFORCE++: k1 KL in the reward, the advantage whitened over the whole batch
    "reinforce_pp": Recipe(advantage="batch-std"),
    # GSPO: the sequence ratio, group-standardized advantage, no KL term (beta = 0 as published)
    "gspo": Recipe(kl_in="none", advantage="group-std", normalization="sequence", ratio="sequence"),
    # DAPO without dynamic sampling: clip-higher, token-mean aggregation, group-standardized advantage, no KL
    "dapo": Recipe(kl_in="none", advantage="group-std", normalization="token-mean", clip_low=0.2, clip_high=0.28),
}


# ---------------------------------------------------------------------------------------------------------------
# the batch record and the pieces
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class TokenBatch:
    r"""One batch (or minibatch) as every piece sees it; tensors on the policy's device.

    :ivar x: tokens ``(n, T)``.
    :ivar token_log_q: :math:`\log q(x_t|x_{<t})` ``(n, T)``, differentiable (the current pass).
    :ivar old_token_log_q: the same under the policy that drew the batch ``(n, T)``, no gradient.
    :ivar token_log_prior: :math:`\log\pi_0(x_t|x_{<t})` ``(n, T)`` (the reference, after any reset).
    :ivar rewards: :math:`r` ``(n,)``.
    :ivar log_q_next: :math:`\log q(\cdot|x_{<t})` ``(n, T, V)``, differentiable, when a piece needs it.
    :ivar token_kl: the exact :math:`\mathrm{KL}_t` ``(n, T)``, differentiable (analytic KL only).
    :ivar log_weight: :math:`\log q(x) - \log q_{\text{behaviour}}(x)` ``(n,)``, no gradient (replay).
    :ivar behaviour_token_log_q: :math:`\log\mu(x_t|x_{<t})` ``(n, T)`` of the policy that sampled the batch
        (``None``: the current policy, before this batch's updates).
    :ivar weight: per-sequence importance weights ``(n,)`` (replay), ``None``: the batch mean.
    :ivar advantage: ``(n,)`` or per position ``(n, T)``, set by the advantage piece.
    """

    x: torch.Tensor
    token_log_q: torch.Tensor
    old_token_log_q: torch.Tensor
    token_log_prior: torch.Tensor
    rewards: torch.Tensor
    log_q_next: torch.Tensor | None = None
    token_kl: torch.Tensor | None = None
    log_weight: torch.Tensor | None = None
    behaviour_token_log_q: torch.Tensor | None = None
    weight: torch.Tensor | None = None
    advantage: torch.Tensor | None = None

    def rows(self, idx: torch.Tensor, token_log_q: torch.Tensor, log_q_next: torch.Tensor | None) -> TokenBatch:
        """The minibatch ``idx``, rescored by the current policy (``token_log_q``, ``log_q_next``)."""

        def take(t):
            return None if t is None else t[idx]

        return TokenBatch(
            self.x[idx], token_log_q, self.old_token_log_q[idx], self.token_log_prior[idx], self.rewards[idx],
            log_q_next, take(self.token_kl), take(self.log_weight), take(self.behaviour_token_log_q),
            take(self.weight), take(self.advantage),
        )  # fmt: skip


def normalize_rewards(rewards: torch.Tensor, kind: str = "none", group_size: int = 16) -> torch.Tensor:
    r"""Rewards ``(N,)`` standardized before any KL is added: ``group-std``
    :math:`(r_i - \bar r_{g(i)})/(s_{g(i)} + 10^{-4})` over groups of ``group_size`` consecutive sequences,
    ``batch-std`` the same over the whole batch, :math:`s` the unbiased standard deviation; ``none``: unchanged.
    −inf rewards (hard constraints) are floored first.

    Example::

        >>> normalize_rewards(torch.tensor([0.0, 2.0, 1.0, 1.0]), "group-std", group_size=2)
        tensor([-0.7071,  0.7071,  0.0000,  0.0000])
    """
    if kind == "none":
        return rewards
    if kind not in REWARD_NORMALIZATIONS:
        raise ValueError(f"unknown reward_normalization {kind!r}; choose from {', '.join(REWARD_NORMALIZATIONS)}")
    return advantages(floor_infeasible(rewards), "group-std" if kind == "group-std" else "batch-std", group_size)


def learning_signal(
    rewards: torch.Tensor, token_log_q: torch.Tensor, token_log_prior: torch.Tensor, beta: float, recipe: Recipe
) -> torch.Tensor:
    r"""The per-sequence signal :math:`R_i` (before the advantage) from rewards already normalized:
    :math:`r_i - \beta\sum_t k_{it}` with the KL in the reward (no gradient), :math:`r_i` with it in the loss,
    minus :math:`\alpha\log q(x_i)` with a sequence entropy bonus; −inf (hard constraints) floored to a finite value."""
    with torch.no_grad():
        signal = rewards
        if recipe.kl_in == "reward" and recipe.kl_estimator == "k1":  # Σ_t k1 = log q(x) − log π0(x)
            signal = rewards - beta * (token_log_q.detach().sum(-1) - token_log_prior.sum(-1))
        elif recipe.kl_in == "reward":
            signal = rewards - beta * kl_per_token(token_log_q.detach(), token_log_prior, recipe.kl_estimator).sum(-1)
        if recipe.entropy_coef and recipe.entropy_estimator == "sequence":
            signal = signal - recipe.entropy_coef * token_log_q.detach().sum(-1)
        return floor_infeasible(signal)


def _analytic_signal(rewards: torch.Tensor, batch: TokenBatch, beta: float, recipe: Recipe) -> torch.Tensor:
    r"""Per position :math:`R_{is} = r_i - \beta\sum_{t>s}\mathrm{KL}_t` ``(N, T)`` (minus :math:`\alpha\log q(x_i)`
    with a sequence entropy bonus), floored per position
    (:func:`~bayes_klrl.estimators.rao_blackwell_surrogate`'s signal)."""
    with torch.no_grad():
        r = rewards
        if recipe.entropy_coef and recipe.entropy_estimator == "sequence":
            r = r - recipe.entropy_coef * batch.token_log_q.detach().sum(-1)
        return floor_infeasible(r[:, None] - later_sum(beta * batch.token_kl.detach()), dim=0)


def advantages(signal: torch.Tensor, kind: str = "loo", group_size: int = 16) -> torch.Tensor:
    r"""Advantages of per-sequence learning signals ``(N,)`` (or per position, ``(N, T)``, leave-one-out only).

    ``loo``: :math:`A_i = R_i - \frac{1}{N-1}\sum_{j\ne i}R_j`; ``group``: :math:`A_i = R_i - \bar R_{g(i)}`;
    ``group-std``: :math:`(R_i - \bar R_{g(i)})/(s_{g(i)} + 10^{-4})`, groups of ``group_size`` consecutive
    sequences, :math:`s` the unbiased standard deviation (``torch.std``); ``batch-std``: the same over the batch.

    Example::

        >>> advantages(torch.tensor([1.0, 3.0, 0.0, 0.0]), "group", group_size=2)
        tensor([-1.,  1.,  0.,  0.])
    """
    if kind == "loo":
        return signal - leave_one_out_baseline(signal)
    if kind not in ADVANTAGES:
        raise ValueError(f"unknown advantage {kind!r}; choose from {', '.join(ADVANTAGES)}")
    if kind == "batch-std":
        group_size = signal.shape[0]
    if signal.shape[0] % group_size:
        raise ValueError(f"{signal.shape[0]} sequences do not split into groups of {group_size}")
    groups = signal.reshape(-1, group_size)  # (N/G, G)
    centred = groups - groups.mean(-1, keepdim=True)
    if kind != "group":
        centred = centred / (groups.std(-1, keepdim=True) + GROUP_STD_EPS)
    return centred.reshape(-1)


def kl_loss_terms(
    token_log_q: torch.Tensor,
    token_log_prior: torch.Tensor,
    estimator: str = "k3",
    *,
    old_token_log_q: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""The per-token KL terms ``(N, T)`` a recipe adds to its loss, differentiable through ``token_log_q``.

    :math:`k(\log q_t, \log\pi_{0,t})`, times :math:`q_t/q^{\text{old}}_t` when ``old_token_log_q`` is given
    (the ratio correction; the ratio is 1 in value on-policy but carries the gradient :math:`\nabla\log q_t`).

    Example::

        >>> log_q = torch.tensor([[-1.0]], requires_grad=True)
        >>> kl_loss_terms(log_q, torch.tensor([[-1.0]]), "k3")   # q = π0: zero KL
        tensor([[0.]], grad_fn=<SubBackward0>)
    """
    terms = kl_per_token(token_log_q, token_log_prior, estimator)
    if old_token_log_q is not None:
        terms = terms * torch.exp(token_log_q - old_token_log_q.detach())
    return terms


def token_entropy(log_q_next: torch.Tensor) -> torch.Tensor:
    r"""The entropy :math:`H(q(\cdot|x_{<t})) = -\sum_v q(v|x_{<t})\log q(v|x_{<t})` at every position ``(N, T)``
    of next-token log-distributions ``(N, T, V)``, differentiable; a token with :math:`q(v) = 0` contributes 0.

    Example::

        >>> token_entropy(torch.log(torch.tensor([[[0.5, 0.5]]])))   # log 2
        tensor([[0.6931]])
    """
    q = log_q_next.exp()
    return -(q * torch.where(q > 0, log_q_next, torch.zeros_like(log_q_next))).sum(-1)


def minibatch_indices(num_sequences: int, epochs: int, minibatches: int):
    """Index tensors of the minibatches of ``epochs`` passes over a batch, each pass in a fresh random order
    (``torch.randperm``); ``num_sequences // minibatches`` sequences each (a remainder is left out of that pass)."""
    size = num_sequences // minibatches
    for _ in range(epochs):
        order = torch.randperm(num_sequences)
        for k in range(minibatches):
            yield order[k * size : (k + 1) * size]


def clipped_surrogate(ratio: torch.Tensor, advantage: torch.Tensor, clip: float | tuple[float, float]) -> torch.Tensor:
    r"""PPO's clipped objective per token, :math:`\min(\rho A, \mathrm{clip}(\rho, 1-\epsilon, 1+\epsilon) A)`
    (to be maximized); ``ratio`` ``(n, T)``, ``advantage`` broadcastable to it; ``clip`` is :math:`\epsilon`, or
    the range :math:`(1-\epsilon_{\text{low}}, 1+\epsilon_{\text{high}})` itself."""
    low, high = (1 - clip, 1 + clip) if isinstance(clip, (int, float)) else clip
    return torch.minimum(ratio * advantage, torch.clamp(ratio, low, high) * advantage)


# surrogates: per-token loss (n, T) of the advantage term


def _token_ratio(b: TokenBatch) -> torch.Tensor:
    return torch.exp(b.token_log_q - b.old_token_log_q.detach())  # (n, T), 1 in value on-policy


def _sequence_ratio(b: TokenBatch) -> torch.Tensor:
    log_ratio = (b.token_log_q - b.old_token_log_q.detach()).mean(-1, keepdim=True)  # (n, 1)
    return torch.exp(log_ratio).expand_as(b.token_log_q)  # GSPO's s_i at every token of sequence i


def _broadcast(advantage: torch.Tensor) -> torch.Tensor:
    return advantage if advantage.ndim == 2 else advantage[:, None]


def _plain_surrogate(ratio_fn):
    def surrogate(b: TokenBatch) -> torch.Tensor:  # one update per batch: the gradient is A ∇log q
        return -ratio_fn(b) * _broadcast(b.advantage)

    return surrogate


def _clipped_surrogate(ratio_fn, clip_range):
    def surrogate(b: TokenBatch) -> torch.Tensor:
        return -clipped_surrogate(ratio_fn(b), _broadcast(b.advantage), clip_range)

    return surrogate


# loss terms: per-token (n, T), differentiated


def _sampled_kl_term(estimator: str, ratio_correction: bool, beta: float):
    def term(b: TokenBatch) -> torch.Tensor:
        old = b.old_token_log_q if ratio_correction else None
        return beta * kl_loss_terms(b.token_log_q, b.token_log_prior, estimator, old_token_log_q=old)

    return term


def _analytic_kl_term(beta: float):
    def term(b: TokenBatch) -> torch.Tensor:
        return beta * b.token_kl

    return term


def _entropy_term(alpha: float):
    def term(b: TokenBatch) -> torch.Tensor:
        return -alpha * token_entropy(b.log_q_next)

    return term


# off-policy corrections: per-token loss (n, T) → the same, reweighted from the behaviour policy to q


def _no_correction(per_token: torch.Tensor, b: TokenBatch) -> torch.Tensor:
    return per_token


def _behaviour_log_ratio(b: TokenBatch) -> torch.Tensor:
    mu = b.old_token_log_q if b.behaviour_token_log_q is None else b.behaviour_token_log_q
    return (b.token_log_q.detach() - mu).double()  # (n, T) log q_t/μ_t, no gradient


def _token_tis(per_token: torch.Tensor, b: TokenBatch) -> torch.Tensor:
    return per_token * _behaviour_log_ratio(b).exp().clamp(max=TIS_CAP).to(per_token.dtype)


def _sequence_is(per_token: torch.Tensor, b: TokenBatch) -> torch.Tensor:
    return per_token * _behaviour_log_ratio(b).sum(-1, keepdim=True).exp().to(per_token.dtype)


_CORRECTIONS = {"none": _no_correction, "token-tis": _token_tis, "sequence-is": _sequence_is}


# aggregations: per-token loss (n, T) → scalar


def _aggregate(normalization: str):
    def aggregate(per_token: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
        per_sequence = per_token.sum(-1)
        if normalization != "constant":  # 1/|x|; token-mean: N/Σ|x|, the same with one fixed length
            per_sequence = per_sequence / per_token.shape[-1]
        return per_sequence.mean() if weight is None else (weight * per_sequence).sum()

    return aggregate


@dataclass(frozen=True)
class Pipeline:
    """A :class:`Recipe` built into its pieces, once (see the module docstring). Every piece is a plain function;
    the training step calls them in order and holds no branch on an option.

    :ivar recipe: the recipe it was built from.
    :ivar needs_vocab: whether a piece needs the next-token distributions (``log_q_next``).
    :ivar needs_token_kl: whether a piece needs the exact per-token KL.
    :ivar replay: batches each gradient uses (the source).
    :ivar reward_transform: ``(rewards, gather, shard) -> rewards`` (normalization before the KL).
    :ivar signal: ``(rewards, batch) -> R`` ``(N,)`` or ``(N, T)``.
    :ivar advantage: ``(signal, batch, gather, shard) -> (A, weight | None, stats)``.
    :ivar reset_due: ``step -> bool``: whether the reference is replaced by the policy before this step.
    :ivar surrogate: ``batch -> (n, T)``, the advantage term of the loss.
    :ivar terms: ``batch -> (n, T)`` each, added to the loss.
    :ivar correction: ``(per_token, batch) -> per_token``, the importance weights from the behaviour policy.
    :ivar aggregate: ``(per_token, weight) -> loss``.
    :ivar updates: ``num_sequences -> [idx | None]``, ``None`` meaning the whole batch with the scoring pass reused.
    """

    recipe: Recipe
    beta: float
    needs_vocab: bool
    needs_token_kl: bool
    replay: int
    reward_transform: Callable
    signal: Callable
    advantage: Callable
    surrogate: Callable
    terms: tuple
    correction: Callable
    aggregate: Callable
    updates: Callable
    reset_due: Callable

    def loss(self, batch: TokenBatch) -> torch.Tensor:
        """The loss of one (mini)batch whose advantage is set."""
        per_token = self.surrogate(batch)
        for term in self.terms:
            per_token = per_token + term(batch)
        return self.aggregate(self.correction(per_token, batch), batch.weight)


def build_pipeline(recipe: Recipe, beta: float) -> Pipeline:
    """Build ``recipe``'s pieces at coefficient ``beta`` (every option is read here, once).

    Example::

        >>> pipeline = build_pipeline(PRESETS["grpo"], beta=0.7)
        >>> len(pipeline.terms)     # the k3 KL term in the loss
        1
    """
    analytic = recipe.kl_gradient == "analytic"
    every = recipe.reference_reset_every
    token_entropy_bonus = bool(recipe.entropy_coef) and recipe.entropy_estimator == "token"

    def reward_transform(rewards, gather, shard):
        if recipe.reward_normalization == "none":
            return rewards
        return shard(normalize_rewards(gather(rewards), recipe.reward_normalization, recipe.group_size))

    if analytic:

        def signal(rewards, batch):
            return _analytic_signal(rewards, batch, beta, recipe)
    else:

        def signal(rewards, batch):
            return learning_signal(rewards, batch.token_log_q, batch.token_log_prior, beta, recipe)

    if recipe.replay > 1:

        def advantage(values, batch, gather, shard):  # self-normalized weights, weighted leave-one-out mean
            weight, centred, ess, rows = replay_advantages(values, batch.log_weight, gather, shard)
            # the weights sum to 1 over every rank's rows; update() averages over ranks
            return centred, weight * (rows // values.shape[0]), {"replay_ess": ess}
    else:

        def advantage(values, batch, gather, shard):  # over the whole batch (gathered from every rank), these rows
            return shard(advantages(gather(values), recipe.advantage, recipe.group_size)), None, {}

    ratio_fn = _sequence_ratio if recipe.ratio == "sequence" else _token_ratio
    surrogate = _clipped_surrogate(ratio_fn, recipe.clip_range) if recipe.reuses_batches else _plain_surrogate(ratio_fn)
    terms = []
    if recipe.kl_in == "loss":
        terms.append(_sampled_kl_term(recipe.kl_estimator, recipe.kl_ratio_correction, beta))
    if analytic:
        terms.append(_analytic_kl_term(beta))
    if token_entropy_bonus:
        terms.append(_entropy_term(recipe.entropy_coef))

    if recipe.reuses_batches:

        def updates(n):
            return list(minibatch_indices(n, recipe.epochs, recipe.minibatches))
    else:

        def updates(n):  # one update on this batch: reuse the forward pass that scored it
            return [None]

    return Pipeline(
        recipe=recipe,
        beta=beta,
        needs_vocab=analytic or token_entropy_bonus,
        needs_token_kl=analytic,
        replay=recipe.replay,
        reward_transform=reward_transform,
        signal=signal,
        advantage=advantage,
        surrogate=surrogate,
        terms=tuple(terms),
        correction=_CORRECTIONS[recipe.off_policy_correction],
        aggregate=_aggregate(recipe.normalization),
        updates=updates,
        reset_due=lambda step: every > 0 and step > 0 and step % every == 0,
    )


def recipe_loss(
    token_log_q: torch.Tensor,
    old_token_log_q: torch.Tensor,
    token_log_prior: torch.Tensor,
    advantage: torch.Tensor,
    beta: float,
    recipe: Recipe,
    *,
    log_q_next: torch.Tensor | None = None,
    behaviour_token_log_q: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""The recipe's loss on one minibatch (its :class:`Pipeline`'s surrogate, terms and aggregation).

    :param token_log_q: :math:`\log q(x_t|x_{<t})`, ``(n, T)``, differentiable.
    :param old_token_log_q: the same under the policy that drew the batch, ``(n, T)``, no gradient.
    :param token_log_prior: :math:`\log\pi_0(x_t|x_{<t})`, ``(n, T)``.
    :param advantage: ``(n,)``.
    :param log_q_next: the next-token log-distributions ``(n, T, V)`` (the per-token entropy bonus).
    :param behaviour_token_log_q: :math:`\log\mu(x_t|x_{<t})` of the policy that drew the batch (off-policy
        corrections; ``None``: ``old_token_log_q``).
    """
    pipeline = build_pipeline(recipe, beta)
    batch = TokenBatch(
        x=token_log_q.new_zeros(()),
        token_log_q=token_log_q,
        old_token_log_q=old_token_log_q,
        token_log_prior=token_log_prior,
        rewards=advantage,
        log_q_next=log_q_next,
        behaviour_token_log_q=behaviour_token_log_q,
        advantage=advantage,
    )
    return pipeline.loss(batch)
