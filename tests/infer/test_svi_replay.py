"""SVI with ``replay``: the guide conditioned on earlier draws, importance-weighted — the same steps as REINFORCE's
replay, an exact resume, and refusals where it is not defined."""

import pyro
import pytest
import torch

from bayes_klrl import fit
from bayes_klrl.infer.svi import ReplayELBO, SVITrainer, make_elbo
from bayes_klrl.model import PolicyGuide, model
from bayes_klrl.rl import ReinforceTrainer

from ..conftest import small_markov_task

SAME_STEPS_ATOL = 1e-4  # SVI and REINFORCE, 30 Adam steps: equal up to float rounding


def test_svi_and_reinforce_replay_take_the_same_steps(small_task):
    a = fit(SVITrainer(small_task, small_task.make_policy(), 64, replay=4), steps=30, seed=3)
    b = fit(ReinforceTrainer(small_task, small_task.make_policy(), 64, replay=4), steps=30, seed=3)
    assert torch.allclose(a.policy.logits, b.policy.logits, atol=SAME_STEPS_ATOL)
    assert a.history[-1]["replay_ess"] == pytest.approx(b.history[-1]["replay_ess"], rel=1e-4)
    c = fit(SVITrainer(small_task, small_task.make_policy(), 64), steps=30, seed=3).policy
    assert not torch.allclose(c.logits, a.policy.logits, atol=SAME_STEPS_ATOL)  # on-policy: other steps


def test_replay_elbo_keeps_its_draws_and_reports_the_new_batch(small_task):
    policy = small_task.make_policy()
    elbo = ReplayELBO(replay=3)
    guide = PolicyGuide(policy, sites="sequence")
    for calls in range(1, 5):
        loss = elbo.loss_and_grads(lambda t, n: model(t, n, sites="sequence"), guide, small_task, 16)
        assert len(elbo.kept) == min(calls, 2)
        assert torch.isfinite(torch.tensor(loss))
    assert 1.0 <= elbo.last_ess <= 3 * 16


def test_kept_draws_are_not_views_of_the_whole_buffer(small_task):
    trainer = SVITrainer(small_task, small_task.make_policy(), 16, replay=4)
    fit(trainer, steps=5, seed=0)
    for entry in trainer.elbo.kept:
        assert all(t.untyped_storage().nbytes() == t.numel() * t.element_size() for t in entry)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(estimator="trace"), "'loo' estimator"),
        (dict(kl_gradient="analytic"), "kl_gradient='analytic'"),
        (dict(sites="tokens"), "sites='sequence'"),
        (dict(replay=0), "replay must be"),
        (dict(replay=True), "replay must be"),
    ],
    ids=["trace", "analytic", "tokens", "zero", "bool"],
)
def test_svi_replay_is_refused_where_undefined(options, message):
    task = small_markov_task()
    with pytest.raises(ValueError, match=message) as info:
        SVITrainer(task, task.make_policy(), 32, **{"replay": 3, **options})
    assert len(str(info.value).splitlines()) == 1


def test_make_elbo_replay():
    assert isinstance(make_elbo("loo", replay=5)[0], ReplayELBO)
    assert not isinstance(make_elbo("loo")[0], ReplayELBO)
    pyro.clear_param_store()
