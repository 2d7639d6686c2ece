"""User-facing entry points: the offline ``LLM`` class and ``build_engine`` (an ``LLMEngine`` on a real model)."""
