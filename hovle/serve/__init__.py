"""The OpenAI-compatible HTTP server (optional extra: `pip install .[serve]`)."""
