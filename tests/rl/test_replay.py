"""REINFORCE with ``replay``: importance-weighted earlier batches give a consistent ∇J, RLOO with one batch, zero
at π*, exact resumes, and refusals outside the RLOO form."""

import pytest
import torch

from bayes_klrl import exact_elbo, fit
from bayes_klrl.estimators import leave_one_out_baseline, weighted_leave_one_out
from bayes_klrl.exact import posterior_policy
from bayes_klrl.infer.svi import SVITrainer
from bayes_klrl.rl import ReinforceTrainer
from bayes_klrl.rl.recipes import Recipe

from ..conftest import perturbed_policy, small_markov_task

Z_BOUND = 5.0  # |mean - exact| <= Z_BOUND standard errors, per coordinate
ABS_SLACK = 2e-3  # the self-normalized weights' O(1/M) bias, M = 2,048 sequences
SAME_ATOL = 1e-6  # one replayed batch vs RLOO: the same arithmetic up to float rounding
POSTERIOR_ATOL = 1e-5  # the gradient at q = π*: every signal is log Z


def _fill_from(trainer, behaviour, batches, num_sequences):
    """Put ``batches`` batches drawn by ``behaviour`` (another policy) in the trainer's replay buffer."""
    task = trainer.task
    trainer.replay_buffer.clear()
    with torch.no_grad():
        for _ in range(batches):
            x = behaviour.sample(num_sequences, task.length)
            trainer.replay_buffer.append((x, behaviour.log_prob(x), task.prior.token_log_probs(x), task.rewards(x)))


def _exact_gradient(task, policy):
    (grad,) = torch.autograd.grad(exact_elbo(task, policy), policy.logits)
    return grad.reshape(-1).double() * task.beta  # ∇J = β ∇ELBO


@pytest.mark.parametrize("weighted", [True, False], ids=["weighted", "unweighted-is-caught"])
def test_replayed_gradient_is_consistent(weighted):
    """Three batches of an older policy and one of the current: the mean gradient is the exact ∇J; reusing the
    old batches as if the current policy had drawn them (weights 1) is not, and the test sees it."""
    task = small_markov_task(beta=0.7, seed=1)
    policy = perturbed_policy(task, scale=0.7, seed=1)
    older = perturbed_policy(task, scale=0.7, seed=2)
    exact = _exact_gradient(task, policy)
    n = 512
    trainer = ReinforceTrainer(task, policy, num_sequences=n, lr=1e-12, replay=4)
    torch.manual_seed(0)
    grads = []
    for _ in range(150):
        _fill_from(trainer, older if weighted else policy, 3, n)
        if not weighted:  # the old draws labelled as the current policy's: no importance weight
            _fill_from(trainer, older, 3, n)
            trainer.replay_buffer = type(trainer.replay_buffer)(
                [(x, policy.log_prob(x).detach(), lp, r) for x, _, lp, r in trainer.replay_buffer],
                maxlen=trainer.replay_buffer.maxlen,
            )
        stats = trainer.step()
        grads.append(-policy.logits.grad.reshape(-1).double())
    g = torch.stack(grads)
    mean, se = g.mean(0), g.std(0) / g.shape[0] ** 0.5
    close = torch.all((mean - exact).abs() <= Z_BOUND * se + ABS_SLACK)
    assert bool(close) == weighted, float(((mean - exact).abs() / (se + ABS_SLACK)).max())
    assert 1.0 <= stats["replay_ess"] <= 4 * n


def test_one_kept_batch_is_rloo():
    """The first replay step has only this batch: the same update as RLOO (replay=1)."""
    task = small_markov_task()
    a = fit(ReinforceTrainer(task, task.make_policy(), 64, lr=0.05), steps=1, seed=4).policy
    b = fit(ReinforceTrainer(task, task.make_policy(), 64, lr=0.05, replay=5), steps=1, seed=4).policy
    assert torch.allclose(a.logits, b.logits, atol=SAME_ATOL)
    c = fit(ReinforceTrainer(task, task.make_policy(), 64, lr=0.05), steps=3, seed=4).policy
    d = fit(ReinforceTrainer(task, task.make_policy(), 64, lr=0.05, replay=5), steps=3, seed=4).policy
    assert not torch.allclose(c.logits, d.logits, atol=SAME_ATOL)  # later steps use the kept batches


def test_replay_gradient_is_zero_at_the_posterior():
    task = small_markov_task(beta=0.6, seed=3)
    policy = posterior_policy(task)
    trainer = ReinforceTrainer(task, policy, num_sequences=64, lr=1e-12, replay=3)
    _fill_from(trainer, perturbed_policy(task, scale=1.0, seed=5), 2, 64)
    torch.manual_seed(1)
    trainer.step()
    assert float(policy.logits.grad.abs().max()) <= POSTERIOR_ATOL


def test_weighted_leave_one_out_matches_its_definition():
    torch.manual_seed(2)
    f, lw = torch.randn(9, dtype=torch.float64), 3 * torch.randn(9, dtype=torch.float64)
    w, b = weighted_leave_one_out(f, lw)
    full = torch.softmax(lw, 0)
    assert torch.allclose(w, full)
    for i in range(9):
        keep = torch.arange(9) != i
        assert torch.isclose(b[i], (full[keep] * f[keep]).sum() / full[keep].sum())
    w, b = weighted_leave_one_out(f, torch.zeros(9, dtype=torch.float64))
    assert torch.allclose(b, leave_one_out_baseline(f)) and torch.allclose(w, torch.full((9,), 1 / 9).double())
    # one draw holds all the weight: its baseline is the others' weighted mean, still finite
    lw = torch.tensor([0.0, -800.0, -801.0, -900.0], dtype=torch.float64)
    f = torch.tensor([5.0, 1.0, 2.0, 3.0], dtype=torch.float64)
    w, b = weighted_leave_one_out(f, lw)
    assert torch.isfinite(b).all() and abs(float(b[0]) - (1 + 2 * torch.e**-1) / (1 + torch.e**-1)) < 1e-9
    assert float(w[0]) == 1.0


@pytest.mark.parametrize("trainer", [ReinforceTrainer, SVITrainer], ids=["rl", "svi"])
def test_replay_resumes_exactly(tmp_path, monkeypatch, trainer):
    task = small_markov_task()
    make = lambda: trainer(task, task.make_policy(), 32, lr=0.05, replay=4)  # noqa: E731
    whole = fit(make(), steps=8, seed=6).policy
    for name in "ab":
        fit(make(), steps=5, seed=6, checkpoint_dir=tmp_path / name)
    resumed = fit(make(), steps=8, seed=6, checkpoint_dir=tmp_path / "a", resume=True).policy
    assert torch.equal(whole.logits, resumed.logits)
    # a resume that lost the kept batches would not match: the check can fail
    load = trainer.load_state_dict
    monkeypatch.setattr(trainer, "load_state_dict", lambda self, s: load(self, {**s, "replay_buffer": [[]]}))
    forgetful = fit(make(), steps=8, seed=6, checkpoint_dir=tmp_path / "b", resume=True).policy
    assert not torch.equal(whole.logits, forgetful.logits)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(kl_in="loss", kl_estimator="k3"), "kl_in='loss'"),
        (dict(kl_in="none"), "kl_in='none'"),
        (dict(kl_estimator="k3"), "kl_estimator='k1'"),
        (dict(advantage="group-std"), "advantage='loo'"),
        (dict(kl_gradient="analytic"), "kl_gradient='sampled'"),
        (dict(epochs=2), "epochs=1"),
        (dict(replay=0), "replay must be"),
        (dict(replay=2.5), "replay must be"),
        (dict(replay=3.0), "replay must be"),
        (dict(replay=float("inf")), "replay must be"),
        (dict(replay="4"), "replay must be"),
    ],
    ids=["in-loss", "none", "k3", "group-std", "analytic", "epochs", "zero", "fraction", "float", "inf", "text"],
)
def test_replay_is_refused_outside_rloo(options, message):
    options = {"replay": 3, **options}
    with pytest.raises(ValueError, match=message) as info:
        Recipe(**options)
    assert len(str(info.value).splitlines()) == 1


def test_an_interrupted_replay_step_leaves_a_checkpoint_that_resumes(tmp_path, monkeypatch):
    """Ctrl-C inside a step: the checkpoint holds only the batches of finished steps, and the run resumes."""
    task = small_markov_task()
    trainer = ReinforceTrainer(task, task.make_policy(), 32, lr=0.05, replay=4)
    score, calls = trainer.policy.token_log_probs, []

    def interrupting(x):
        calls.append(1)
        if len(calls) == 3:  # the third step's scoring pass
            raise KeyboardInterrupt
        return score(x)

    monkeypatch.setattr(trainer.policy, "token_log_probs", interrupting)
    with pytest.raises(KeyboardInterrupt):
        fit(trainer, steps=6, seed=1, checkpoint_dir=tmp_path)
    resumed = ReinforceTrainer(task, task.make_policy(), 32, lr=0.05, replay=4)
    result = fit(resumed, steps=6, seed=1, checkpoint_dir=tmp_path, resume=True)
    assert result.steps == 6 and len(resumed.replay_buffer) == 3
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["trainer"]["replay_buffer"]
    assert len(saved) == 1 and all(len(entry) == 4 for entry in saved[0])


def test_default_replay_is_not_recorded_so_older_checkpoints_resume():
    from bayes_klrl.rl.recipes import PRESETS

    assert "replay" not in PRESETS["rl"].as_dict()  # settings written before the option existed lack it
    assert Recipe(replay=4).as_dict()["replay"] == 4


def test_weighted_baseline_with_one_weighted_draw():
    w, b = weighted_leave_one_out(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.0, -float("inf"), -float("inf")]))
    assert w.tolist() == [1.0, 0.0, 0.0] and torch.isfinite(b).all() and float(b[0]) == 0.0
