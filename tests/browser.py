"""Headless Chromium helpers for tests that check rendered HTML pages (explain, report).

Chromium is required, not optional: :func:`find_chromium` FAILS the calling test when no browser
is installed (install it with ``apt-get install -y chromium``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-extensions",
    "--no-first-run",
    "--no-default-browser-check",
    "--hide-scrollbars",
)


def find_chromium() -> str:
    """Path of a Chromium executable ($CHROMIUM first); fails the test when there is none."""
    env = os.environ.get("CHROMIUM")
    if env and Path(env).is_file():
        return env
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(
        "headless Chromium is required for this test but was not found "
        "(apt-get install -y chromium, or set $CHROMIUM)",
        pytrace=False,
    )


def screenshot(
    html_path: Path, out_png: Path, width: int = 1400, height: int = 900, timeout: float = 120.0
) -> Path:
    """Render a local HTML file in headless Chromium and save a ``width`` x ``height`` PNG."""
    exe = find_chromium()
    out_png = Path(out_png).resolve()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tidpo-chromium-") as profile:
        cmd = [
            exe,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--screenshot={out_png}",
            f"--window-size={width},{height}",
            Path(html_path).resolve().as_uri(),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0 or not out_png.is_file():
        pytest.fail(
            f"chromium failed (exit {proc.returncode}): {proc.stderr[-2000:]}", pytrace=False
        )
    return out_png


def image_stats(png: Path) -> tuple[float, int]:
    """``(fraction of non-white pixels, number of distinct colours)`` of an image."""
    from PIL import Image

    with Image.open(png) as img:
        rgb = img.convert("RGB")
        pixels = list(rgb.getdata())
    nonwhite = sum(1 for p in pixels if min(p) < 245)
    colours = rgb.getcolors(maxcolors=1 << 24) or []
    return nonwhite / max(len(pixels), 1), len(colours)
