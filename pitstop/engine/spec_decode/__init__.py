"""Speculative decoding, engine side: proposers that draft tokens from the request's own tokens and past outputs
(pure Python, no torch), the drafting step between engine steps, and its counters. Verification runs in the model
runner (``pitstop.model.rejection_sampler``)."""
