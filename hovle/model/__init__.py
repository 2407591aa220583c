"""The model: the holistic embedding module and the InternLM2 LLM over paged KV caches, on an op table."""
