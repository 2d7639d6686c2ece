"""OpenAI-compatible HTTP server: ``pitstop serve`` (see ``app.py``)."""
