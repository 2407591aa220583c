"""Runs every kernel benchmark in one process (one set of measured peaks); with --record saves rows plus the raw log.

    python benchmarks/run_kernels.py [--record] [op ...]      # default: all of them

With --record, rows are appended to benchmarks/results/kernels.jsonl and the console output is also written to
benchmarks/results/kernels-<date>-<commit>.log. Needs a CUDA GPU (or the rehearsal, HOVLE_REHEARSE=1); without one
it says so and exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import RESULTS, measured_peaks, no_gpu, provenance, stream_rows  # noqa: E402

OPS = [  # the decode step's and TTFT's heaviest first: a time-boxed run keeps what matters most
    "rms_norm",
    "attention",
    "decode_attention",
    "norm_linear",
    "kv_store",
    "swiglu",
    "rotary",
    "patch_embed",
    "pixel_shuffle",
    "sample",
    "encoder_attention",  # the encoders' (CLIP, DeBERTa, fusion layers): after the decoder's ops
    "layer_norm",
    "gelu",
]


class _Tee(io.TextIOBase):
    def __init__(self, *streams):
        self.streams = streams

    def write(self, s):
        for st in self.streams:
            st.write(s)
        return len(s)

    def flush(self):
        for st in self.streams:
            st.flush()


def main(ops: list[str], record: bool) -> int:
    if no_gpu("run_kernels"):
        return 0
    prov = provenance()
    failed = []
    with contextlib.ExitStack() as stack:
        if record:
            RESULTS.mkdir(parents=True, exist_ok=True)
            log = stack.enter_context(open(RESULTS / f"kernels-{prov['date'][:10]}-{prov['commit']}.log", "a"))
            stack.enter_context(contextlib.redirect_stdout(_Tee(sys.stdout, log)))
            stream_rows("kernels.jsonl")
        print(f"# {prov}")
        print(f"# measured peaks: {measured_peaks()}")
        for op in ops:
            print(f"## bench_{op}", flush=True)
            try:
                rows = importlib.import_module(f"benchmarks.bench_{op}").run()
                if not record:
                    print("\n".join(json.dumps(r) for r in rows))
            except Exception:  # noqa: BLE001 - one failing benchmark must not hide the others' results
                traceback.print_exc(file=sys.stdout)
                failed.append(op)
    print(f"failed: {failed or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("ops", nargs="*", choices=[[]] + OPS, metavar="op", help=f"some of {', '.join(OPS)}")
    parser.add_argument("--record", action="store_true", help="append rows to benchmarks/results/ and keep a log")
    args = parser.parse_args()
    sys.exit(main(args.ops or OPS, args.record))
