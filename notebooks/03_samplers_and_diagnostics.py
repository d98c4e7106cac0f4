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
# # 3. Samplers and their diagnostics: importance sampling, MCMC, k̂ and R-hat
#
# Written as a posterior, $\pi^* \propto \pi_0 e^{r/\beta}$ is open to the usual Bayesian tools. Each comes with
# a way to say it has not worked without knowing the answer: the Pareto $\hat k$ of importance weights, R-hat and
# ESS of MCMC chains. On an enumerable task we can check those warnings against the truth.
# (Tutorial: [sections 6–8](../docs/tutorial.md#6-checking-an-answer-against-the-posterior).)

# %%
import arviz as az
import matplotlib.pyplot as plt
import torch

import bayes_klrl as bk

torch.set_num_threads(2)
task = bk.load_task("markov")
posterior = bk.exact_posterior(task)
print(f"exact: log Z = {posterior.log_z:.4f}, E_pi*[r] = {posterior.expected_reward:.4f}")

# %% [markdown]
# ## Importance sampling with the prior as proposal
# $\log w = \log\pi_0 + r/\beta - \log q = r/\beta$. $\log\hat Z$ is the log of the mean weight; the normalized ESS
# says how many of the draws count.

# %%
imp = bk.importance_sample(task, num_samples=50_000, seed=0)
print(
    f"log Z-hat = {imp.log_z:.4f} +- {imp.log_z_se:.4f}   ESS = {imp.ess:.3f}   k-hat = {imp.khat:.3f} ({imp.khat_label})"
)

# %% [markdown]
# ## k̂ of a policy while it trains
# Draw from the policy $q$, weight by $\pi_0 e^{r/\beta}/q$, fit a generalized Pareto to the largest weights:
# $\hat k < 0.5$ good, 0.5–0.7 usable, above 0.7 unreliable (Yao et al. 2018). Beside it, the exact distance.

# %%
rows = []


def diagnose(policy):
    d = bk.policy_diagnostics(task, policy, num_samples=2000, seed=0)
    return {"khat": d.khat, "ess": d.ess, "kl": bk.policy_metrics(task, policy, posterior).kl_q_to_posterior}


run = bk.fit(bk.ReinforceTrainer(task, task.make_policy(), 256), steps=200, seed=0, log_every=20, evaluate=diagnose)
steps = [h["step"] for h in run.history]
fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.5))
a1.plot(steps, [h["kl"] for h in run.history], "o-")
a1.set(xlabel="step", ylabel="KL(q || pi*) (exact)", yscale="log", title="distance to the posterior")
a2.plot(steps, [h["khat"] for h in run.history], "o-", label="k-hat")
a2.plot(steps, [h["ess"] for h in run.history], "s-", label="ESS / N")
a2.axhline(0.7, ls="--", color="0.5")
a2.set(xlabel="step", title="diagnostics without the answer")
a2.legend()
# %% [markdown]
# k̂ fits the *shape* of the weights' tail, not its size: as $q$ approaches π* on average its tails can stay lighter
# than the posterior's, and k̂ can rise while the KL falls. It is a tail diagnostic, not a distance.

# %% [markdown]
# ## MCMC: Gibbs and independence Metropolis–Hastings, read with ArviZ
# Four chains of each kernel, started at uniformly random sequences. The draws become an ArviZ container
# (`InferenceData` on ArviZ 0.x, `DataTree` on 1.x); the diagnostics are computed on scalar summaries of each draw.

# %%
chains = {
    kernel: bk.run_mcmc(task, kernel, num_chains=4, num_samples=400, warmup=50, seed=0) for kernel in ("gibbs", "imh")
}
idata = {kernel: bk.mcmc_inference_data(task, result) for kernel, result in chains.items()}
for kernel, data in idata.items():
    print(kernel, f"E[r] = {chains[kernel].expected_reward:.4f} (exact {posterior.expected_reward:.4f})")
    print(bk.diagnostics_table(data)[["r_hat", "ess_bulk", "ess_tail"]].round(3), "\n")

# %% [markdown]
# The rank plot: each chain's histogram of the ranks of its draws among all chains' draws. Flat bars mean the
# chains sample the same distribution; R-hat above 1.01 or a bulk ESS below about 400 means not yet.

# %%
az.plot_rank(idata["gibbs"], var_names=["log_prior"])
# %%
az.plot_trace(idata["imh"], var_names=["reward"])

# %% [markdown]
# ## Sequential Monte Carlo: bounds on log Z from both sides
# Importance sampling's $\log\hat Z$ is a *lower* bound on $\log Z$ in expectation ($\hat Z$ is unbiased; Jensen). The
# same sampler with one particle fixed to an exact posterior draw (conditional SMC) gives an *upper* bound in
# expectation. A twist, a look-ahead that says how much posterior mass each prefix leads to, tilts the proposal
# towards it: here one learned by contrastive twist learning in a few seconds. Both bounds tighten as particles grow.
# (Tutorial: [section 11](../docs/tutorial.md#11-bounding-log-z-and-the-distance-to-π-without-enumeration).)

# %%
draws = bk.exact_posterior_draws(task, 32, posterior=posterior, seed=0)
twist = bk.learned_twist(task)
bk.fit(bk.TwistTrainer(task, twist, 256), steps=100, seed=0)
samplers = {"bootstrap (IS with the prior)": {}, "twisted SMC, learned twist": {"twist": twist}}
fig, ax = plt.subplots(figsize=(6, 3.5))
for (name, options), c in zip(samplers.items(), ("tab:purple", "tab:green")):
    sizes, lower, upper = (8, 32, 128, 512), [], []
    for n in sizes:
        b = bk.log_z_bounds(task, num_particles=n, num_runs=32, draws=draws, seed=n, **options)
        lower.append(b.log_z_lower)
        upper.append(b.log_z_upper)
    ax.plot(sizes, lower, "-o", color=c, label=f"{name}: lower")
    ax.plot(sizes, upper, "--o", color=c, label=f"{name}: upper")
ax.axhline(posterior.log_z, color="black", lw=1, label="exact log Z")
ax.set(xscale="log", xlabel="particles per run", ylabel="mean log Z-hat over 32 runs")
ax.legend(fontsize=7)
plt.show()
