r"""The method registry: every inference method ``compare`` can run, one entry each, and the row it produces.

A method turns a task into a :class:`MethodResult` (a typed :class:`Row`, its draws as ArviZ InferenceData,
the training record) and writes nothing; :func:`bayes_klrl.compare.save_comparison` writes every file.
Methods come in three kinds:

- ``exact``: the posterior by enumeration (the reference row);
- ``trained``: a :class:`~bayes_klrl.training.Trainer` factory (SVI, the RL trainers and recipes, DPG); the
  policy it trains is scored against the posterior by :func:`score_policy`;
- ``sampler``: importance sampling and MCMC, drawing (weighted or correlated) samples of :math:`\pi^*`.

Adding a trainer: write it (e.g. ``bayes_klrl/rl/mine.py``) and :func:`register` a :class:`TrainedMethod` at
the end of :mod:`.shipped`; its name becomes a ``compare --methods`` choice and a figure label. Adding a sampler:
write it under ``bayes_klrl/infer/``, a :class:`Method` subclass in :mod:`.samplers` with a ``run`` (registered
in :mod:`.shipped`), and (if it draws) its InferenceData builder in :mod:`bayes_klrl.diagnostics`.

Example::

    >>> trainer = make_trainer("rl", task, task.make_policy(), num_sequences=256, lr=0.02)
    >>> METHODS["rl"].label
    'REINFORCE (RLOO)'

The package holds one concept per file: :mod:`.row` (the record a method returns), :mod:`.registry` (the
:class:`Method` base and :data:`METHODS`), :mod:`.trained` (the adapter that trains a policy and scores it),
:mod:`.samplers` (the exact row and the samplers of :math:`\pi^*`), :mod:`.smc` (SMC bounds on
:math:`\log Z` and the KL brackets they give), :mod:`.shipped` (the methods this
package registers, in order) and :mod:`.options` (the choices of the settings they read).
"""

from .options import CHOICES
from .registry import METHODS, OPTIMIZER_OPTIONS, Method, make_trainer, register, trained_methods
from .row import EXACT, MONTE_CARLO, MethodResult, Row, RunContext
from .samplers import GIBBS_MAX_VOCAB, ExactMethod, ImportanceMethod, MCMCMethod
from .shipped import RECIPE_OPTIONS
from .smc import SMCMethod, bracket_rows
from .trained import TrainedMethod, score_policy

__all__ = [
    "CHOICES",
    "EXACT",
    "GIBBS_MAX_VOCAB",
    "METHODS",
    "MONTE_CARLO",
    "OPTIMIZER_OPTIONS",
    "RECIPE_OPTIONS",
    "ExactMethod",
    "ImportanceMethod",
    "MCMCMethod",
    "Method",
    "MethodResult",
    "Row",
    "RunContext",
    "SMCMethod",
    "TrainedMethod",
    "bracket_rows",
    "make_trainer",
    "register",
    "score_policy",
    "trained_methods",
]
