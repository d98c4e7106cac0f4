r"""Per-token estimates of :math:`\mathrm{KL}(q\|\pi_0)` at sampled tokens (Schulman, "Approximating KL divergence").

With :math:`\rho_t = \pi_0(x_t|x_{<t})/q(x_t|x_{<t})` at a token drawn from :math:`q`:

- k1 :math:`= -\log\rho_t = \log q - \log\pi_0`: unbiased for the per-token KL, can be negative;
- k2 :math:`= \tfrac12(\log\rho_t)^2`: non-negative, biased (second order in :math:`\log\rho`);
- k3 :math:`= (\rho_t - 1) - \log\rho_t`: non-negative and unbiased in value.

As *values* they estimate the same KL; as terms differentiated in a loss they have different expected
gradients (see :mod:`bayes_klrl.rl.recipes` and docs/tutorial.md).
"""

from __future__ import annotations

import torch

__all__ = ["KL_ESTIMATORS", "kl_per_token"]

KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_per_token(log_q: torch.Tensor, log_prior: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    r"""Per-token estimate of :math:`\mathrm{KL}(q\|\pi_0)` at the sampled tokens, same shape as the inputs.

    k1 = :math:`\log q - \log\pi_0`; k2 = :math:`\tfrac12(\log q - \log\pi_0)^2`;
    k3 = :math:`(\rho-1) - \log\rho` with :math:`\rho=\pi_0/q`.

    Example::

        >>> kl_per_token(torch.tensor([-1.0]), torch.tensor([-2.0]), "k3")   # rho = e^-1
        tensor([0.3679])
    """
    if estimator == "k1":
        return log_q - log_prior
    if estimator == "k2":
        return 0.5 * (log_q - log_prior) ** 2
    if estimator == "k3":
        log_ratio = log_prior - log_q
        return torch.expm1(log_ratio) - log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}; choose one of {', '.join(KL_ESTIMATORS)}")
