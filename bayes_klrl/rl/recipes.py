r"""The policy-gradient recipes practitioners run, as orthogonal options of one loss.

For a batch of :math:`N` sequences :math:`x_i \sim q_{\text{old}}` (the policy before this batch's updates) with
rewards :math:`r_i`, per-token log-probabilities :math:`\log q_{it}` (differentiable), :math:`\log q^{\text{old}}_{it}`
and :math:`\log\pi_{0,it}`, a :class:`Recipe` chooses

- **where the KL goes** (``kl_in``): in the reward, :math:`R_i = r_i - \beta\sum_t k_{it}` with :math:`k` evaluated
  at the old policy and not differentiated (RLOO, PPO-RLHF), in the loss, :math:`R_i = r_i` and a term
  :math:`+\beta\sum_t k_{it}` differentiated through :math:`\log q_{it}` (GRPO), or nowhere (``none``: plain
  reward maximization, which collapses onto :math:`\arg\max r`);
- **the estimator** (``kl_estimator``): k1, k2 or k3 of :mod:`bayes_klrl.rl.kl`;
- **the ratio correction** of an in-loss term (``kl_ratio_correction``): :math:`k_{it}\,q_{it}/q^{\text{old}}_{it}`
  (value :math:`k_{it}` on-policy, gradient :math:`k_{it}\nabla\log q_{it} + \nabla k_{it}`);
- **the advantage** (``advantage``): leave-one-out :math:`A_i = R_i - \frac{1}{N-1}\sum_{j\ne i}R_j` (``loo``),
  group-centred :math:`A_i = R_i - \bar R_g` (``group``, Dr. GRPO) or group-standardized
  :math:`A_i = (R_i - \bar R_g)/(s_g + 10^{-4})` (``group-std``, GRPO) over groups of ``group_size``
  consecutive sequences, :math:`s_g` the unbiased standard deviation;
- **the normalization** of a sequence's token terms (``normalization``): :math:`1/|x_i|` (``sequence``, GRPO)
  or the constant 1 (``constant``, Dr. GRPO and RLOO). With sequences of one fixed length, as in every task
  here, the two differ by the overall factor :math:`1/T`, which Adam all but ignores;
- **the KL gradient** (``kl_gradient``, with the KL in the reward): ``sampled`` scores each sequence by its
  sampled :math:`\sum_t k1_t`; ``analytic`` uses the exact per-token KL over the vocabulary at every sampled
  prefix, :math:`\mathrm{KL}_t = \mathrm{KL}(q(\cdot|x_{<t})\,\|\,\pi_0(\cdot|x_{<t}))`, differentiated directly,
  and scores token :math:`s` by :math:`R_{is} = r_i - \beta\sum_{t>s}\mathrm{KL}_t` with a per-position
  leave-one-out baseline (:func:`~bayes_klrl.estimators.rao_blackwell_surrogate`): the same expected gradient
  :math:`\nabla J` (lower variance only far from :math:`\pi^*`, see :mod:`bayes_klrl.infer.svi`). It needs ``kl_in="reward"``, ``kl_estimator="k1"``, ``advantage="loo"`` and
  one update per batch, and is refused otherwise (in the loss, or under a group-standardized advantage or a
  clipped reuse, it would not be the gradient of :math:`J`);
- **replay** (``replay``, with the k1 KL in the reward and the leave-one-out advantage): each step's gradient uses
  this batch and the ``replay - 1`` batches before it, every sequence rescored by the current policy and weighted
  by the self-normalized importance weight :math:`w_i \propto q(x_i)/q_{\text{behaviour}}(x_i)` (the policy
  that drew it), its signal recomputed under the current policy and centred by the weighted leave-one-out mean
  (:func:`~bayes_klrl.estimators.weighted_leave_one_out`): the loss is :math:`-\sum_i w_i A_i \log q(x_i)`.
  A consistent estimate of :math:`\nabla J` from ``replay`` times as many sequences at no extra sampling; it
  is still exactly 0 at :math:`q = \pi^*` (every signal is :math:`\log Z`), so the fixed point is unchanged.
  ``replay = 1`` is RLOO itself;
- **off-policy reuse** (``epochs``, ``minibatches``): several passes over the batch, each token's advantage
  term the clipped surrogate :math:`\min(\rho_{it}A_i, \mathrm{clip}(\rho_{it}, 1\pm\epsilon)A_i)` with
  :math:`\rho_{it} = q_{it}/q^{\text{old}}_{it}` (GRPO's num_iterations, PPO's epochs). With one pass,
  :math:`\rho = 1` in value and the term's gradient is :math:`A_i\nabla\log q_{it}`: plain REINFORCE.

The loss of a minibatch :math:`B` is

.. math::

    \mathcal L = \frac{1}{|B|}\sum_{i\in B} \frac{1}{n_i}\sum_t \Big[-\min(\rho_{it}A_i,
        \mathrm{clip}(\rho_{it})A_i) + \beta\,c_{it}\,k_{it}\,[\text{KL in the loss}]\Big],

with :math:`c_{it} = \rho_{it}` under the ratio correction, else 1, and :math:`n_i` the normalization.
What each choice's expected gradient is, and where each recipe settles, is derived in docs/tutorial.md
("Which RLHF recipes sample the posterior?") and checked against enumeration in tests/rl/test_recipes.py.

References: Shao et al. (2024) *DeepSeekMath* (GRPO); Liu et al. (2025) *Understanding R1-Zero-like training*
(Dr. GRPO); Ahmadian et al. (2024) *Back to basics* (RLOO); Schulman (2020) *Approximating KL divergence*.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..estimators import KL_GRADIENTS, check_replay, floor_infeasible, leave_one_out_baseline
from .kl import KL_ESTIMATORS, kl_per_token

__all__ = [
    "ADVANTAGES",
    "GROUP_STD_EPS",
    "KL_PLACES",
    "NORMALIZATIONS",
    "PRESETS",
    "Recipe",
    "advantages",
    "clipped_surrogate",
    "kl_loss_terms",
    "learning_signal",
    "minibatch_indices",
    "recipe_loss",
]

KL_PLACES = ("reward", "loss", "none")
ADVANTAGES = ("loo", "group", "group-std")
NORMALIZATIONS = ("sequence", "constant")
#: the ε of the group-standardized advantage (r − mean_g)/(std_g + ε)
GROUP_STD_EPS = 1e-4


@dataclass(frozen=True)
class Recipe:
    """The options of one policy-gradient recipe (see the module docstring); defaults are RLOO.

    :param str kl_in: ``"reward"``, ``"loss"`` or ``"none"``.
    :param str kl_estimator: ``"k1"``, ``"k2"`` or ``"k3"``.
    :param bool kl_ratio_correction: multiply an in-loss KL term by :math:`q/q_{\\text{old}}`.
    :param str advantage: ``"loo"``, ``"group"`` or ``"group-std"``.
    :param int group_size: sequences per group (``group`` advantages); must divide the batch.
    :param str normalization: ``"sequence"`` (:math:`1/|x|`) or ``"constant"``.
    :param int epochs: passes over each batch.
    :param int minibatches: minibatches per pass.
    :param float clip: :math:`\\epsilon` of the clipped ratio (used when a batch is reused).
    :param str kl_gradient: ``"sampled"`` or ``"analytic"`` (the exact per-token KL, Rao-Blackwellized; KL in the
        reward, k1, leave-one-out advantage and one update per batch only).
    :param int replay: batches each gradient uses, this one included, importance-weighted (1: on-policy; KL in
        the reward, leave-one-out advantage, sampled KL gradient and one update per batch only).
    """

    kl_in: str = "reward"
    kl_estimator: str = "k1"
    kl_ratio_correction: bool = False
    advantage: str = "loo"
    group_size: int = 16
    normalization: str = "constant"
    epochs: int = 1
    minibatches: int = 1
    clip: float = 0.2
    kl_gradient: str = "sampled"
    replay: int = 1

    def __post_init__(self):
        for name, allowed in (
            ("kl_in", KL_PLACES),
            ("kl_estimator", KL_ESTIMATORS),
            ("advantage", ADVANTAGES),
            ("normalization", NORMALIZATIONS),
            ("kl_gradient", KL_GRADIENTS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; choose from {', '.join(allowed)}")
        if self.kl_ratio_correction and self.kl_in != "loss":
            raise ValueError("kl_ratio_correction applies to a KL term in the loss; set kl_in='loss'")
        if isinstance(self.group_size, bool) or int(self.group_size) < 2:
            raise ValueError(f"group_size must be >= 2, got {self.group_size}")
        if int(self.epochs) < 1 or int(self.minibatches) < 1:
            raise ValueError("epochs and minibatches must be >= 1")
        if not 0 < self.clip < 1:
            raise ValueError(f"clip must be in (0, 1), got {self.clip}")
        if self.kl_gradient == "analytic":
            self._check_analytic()
        if check_replay(self.replay) > 1:
            self._check_replay()

    def _check_analytic(self) -> None:
        """The analytic KL gradient is the unbiased gradient of J only in the RLOO form: refuse the rest."""
        if self.kl_in != "reward":
            raise ValueError(
                f"kl_gradient='analytic' is the exact KL's gradient with its score part for later tokens, for the KL "
                f"in the reward; kl_in={self.kl_in!r} has no such term (use kl_in='reward' or kl_gradient='sampled')"
            )
        if self.kl_estimator != "k1":
            raise ValueError("kl_gradient='analytic' computes the KL exactly; kl_estimator applies to 'sampled' only")
        if self.advantage != "loo":
            raise ValueError("kl_gradient='analytic' centres each position by leave-one-out; it needs advantage='loo'")
        if self.reuses_batches:
            raise ValueError("kl_gradient='analytic' takes one update per batch; set epochs=1 and minibatches=1")

    def _check_replay(self) -> None:
        """Replay weights each sequence's score term by q/q_behaviour: defined for the RLOO form only."""
        if self.kl_in != "reward":
            raise ValueError(
                f"replay importance-weights the KL-in-reward signal of earlier batches and needs kl_in='reward', "
                f"got kl_in={self.kl_in!r} (or set replay=1)"
            )
        if self.kl_estimator != "k1":
            raise ValueError(
                f"replay estimates the gradient of J, which needs the k1 log-ratio in the reward (with "
                f"{self.kl_estimator} its gradient is not zero at pi*); set kl_estimator='k1' or replay=1"
            )
        if self.advantage != "loo":
            raise ValueError("replay centres each signal by the weighted leave-one-out mean; it needs advantage='loo'")
        if self.kl_gradient != "sampled":
            raise ValueError("replay takes the sampled KL gradient; set kl_gradient='sampled' or replay=1")
        if self.reuses_batches:
            raise ValueError("replay already reuses earlier batches, importance-weighted; set epochs=1, minibatches=1")

    def check_batch(self, num_sequences: int) -> None:
        """Refuse a batch size the recipe cannot split (groups, minibatches of at least 2)."""
        if self.advantage != "loo" and num_sequences % self.group_size:
            raise ValueError(
                f"num_sequences {num_sequences} is not a multiple of group_size {self.group_size} "
                f"(advantage {self.advantage!r} standardizes within groups of consecutive sequences)"
            )
        if num_sequences // self.minibatches < 2:
            raise ValueError(f"{self.minibatches} minibatches of {num_sequences} sequences leave fewer than 2 each")

    @property
    def reuses_batches(self) -> bool:
        """Whether a batch feeds more than one update (then the clipped ratio matters)."""
        return self.epochs * self.minibatches > 1

    #: options added after checkpoints were first written, recorded only away from their default (so a checkpoint
    #: written before an option existed still resumes, and a run that sets it is told apart)
    RECORDED_WHEN_SET: ClassVar[dict] = {"replay": 1}

    def as_dict(self) -> dict:
        """The options as plain values (a run's recorded settings), less :attr:`RECORDED_WHEN_SET` at their default."""
        return {k: v for k, v in dataclasses.asdict(self).items() if self.RECORDED_WHEN_SET.get(k, object()) != v}


#: the named recipes usable in ``compare --methods``
PRESETS: dict[str, Recipe] = {
    "rl": Recipe(),
    "grpo": Recipe(kl_in="loss", kl_estimator="k3", advantage="group-std", normalization="sequence"),
    "grpo_corr": Recipe(
        kl_in="loss", kl_estimator="k3", kl_ratio_correction=True, advantage="group-std", normalization="sequence"
    ),
    "drgrpo": Recipe(kl_in="loss", kl_estimator="k3", advantage="group", normalization="constant"),
}


def advantages(signal: torch.Tensor, kind: str = "loo", group_size: int = 16) -> torch.Tensor:
    r"""Advantages ``(N,)`` of per-sequence learning signals ``(N,)``.

    ``loo``: :math:`A_i = R_i - \frac{1}{N-1}\sum_{j\ne i}R_j`; ``group``: :math:`A_i = R_i - \bar R_{g(i)}`;
    ``group-std``: :math:`(R_i - \bar R_{g(i)})/(s_{g(i)} + 10^{-4})`, groups of ``group_size`` consecutive
    sequences, :math:`s` the unbiased standard deviation (``torch.std``).

    Example::

        >>> advantages(torch.tensor([1.0, 3.0, 0.0, 0.0]), "group", group_size=2)
        tensor([-1.,  1.,  0.,  0.])
    """
    if kind == "loo":
        return signal - leave_one_out_baseline(signal)
    if kind not in ADVANTAGES:
        raise ValueError(f"unknown advantage {kind!r}; choose from {', '.join(ADVANTAGES)}")
    if signal.shape[0] % group_size:
        raise ValueError(f"{signal.shape[0]} sequences do not split into groups of {group_size}")
    groups = signal.reshape(-1, group_size)  # (N/G, G)
    centred = groups - groups.mean(-1, keepdim=True)
    if kind == "group-std":
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


def minibatch_indices(num_sequences: int, epochs: int, minibatches: int):
    """Index tensors of the minibatches of ``epochs`` passes over a batch, each pass in a fresh random order
    (``torch.randperm``); ``num_sequences // minibatches`` sequences each (a remainder is left out of that pass)."""
    size = num_sequences // minibatches
    for _ in range(epochs):
        order = torch.randperm(num_sequences)
        for k in range(minibatches):
            yield order[k * size : (k + 1) * size]


def clipped_surrogate(ratio: torch.Tensor, advantage: torch.Tensor, clip: float) -> torch.Tensor:
    r"""PPO's clipped objective per token, :math:`\min(\rho A, \mathrm{clip}(\rho, 1-\epsilon, 1+\epsilon) A)`
    (to be maximized); ``ratio`` ``(n, T)``, ``advantage`` broadcastable to it."""
    return torch.minimum(ratio * advantage, torch.clamp(ratio, 1 - clip, 1 + clip) * advantage)


def learning_signal(
    rewards: torch.Tensor, token_log_q: torch.Tensor, token_log_prior: torch.Tensor, beta: float, recipe: Recipe
) -> torch.Tensor:
    r"""The per-sequence signal :math:`R_i` (before the advantage): :math:`r_i - \beta\sum_t k_{it}` with the KL in
    the reward (no gradient), :math:`r_i` with it in the loss; −inf (hard constraints) floored to a finite value."""
    with torch.no_grad():
        signal = rewards
        if recipe.kl_in == "reward" and recipe.kl_estimator == "k1":  # Σ_t k1 = log q(x) − log π0(x)
            signal = rewards - beta * (token_log_q.detach().sum(-1) - token_log_prior.sum(-1))
        elif recipe.kl_in == "reward":
            signal = rewards - beta * kl_per_token(token_log_q.detach(), token_log_prior, recipe.kl_estimator).sum(-1)
        return floor_infeasible(signal)


def recipe_loss(
    token_log_q: torch.Tensor,
    old_token_log_q: torch.Tensor,
    token_log_prior: torch.Tensor,
    advantage: torch.Tensor,
    beta: float,
    recipe: Recipe,
) -> torch.Tensor:
    r"""The recipe's loss on one minibatch (the equation of the module docstring).

    :param token_log_q: :math:`\log q(x_t|x_{<t})`, ``(n, T)``, differentiable.
    :param old_token_log_q: the same under the policy that drew the batch, ``(n, T)``, no gradient.
    :param token_log_prior: :math:`\log\pi_0(x_t|x_{<t})`, ``(n, T)``.
    :param advantage: ``(n,)``.
    """
    ratio = torch.exp(token_log_q - old_token_log_q.detach())  # (n, T), 1 in value on-policy
    if recipe.reuses_batches:
        per_token = -clipped_surrogate(ratio, advantage[:, None], recipe.clip)
    else:  # one update per batch: the surrogate's gradient is A ∇log q (no clipping can bite)
        per_token = -ratio * advantage[:, None]
    if recipe.kl_in == "loss":
        old = old_token_log_q if recipe.kl_ratio_correction else None
        per_token = per_token + beta * kl_loss_terms(
            token_log_q, token_log_prior, recipe.kl_estimator, old_token_log_q=old
        )
    per_sequence = per_token.sum(-1)
    if recipe.normalization == "sequence":
        per_sequence = per_sequence / token_log_q.shape[-1]
    return per_sequence.mean()
