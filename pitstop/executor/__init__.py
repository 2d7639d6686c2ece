"""Executors run a scheduler's step: the real model runner, or (later) a simulated one."""
