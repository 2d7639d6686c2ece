"""OpenAI function calling over plain text: tool-call parsers (one file each, a registry), the tool prompt for
chat templates without a tools section, and the JSON Schemas that constrain ``tool_choice`` required / named.

Shared by the server (``pitstop.server``) and the offline API (``LLM.chat(tools=...)``); imports nothing of
pitstop but ``sampling_params``.
"""
