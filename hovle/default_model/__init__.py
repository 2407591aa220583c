"""The embedded default model and what it is made of: the scene generator whose pictures and questions it was
trained on, the small SentencePiece tokenizer trainer, the writer of checkpoints in the released layout, and the
folder functions (ensure, copy, write) that `python -m hovle demo` and `write-default` use. Its training scripts
are tools/ (repository only); the trained files ship in hovle/data/default-model/.

    folder.py             ensure / copy / write a default-model folder; the released config's shape
    checkpoint.py         config + tensors + tokenizer files -> a checkpoint folder (sharded safetensors, index)
    scenes.py             procedural scenes, their rendering and their ground-truth questions
    tokenizer_trainer.py  the SentencePiece tokenizer with InternLM2's added tokens
    cases.py              tiny checkpoints and images the engine is compared on (tests, benchmarks)
"""
