"""Benchmarks: offline throughput vs transformers (``throughput``), the transformers peer
(``peer_transformers``) and the decode roofline with this machine's measured peaks (``roofline``)."""
