"""``python -m pipeline.validate MANIFEST``: check every subject of a study and print every problem at once.

Prints the table of :func:`pipeline.data.validation.validate_study` (subject, file, problem, severity) and exits with 1
when there is an error, 0 when there is none (warnings only: unusual but valid images), 2 on a usage error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pipeline.data.manifest import SECTIONS
from pipeline.data.validation import MAX_ROTATION_DEG, MAX_SHIFT_MM, problems_table, validate_study


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.validate", description=__doc__.split("\n\n")[0])
    parser.add_argument("manifest", help="decathlon-style manifest (e.g. written by 'python -m pipeline.bids')")
    parser.add_argument("--dataset-dir", help="folder of the manifest's relative paths (default: its folder)")
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), help="datalists to check (default: all)")
    parser.add_argument("--max-rotation-deg", type=float, default=MAX_ROTATION_DEG, help="misregistration tolerance")
    parser.add_argument("--max-shift-mm", type=float, default=MAX_SHIFT_MM, help="misregistration tolerance")
    parser.add_argument("--no-contrast-check", action="store_true", help="skip the tissue contrast order check")
    parser.add_argument("--no-cache", action="store_true", help="validate every entry again (see validation_cache_dir)")
    args = parser.parse_args(argv)
    problems = validate_study(
        args.manifest,
        args.dataset_dir,
        args.sections,
        max_rotation_deg=args.max_rotation_deg,
        max_shift_mm=args.max_shift_mm,
        cache=not args.no_cache,
        check_contrasts=not args.no_contrast_check,
    )
    print(problems_table(problems))
    errors = [problem for problem in problems if problem.severity == "error"]
    if problems:
        print(
            f"\n{len(errors)} error(s) and {len(problems) - len(errors)} warning(s) in "
            f"{len({p.subject for p in problems})} subject(s).",
            file=sys.stderr,
        )
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
