"""What each RLHF recipe's gradient estimates and where it settles, against enumeration (bayes_klrl.rl.theory).

Every expected gradient is taken at a fixed perturbed tabular policy, by summing over all V^T sequences, on a Markov
task with T = 3 (27 sequences) and on a bandit (T = 1), and compared with the exact gradient of a named objective.
The Monte Carlo tests run the trainer's own step and compare the average of its gradients with targets computed
independently of bayes_klrl/rl/recipes.py, so a sign error or a missing ratio there fails them.
"""

import dataclasses

import pytest
import torch

from bayes_klrl import CategoricalLM, Task, fit
from bayes_klrl.exact import enumerate_sequences
from bayes_klrl.modelfile import load_task
from bayes_klrl.rl import ReinforceTrainer
from bayes_klrl.rl.recipes import GROUP_STD_EPS, PRESETS, Recipe, kl_loss_terms
from bayes_klrl.rl.theory import (
    BANDIT_CLOSED_FORMS,
    bandit_expected_gradient,
    bandit_fixed_point,
    elbo_gradient,
    expected_kl_loss_gradient,
    expected_kl_reward_gradient,
    expected_recipe_gradient,
    k1_score_gradient,
    per_token_forward_kl,
    per_token_forward_kl_gradient,
    reverse_kl_gradient,
)

from ..conftest import perturbed_policy, small_markov_task

#: two exact (float64, enumerated) gradients of the same quantity agree to this, coordinate by coordinate
EXACT_TOL = 1e-10
#: two gradients claimed to differ must differ by more than this in some coordinate (a gap, not rounding)
GAP_MIN = 1e-3
#: a Monte Carlo mean may sit this many standard errors from its target, in every coordinate
Z_BOUND = 5.0
#: absolute slack for Monte Carlo coordinates whose mean and spread are both ~0
MC_SLACK = 1e-7
#: the closed-form bandit fixed point zeroes the recipe's enumerated expected gradient to this
FIXED_POINT_GRAD = 1e-8
#: exact gradient descent from π0 on the closed-form expected gradient ends this close (total variation)
FLOW_TV = 1e-4
#: steps of that descent (step size 1 on the logits)
FLOW_STEPS = 3000
#: a trained ReinforceTrainer ends this close to the closed-form fixed point (total variation)
TRAINED_TV = 0.03


# ---------------------------------------------------------------------------------------------------------------
# fixtures: a Markov task with T = 3 and a bandit, in float64, at a perturbed tabular policy
# ---------------------------------------------------------------------------------------------------------------


def _bandit_task(beta: float = 0.5, vocab_size: int = 6, seed: int = 0) -> Task:
    g = torch.Generator().manual_seed(seed)
    prior = CategoricalLM(torch.randn(vocab_size, generator=g))
    scores = torch.linspace(-1.0, 1.0, vocab_size)
    return Task(prior=prior.double(), reward=lambda x: scores[x[:, 0]], beta=beta, length=1, name="bandit")


def _setup(kind: str, *, double: bool = True):
    task = small_markov_task(beta=0.7, seed=1) if kind == "markov" else _bandit_task()
    if double:
        task.prior.double()
    policy = perturbed_policy(task, scale=0.7, seed=1)
    return task, (policy.double() if double else policy)


@pytest.fixture(autouse=True)
def _one_thread():
    """These tensors are tiny: one intra-op thread is several times faster than many on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TASKS = pytest.mark.parametrize("kind", ["markov", "bandit"])


def _max_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def _flat_grad(value: torch.Tensor, policy) -> torch.Tensor:
    (g,) = torch.autograd.grad(value, policy.logits)
    return g.reshape(-1).double()


def _enumerated(task, policy):
    x = enumerate_sequences(task.vocab_size, task.length)  # (M, T)
    token_log_q = policy.token_log_probs(x)  # (M, T)
    token_log_prior = task.prior.token_log_probs(x).double()  # (M, T)
    return x, token_log_q, token_log_prior


def _reward_gradient(task, policy) -> torch.Tensor:
    """∇ E_q[r] = ∇ Σ_x q(x) r(x), every factor differentiable: independent of recipes.py."""
    x, token_log_q, _ = _enumerated(task, policy)
    return _flat_grad((token_log_q.sum(-1).exp() * task.rewards(x).double()).sum(), policy)


def _reward_std(task, policy) -> float:
    x, token_log_q, _ = _enumerated(task, policy)
    q, r = token_log_q.detach().sum(-1).exp(), task.rewards(x).double()
    return float((q * (r - (q * r).sum()) ** 2).sum().sqrt())


# ---------------------------------------------------------------------------------------------------------------
# expected gradients of the KL placements and estimators, against named objectives
# ---------------------------------------------------------------------------------------------------------------


@TASKS
def test_kl_in_reward_is_unbiased_for_grad_j(kind):
    """E_q[(r − βΣ_t k1_t − b)∇log q] = ∇J = β∇ELBO; the rl recipe's loss descends exactly that."""
    task, policy = _setup(kind)
    target = task.beta * elbo_gradient(task, policy)
    assert _max_gap(expected_kl_reward_gradient(task, policy), target) < EXACT_TOL
    assert _max_gap(expected_recipe_gradient(task, policy, "rl"), -target) < EXACT_TOL
    assert float(target.abs().max()) > GAP_MIN  # not a comparison of zeros


@TASKS
def test_k1_in_loss_has_no_expected_kl_gradient(kind):
    """E_q[∇Σ_t k1_t] = Σ_t E_q[∇log q_t] = 0: k1 in the loss does not regularize at all."""
    task, policy = _setup(kind)
    assert float(expected_kl_loss_gradient(task, policy, "k1").abs().max()) < EXACT_TOL
    assert float(reverse_kl_gradient(task, policy).abs().max()) > GAP_MIN  # the KL it should have pulled on


@TASKS
def test_k3_in_loss_descends_per_token_forward_kl(kind):
    """E_q[∇Σ_t k3_t] = ∇ Σ_t E_{x<t∼q̄} KL(π0(·|x<t) ‖ q(·|x<t)) (prefix weights detached), not ∇KL(q‖π0)."""
    task, policy = _setup(kind)
    k3 = expected_kl_loss_gradient(task, policy, "k3")
    assert _max_gap(k3, per_token_forward_kl_gradient(task, policy)) < EXACT_TOL
    assert _max_gap(k3, reverse_kl_gradient(task, policy)) > GAP_MIN  # at T = 1 too: KL(π0‖q) ≠ KL(q‖π0)


def test_per_token_forward_kl_needs_its_prefix_weights_detached():
    """With the prefix weights q(x<t) live, the per-token forward KL's gradient gains score terms k3 does not have."""
    task, policy = _setup("markov")
    x, token_log_q, token_log_prior = _enumerated(task, policy)
    live = torch.zeros((), dtype=torch.float64)
    for t in range(task.length):  # Σ_t Σ_{x<t} q(x<t) KL_t(x<t), prefix weights differentiable
        prefixes = enumerate_sequences(task.vocab_size, t)
        log_q = torch.log_softmax(policy.next_token_logits(prefixes), -1)
        log_p0 = torch.log_softmax(task.prior.next_token_logits(prefixes).double(), -1)
        weights = policy.log_prob(prefixes).exp() if t else torch.ones(1, dtype=torch.float64)
        live = live + (weights * (log_p0.exp() * (log_p0 - log_q)).sum(-1)).sum()
    assert float(live.detach()) == pytest.approx(
        float(per_token_forward_kl(task, policy).detach()), abs=EXACT_TOL
    )  # same value
    k3 = expected_kl_loss_gradient(task, policy, "k3")
    assert _max_gap(k3, _flat_grad(live, policy)) > GAP_MIN  # different gradient


@TASKS
def test_ratio_corrected_k3_is_k1_score_gradient(kind):
    """E_q[∇(k3_t·q_t/q_old,t)] = Σ_t E_q[k1_t ∇log q_t]: ∇KL(q‖π0) at T = 1, not at T ≥ 2."""
    task, policy = _setup(kind)
    corrected = expected_kl_loss_gradient(task, policy, "k3", ratio_correction=True)
    assert _max_gap(corrected, k1_score_gradient(task, policy)) < EXACT_TOL
    gap = _max_gap(corrected, reverse_kl_gradient(task, policy))
    if kind == "bandit":
        assert gap < EXACT_TOL
    else:
        assert gap > GAP_MIN  # drops each token's effect on later tokens' KL


@TASKS
def test_k2_in_loss_equals_ratio_corrected_k3(kind):
    """∇½(log ρ_t)² = k1_t∇log q_t = ∇(k3_t q_t/q_old,t) on-policy, sample by sample, so in expectation too."""
    task, policy = _setup(kind)
    assert _max_gap(expected_kl_loss_gradient(task, policy, "k2"), k1_score_gradient(task, policy)) < EXACT_TOL
    x = policy.sample(64, task.length, generator=torch.Generator().manual_seed(0))
    log_q, log_p0 = policy.token_log_probs(x), task.prior.token_log_probs(x).double()
    k2 = _flat_grad(kl_loss_terms(log_q, log_p0, "k2").sum(), policy)
    log_q = policy.token_log_probs(x)
    k3c = _flat_grad(kl_loss_terms(log_q, log_p0, "k3", old_token_log_q=log_q.detach()).sum(), policy)
    assert _max_gap(k2, k3c) < EXACT_TOL


def test_reverse_kl_gradient_is_k1_to_go():
    """The comparison target itself: ∇KL(q‖π0) = Σ_t E_q[(Σ_{s≥t} k1_s)∇log q_t], from the trajectory's k1s."""
    task, policy = _setup("markov")
    x, token_log_q, token_log_prior = _enumerated(task, policy)
    weights = token_log_q.detach().sum(-1).exp()  # (M,)
    k1 = token_log_q.detach() - token_log_prior  # (M, T)
    to_go = k1.flip(-1).cumsum(-1).flip(-1)  # Σ_{s≥t} k1_s
    assert (
        _max_gap(reverse_kl_gradient(task, policy), _flat_grad((weights[:, None] * to_go * token_log_q).sum(), policy))
        < EXACT_TOL
    )


# ---------------------------------------------------------------------------------------------------------------
# the group-standardized advantage: β acts as β·std_q(r) when the KL is in the loss, not when it is in the reward
# ---------------------------------------------------------------------------------------------------------------


@TASKS
@pytest.mark.parametrize("corrected", [False, True], ids=["k3", "k3-corrected"])
def test_group_std_with_kl_in_loss_scales_beta_by_reward_std(kind, corrected):
    """Infinite groups: g_std(β)·(σ_q(r)+ε) = g_centred(β·(σ_q(r)+ε)), the same KL in the loss."""
    task, policy = _setup(kind)
    recipe = Recipe(kl_in="loss", kl_estimator="k3", kl_ratio_correction=corrected, advantage="group-std")
    scale = _reward_std(task, policy) + GROUP_STD_EPS
    standardized = expected_recipe_gradient(task, policy, recipe) * scale
    centred = expected_recipe_gradient(
        task, policy, dataclasses.replace(recipe, advantage="group"), beta=task.beta * scale
    )
    assert _max_gap(standardized, centred) < EXACT_TOL
    unscaled = expected_recipe_gradient(task, policy, dataclasses.replace(recipe, advantage="group"))
    assert _max_gap(standardized, unscaled * scale) > GAP_MIN  # the effective β did change


@TASKS
def test_group_std_with_kl_in_reward_only_rescales_the_step(kind):
    """With the KL in the reward the std is that of R = r − βΣk1, and standardizing only divides ∇J by it: β stays."""
    task, policy = _setup(kind)
    recipe = Recipe(kl_in="reward", advantage="group-std")
    x, token_log_q, token_log_prior = _enumerated(task, policy)
    q = token_log_q.detach().sum(-1).exp()
    signal = task.rewards(x).double() - task.beta * (token_log_q.detach() - token_log_prior).sum(-1)
    scale = float((q * (signal - (q * signal).sum()) ** 2).sum().sqrt()) + GROUP_STD_EPS
    target = -task.beta * elbo_gradient(task, policy) / scale
    assert _max_gap(expected_recipe_gradient(task, policy, recipe), target) < EXACT_TOL


# ---------------------------------------------------------------------------------------------------------------
# Monte Carlo: the trainer's own step, averaged, against targets computed without recipes.py
# ---------------------------------------------------------------------------------------------------------------


def _trainer_gradients(task, policy, recipe: Recipe, num_sequences: int, num_batches: int, seed: int = 0):
    """The gradient of ReinforceTrainer's loss on ``num_batches`` fresh batches ``(num_batches, P)``; lr ~0 so the
    policy stays put."""
    trainer = ReinforceTrainer(task, policy, num_sequences, lr=1e-15, **dataclasses.asdict(recipe))
    torch.manual_seed(seed)
    grads = []
    for _ in range(num_batches):
        trainer.step()
        grads.append(policy.logits.grad.reshape(-1).double().clone())
    return torch.stack(grads)


def _max_z(samples: torch.Tensor, target: torch.Tensor) -> float:
    """max over coordinates of |mean − target| / (se + slack/Z)."""
    mean, se = samples.mean(0), samples.std(0) / samples.shape[0] ** 0.5
    return float(((mean - target).abs() / (se + MC_SLACK / Z_BOUND)).max())


def _constant_reward(task: Task) -> Task:
    return task.replace(reward=lambda x: torch.zeros(x.shape[0], dtype=torch.float64))


MC_CASES = {
    # name: (recipe, constant reward?, target, a wrong target the test must reject)
    "rl": (PRESETS["rl"], False, lambda t, p: -t.beta * elbo_gradient(t, p), lambda t, p: t.beta * elbo_gradient(t, p)),
    "grpo-kl": (
        PRESETS["grpo"],
        True,
        lambda t, p: t.beta / t.length * per_token_forward_kl_gradient(t, p),
        lambda t, p: t.beta / t.length * reverse_kl_gradient(t, p),
    ),
    "grpo_corr-kl": (
        PRESETS["grpo_corr"],
        True,
        lambda t, p: t.beta / t.length * k1_score_gradient(t, p),
        lambda t, p: t.beta / t.length * per_token_forward_kl_gradient(t, p),
    ),
    "drgrpo": (
        dataclasses.replace(PRESETS["drgrpo"], group_size=4),
        False,  # E[r_i − mean_g] = (G−1)/G (r_i − E_q r) for a group of G
        lambda t, p: -0.75 * _reward_gradient(t, p) + t.beta * per_token_forward_kl_gradient(t, p),
        lambda t, p: -_reward_gradient(t, p) + t.beta * per_token_forward_kl_gradient(t, p),
    ),
}


@pytest.mark.parametrize("case", list(MC_CASES))
def test_trainer_step_matches_exact_expected_gradient(case):
    recipe, constant, target, wrong = MC_CASES[case]
    task, policy = _setup("markov")
    if constant:  # the advantage is 0: only the in-loss KL term acts
        task = _constant_reward(task)
    samples = _trainer_gradients(task, policy, recipe, num_sequences=64, num_batches=300)
    assert _max_z(samples, target(task, policy)) < Z_BOUND
    assert _max_z(samples, wrong(task, policy)) > Z_BOUND  # the test has the power to tell them apart


def test_trainer_group_std_update_is_rl_at_beta_times_reward_std():
    """Bandit, ratio-corrected k3 (= reverse KL at T = 1), large groups: the expected GRPO update is the rl update
    at β' = β·(σ_q(r)+ε), divided by σ_q(r)+ε."""
    task, policy = _setup("bandit")
    scale = _reward_std(task, policy) + GROUP_STD_EPS
    recipe = dataclasses.replace(PRESETS["grpo_corr"], group_size=512)
    samples = _trainer_gradients(task, policy, recipe, num_sequences=1024, num_batches=200)
    tempered = task.replace(beta=task.beta * scale)
    target = -tempered.beta * elbo_gradient(tempered, policy) / scale
    assert _max_z(samples, target) < Z_BOUND
    assert _max_z(samples, -task.beta * elbo_gradient(task, policy) / scale) > Z_BOUND  # β unchanged is rejected


# ---------------------------------------------------------------------------------------------------------------
# bandit fixed points in closed form (infinite groups)
# ---------------------------------------------------------------------------------------------------------------


def _bandit_arrays(task: Task) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.arange(task.vocab_size)[:, None]
    return task.prior.log_prob(x).double().exp(), task.rewards(x).double()


def _policy_at(task: Task, q: torch.Tensor):
    policy = task.make_policy("tabular").double()
    with torch.no_grad():
        policy.logits.copy_(q.clamp_min(1e-300).log()[None])
    return policy


def _tv(p: torch.Tensor, q: torch.Tensor) -> float:
    return 0.5 * float((p - q).abs().sum())


@pytest.mark.parametrize("recipe", BANDIT_CLOSED_FORMS)
def test_bandit_closed_form_gradient_matches_enumeration(recipe):
    """The closed form used to certify fixed points is the enumerated expected gradient of the trainer's loss."""
    task, policy = _setup("bandit")
    p0, r = _bandit_arrays(task)
    q = policy.log_prob(torch.arange(task.vocab_size)[:, None]).detach().exp()
    closed = bandit_expected_gradient(q, p0, r, task.beta, recipe)
    assert _max_gap(closed, expected_recipe_gradient(task, policy, recipe)) < EXACT_TOL


@pytest.mark.parametrize("beta", [0.3, 1.5])
@pytest.mark.parametrize("recipe", BANDIT_CLOSED_FORMS)
def test_bandit_fixed_point_zeroes_the_expected_gradient(recipe, beta):
    task = _bandit_task(beta=beta)
    p0, r = _bandit_arrays(task)
    q = bandit_fixed_point(p0, r, beta, recipe)
    assert q.dtype == torch.float64 and float(q.sum()) == pytest.approx(1.0, abs=1e-12)
    grad = expected_recipe_gradient(task, _policy_at(task, q), recipe)
    assert float(grad.abs().max()) < FIXED_POINT_GRAD
    posterior = bandit_fixed_point(p0, r, beta, "rl")
    if recipe == "rl":
        assert _max_gap(q, torch.softmax(p0.log() + r / beta, -1)) < EXACT_TOL
    else:
        assert _tv(q, posterior) > GAP_MIN  # a different point: these recipes do not sample π*


def test_grpo_fixed_point_is_the_issue_formula():
    """q_k = β π0_k/(β − A_k), A = (r − E_q r)/(std_q r + ε) under q itself: holds at the returned point."""
    task = _bandit_task(beta=0.5)
    p0, r = _bandit_arrays(task)
    q = bandit_fixed_point(p0, r, 0.5, "grpo")
    mu = (q * r).sum()
    advantage = (r - mu) / ((q * (r - mu) ** 2).sum().sqrt() + GROUP_STD_EPS)
    assert _max_gap(q, 0.5 * p0 / (0.5 - advantage)) < EXACT_TOL


@pytest.mark.parametrize("beta", [0.3, 1.5], ids=["collapses", "interior"])
def test_grpo_corr_fixed_point_is_a_tempered_posterior(beta):
    """q = π*_{β'} with β' = β·(σ_q(r)+ε); below a threshold β the only such point is (numerically) argmax r."""
    task = _bandit_task(beta=beta)
    p0, r = _bandit_arrays(task)
    q = bandit_fixed_point(p0, r, beta, "grpo_corr")
    mu = (q * r).sum()
    effective = beta * (float((q * (r - mu) ** 2).sum().sqrt()) + GROUP_STD_EPS)
    assert _max_gap(q, torch.softmax(p0.log() + r / effective, -1)) < EXACT_TOL
    if beta < 1:
        assert float(q[r.argmax()]) > 1 - 1e-9
    else:
        assert float(q.max()) < 0.9


@pytest.mark.parametrize("beta", [0.3, 1.5])
@pytest.mark.parametrize("recipe", ["grpo", "drgrpo", "grpo_corr"])
def test_gradient_flow_from_prior_reaches_the_closed_form(recipe, beta):
    """Exact expected-gradient descent on the softmax logits from θ = log π0 ends at the returned fixed point
    (the root bandit_fixed_point picks is the one training from the prior reaches)."""
    task = _bandit_task(beta=beta)
    p0, r = _bandit_arrays(task)
    theta = p0.log().clone()
    for _ in range(FLOW_STEPS):
        theta -= bandit_expected_gradient(torch.softmax(theta, -1), p0, r, beta, recipe)
    assert _tv(torch.softmax(theta, -1), bandit_fixed_point(p0, r, beta, recipe)) < FLOW_TV


def test_bandit_fixed_point_refuses_recipes_without_a_closed_form():
    p0, r = torch.full((3,), 1 / 3, dtype=torch.float64), torch.tensor([0.0, 0.5, 1.0])
    with pytest.raises(ValueError, match="no closed-form"):
        bandit_fixed_point(p0, r, 0.5, "ppo")
    with pytest.raises(ValueError, match="beta"):
        bandit_fixed_point(p0, r, -1.0, "rl")


@pytest.mark.slow
@pytest.mark.parametrize(
    "recipe, beta", [("rl", 0.5), ("grpo", 0.5), ("drgrpo", 0.5), ("grpo_corr", 0.5), ("grpo_corr", 1.5)]
)
def test_trained_recipe_ends_at_the_closed_form(recipe, beta):
    """ReinforceTrainer with the preset (groups of 256) on the shipped bandit ends near the infinite-group point,
    nearer it than π* when the two differ."""
    task = load_task("bandit").replace(beta=beta)
    p0, r = _bandit_arrays(task)
    options = dataclasses.asdict(dataclasses.replace(PRESETS[recipe], group_size=256))
    result = fit(ReinforceTrainer(task, task.make_policy(), 1024, lr=0.05, **options), steps=300, seed=0)
    trained = result.policy.log_prob(torch.arange(task.vocab_size)[:, None]).detach().double().exp()
    fixed_point = bandit_fixed_point(p0, r, beta, recipe)
    assert _tv(trained, fixed_point) < TRAINED_TV
    posterior = bandit_fixed_point(p0, r, beta, "rl")
    if recipe != "rl":
        assert _tv(trained, posterior) > 2 * TRAINED_TV
