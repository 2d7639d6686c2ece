"""The proposer registry: ``SpeculativeConfig.method`` -> a ``Proposer``."""

from __future__ import annotations

from pitstop.config import SpeculativeConfig
from pitstop.engine.spec_decode.ngram import NgramProposer
from pitstop.engine.spec_decode.proposer import PlaceholderProposer, Proposer
from pitstop.engine.spec_decode.suffix import SuffixProposer


def build_proposer(config: SpeculativeConfig) -> Proposer:
    """The proposer of ``config.method``.

    Raises:
        ValueError: an unknown method (``SpeculativeConfig`` already refuses one), or ``suffix_backend`` "arctic"
            without the ``arctic-inference`` package.
    """
    if config.method == "ngram":
        return NgramProposer(config.prompt_lookup_min, config.prompt_lookup_max)
    if config.method == "suffix":
        return SuffixProposer(config.suffix_max_tree_depth, config.suffix_max_cached_requests,
                              config.suffix_max_spec_factor, config.suffix_max_spec_offset,
                              config.suffix_min_token_prob, config.suffix_backend)
    if config.method == "simulated":
        return PlaceholderProposer()
    raise ValueError(f"unknown speculative method {config.method!r}")
