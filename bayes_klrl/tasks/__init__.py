r"""Tasks' building blocks: reward functions and the toy word grammar.

- :mod:`bayes_klrl.tasks.rewards`: rewards on token ids, callables ``LongTensor (N, T) -> FloatTensor (N,)``
  (:class:`KeywordCount`, :class:`KeywordConstraint`, :class:`LexiconScore`); a reward of :math:`-\infty` is a
  hard constraint, so :math:`\pi^*(x) \propto \pi_0(x)\,e^{r(x)/\beta}` is the prior conditioned on an event.
- :mod:`bayes_klrl.tasks.words`: a probabilistic template grammar of five-token sentences over 16 words with a
  sentiment lexicon, small enough to enumerate exactly (:math:`16^5` sequences).
- :mod:`bayes_klrl.tasks.text_rewards`: rewards on decoded text for real LMs (lexicon, word presence, sentence
  embeddings). Not imported here: import it by name.

The model files under the repository's ``models/`` put these together into a :class:`bayes_klrl.Task`.

Example::

    >>> import torch
    >>> KeywordCount(3)(torch.tensor([[3, 1, 3]]))
    tensor([2.])
"""

from .rewards import KeywordConstraint, KeywordCount, LexiconScore

__all__ = ["KeywordConstraint", "KeywordCount", "LexiconScore"]
