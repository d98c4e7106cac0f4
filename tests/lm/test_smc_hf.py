"""SMC on a Hugging Face prior (the shipped GPT-2 word task): the KV cache is reordered when particles resample,
so the oracle twist still gives log Z with one particle, and resampled runs stay unbiased."""

import math

import pytest
import torch

pytest.importorskip("transformers")

from bayes_klrl.exact import exact_posterior  # noqa: E402
from bayes_klrl.infer.bounds import exact_posterior_draws, kl_bracket, log_z_bounds  # noqa: E402
from bayes_klrl.infer.smc import smc  # noqa: E402
from bayes_klrl.infer.twists import TableTwist, exact_twist  # noqa: E402
from bayes_klrl.modelfile import load_task  # noqa: E402

#: float32 logits of a 2-layer GPT-2, log-probabilities summed in float64
ORACLE_TOL = 1e-4


@pytest.fixture(scope="module")
def gpt2():
    task = load_task("gpt2_words")
    return task, exact_posterior(task)


def test_exact_twist_gives_log_z_on_gpt2(gpt2):
    task, post = gpt2
    result = smc(task, num_particles=1, num_runs=3, twist=exact_twist(task, post), seed=0)
    assert torch.allclose(result.log_z, torch.full_like(result.log_z, post.log_z), atol=ORACLE_TOL, rtol=0)


def test_resampling_through_the_kv_cache_is_unbiased(gpt2):
    task, post = gpt2
    rows = sum(task.vocab_size**t for t in range(task.length))
    table = torch.randn(rows, task.vocab_size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    result = smc(task, num_particles=8, num_runs=400, twist=TableTwist(6, task.length, table), resample_threshold=1.0,
                 seed=1)  # fmt: skip
    assert int(result.resampling_steps.sum()) > 0
    z_hat = result.log_z.exp()
    se = float(z_hat.std() / math.sqrt(z_hat.numel()))
    assert abs(float(z_hat.mean()) - math.exp(post.log_z)) < 4 * se


def test_bracket_of_a_lora_policy_contains_its_exact_kl(gpt2):
    task, post = gpt2
    policy = task.make_policy("lora")
    with torch.no_grad():  # move the adapter away from zero so the policy is not the prior
        for name, p in policy.named_parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))))
    from bayes_klrl.exact import policy_metrics

    exact = policy_metrics(task, policy, post)
    draws = exact_posterior_draws(task, 2048, posterior=post, seed=0)
    bounds = log_z_bounds(task, num_particles=64, num_runs=32, draws=draws, twist=exact_twist(task, post), seed=0)
    bracket = kl_bracket(task, policy, bounds, num_samples=4096, seed=0)
    slack = 4 * bracket.elbo_se + 1e-3
    assert bracket.kl_q_lower - slack <= exact.kl_q_to_posterior <= bracket.kl_q_upper + slack
    slack = 4 * bracket.eubo_se + 1e-3
    assert bracket.kl_p_lower - slack <= exact.kl_posterior_to_q <= bracket.kl_p_upper + slack
