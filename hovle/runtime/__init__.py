"""The device side and its scheduling: KV pages, the model runner (prefill chunks, the decode step, CUDA graphs)
and the scheduler that batches requests continuously."""
