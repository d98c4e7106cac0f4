"""Optimizer control (training.OptimizerSettings): schedules against their closed forms, clipping, AdamW, the
same steps for SVI and RL under every setting, exact resume, and the compare flags."""

import math

import pytest
import torch

from bayes_klrl import fit
from bayes_klrl.infer.svi import SVITrainer
from bayes_klrl.rl import PPOTrainer, ReinforceTrainer
from bayes_klrl.training import OptimizerSettings

from .conftest import perturbed_policy

#: SVI's loo gradient and RL's are the same estimator up to float rounding; steps compound it a little
SAME_STEPS_ATOL = 1e-5

SETTINGS = [
    {},
    {"optimizer": "adamw", "weight_decay": 0.1},
    {"lr_schedule": "linear", "warmup_steps": 3},
    {"lr_schedule": "cosine", "max_grad_norm": 0.05},
    {"optimizer": "adamw", "weight_decay": 0.01, "lr_schedule": "linear", "warmup_steps": 2, "max_grad_norm": 0.1},
]


def test_schedules_follow_their_closed_forms():
    horizon, warmup = 50, 10
    for s in range(horizon):
        expected_warm = s / warmup if s < warmup else None
        progress = (s - warmup) / (horizon - warmup)
        for kind, after in (
            ("constant", 1.0),
            ("linear", 1.0 - progress),
            ("cosine", 0.5 * (1 + math.cos(math.pi * progress))),
        ):
            factor = OptimizerSettings(lr_schedule=kind, warmup_steps=warmup).lr_factor(s, horizon)
            assert factor == pytest.approx(expected_warm if expected_warm is not None else after, abs=1e-12)


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"optimizer": "sgd"}, "unknown optimizer"),
        ({"lr_schedule": "step"}, "unknown lr_schedule"),
        ({"lr": 0.0}, "lr must be"),
        ({"weight_decay": -1.0}, "weight_decay must be"),
        ({"warmup_steps": -1}, "warmup_steps must be"),
        ({"max_grad_norm": 0.0}, "max_grad_norm must be"),
        ({"max_grad_norm": float("nan")}, "max_grad_norm must be"),
    ],
)
def test_bad_settings_are_refused_in_one_line(bad, message):
    with pytest.raises(ValueError, match=message) as info:
        OptimizerSettings(**bad)
    assert "\n" not in str(info.value)


def test_the_trainer_takes_the_scheduled_learning_rate_at_every_step(small_task):
    trainer = ReinforceTrainer(small_task, small_task.make_policy(), 16, lr=0.1, lr_schedule="linear", warmup_steps=2)
    seen = []
    step = trainer.step

    def recording_step():
        out = step()
        seen.append(trainer.optimizer.param_groups[0]["lr"])
        return out

    trainer.step = recording_step
    fit(trainer, steps=12, seed=0)
    expected = [0.1 * trainer.optim.lr_factor(s, 12) for s in range(12)]
    assert seen == pytest.approx(expected, abs=1e-12)
    assert seen[0] == 0.0 and seen[-1] == pytest.approx(0.1 / 10)


def test_clipping_bounds_the_gradient_norm_and_records_it(small_task):
    policy = perturbed_policy(small_task, scale=2.0)
    trainer = ReinforceTrainer(small_task, policy, 64, lr=0.01, max_grad_norm=1e-3)
    trainer.step()
    norm = torch.linalg.vector_norm(torch.cat([p.grad.reshape(-1) for p in trainer.parameters]))
    assert trainer.last_grad_norm > 1e-3  # the raw gradient was larger: clipping acted
    assert float(norm) == pytest.approx(1e-3, rel=1e-4)


def test_adamw_decays_weights_decoupled_from_the_gradient(small_task):
    trainer = ReinforceTrainer(small_task, small_task.make_policy(), 16, lr=0.1, optimizer="adamw", weight_decay=0.5)
    assert isinstance(trainer.optimizer, torch.optim.AdamW)
    # with a zero gradient, AdamW's step is pure decay: p <- p (1 - lr * wd)
    before = [p.detach().clone() for p in trainer.parameters]
    for p in trainer.parameters:
        p.grad = torch.zeros_like(p)
    trainer.update()
    for p, b in zip(trainer.parameters, before):
        assert torch.allclose(p, b * (1 - 0.1 * 0.5), atol=1e-7)


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()) or "adam")
def test_svi_and_rl_take_the_same_steps_under_the_same_settings(small_task, settings):
    runs = {}
    for name, make in (("svi", SVITrainer), ("rl", ReinforceTrainer)):
        trainer = make(small_task, perturbed_policy(small_task), 64, lr=0.05, **settings)
        runs[name] = fit(trainer, steps=15, seed=3).policy.logits.detach()
    assert torch.allclose(runs["svi"], runs["rl"], atol=SAME_STEPS_ATOL)
    assert not torch.allclose(runs["rl"], perturbed_policy(small_task).logits, atol=1e-3)  # they did move


@pytest.mark.parametrize("make", [SVITrainer, ReinforceTrainer, PPOTrainer], ids=["svi", "rl", "ppo"])
def test_resume_is_exact_under_a_schedule_and_clipping(small_task, tmp_path, make):
    settings = {"optimizer": "adamw", "weight_decay": 0.01, "lr_schedule": "cosine", "warmup_steps": 3,
                "max_grad_norm": 0.5}  # fmt: skip
    straight = fit(make(small_task, small_task.make_policy(), 32, **settings), steps=16, seed=1).policy
    first = make(small_task, small_task.make_policy(), 32, **settings)
    stop = lambda row: row["step"] >= 8  # noqa: E731  (an interrupted run: its checkpoint is at step 8)
    fit(first, steps=16, seed=1, log_every=4, stop=stop, checkpoint_dir=tmp_path)
    resumed = fit(
        make(small_task, small_task.make_policy(), 32, **settings),
        steps=16,
        seed=1,
        log_every=4,
        checkpoint_dir=tmp_path,
        resume=True,
    ).policy
    assert torch.equal(straight.logits, resumed.logits)


def test_resuming_a_decaying_schedule_over_another_length_is_refused(small_task, tmp_path):
    make = lambda: ReinforceTrainer(small_task, small_task.make_policy(), 16, lr_schedule="linear")  # noqa: E731
    fit(make(), steps=6, seed=0, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="schedule decays over 6 steps"):
        fit(make(), steps=10, seed=0, checkpoint_dir=tmp_path, resume=True)


def test_ppo_schedule_counts_optimizer_steps(small_task):
    trainer = PPOTrainer(small_task, small_task.make_policy(), 32, epochs=2, minibatches=2, lr_schedule="linear")
    fit(trainer, steps=5, seed=0)
    assert trainer.steps_taken == 5 * 4 and trainer.total_steps == 20


def test_evaluate_may_take_the_step(small_task):
    seen = []
    fit(ReinforceTrainer(small_task, small_task.make_policy(), 8), steps=6, seed=0, log_every=3,
        evaluate=lambda policy, step: seen.append(step) or {"step_seen": step})  # fmt: skip
    one = fit(ReinforceTrainer(small_task, small_task.make_policy(), 8), steps=3, seed=0, log_every=3,
              evaluate=lambda policy: {"x": 1.0})  # fmt: skip
    assert seen == [0, 3, 6] and one.history[-1]["x"] == 1.0


def test_a_decay_with_no_steps_after_the_warmup_is_refused_before_training(small_task):
    trainer = ReinforceTrainer(small_task, small_task.make_policy(), 8, lr_schedule="linear", warmup_steps=50)
    before = trainer.policy.logits.detach().clone()
    with pytest.raises(ValueError, match="linear schedule over 10 steps leaves none after 50 warm-up"):
        fit(trainer, steps=10, seed=0)
    assert torch.equal(trainer.policy.logits, before) and trainer.steps_taken == 0
