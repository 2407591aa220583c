"""An independent HoVLE / HoVLE-HD built from transformers' Llama classes and plain torch: the yardstick of the
engine's correctness tests, the Hugging Face baseline of the end-to-end benchmark and the trainer of the default
model.

It never imports the engine's model, runtime or kernels (tests/test_install.py checks that), so a bug there cannot
hide in both. It needs the test extra (`pip install 'hovle-engine[test]'`: transformers); nothing in the engine
imports it. The cases it is compared on (tiny checkpoints, images) are hovle/default_model/cases.py.

    model.py   ReferenceHoVLE: one sequence, DynamicCache per stack, prefill / decode_step / greedy
    static.py  StaticReferenceHoVLE: StaticCache and a fixed-shape decode step (for torch.compile)
    weights.py the checkpoint's tensors in transformers' Llama layout
"""
