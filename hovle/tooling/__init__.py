"""Tooling around the runtime, never imported by it on the request path: the checkpoint writer (released
layout), the tokenizer trainer, and the embedded default model."""
