"""Bound oneDNN's primitive cache, the memory a serving process gains from every new matmul shape.

oneDNN (behind PyTorch's bf16 ``F.linear`` and the pre-packed ``_linear_pointwise``) compiles one
primitive per (shape, dtype, layout) and keeps it in a process-wide LRU cache of
``ONEDNN_PRIMITIVE_CACHE_CAPACITY`` entries (oneDNN's default 1,024). A serving engine runs a new row
count M almost every step (prefill chunks, mixed batches), and each M adds a primitive per linear
shape. Measured here (AMD EPYC, AVX-512 BF16, one thread, a 576x1536 bf16 linear over 800 row counts):
about 0.7 MiB per primitive, so the default cache alone grew the process by ~570 MiB before it stopped,
the RSS growth issue 14's soak run showed. Creating a primitive costs ~170-260 us, a cache hit nothing
extra, so the cache is kept but bounded. pitstop's pre-packed linears pad rows to a few dozen buckets
(``pitstop.model.cpu_packed_linear.row_bucket``), so their shapes fit the bound and stay hot; the bound
caps what other bf16 matmuls with free shapes (attention over varying context lengths) can add.

oneDNN reads the variable once, when it first creates a primitive, so :func:`bound_primitive_cache`
must run before any bf16 matmul of the process; an explicit value in the environment wins.
Source: oneDNN's docs, "Primitive cache" (``ONEDNN_PRIMITIVE_CACHE_CAPACITY``).
"""

from __future__ import annotations

import os

CAPACITY_ENV = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"
DEFAULT_CAPACITY = 512  # entries: every row bucket (cpu_packed_linear.row_bucket) of every linear shape stays hot


def bound_primitive_cache(capacity: int = DEFAULT_CAPACITY) -> int:
    """Set oneDNN's primitive cache capacity (entries) unless the environment already sets it.

    Returns the capacity in effect for this process (the environment's value when it was set).
    Has no effect once oneDNN has created its first primitive (it reads the variable only then).
    """
    os.environ.setdefault(CAPACITY_ENV, str(capacity))
    try:
        return int(os.environ[CAPACITY_ENV])
    except ValueError:
        return capacity
