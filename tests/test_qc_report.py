"""HTML QC pages on small synthetic subjects: self-contained, complete, escaped, and rendered by a real browser."""

import base64
import html
import json
import os
import re
import shutil
import subprocess

import matplotlib.image
import numpy as np
import pytest

from pipeline.qc.report import FLAG_COLOUR, OK_COLOUR, write_index, write_subject_report

SHAPE = (40, 48, 40)
CONTRASTS = ["mprage", "tse_epg"]
TISSUE_MAPS_MS = {1: (4000.0, 1800.0), 2: (1350.0, 100.0), 3: (840.0, 75.0)}
"""Tissue label -> (T1, T2) in ms of the synthetic subject."""

RANGES = {
    "t1": {"csf": [2500.0, 5500.0], "grey_matter": [1100.0, 1700.0], "white_matter": [700.0, 1100.0]},
    "t2": {"csf": [500.0, 2500.0], "grey_matter": [75.0, 130.0], "white_matter": [55.0, 95.0]},
}
FLAG_MESSAGES = [
    "T2w TSE residual in CSF 0.31 exceeds the calibrated 0.18 (x1.7)",
    "white-matter median T2 110 ms outside the published 3 T range 55-95 ms",
    'M0 <1 % & "odd" voxels',  # needs escaping
]
BANNER_TOLERANCE = 12
"""Largest per-channel difference (0-255) of a screenshot pixel from a banner colour."""


def _volumes(seed: int = 0, t2_wm_ms: float = 75.0, shape=SHAPE) -> dict[str, np.ndarray]:
    """An ellipsoidal brain (X, Y, Z): white matter core, grey matter shell, CSF rim and ventricles, with maps (ms),
    M0, and acquired / synthetic / residual images of every contrast in ``CONTRASTS``."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    radius = np.sqrt((grid[0] / 0.8) ** 2 + (grid[1] / 0.85) ** 2 + (grid[2] / 0.75) ** 2)
    ventricles = (grid[0] / 0.12) ** 2 + (grid[1] / 0.3) ** 2 + (grid[2] / 0.15) ** 2 <= 1
    tissues = np.select([ventricles, radius <= 0.6, radius <= 0.85, radius <= 1.0], [1, 3, 2, 1], 0)
    mask = tissues > 0
    t1, t2 = np.zeros(shape), np.zeros(shape)
    for label, (t1_ms, t2_ms) in TISSUE_MAPS_MS.items():
        t1[tissues == label], t2[tissues == label] = t1_ms, (t2_wm_ms if label == 3 else t2_ms)
    t1 *= 1 + 0.05 * rng.standard_normal(shape) * mask
    t2 *= 1 + 0.05 * rng.standard_normal(shape) * mask
    volumes = {
        "t1_map": t1,
        "t2_map": t2,
        "m0_map": np.where(mask, 0.7 + 0.3 * (tissues == 1), 0.0),
        "mask": mask,
        "tissues": tissues,
        "t1_ref": t1 * 1.02,
        "t2_ref": t2 * 0.98,
    }
    acquired = {"mprage": np.where(mask, 1000.0 / np.maximum(t1, 1.0), 0.05), "tse_epg": np.where(mask, t2 / 200, 0.05)}
    for contrast, image in acquired.items():
        synthetic = image * (1 + 0.1 * rng.standard_normal(shape))
        volumes |= {f"acquired_{contrast}": image, f"synthetic_{contrast}": synthetic}
        volumes[f"residual_{contrast}"] = synthetic - image
    return {key: value.astype(np.float32) for key, value in volumes.items()}


def _qc(subject: str, flagged: bool, calibrated: bool = True, references: bool = True) -> dict:
    """A qc.json record; flagged: the TSE CSF bias beyond its band and the white-matter T2 out of range."""
    residuals = {
        "mprage": {"residual": 0.05, "bias": {"csf": 0.02, "grey_matter": 0.0, "white_matter": -0.01}},
        "tse_epg": {
            "residual": 0.07,
            "bias": {"csf": -0.15 if flagged else -0.02, "grey_matter": 0.01, "white_matter": 0.0},
        },
    }
    band = {"centre": 0.01, "tolerance": 0.06}
    thresholds = {
        c: {"residual": 0.08, "bias": dict.fromkeys(["csf", "grey_matter", "white_matter"], band)} for c in CONTRASTS
    }
    flags = [{"check": "self_consistency", "message": message} for message in FLAG_MESSAGES] if flagged else []
    return {
        "subject": subject,
        "model": "runs/hybrid/models/model.pt",
        "calibrated": calibrated,
        "calibration": "runs/qc_calibration.json" if calibrated else None,
        "flagged": flagged,
        "flags": flags,
        "contrasts": CONTRASTS,
        "self_consistency": residuals,
        "thresholds": thresholds if calibrated else None,
        "plausibility": {
            "t1": {"csf": 3900.0, "grey_matter": 1350.0, "white_matter": 840.0},
            "t2": {"csf": 1800.0, "grey_matter": 100.0, "white_matter": 110.0 if flagged else 75.0},
        },
        "ranges": RANGES,
        "label_resolution": {"t1_mpe_percent": 5.2, "t2_mpe_percent": 7.1, "m0_mpe_percent": 3.0}
        if references
        else None,
        "metrics": {"t1_mpe_percent": 6.4, "t2_mpe_percent": 8.9, "t1_ssim": 0.973} if references else None,
    }


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    """Reports of a flagged (calibrated) subject, an unflagged one and an uncalibrated one without references, and
    the index of the three; returns ``{name: (path, qc)}`` and ``"index"``: its path."""
    root = tmp_path_factory.mktemp("qc_pages")
    cases = {
        "flagged": _qc("sub-05", flagged=True),
        "clean": _qc("sub-04", flagged=False),
        "uncalibrated": _qc("sub-06", flagged=False, calibrated=False, references=False),
    }
    result = {}
    for index, (name, qc) in enumerate(cases.items()):
        volumes = _volumes(seed=index, t2_wm_ms=110.0 if qc["flagged"] else 75.0)
        result[name] = (write_subject_report(root / qc["subject"] / "report.html", qc, volumes), qc)
    index_items = [{**qc, "report": f"{qc['subject']}/report.html"} for _, qc in result.values()]
    result["index"] = write_index(root / "index.html", index_items)
    return result


def _text(path) -> str:
    return path.read_text(encoding="utf-8")


@pytest.mark.parametrize("name", ["flagged", "clean", "uncalibrated", "index"])
def test_pages_are_self_contained(pages, name):
    path = pages[name] if name == "index" else pages[name][0]
    page = _text(path)
    assert page.startswith("<!DOCTYPE html>")
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"<(script|link|iframe|object|embed)\b", page, re.IGNORECASE)
    assert "url(" not in page and "@import" not in page  # no external CSS resources or fonts
    sources = re.findall(r"\bsrc\s*=\s*\"([^\"]*)\"", page)
    images = re.findall(r"<img\b[^>]*>", page)
    assert len(sources) == len(images) == (0 if name == "index" else 2 + len(CONTRASTS))
    for source in sources:
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.split(",", 1)[1], validate=True).startswith(b"\x89PNG\r\n\x1a\n")
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_flagged_report_names_every_flag_and_highlights(pages):
    path, qc = pages["flagged"]
    page = _text(path)
    assert path.name == "report.html" and path.parent.name == qc["subject"]
    banner = re.search(r'<section class="banner flagged".*?</section>', page, re.DOTALL).group(0)
    assert [html.unescape(item) for item in re.findall(r"<li>([^<]*)</li>", banner)] == FLAG_MESSAGES
    assert "M0 <1 %" not in page  # the raw, unescaped message
    assert f".flagged {{ background: {FLAG_COLOUR};" in page
    assert "No QC flags" not in page and "Uncalibrated" not in page
    assert "model: runs/hybrid/models/model.pt · calibration: runs/qc_calibration.json" in page
    # the TSE CSF bias beyond its band and the out-of-range white-matter T2, nothing else
    highlighted = re.findall(r'<td class="over">([^<]*)</td>', page)
    assert highlighted == ["-0.15 / 0.01 ± 0.06", "110 (55.0–95.0)"]
    for name in ["T1 MPE (%)", "M0 MPE (%)", "T1 SSIM", "Label resolution", "Metrics against"]:
        assert name in page


def test_clean_and_uncalibrated_reports(pages):
    clean, uncalibrated = _text(pages["clean"][0]), _text(pages["uncalibrated"][0])
    for page in clean, uncalibrated:
        assert '<section class="banner ok"><h2>No QC flags</h2></section>' in page
        assert "banner flagged" not in page and 'class="over"' not in page
    assert "Uncalibrated" not in clean and "-0.02 / 0.01 ± 0.06" in clean
    assert 'class="note">Uncalibrated' in uncalibrated
    assert " ± 0.06" not in uncalibrated and ">-0.02</td>" in uncalibrated  # residuals without thresholds
    assert "Label resolution" not in uncalibrated and "Metrics against" not in uncalibrated


def test_input_warnings_show_apart_from_the_flags(tmp_path):
    qc = {**_qc("sub-04", flagged=False), "input_warnings": ["flair white matter 1.8e+03 is brighter than grey matter"]}
    page = _text(write_subject_report(tmp_path / "report.html", qc, _volumes()))
    assert '<section class="banner warning" role="status">' in page and "flair white matter 1.8e+03" in page
    assert '<section class="banner ok"><h2>No QC flags</h2></section>' in page
    assert "banner warning" not in _text(pages_free_report(tmp_path))


def pages_free_report(tmp_path):
    return write_subject_report(tmp_path / "plain" / "report.html", _qc("sub-04", flagged=False), _volumes())


def test_html_in_names_is_escaped(tmp_path):
    qc = _qc("<script>alert('sub')</script>&x", flagged=True)
    qc["model"] = '"><b>model'
    page = _text(write_subject_report(tmp_path / "report.html", qc, _volumes()))
    assert "<script>" not in page and "<b>model" not in page
    assert "&lt;script&gt;alert(&#39;sub&#39;)&lt;/script&gt;&amp;x" in page
    index = _text(write_index(tmp_path / "index.html", [{**qc, "report": 'a"b.html'}]))
    assert "<script>" not in index and 'href="a&#34;b.html"' in index


def test_index_rows_flagged_first(pages):
    page = _text(pages["index"])
    rows = re.findall(r"<tr>\s*<td><a href=\"([^\"]+)\">([^<]+)</a></td>\s*<td class=\"(\w+)\">(\w+)</td>", page)
    assert rows == [
        ("sub-05/report.html", "sub-05", "flagged", "yes"),
        ("sub-04/report.html", "sub-04", "ok", "no"),
        ("sub-06/report.html", "sub-06", "ok", "no"),
    ]
    assert f".ok {{ background: {OK_COLOUR};" in page
    assert "3 subjects, 1 flagged" in page
    assert f"<td>{len(FLAG_MESSAGES)}</td>" in page
    assert "T2w TSE (EPG) residual (brain)" in page and "<td>0.07 / 0.08</td>" in page and "<td>0.07</td>" in page


def test_record_of_the_qc_checks(tmp_path):
    """The layout :func:`pipeline.qc.assess.assess_subject` writes (read back from JSON): a whole-brain residual with an
    upper limit and signed per-tissue biases with centre +- tolerance bands; NaN (an empty class) counts as beyond."""
    nan = float("nan")
    qc = _qc("sub-07", flagged=True)
    del qc["model"], qc["calibration"]
    qc["self_consistency"] = {
        "mprage": {"residual": 0.05, "bias": {"csf": 0.02, "grey_matter": -0.01, "white_matter": nan}},
        "tse_epg": {"residual": 0.21, "bias": {"csf": -0.09, "grey_matter": 0.01, "white_matter": 0.0}},
    }
    band = {"centre": 0.01, "tolerance": 0.05}
    qc["thresholds"] = {
        c: {"residual": 0.08, "bias": dict.fromkeys(["csf", "grey_matter", "white_matter"], band)} for c in CONTRASTS
    }
    qc["plausibility"]["t1"]["csf"] = nan
    qc["label_resolution"] = {"t1_mpe_percent": 5.2, "t2_mpe_percent": 7.1, "compared_voxels": 5123}
    qc = json.loads(json.dumps(qc))
    page = _text(write_subject_report(tmp_path / "sub-07" / "report.html", qc, _volumes()))
    table = page.split("<h2>Self-consistency residuals</h2>")[1].split("</table>")[0]
    columns = ["contrast", "residual", "bias CSF", "bias grey matter", "bias white matter"]
    assert re.findall(r"<th>([^<]*)</th>", table) == columns
    highlighted = re.findall(r'<td class="over">([^<]*)</td>', page)
    assert highlighted == [
        "NaN / 0.01 ± 0.05",
        "0.21 / 0.08",
        "-0.09 / 0.01 ± 0.05",
        "NaN (2500–5500)",
        "110 (55.0–95.0)",
    ]
    assert 'class="meta"' not in page and "compared voxels" in page and ">5123</td>" in page
    index = _text(write_index(tmp_path / "index.html", [{**qc, "report": "sub-07/report.html"}]))
    assert '<td class="over">0.21 / 0.08</td>' in index and "<td>0.05 / 0.08</td>" in index


def test_missing_volume_is_an_error(tmp_path):
    volumes = _volumes()
    del volumes["residual_tse_epg"]
    with pytest.raises(ValueError, match="residual_tse_epg"):
        write_subject_report(tmp_path / "report.html", _qc("sub-01", flagged=False), volumes)
    assert not list(tmp_path.iterdir())


def _chromium() -> str:
    """The headless browser: skipped when absent, unless ``CI`` is set (then a missing browser fails)."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("CI is set but neither chromium nor chromium-browser is installed")
        pytest.skip("no chromium / chromium-browser binary (CI not set)")
    return binary


def _screenshot(browser: str, page, png) -> np.ndarray:
    """Render ``page`` at 1200x2000 px in headless Chromium; the screenshot as uint8 RGB (H, W, 3)."""
    command = [
        browser,
        "--headless",
        "--disable-gpu",
        "--no-sandbox",
        "--hide-scrollbars",
        f"--user-data-dir={png.parent / 'chromium-profile'}",
        f"--screenshot={png}",
        "--window-size=1200,2000",
        page.resolve().as_uri(),
    ]
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    return (matplotlib.image.imread(png)[..., :3] * 255).round().astype(np.uint8)


def _colour_fraction(image: np.ndarray, colour: str) -> float:
    """Fraction of the pixels within ``BANNER_TOLERANCE`` of the ``#rrggbb`` ``colour`` in every channel."""
    rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
    return float((np.abs(image.astype(int) - rgb).max(axis=-1) <= BANNER_TOLERANCE).mean())


def test_browser_renders_banner_colours(pages, tmp_path):
    browser = _chromium()
    flagged = _screenshot(browser, pages["flagged"][0], tmp_path / "flagged.png")
    clean = _screenshot(browser, pages["clean"][0], tmp_path / "clean.png")
    index = _screenshot(browser, pages["index"], tmp_path / "index.png")
    for image in flagged, clean, index:
        assert image.shape == (2000, 1200, 3)
        assert image.std() > 5  # not a blank page
    # the red banner: > 3 % of the screenshot (about 1100 x 150 px); no green anywhere
    assert _colour_fraction(flagged, FLAG_COLOUR) > 0.03
    assert _colour_fraction(flagged, OK_COLOUR) < 1e-4
    # the green banner (about 1100 x 50 px), no red
    assert _colour_fraction(clean, OK_COLOUR) > 0.01
    assert _colour_fraction(clean, FLAG_COLOUR) < 1e-4
    # the index: one red "yes" cell and two green "no" cells
    assert _colour_fraction(index, FLAG_COLOUR) > 1e-4
    assert _colour_fraction(index, OK_COLOUR) > 2e-4
