"""``make bench``: every benchmark, results as JSON in bench/results/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHES = [
    "watermark_bench.py",
    "distill_bench.py",
    "gateway_bench.py",
    "audit_bench.py",
    "watermark_tradeoff.py",
    "watermark_diversity.py",
    "monitor_bench.py",
    "heldout_bench.py",
    "replicas_bench.py",
    "engine_bench.py",
    "intel_bench.py",
    "logprob_bench.py",
    "defence_bench.py",
]


def main() -> int:
    here = Path(__file__).parent
    for name in BENCHES:
        print(f"== {name}", flush=True)
        code = subprocess.call([sys.executable, str(here / name), *sys.argv[1:]])
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
