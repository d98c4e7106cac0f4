# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 1. KL-regularized RL is variational inference
#
# The RL objective with a KL penalty, $J(q) = \mathbb{E}_q[r] - \beta\,\mathrm{KL}(q\,\|\,\pi_0)$, is β times the
# ELBO of a probabilistic program whose prior is the reference LM $\pi_0$ and whose likelihood is $e^{r/\beta}$:
#
# $$J(q)/\beta = \mathbb{E}_q[\log\pi_0 + r/\beta - \log q] = \log Z - \mathrm{KL}(q\,\|\,\pi^*),\qquad
# \pi^* = \pi_0 e^{r/\beta}/Z.$$
#
# This notebook checks that statement on a task small enough to enumerate, then looks at β and at what happens
# without the KL term. (Tutorial: [section 1–3](../docs/tutorial.md#1-the-identity-from-first-principles).)

# %%
import matplotlib.pyplot as plt
import torch

import bayes_klrl as bk

torch.set_num_threads(2)
task = bk.load_task("markov")  # a random Markov chain over 6 tokens, 6 tokens long: 46,656 sequences
posterior = bk.exact_posterior(task)  # log Z, π*, E[r] by summing over every sequence
print(f"beta = {task.beta}, log Z = {posterior.log_z:.4f}, E_pi*[r] = {posterior.expected_reward:.3f}")

# %% [markdown]
# ## ELBO = J/β, for any policy
# Take the prior itself and a random policy: the exact ELBO and the exact objective divided by β agree to
# rounding, and both sit below log Z by exactly KL(q‖π*).

# %%
perturbed = task.make_policy()  # a table of logits started at the prior
with torch.no_grad():
    perturbed.logits.add_(torch.randn(perturbed.logits.shape, generator=torch.Generator().manual_seed(1)))
for name, policy in [("prior", task.make_policy()), ("perturbed", perturbed)]:
    m = bk.policy_metrics(task, policy, posterior)
    print(
        f"{name:7s} ELBO {m.elbo:.6f}   J/beta {m.objective / task.beta:.6f}   "
        f"log Z - KL(q||pi*) {posterior.log_z - m.kl_q_to_posterior:.6f}"
    )

# %% [markdown]
# ## SVI and RL take the same steps
# Pyro's SVI with a leave-one-out score-function ELBO, and plain-torch REINFORCE with the KL in the reward
# (the RLOO baseline): the RL signal $r - \beta(\log q - \log\pi_0)$ is β times the SVI signal, and Adam does not
# see a constant factor. Same seed, same batches, same steps.

# %%
steps, batch = 150, 256
log_every = 10


def kl_to_posterior(policy):
    return {"kl": bk.policy_metrics(task, policy, posterior).kl_q_to_posterior}


svi = bk.fit(
    bk.SVITrainer(task, task.make_policy(), batch), steps=steps, seed=0, log_every=log_every, evaluate=kl_to_posterior
)
rl = bk.fit(
    bk.ReinforceTrainer(task, task.make_policy(), batch),
    steps=steps,
    seed=0,
    log_every=log_every,
    evaluate=kl_to_posterior,
)
gap = max((a - b).abs().max().item() for a, b in zip(svi.policy.parameters(), rl.policy.parameters()))
print(f"largest difference between the two policies' parameters after {steps} steps: {gap:.2e}")

# %%
fig, ax = plt.subplots(figsize=(6, 3.5))
for result, style in [(svi, "-"), (rl, "--")]:
    ax.plot([h["step"] for h in result.history], [h["kl"] for h in result.history], style, label=result.method)
ax.set(xlabel="step", ylabel="KL(q || pi*) (exact, nats)", yscale="log", title="SVI and REINFORCE: one curve")
ax.legend()
# %% [markdown]
# ## β is a likelihood temperature
# $\pi^* \propto \pi_0\,(e^{r})^{1/\beta}$: a large β leaves the prior, a small β conditions it on the best
# sequences. The prior itself is never tempered.

# %%
betas = [10.0, 3.0, 1.0, 0.7, 0.3, 0.1, 0.03]
exact = [bk.exact_posterior(task.replace(beta=b)) for b in betas]
fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.5))
a1.plot(betas, [p.expected_reward for p in exact], "o-")
a1.set(xscale="log", xlabel="beta", ylabel="E_pi*[r]", title="reward of the posterior")
a2.plot(betas, [p.entropy for p in exact], "o-")
a2.set(xscale="log", xlabel="beta", ylabel="H(pi*) (nats)", title="its entropy")
# %% [markdown]
# ## Without the KL term the policy collapses
# Drop the KL (`kl_in="none"`): the objective is plain $\mathbb{E}_q[r]$, every distribution on the best sequences
# is optimal, and the noise of training picks a few of them. The KL term is the log-prior that keeps the
# posterior's entropy.

# %%
with_kl = bk.fit(bk.ReinforceTrainer(task, task.make_policy(), batch, lr=0.05), steps=200, seed=0)
no_kl = bk.fit(bk.ReinforceTrainer(task, task.make_policy(), batch, lr=0.05, kl_in="none"), steps=200, seed=0)
for name, result in [("with the KL", with_kl), ("without", no_kl)]:
    m = bk.policy_metrics(task, result.policy, posterior)
    print(f"{name:12s} entropy {m.entropy:.2f} nats (pi*: {posterior.entropy:.2f})   E_q[r] {m.expected_reward:.3f}")
