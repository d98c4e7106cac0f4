"""Reliability: numerics from r/β = 1e-3 to 1e4 against closed forms, −inf rewards, broken model files, --resume.

Complements test_exact (closed forms at one β), test_properties (ELBO ≤ log Z on random tasks), test_task (Task
validation), test_cli (import failures, NaN / shape / dtype rewards at load time) and test_training (resume
through :func:`fit`): here the same facts are checked at extreme scales and through the command line.
"""

import csv
import json
import math
import textwrap

import pytest
import torch

from bayes_klrl import CategoricalLM, MarkovLM, Task, exact_posterior, fit, policy_metrics
from bayes_klrl.cli import main
from bayes_klrl.estimators import NoFeasibleSampleWarning
from bayes_klrl.infer.importance import importance_sample, pareto_khat, policy_diagnostics
from bayes_klrl.infer.svi import SVITrainer
from bayes_klrl.rl import PPOTrainer, ReinforceTrainer

#: r/β scales covered: the largest |r(x)/β| of a single token
RATIOS = [1e-3, 1e-1, 1.0, 1e2, 1e4]
RATIO_IDS = ["r/b=1e-3", "r/b=1e-1", "r/b=1", "r/b=1e2", "r/b=1e4"]
#: the prior's log-probabilities are float32; everything after is float64
LOG_Z_REL_TOL = 1e-6
PROB_TOL = 1e-6
#: importance-sampling estimates must lie within this many of their own standard errors
SE_BOUND = 4.0
BETA = 0.5
TRAINERS = {"svi": SVITrainer, "rl": ReinforceTrainer, "ppo": PPOTrainer}

BANDIT_LOGITS = torch.tensor([0.3, -1.0, 0.5, 2.0, 0.0, -0.5, 1.0, -2.0])
BANDIT_SCORES = torch.linspace(-1.0, 1.0, 8)
TOKEN_SCORES = torch.tensor([1.0, 0.0, -0.5, 0.25])


def bandit(ratio: float, feasible: torch.Tensor | None = None) -> Task:
    """One token of 8 with r(x) = ratio·β·score(x), so max |r/β| = ratio; −inf outside ``feasible`` if given."""
    scale = ratio * BETA

    def reward(x):
        r = scale * BANDIT_SCORES[x[:, 0]]
        return r if feasible is None else torch.where(feasible[x[:, 0]], r, torch.full_like(r, -math.inf))

    return Task(prior=CategoricalLM(BANDIT_LOGITS), reward=reward, beta=BETA, length=1, name="bandit")


def bandit_closed_form(ratio: float, feasible: torch.Tensor | None = None) -> tuple[float, torch.Tensor]:
    """log Z and log π* of :func:`bandit`: log-softmax of log π0 + r/β over the feasible tokens, float64."""
    log_joint = torch.log_softmax(BANDIT_LOGITS.double(), 0) + ratio * BANDIT_SCORES.double()
    if feasible is not None:
        log_joint = torch.where(feasible, log_joint, torch.full_like(log_joint, -math.inf))
    log_z = torch.logsumexp(log_joint, 0)
    return float(log_z), log_joint - log_z


def additive_markov(ratio: float, vocab_size: int = 4, length: int = 4) -> Task:
    """A Markov prior and a per-token reward r(x) = Σ_t ratio·β·s(x_t): log Z has a forward recursion."""
    scale = ratio * BETA
    return Task(
        prior=MarkovLM.random(vocab_size, seed=3),
        reward=lambda x: scale * TOKEN_SCORES[x].sum(-1),
        beta=BETA,
        length=length,
        name="additive",
    )


def forward_log_z(prior: MarkovLM, ratio: float, length: int) -> float:
    r""":math:`\log\sum_x \pi_0(x)\prod_t e^{s(x_t)\,\mathrm{ratio}}` by the forward algorithm (V·V per step, no
    enumeration), in float64."""
    s = ratio * TOKEN_SCORES.double()
    trans = torch.log_softmax(prior.transition_logits.double(), -1)  # (V, V)
    alpha = torch.log_softmax(prior.initial_logits.double(), -1) + s  # (V,)
    for _ in range(length - 1):
        alpha = torch.logsumexp(alpha[:, None] + trans, 0) + s
    return float(torch.logsumexp(alpha, 0))


def close(value: float, reference: float) -> bool:
    return abs(value - reference) <= LOG_Z_REL_TOL * max(1.0, abs(reference))


# -- numerics across r/β ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("ratio", RATIOS, ids=RATIO_IDS)
def test_exact_log_z_matches_the_forward_recursion(ratio):
    task = additive_markov(ratio)
    post = exact_posterior(task)
    reference = forward_log_z(task.prior, ratio, task.length)
    assert close(post.log_z, reference), (post.log_z, reference)
    assert float(post.log_probs.exp().sum()) == pytest.approx(1.0, abs=1e-9)
    assert math.isfinite(post.entropy) and post.entropy >= -1e-9 and post.kl_to_prior >= -1e-9


def test_forward_recursion_check_would_catch_a_wrong_log_z():
    """The reference is sharp: dropping 1/β (off by a factor 2 here) or one position is far outside tolerance."""
    task = additive_markov(1e-3)
    assert not close(forward_log_z(task.prior, 2e-3, task.length), exact_posterior(task).log_z)
    assert not close(forward_log_z(task.prior, 1e-3, task.length - 1), exact_posterior(task).log_z)


@pytest.mark.parametrize("ratio", RATIOS, ids=RATIO_IDS)
def test_bandit_posterior_is_the_softmax(ratio):
    post = exact_posterior(bandit(ratio))
    log_z, log_probs = bandit_closed_form(ratio)
    assert close(post.log_z, log_z), (post.log_z, log_z)
    assert torch.allclose(post.log_probs.exp(), log_probs.exp(), atol=PROB_TOL, rtol=0)
    expected_r = float((log_probs.exp() * ratio * BETA * BANDIT_SCORES.double()).sum())
    assert post.expected_reward == pytest.approx(expected_r, rel=1e-5, abs=1e-9)


@pytest.mark.parametrize("ratio", RATIOS, ids=RATIO_IDS)
def test_importance_sampling_is_finite_and_within_its_standard_error(ratio):
    result = importance_sample(bandit(ratio), num_samples=20_000, seed=0)
    log_z, _ = bandit_closed_form(ratio)
    assert math.isfinite(result.log_z) and math.isfinite(result.log_z_se) and 0 < result.ess <= 1
    assert abs(result.log_z - log_z) <= SE_BOUND * result.log_z_se + 1e-9, (result.log_z, log_z, result.log_z_se)
    assert float(torch.logsumexp(result.smoothed_log_weights, 0)) == pytest.approx(0.0, abs=1e-9)
    assert math.isfinite(result.expected_reward)


@pytest.mark.parametrize("method", list(TRAINERS))
@pytest.mark.parametrize("ratio", RATIOS, ids=RATIO_IDS)
def test_training_stays_finite_and_below_log_z(ratio, method):
    task = bandit(ratio)
    log_z, _ = bandit_closed_form(ratio)
    start = policy_metrics(task, task.make_policy())
    result = fit(TRAINERS[method](task, task.make_policy(), 64), steps=30, seed=0, log_every=10)
    assert all(torch.isfinite(p).all() for p in result.policy.parameters())
    assert all(math.isfinite(v) for row in result.history for v in row.values() if isinstance(v, float))
    m = policy_metrics(task, result.policy)
    assert math.isfinite(m.elbo) and m.elbo <= log_z + LOG_Z_REL_TOL * max(1.0, abs(log_z))
    if ratio >= 1:  # the posterior is far from the prior: 30 steps must close part of the gap
        assert m.kl_q_to_posterior < 0.9 * start.kl_q_to_posterior


# -- −inf rewards ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ratio", [1e-3, 1e4], ids=["r/b=1e-3", "r/b=1e4"])
def test_hard_constraint_at_extreme_scales_is_the_renormalized_softmax(ratio):
    feasible = BANDIT_SCORES < 0.2  # excludes the highest-scoring tokens
    task = bandit(ratio, feasible)
    post = exact_posterior(task)
    log_z, log_probs = bandit_closed_form(ratio, feasible)
    assert close(post.log_z, log_z)
    assert torch.all(post.log_probs[~feasible] == -math.inf)
    assert torch.allclose(post.log_probs.exp(), log_probs.exp(), atol=PROB_TOL, rtol=0)
    result = importance_sample(task, num_samples=20_000, seed=0)
    assert abs(result.log_z - log_z) <= SE_BOUND * result.log_z_se + 1e-9
    trained = fit(SVITrainer(task, task.make_policy(), 64), steps=20, seed=0).policy
    assert all(torch.isfinite(p).all() for p in trained.parameters())


def rare_task() -> Task:
    """Feasible only if all 6 tokens are 0, a token the prior almost never emits: π0(event) ≈ 3e-19."""
    penalty = torch.tensor([-6.0, 0.0, 0.0, 0.0])
    prior = MarkovLM(penalty, torch.zeros(4, 4) + penalty)
    return Task(
        prior=prior,
        reward=lambda x: torch.where((x == 0).all(-1), 0.0, -math.inf),
        beta=1.0,
        length=6,
        name="rare",
    )


def test_rare_event_posterior_is_exact_but_samples_have_no_support():
    task = rare_task()
    event = torch.zeros(1, 6, dtype=torch.long)
    assert exact_posterior(task).log_z == pytest.approx(float(task.prior.log_prob(event)), abs=1e-6)
    with pytest.raises(ValueError, match="no support among the samples"):
        importance_sample(task, num_samples=256, seed=0)
    with pytest.raises(ValueError, match="no support among the samples"):
        policy_diagnostics(task, task.make_policy(), num_samples=256, seed=0)
    with pytest.raises(ValueError, match="no support among the samples"):
        pareto_khat(torch.full((50,), -math.inf))


@pytest.mark.parametrize("method", list(TRAINERS))
def test_a_batch_without_feasible_samples_leaves_the_policy_unchanged(method):
    """Every signal is −inf: no gradient (not NaN), the parameters stay exactly where they were, and a warning
    says so (a run that never meets its constraint would otherwise train on nothing, silently)."""
    task = rare_task()
    trainer = TRAINERS[method](task, task.make_policy(), 32)
    before = [p.detach().clone() for p in trainer.policy.parameters()]
    torch.manual_seed(0)
    with pytest.warns(NoFeasibleSampleWarning, match="violate a hard constraint"):
        trainer.step()
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.policy.parameters()))


RARE_MODEL = """
import math
import torch
from bayes_klrl import MarkovLM, Task

def task(beta=1.0, length=6):
    penalty = torch.tensor([-6.0, 0.0, 0.0, 0.0])
    prior = MarkovLM(penalty, torch.zeros(4, 4) + penalty)
    return Task(prior=prior, reward=lambda x: torch.where((x == 0).all(-1), 0.0, -math.inf), beta=beta,
                length=length, name="rare")
"""


# -- broken model files through the CLI ------------------------------------------------------------------------
MODEL = """
import math
import torch
from bayes_klrl import MarkovLM, Task

def task(beta=0.7, length=3):
    prior = MarkovLM.random(3, seed=0)
    def reward(x):
        return REWARD
    return Task(prior=prior, reward=reward, beta=beta, length=length, name="broken")
"""


def with_reward(expression: str) -> str:
    return MODEL.replace("REWARD", expression)


# name -> (file source, extra argv, the problem the one line must state); test_cli covers import errors, a missing
# task(), a non-Task return value, NaN / (N, T)-shaped / integer rewards and tasks too large to enumerate
BROKEN = {
    "task-raises": (
        MODEL.replace("    prior = ", "    raise RuntimeError('no prior today')\n    prior = "),
        [],
        "task() raised RuntimeError: no prior today",
    ),
    "syntax-error": ("def task(:\n    pass\n", [], "failed to import: SyntaxError"),
    "returns-none": ("def task(**kw):\n    return None\n", [], "returned NoneType, not a bayes_klrl.Task"),
    "bad-beta": (MODEL.replace("beta=beta,", "beta=-beta,"), [], "beta must be finite and > 0, got -0.7"),
    "unknown-override": (
        with_reward("x.float().sum(-1)"),
        ["--set", "temperature=2"],
        "unexpected keyword argument 'temperature'",
    ),
    "reward-raises": (
        with_reward("{}[x.shape[0]]"),
        [],
        "reward function raised KeyError: 4",
    ),
    "reward-list": (with_reward("x.float().sum(-1).tolist()"), [], "must return a torch.Tensor"),
    "reward-numpy": (with_reward("x.float().sum(-1).numpy()"), [], "got ndarray"),
    "reward-column": (with_reward("x.float().sum(-1, keepdim=True)"), [], "must return shape (4,)"),
    "reward-bool": (with_reward("(x == 0).any(-1)"), [], "floating-point tensor, got dtype torch.bool"),
    "reward-posinf": (with_reward("torch.full((x.shape[0],), math.inf)"), [], "+inf"),
    "reward-partly-nan": (with_reward("torch.where(x[:, 0] == x[:, 1], math.nan, 1.0)"), [], "NaN"),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_broken_model_file_gives_one_line_naming_file_and_problem(name, tmp_path, capsys):
    source, extra, problem = BROKEN[name]
    path = tmp_path / f"{name.replace('-', '_')}.py"
    path.write_text(textwrap.dedent(source))
    code = main(["compare", str(path), "--methods", "exact", *extra, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert str(path) in err and problem in err, err


def test_missing_model_file_is_named(tmp_path, capsys):
    path = tmp_path / "nowhere.py"
    assert main(["compare", str(path), "--methods", "exact"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"bayes-klrl: error: model file '{path}' not found"


LATE_NAN = with_reward("torch.where((x[:, 0] == 2) & (x.shape[0] > 4), math.nan, 1.0)")


def test_reward_failing_after_the_construction_probe_names_the_file(tmp_path, capsys):
    path = tmp_path / "late_nan.py"
    path.write_text(LATE_NAN)
    code = main(["compare", str(path), "--methods", "exact", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "NaN" in err
    assert str(path) in err


# -- --resume through the CLI ----------------------------------------------------------------------------------
RESUME_MODEL = """
import torch
from bayes_klrl import MarkovLM, Task

def task(beta=0.7, length=4):
    g = torch.Generator().manual_seed(11)
    prior = MarkovLM(torch.randn(4, generator=g), torch.randn(4, 4, generator=g))
    return Task(prior=prior, reward=lambda x: (x == 3).sum(-1).float(), beta=beta, length=length, name="resume")
"""


def compare_argv(path, method, out, *extra):
    return [
        "compare",
        str(path),
        "--methods",
        method,
        "--steps",
        "20",
        "--num-sequences",
        "32",
        "--log-every",
        "5",
        "--eval-samples",
        "64",
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


def without_wall_time(rows):
    return [{k: v for k, v in row.items() if k != "wall_seconds"} for row in rows]


@pytest.mark.parametrize("method", list(TRAINERS))
def test_cli_resume_after_ctrl_c_reaches_the_uninterrupted_parameters(method, tmp_path, monkeypatch, capsys):
    path = tmp_path / "resume_model.py"
    path.write_text(RESUME_MODEL)
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    assert main(compare_argv(path, method, straight)) == 0

    trainer_class, calls = TRAINERS[method], []
    original_step = trainer_class.step

    def step_then_ctrl_c(self):
        calls.append(1)
        if len(calls) == 8:
            raise KeyboardInterrupt
        return original_step(self)

    with monkeypatch.context() as patch:
        patch.setattr(trainer_class, "step", step_then_ctrl_c)
        assert main(compare_argv(path, method, interrupted)) == 130
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--resume" in err
    assert torch.load(interrupted / method / "checkpoint.pt", weights_only=True)["step"] == 7
    assert main(compare_argv(path, method, interrupted, "--resume")) == 0

    final = [torch.load(out / method / "checkpoint.pt", weights_only=True) for out in (straight, interrupted)]
    assert final[0]["step"] == final[1]["step"] == 20
    weights = [state["trainer"]["policy"] for state in final]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    metrics = [json.loads((out / "metrics.json").read_text()) for out in (straight, interrupted)]
    assert without_wall_time(metrics[0]["methods"]) == without_wall_time(metrics[1]["methods"])
    histories = [list(csv.DictReader((out / f"history_{method}.csv").open())) for out in (straight, interrupted)]
    assert without_wall_time(histories[0]) == without_wall_time(histories[1])
    assert [row["step"] for row in histories[1]] == ["0", "5", "10", "15", "20"]

    # resuming a finished run takes no further step
    assert main(compare_argv(path, method, straight, "--resume")) == 0
    again = torch.load(straight / method / "checkpoint.pt", weights_only=True)
    again_weights = again["trainer"]["policy"]
    assert again["step"] == 20 and all(torch.equal(again_weights[k], weights[0][k]) for k in again_weights)
