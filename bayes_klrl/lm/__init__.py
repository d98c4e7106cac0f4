"""Reference LMs and policies: the :class:`AutoregressiveLM` protocol and its implementations."""

from .base import AutoregressiveLM, sample_categorical
from .hf import HFCausalLM, LoRASettings
from .markov import CategoricalLM, MarkovLM
from .tabular import TabularPolicy, num_prefixes
from .transformer import TinyTransformerLM

__all__ = [
    "AutoregressiveLM",
    "CategoricalLM",
    "HFCausalLM",
    "LoRASettings",
    "MarkovLM",
    "TabularPolicy",
    "TinyTransformerLM",
    "num_prefixes",
    "sample_categorical",
]
