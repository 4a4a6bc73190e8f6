"""Time to generate the default 5-subject phantom study, ideal and realistic acquisition (goal: realistic <= 3 min).

Prints a table: seconds for the whole study (template loading included, as the CLI does), per subject, and the
process's peak resident memory. Run on an otherwise idle machine: ``python benchmarks/bench_phantom.py``.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile

CHILD = """
import sys, time, resource
start = time.perf_counter()
from pipeline.phantom import generate_study
generate_study(sys.argv[1], n_subjects=int(sys.argv[2]), acquisition=sys.argv[3])
print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
"""


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subjects", type=int, default=5)
    args = parser.parse_args(argv)
    print("| acquisition | study (s) | per subject (s) | peak RSS (GiB) |")
    print("|---|---|---|---|")
    for acquisition in ("ideal", "realistic"):
        with tempfile.TemporaryDirectory() as folder:  # a fresh process each: imports and template loading count
            output = subprocess.run(
                [sys.executable, "-c", CHILD, folder, str(args.subjects), acquisition],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.split()
            seconds, rss = float(output[0]), float(output[1])
        print(f"| {acquisition} | {seconds:.1f} | {seconds / args.subjects:.1f} | {rss:.2f} |")
    print(f"(children's CPU time: {resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime:.0f} s)")


if __name__ == "__main__":
    main()
