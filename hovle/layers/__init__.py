"""The pieces every family's models are built from: InternLM2-style decoder stacks over paged KV caches (their
packed-batch metadata and weight layout) and rotary tables (linear and dynamic-NTK scaling)."""
