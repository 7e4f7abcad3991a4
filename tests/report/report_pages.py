"""What the report tests share: a report's text as a reader sees it, and the HTML report
rendered by headless Chromium (its DOM, and a screenshot checked to be no blank page)."""

import os
import re
import struct
import subprocess
import zlib
from pathlib import Path

from fixtures.system import need


def plain(text: str) -> str:
    """What a reader sees, roughly: no tags, no Markdown emphasis or code marks, one space."""
    text = re.sub(r"<[^>]+>", " ", text).replace("**", "").replace("`", "")
    return re.sub(r"\( | (?=[,;.)])", lambda m: m.group(0).strip(), " ".join(text.split()))


def render_in_chromium(page: Path, tmp_path: Path, *, charts: int = 5) -> str:
    """The page's DOM as Chromium built it, with ``charts`` charts in it; its screenshot
    (1280 by 2000) is left in ``tmp_path / "report.png"``."""
    binary = need("chromium", "chromium-browser", package="chromium")
    shot = tmp_path / "report.png"
    common = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
              f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=1280,2000"]  # fmt: skip
    env = {**os.environ, "HOME": str(tmp_path)}
    dom = subprocess.run([*common, "--dump-dom", page.as_uri()], capture_output=True,
                         text=True, timeout=120, check=True, env=env)  # fmt: skip
    assert dom.stdout.count("<svg") == charts and "Restore drills" in dom.stdout
    subprocess.run([*common, f"--screenshot={shot}", page.as_uri()], capture_output=True,
                   timeout=120, check=True, env=env)  # fmt: skip
    width, height, rows = png_rows(shot.read_bytes())
    assert (width, height) == (1280, 2000)
    assert len(set(rows)) > 100, "the screenshot is (nearly) blank"
    return dom.stdout


def png_rows(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and the (filtered) pixel rows of an 8-bit, non-interlaced PNG.

    A blank page gives a handful of distinct rows; charts and text give hundreds.
    """
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        header = body if kind == b"IHDR" else header
        idat += body if kind == b"IDAT" else b""
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and interlace == 0 and colour in (2, 6)
    stride = 1 + width * (3 if colour == 2 else 4)
    raw = zlib.decompress(idat)
    assert len(raw) == stride * height
    return width, height, [raw[i : i + stride] for i in range(0, len(raw), stride)]
