"""The newer recipe options (entropy bonus, reward standardization before the KL, batch-whitened advantage, the
sequence ratio, asymmetric clipping, token-mean aggregation, reference resets) against enumeration and closed forms.

As in test_recipes.py, every expected gradient is enumerated over all V^T sequences at a perturbed tabular policy
(a Markov task with T = 3 and a bandit), through the trainer's own loss (bayes_klrl.rl.theory.expected_recipe_gradient),
and compared with a target built without bayes_klrl/rl/recipes.py; each test also rejects a wrong target.
"""

import dataclasses

import pytest
import torch

from bayes_klrl import fit
from bayes_klrl.exact import enumerate_sequences
from bayes_klrl.modelfile import load_task
from bayes_klrl.rl import ReinforceTrainer
from bayes_klrl.rl.recipes import GROUP_STD_EPS, PRESETS, Recipe, TokenBatch, build_pipeline, clipped_surrogate
from bayes_klrl.rl.reinforce import TemperedLM
from bayes_klrl.rl.theory import (
    elbo_gradient,
    entropy,
    entropy_fixed_point,
    expected_recipe_gradient,
    in_reward_expected_gradient,
    per_token_entropy,
    reference_reset_fixed_point,
    reverse_kl_gradient,
    standardized_reward_fixed_point,
)

from .test_recipes import (
    EXACT_TOL,
    GAP_MIN,
    Z_BOUND,
    _flat_grad,
    _max_gap,
    _max_z,
    _reward_gradient,
    _reward_std,
    _setup,
    _trainer_gradients,
    _tv,
)

#: α of the entropy bonus in these tests
ALPHA = 0.3
#: a trained bandit policy ends this close (total variation) to the closed-form point
TRAINED_TV = 0.03

TASKS = pytest.mark.parametrize("kind", ["markov", "bandit"])


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _arms(task):
    """(π0(x), r(x)) over every sequence, float64: the 'arms' of the closed forms."""
    x = enumerate_sequences(task.vocab_size, task.length)
    return task.prior.log_prob(x).double().exp(), task.rewards(x).double()


def _sequence_probs(task, policy) -> torch.Tensor:
    x = enumerate_sequences(task.vocab_size, task.length)
    return policy.log_prob(x).detach().double().exp()


def _tabular_at(task, q: torch.Tensor):
    """A float64 tabular policy whose distribution over sequences is ``q`` (enumeration order)."""
    policy = task.make_policy("tabular").double()
    v, length = task.vocab_size, task.length
    rows = []
    for t in range(length):  # prefix marginals of length t + 1, one row of V per prefix of length t
        rows.append(q.reshape(v ** (t + 1), -1).sum(-1).clamp_min(1e-300).log().reshape(v**t, v))
    with torch.no_grad():
        policy.logits.copy_(torch.cat(rows))
    return policy


# ---------------------------------------------------------------------------------------------------------------
# expected gradients
# ---------------------------------------------------------------------------------------------------------------


@TASKS
def test_sequence_entropy_bonus_ascends_entropy(kind):
    """Sequence estimator, k1 in the reward: the expected update descends −(∇J + α∇H(q)) exactly."""
    task, policy = _setup(kind)
    got = expected_recipe_gradient(task, policy, Recipe(entropy_coef=ALPHA))
    grad_j = task.beta * elbo_gradient(task, policy)
    grad_h = _flat_grad(entropy(task, policy), policy)
    assert _max_gap(got, -(grad_j + ALPHA * grad_h)) < EXACT_TOL
    assert _max_gap(got, -grad_j) > GAP_MIN  # the bonus does act


@TASKS
def test_token_entropy_bonus_is_the_prefix_detached_entropy(kind):
    """Token estimator: −(∇J + α∇Σ_t E_{x<t} H_t) with the prefix weights detached; ∇H(q) itself at T = 1 only."""
    task, policy = _setup(kind)
    got = expected_recipe_gradient(task, policy, Recipe(entropy_coef=ALPHA, entropy_estimator="token"))
    grad_j = task.beta * elbo_gradient(task, policy)
    per_token = _flat_grad(per_token_entropy(task, policy), policy)
    assert _max_gap(got, -(grad_j + ALPHA * per_token)) < EXACT_TOL
    same = float(per_token_entropy(task, policy).detach()) - float(entropy(task, policy).detach())
    assert abs(same) < EXACT_TOL
    gap = _max_gap(got, -(grad_j + ALPHA * _flat_grad(entropy(task, policy), policy)))
    if kind == "bandit":
        assert gap < EXACT_TOL
    else:
        assert gap > GAP_MIN  # drops the score terms of the prefix weights


@TASKS
@pytest.mark.parametrize("kind_of_std", ["group-std", "batch-std"])
def test_reward_standardized_before_the_kl_divides_the_reward_only(kind, kind_of_std):
    """r' = (r − E r)/(σ_q(r)+ε), then − βΣk1: the update is −(∇E_q r/s − β∇KL(q‖π0)), i.e. ∇J at β·s over s."""
    task, policy = _setup(kind)
    got = expected_recipe_gradient(task, policy, Recipe(reward_normalization=kind_of_std))
    scale = _reward_std(task, policy) + GROUP_STD_EPS
    kl = reverse_kl_gradient(task, policy)
    assert _max_gap(got, -(_reward_gradient(task, policy) / scale - task.beta * kl)) < EXACT_TOL
    assert _max_gap(got, -(_reward_gradient(task, policy) - task.beta * kl)) > GAP_MIN  # β changed: not π*


@TASKS
def test_batch_whitened_advantage_only_rescales_grad_j(kind):
    """REINFORCE++ (k1 in the reward, advantage whitened over the batch): −∇J/(σ_q(R)+ε), the fixed point π*."""
    task, policy = _setup(kind)
    x = enumerate_sequences(task.vocab_size, task.length)
    q = policy.log_prob(x).detach().double().exp()
    signal = task.rewards(x).double() - task.beta * (policy.log_prob(x).detach().double() - task.prior.log_prob(x))
    scale = float((q * (signal - (q * signal).sum()) ** 2).sum().sqrt()) + GROUP_STD_EPS
    target = -task.beta * elbo_gradient(task, policy)
    got = expected_recipe_gradient(task, policy, "reinforce_pp")
    assert _max_gap(got, target / scale) < EXACT_TOL
    assert _max_gap(got, target) > GAP_MIN


@TASKS
@pytest.mark.parametrize("normalization", ["sequence", "token-mean"])
def test_sequence_ratio_and_token_mean_on_one_update(kind, normalization):
    """On-policy, one update: GSPO's sequence ratio with 1/|x| (and token-mean, on fixed lengths) gives −∇J/T."""
    task, policy = _setup(kind)
    target = -task.beta * elbo_gradient(task, policy) / task.length
    for ratio in ("token", "sequence"):
        got = expected_recipe_gradient(task, policy, Recipe(ratio=ratio, normalization=normalization))
        assert _max_gap(got, target) < EXACT_TOL
    if kind == "markov":  # T = 3: the 1/T is there
        assert _max_gap(expected_recipe_gradient(task, policy, Recipe(ratio="sequence")), target) > GAP_MIN


def test_sequence_ratio_clips_whole_sequences():
    """Under reuse GSPO clips s_i = exp(mean_t log ρ_it): one token far off clips the whole sequence's gradient."""
    log_q = torch.tensor([[0.0, 0.0], [0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[0.0, -1.0], [0.0, -0.1]], dtype=torch.float64)  # s = e^0.5 (clipped), e^0.05 (inside)
    for ratio, expected in (("sequence", [[0.0, 0.0], [1.0, 1.0]]), ("token", [[1.0, 0.0], [1.0, 1.0]])):
        recipe = Recipe(epochs=2, clip=0.2, ratio=ratio, normalization="constant")
        pipeline = build_pipeline(recipe, beta=0.5)
        batch = TokenBatch(torch.zeros(2, 2), log_q, old, torch.zeros(2, 2), torch.zeros(2), advantage=torch.ones(2))
        (grad,) = torch.autograd.grad(pipeline.loss(batch), log_q)
        got = (grad != 0).double()
        assert torch.equal(got, torch.tensor(expected, dtype=torch.float64)), ratio


def test_asymmetric_clip_range():
    """clip_low/clip_high: clamp to [1 − ε_low, 1 + ε_high]; a positive advantage at ρ = 1.25 is clipped at 0.2
    (gradient 0) and not at DAPO's 0.28."""
    assert Recipe(clip_low=0.1, clip_high=0.3).clip_range == (0.9, 1.3)
    assert Recipe(clip=0.2).clip_range == (0.8, 1.2)
    ratio = torch.tensor([1.25, 0.85], requires_grad=True)
    for high, expected in ((0.2, [0.0, 1.0]), (0.28, [1.0, 1.0])):
        (grad,) = torch.autograd.grad(clipped_surrogate(ratio, torch.ones(2), (0.9, 1 + high)).sum(), ratio)
        assert torch.equal(grad, torch.tensor(expected)), high


# ---------------------------------------------------------------------------------------------------------------
# off-policy corrections: a batch drawn by a behaviour policy μ (here q at temperature 1.3)
# ---------------------------------------------------------------------------------------------------------------

#: the behaviour sampler's temperature in these tests (its per-token ratios stay below the TIS cap on these tasks)
TAU = 1.3


@TASKS
def test_sequence_is_recovers_grad_j_and_the_others_do_not(kind):
    """E_μ[(q(x)/μ(x))(R − E_μR)∇log q] = ∇J exactly; uncorrected, E_μ[(R − E_μR)∇log q] ≠ ∇J; token-level truncated
    IS (each token weighted by its own ratio) equals ∇J at T = 1 (ratios below the cap) but not at T ≥ 2."""
    task, policy = _setup(kind)
    mu = TemperedLM(policy, TAU)
    target = -task.beta * elbo_gradient(task, policy)

    def grad(correction):
        recipe = Recipe(off_policy_correction=correction, behaviour_temperature=TAU)
        return expected_recipe_gradient(task, policy, recipe, behaviour=mu)

    assert _max_gap(grad("sequence-is"), target) < EXACT_TOL
    assert _max_gap(grad("none"), target) > GAP_MIN
    gap = _max_gap(grad("token-tis"), target)
    if kind == "bandit":
        assert gap < EXACT_TOL
    else:
        assert gap > GAP_MIN


@pytest.mark.parametrize("correction", ["none", "token-tis", "sequence-is"])
def test_off_policy_fixed_point_is_still_pi_star_for_a_tabular_policy(correction):
    """KL in the reward, tabular policy: at π* every signal is log Z, so each correction's expected gradient under
    the tempered sampler vanishes there (the corrections change the path, not where a tabular policy settles)."""
    task, _ = _setup("markov")
    p0, r = _arms(task)
    recipe = Recipe(off_policy_correction=correction, behaviour_temperature=TAU)
    at = _tabular_at(task, torch.softmax(p0.log() + r / task.beta, -1))
    assert float(expected_recipe_gradient(task, at, recipe, behaviour=TemperedLM(at, TAU)).abs().max()) < 1e-8
    away = _tabular_at(task, entropy_fixed_point(p0, r, task.beta, ALPHA))
    assert float(expected_recipe_gradient(task, away, recipe, behaviour=TemperedLM(away, TAU)).abs().max()) > GAP_MIN


def test_trainer_step_with_a_tempered_sampler_matches_enumeration():
    """The trainer's own step (tempered sampler, sequence-level IS), averaged over batches, is −∇J; the uncorrected
    expected gradient is rejected."""
    task, policy = _setup("markov")
    recipe = Recipe(off_policy_correction="sequence-is", behaviour_temperature=TAU)
    samples = _trainer_gradients(task, policy, recipe, num_sequences=64, num_batches=300)
    assert _max_z(samples, -task.beta * elbo_gradient(task, policy)) < Z_BOUND
    none = dataclasses.replace(recipe, off_policy_correction="none")
    assert _max_z(samples, expected_recipe_gradient(task, policy, none, behaviour=TemperedLM(policy, TAU))) > Z_BOUND


def test_trainer_draws_from_the_lagged_policy():
    """behaviour_lag K: the batch of step s is drawn by the policy after step s − K (the log-probabilities the
    trainer records are those of that policy)."""
    task = load_task("bandit")
    trainer = ReinforceTrainer(
        task, task.make_policy(), 64, lr=0.1, behaviour_lag=2, off_policy_correction="sequence-is"
    )
    policies = []
    for _ in range(5):
        policies.append(trainer.policy.logits.detach().clone())
        torch.manual_seed(len(policies))
        x, mu = trainer._sample()
        lagged = policies[max(0, len(policies) - 3)]
        expected = torch.log_softmax(lagged, -1)[0, x[:, 0]]
        assert torch.allclose(mu[:, 0], expected.to(mu.dtype), atol=1e-6)
        trainer.update(-trainer.policy.token_log_probs(x).sum(-1).mean())  # move the policy
    assert not torch.allclose(policies[0], policies[-1])  # it did move: the lag is visible


# ---------------------------------------------------------------------------------------------------------------
# fixed points: closed form, zero of the trainer's enumerated expected gradient
# ---------------------------------------------------------------------------------------------------------------


@TASKS
@pytest.mark.parametrize(
    "option", ["entropy", "standardized", "reset"], ids=["entropy", "reward-std", "reference-reset"]
)
def test_closed_form_zeroes_the_trainers_expected_gradient(kind, option):
    """Each closed form is a zero of expected_recipe_gradient (the trainer's loss) on whole sequences, and π* is not."""
    task, _ = _setup(kind)
    p0, r = _arms(task)
    beta = task.beta
    if option == "entropy":
        recipe, q = Recipe(entropy_coef=ALPHA), entropy_fixed_point(p0, r, beta, ALPHA)
    elif option == "standardized":
        recipe, q = Recipe(reward_normalization="group-std"), standardized_reward_fixed_point(p0, r, beta)
    else:  # the second phase: the reference is the first phase's fixed point π*
        recipe, q = Recipe(), reference_reset_fixed_point(p0, r, beta, 2)
        task = task.replace(prior=_tabular_at(task, torch.softmax(p0.log() + r / beta, -1)))
    grad = expected_recipe_gradient(task, _tabular_at(task, q), recipe)
    assert float(grad.abs().max()) < 1e-8
    posterior = torch.softmax(p0.log() + r / beta, -1)
    assert _tv(q, posterior) > GAP_MIN
    assert float(expected_recipe_gradient(task, _tabular_at(task, posterior), recipe).abs().max()) > GAP_MIN


def test_in_reward_gradient_matches_enumeration():
    """The softmax-over-arms closed form used to certify those points is the enumerated expected gradient (bandit)."""
    task, policy = _setup("bandit")
    p0, r = _arms(task)
    q = _sequence_probs(task, policy)
    for recipe, kwargs in (
        (Recipe(entropy_coef=ALPHA), {"entropy_coef": ALPHA}),
        (Recipe(reward_normalization="group-std"), {"reward_normalization": "group-std"}),
    ):
        closed = in_reward_expected_gradient(q, p0, r, task.beta, **kwargs)
        assert _max_gap(closed, expected_recipe_gradient(task, policy, recipe)) < EXACT_TOL


def test_standardized_reward_collapses_below_a_threshold():
    """Like grpo_corr, but at every T: small β leaves only the argmax root; larger β an interior point."""
    p0 = torch.full((4,), 0.25, dtype=torch.float64)
    r = torch.tensor([0.0, 0.2, 0.5, 1.0], dtype=torch.float64)
    assert float(standardized_reward_fixed_point(p0, r, 0.2)[-1]) > 1 - 1e-9
    assert float(standardized_reward_fixed_point(p0, r, 3.0).max()) < 0.9


# ---------------------------------------------------------------------------------------------------------------
# trained fixed points on the shipped bandit
# ---------------------------------------------------------------------------------------------------------------


def _train(task, steps: int, **options):
    result = fit(ReinforceTrainer(task, task.make_policy(), 512, lr=0.05, **options), steps=steps, seed=0)
    return _sequence_probs(task, result.policy)


@pytest.mark.parametrize("option", ["entropy", "standardized", "reset", "lagged"])
def test_trained_bandit_ends_at_the_closed_form(option):
    """ReinforceTrainer with each option on the shipped bandit ends near its closed form, farther from π*."""
    task = load_task("bandit").replace(beta=1.0)
    p0, r = _arms(task)
    if option == "entropy":
        trained, q = _train(task, 400, entropy_coef=1.0), entropy_fixed_point(p0, r, 1.0, 1.0)
    elif option == "standardized":
        trained = _train(task, 400, reward_normalization="batch-std")
        q = standardized_reward_fixed_point(p0, r, 1.0)
    elif option == "reset":  # resets before steps 300 and 600: three phases
        trained, q = _train(task, 900, reference_reset_every=300), reference_reset_fixed_point(p0, r, 1.0, 3)
    else:  # a stale, hotter sampler, token-level truncated IS: still π* (tabular)
        options = {"behaviour_lag": 4, "behaviour_temperature": TAU, "off_policy_correction": "token-tis"}
        trained, q = _train(task, 400, **options), torch.softmax(p0.log() + r / 1.0, -1)
    posterior = torch.softmax(p0.log() + r / 1.0, -1)
    assert _tv(trained, q) < TRAINED_TV
    if option != "lagged":
        assert _tv(trained, posterior) > 2 * TRAINED_TV


# ---------------------------------------------------------------------------------------------------------------
# the record: presets, refusals, settings
# ---------------------------------------------------------------------------------------------------------------


def test_new_options_are_recorded_only_when_set():
    """A checkpoint written before these options existed lacks them: at their defaults they are not recorded."""
    new = ("reward_normalization", "entropy_coef", "entropy_estimator", "clip_low", "clip_high", "ratio",
           "reference_reset_every")  # fmt: skip
    assert not set(new) & set(PRESETS["rl"].as_dict())
    assert Recipe(entropy_coef=0.1).as_dict()["entropy_coef"] == 0.1
    assert PRESETS["gspo"].as_dict()["ratio"] == "sequence"
    assert dataclasses.asdict(PRESETS["drgrpo"]) == dataclasses.asdict(PRESETS["drgrpo_k3"])  # the old name


@pytest.mark.parametrize(
    "options, match",
    [
        ({"entropy_coef": -1.0}, "entropy_coef"),
        ({"reference_reset_every": -2}, "reference_reset_every"),
        ({"clip_high": 1.5}, "clip_high"),
        ({"replay": 2, "reward_normalization": "group-std"}, "reward_normalization"),
        ({"replay": 2, "reference_reset_every": 5}, "reference_reset_every"),
        ({"kl_gradient": "analytic", "ratio": "sequence"}, "ratio"),
        ({"ratio": "both"}, "ratio"),
        ({"behaviour_lag": -1}, "behaviour_lag"),
        ({"behaviour_temperature": 0.0}, "behaviour_temperature"),
        ({"behaviour_lag": 2, "replay": 2}, "replay"),
        ({"off_policy_correction": "tis"}, "off_policy_correction"),
    ],
)
def test_refused_where_the_recipe_is_built(options, match):
    with pytest.raises(ValueError, match=match):
        Recipe(**options)


@pytest.mark.parametrize(
    "options",
    [{"reference_reset_every": 3}, {"behaviour_lag": 2, "off_policy_correction": "sequence-is"}],
    ids=["reference-reset", "behaviour-lag"],
)
def test_state_survives_a_checkpoint(tmp_path, options):
    """The reset reference and the lagged policies are in the checkpoint: a resumed run ends where an uninterrupted
    one does."""
    task = load_task("bandit")

    def run(steps, resume=False):
        trainer = ReinforceTrainer(task, task.make_policy(), 64, lr=0.05, **options)
        return fit(trainer, steps=steps, seed=0, checkpoint_dir=tmp_path, resume=resume)

    whole = _sequence_probs(task, fit(ReinforceTrainer(task, task.make_policy(), 64, lr=0.05, **options), steps=8,
                                      seed=0).policy)  # fmt: skip
    run(5)
    resumed = _sequence_probs(task, run(8, resume=True).policy)
    assert _max_gap(whole, resumed) < 1e-12
