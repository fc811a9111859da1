"""The page at / in a real Chromium (Debian's package, launched by its path; headless) through
Playwright, against a real `fakescope serve` (issue 11)."""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

import pytest
from PIL import Image

from .conftest import sg_images
from .test_serve import Server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="needs Debian's chromium (apt-get install chromium)"
)


@pytest.fixture(scope="module")
def group_photo(tmp_path_factory):
    """Two real and two fake test faces pasted onto one canvas, as in test_in_the_wild."""
    canvas = Image.new("RGB", (1100, 520), (128, 128, 128))
    for i, p in enumerate(sg_images("real", n=2) + sg_images("fake", n=2)):
        canvas.paste(
            Image.open(p).convert("RGB").resize((200, 200), Image.BICUBIC),
            (40 + i * 265, 60 + (i % 2) * 200),
        )
    path = tmp_path_factory.mktemp("page") / "group.jpg"
    canvas.save(path, quality=95)
    return path


@pytest.fixture(scope="module")
def page_server(small_run, tmp_path_factory):
    s = Server(small_run, tmp_path_factory.mktemp("page-srv"))
    yield s
    s.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


def _drop(page, paths):
    """A real drop event on the drop zone, carrying the files as the browser would."""
    files = [{"name": Path(p).name, "b64": base64.b64encode(Path(p).read_bytes()).decode()}
             for p in paths]  # fmt: skip
    page.evaluate(
        """(files) => {
            const dt = new DataTransfer();
            for (const f of files) {
                const bytes = Uint8Array.from(atob(f.b64), (c) => c.charCodeAt(0));
                dt.items.add(new File([bytes], f.name));
            }
            const zone = document.getElementById("drop");
            zone.dispatchEvent(new DragEvent("dragover", {dataTransfer: dt, bubbles: true}));
            zone.dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true}));
        }""",
        files,
    )


def test_drop_photos_see_verdicts_boxes_heatmaps_and_errors(
    browser, page_server, group_photo, tmp_path, request
):
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    page.goto(page_server.url + "/")
    page.wait_for_function("document.getElementById('model').textContent.includes('threshold')")
    face = sg_images("fake", n=1)[0]
    _drop(page, [face, group_photo])
    page.wait_for_selector("section.card >> nth=1")
    cards = page.locator("section.card")
    assert cards.count() == 2
    assert page.locator("table tr").count() == 3  # header + one row per file
    group = cards.nth(1)
    group.locator(".box").first.wait_for()
    # one box per face found (four pasted), each coloured by its verdict and listed below
    n = group.locator(".box").count()
    assert n >= 4 and group.locator("li").count() == n
    labels = group.locator(".box span").all_inner_texts()
    assert all(t.split()[0] in ("fake", "real") for t in labels)
    assert "against threshold" in cards.nth(0).inner_text()
    # heatmaps: toggled from the keyboard, then the photo again
    page.focus("#heat")
    page.keyboard.press("Space")
    assert page.is_checked("#heat")
    page.set_input_files("#files", str(face))
    page.wait_for_selector(".overlays img")
    src = page.get_attribute(".overlays img", "src")
    assert src.startswith("data:image/png;base64,")
    # a bad file: its message, and the page still works
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(face.read_bytes()[:500])
    page.set_input_files("#files", str(bad))
    page.wait_for_selector("[role=alert]")
    assert "broken.jpg" in page.inner_text("[role=alert]")
    shot = request.config.getoption("--page-screenshot", default=None)
    _drop(page, [group_photo])
    page.wait_for_selector("section.card .box")
    if shot:
        page.screenshot(path=shot, full_page=True)


def test_readable_on_a_phone(browser, page_server):
    page = browser.new_page(viewport={"width": 390, "height": 844})
    page.goto(page_server.url + "/")
    page.set_input_files("#files", str(sg_images("real", n=1)[0]))
    page.wait_for_selector("section.card")
    assert page.evaluate("document.scrollingElement.scrollWidth") <= 390
