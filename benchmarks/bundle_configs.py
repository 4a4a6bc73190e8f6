"""The bundle's configs as the benchmarks read them (MONAI ``ConfigParser``; no copies of their settings)."""

from __future__ import annotations

import pathlib

from monai.bundle import ConfigParser

REPO = pathlib.Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "qmap_hybrid"
CONFIGS = BUNDLE / "configs"


CARD_SETTINGS = ("slice_axis", "context_slices", "intensity_reference", "network_norm")
"""What a trained model's card (``model.json``) records and ``inference.json`` reads from it."""


def trained_settings() -> dict:
    """``train.json``'s values of :data:`CARD_SETTINGS`: the card of a model the bundle's training writes."""
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    return {key: parser.get_parsed_content(key) for key in CARD_SETTINGS}


def parse(config: str | list[str], **overrides) -> ConfigParser:
    """``configs/<config>`` (a list: merged in order) with ``bundle_root`` set and ``overrides`` applied; an inference
    config gets :func:`trained_settings` (the benchmarks' networks are untrained: no card to read them from)."""
    names = [config] if isinstance(config, str) else config
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / name) for name in names])
    card = trained_settings() if any(name.startswith("inference") for name in names) else {}
    parser.update({"bundle_root": str(BUNDLE), **card, **overrides})
    return parser
