"""pitstop's agent runtime: tools (typed Python functions, MCP servers) and the planners and loops that call them
around a model. Model-agnostic: the LLM side is an async callable, so pitstop's engine or any OpenAI endpoint
plugs in. Imports neither torch nor ``pitstop.server``.
"""
