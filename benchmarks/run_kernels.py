"""Runs every kernel benchmark in one process (one set of measured peaks) and saves rows plus the raw log.

    python benchmarks/run_kernels.py [op ...]      # default: all of them

Rows are appended to benchmarks/results/kernels.jsonl; the console output is also written to
benchmarks/results/kernels-<date>-<commit>.log. Needs a CUDA GPU; without one it says so and exits 0.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import sys
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import RESULTS, append_rows, measured_peaks, provenance  # noqa: E402

OPS = [
    "rms_norm",
    "swiglu",
    "norm_linear",
    "rotary",
    "kv_store",
    "attention",
    "decode_attention",
    "patch_embed",
    "pixel_shuffle",
    "sample",
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


def main(ops: list[str]) -> int:
    if not torch.cuda.is_available():
        print("run_kernels: no CUDA device here; the kernel benchmarks need a GPU (nothing measured).")
        return 0
    prov = provenance()
    RESULTS.mkdir(parents=True, exist_ok=True)
    log_path = RESULTS / f"kernels-{prov['date'][:10]}-{prov['commit']}.log"
    failed = []
    with open(log_path, "a", encoding="utf-8") as log, contextlib.redirect_stdout(_Tee(sys.stdout, log)):
        print(f"# {prov}")
        print(f"# measured peaks: {measured_peaks()}")
        for op in ops:
            print(f"## bench_{op}")
            try:
                rows = importlib.import_module(f"benchmarks.bench_{op}").run()
                append_rows(rows)
            except Exception:  # noqa: BLE001 - one failing benchmark must not hide the others' results
                traceback.print_exc(file=sys.stdout)
                failed.append(op)
    print(f"log: {log_path}; failed: {failed or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or OPS))
