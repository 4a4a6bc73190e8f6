"""The bundle's configs as the benchmarks read them (MONAI ``ConfigParser``; no copies of their settings)."""

from __future__ import annotations

import pathlib

from monai.bundle import ConfigParser

REPO = pathlib.Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "qmap_hybrid"
CONFIGS = BUNDLE / "configs"


def parse(config: str | list[str], **overrides) -> ConfigParser:
    """``configs/<config>`` (a list: merged in order) with ``bundle_root`` set and ``overrides`` applied."""
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / name) for name in ([config] if isinstance(config, str) else config)])
    parser.update({"bundle_root": str(BUNDLE), **overrides})
    return parser
