"""User namespaces and LXCFS must not slow sandboxes (issue #16): create -> first exec, the exec
round trip, pause and resume on two servers per OCI runtime side by side, one with user
namespaces and one without, 200 interleaved runs each (``lifecycle.py --userns-compare``, the
section ``make bench`` writes to BENCHMARKS.md). gVisor maps ids in its own kernel: not run.

    python bench/userns.py [--runs 200] [--runtimes crun,runc]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.lifecycle import default_runtimes, main_userns_compare


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--runtimes", default=default_runtimes())
    args = parser.parse_args()
    main_userns_compare(args.runs, args.runtimes)


if __name__ == "__main__":
    main()
