"""The agent runtime: tools an agent calls, the sandbox non-trusted tool calls run in, and per-agent permissions.

Imports nothing of pitstop above ``pitstop.tools`` (never torch, never the server).
"""
