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
# # 2. Which RLHF recipes sample the posterior?
#
# REINFORCE with the KL in the reward (RLOO) is SVI: its fixed point is $\pi^* = \pi_0 e^{r/\beta}/Z$. The recipes
# people run change three things: where the KL goes (GRPO adds $\beta\sum_t k3_t$ to the loss), which per-token
# estimate is used, and how rewards become advantages (GRPO divides by the group's standard deviation). Each is an
# option of one trainer. Here we train each to near its fixed point and put it on the reward–KL plane, where the
# posteriors $\pi^*_\beta$ trace the Bayes frontier. (Tutorial: [section 9](../docs/tutorial.md#9-which-rlhf-recipes-sample-the-posterior).)

# %%
import matplotlib.pyplot as plt
import torch

import bayes_klrl as bk

torch.set_num_threads(2)
task = bk.load_task("markov")
print(sorted(bk.PRESETS))  # the recipes: each a set of trainer options

# %% [markdown]
# ## Change β or the group size, and rerun from here
# No widgets: edit the two numbers and run this cell and the ones below it.

# %%
BETA = 0.7  # the KL coefficient (the likelihood temperature)
GROUP_SIZE = 16  # sequences per group for the group advantages (GRPO, Dr. GRPO)
STEPS, BATCH = 300, 256
RECIPES = ["rl", "grpo", "grpo_corr", "drgrpo"]

here = task.replace(beta=BETA)
posterior = bk.exact_posterior(here)
trained = {}
for name in RECIPES:
    options = {} if name == "rl" else {"group_size": GROUP_SIZE}
    trainer = bk.make_trainer(name, here, here.make_policy(), BATCH, lr=0.02, **options)
    trained[name] = bk.policy_metrics(here, bk.fit(trainer, steps=STEPS, seed=0).policy, posterior)
    print(
        f"{name:10s} KL(q||pi*) = {trained[name].kl_q_to_posterior:.4f}   E_q[r] = {trained[name].expected_reward:.3f}"
        f"   KL(q||pi0) = {trained[name].kl_to_prior:.3f}"
    )

# %% [markdown]
# ## The reward–KL plane
# The curve is $(\mathrm{KL}(\pi^*_b\|\pi_0),\ \mathbb{E}_{\pi^*_b}[r])$ over β values $b$: the most reward any policy
# can have at that distance from the prior. A recipe that does Bayesian inference lands on the curve *at its own β*
# (the star); the GRPO family settles elsewhere.

# %%
frontier = [bk.exact_posterior(task.replace(beta=b)) for b in torch.logspace(-1.3, 1.3, 25).tolist()]
fig, ax = plt.subplots(figsize=(6.5, 4.5))
ax.plot(
    [p.kl_to_prior for p in frontier],
    [p.expected_reward for p in frontier],
    "-",
    color="0.5",
    label="posteriors pi*_b (the frontier)",
)
ax.plot(posterior.kl_to_prior, posterior.expected_reward, "*", ms=16, color="k", label=f"pi* at beta = {BETA}")
for name, m in trained.items():
    ax.plot(m.kl_to_prior, m.expected_reward, "o", ms=8, label=f"{name}: KL(q||pi*) {m.kl_q_to_posterior:.3f}")
ax.set(xlabel="KL(q || pi0) (nats)", ylabel="E_q[r]", title=f"where each recipe settles (beta = {BETA})")
ax.legend(fontsize=8)
# %% [markdown]
# ## The bandit's fixed points in closed form
# With one token (`bandit`, $T = 1$), GRPO's infinite-group fixed point solves $q_k = \beta\pi_{0k}/(\beta - A_k)$
# with the advantage $A$ computed under $q$ itself: the group std turns β into $\beta\cdot\mathrm{std}_q(r)$.
# Train GRPO there and compare it with π* of the same β.

# %%
bandit = bk.load_task("bandit")
bandit_post = bk.exact_posterior(bandit)
grpo = bk.fit(bk.make_trainer("grpo", bandit, bandit.make_policy(), 512, lr=0.02), steps=STEPS, seed=0)
q = grpo.policy.log_prob(torch.arange(bandit.vocab_size)[:, None]).exp()
fig, ax = plt.subplots(figsize=(6.5, 3.2))
k = torch.arange(bandit.vocab_size)
ax.bar(k - 0.2, bandit_post.log_probs.exp(), width=0.4, label="pi* (exact)")
ax.bar(k + 0.2, q.detach(), width=0.4, label="GRPO after training")
ax.set(xlabel="token", ylabel="probability", title=f"bandit, beta = {bandit.beta}")
ax.legend()
