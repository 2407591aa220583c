"""What the engine reads from outside: config.json, the safetensors shards, the tokenizer files, images."""
