"""The painting page in a real browser: headless Chromium (Debian's ``chromium`` package,
driven by Playwright through ``executable_path``, nothing downloaded) against the server
on a free 127.0.0.1 port, on the planted world whose tree units draw trees.

The test paints with the mouse, checks that the edited image changed and that the
reported change of tree pixels has the right sign (draw: up, remove: down, undo: back).
With ``GAN_MONITOR_PAINT_SCREENSHOT=docs/paint_screenshot.png`` it also saves a screenshot.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync"]

pytest.importorskip("fastapi", reason="the paint extra (fastapi, uvicorn) is not installed")
pytest.importorskip("uvicorn", reason="the paint extra (fastapi, uvicorn) is not installed")
sync_api = pytest.importorskip("playwright.sync_api", reason="the Python package playwright is not installed "
                                                             "(pip install playwright; no browser download needed)")
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium package (apt-get install -y chromium) "
                f"to run the browser test", allow_module_level=True)

from intervention_world import CausalGenerator, CausalSegmenter  # noqa: E402

import gan_monitor  # noqa: E402
from gan_monitor.paint import make_app  # noqa: E402
from gan_monitor.paint.server import ServerThread  # noqa: E402
from gan_monitor.paint.session import PaintSession  # noqa: E402

TREE = CausalSegmenter.concepts.index("tree")


@pytest.fixture(scope="module")
def served():
    torch.manual_seed(0)
    g, s = CausalGenerator(), CausalSegmenter()
    result = gan_monitor.dissect(g, "features", s, n=200, seed=0, threshold="iqr")
    session = PaintSession.create(g, "features", s, dissection=result, samples=6)
    with ServerThread(make_app(session, allowed_hosts=["127.0.0.1"])) as server:
        yield session, server


@pytest.fixture(scope="module")
def page(served):
    with sync_api.sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        except sync_api.Error as err:
            pytest.skip(f"{CHROMIUM} does not start under Playwright: {str(err).splitlines()[0]}")
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(served[1].url + "/")
        page.wait_for_selector("body[data-ready='1']", timeout=30_000)
        page.errors = errors
        yield page
        browser.close()


def treeless_region(session):
    """(sample id, top, left) of a 12x8-pixel region of the top half without trees."""
    for sid in session.sample_ids:
        labels = session.sample(sid).labels[0]
        for top in (0, 4):
            for left in range(0, 24, 4):
                if not (labels[top:top + 12, left:left + 8] == TREE).any():
                    return sid, top, left
    raise AssertionError("no treeless region")


def stroke(page, top, left):
    """A mouse stroke down the middle of the 12x8 region (image pixels -> page pixels)."""
    box = page.locator("#edited").bounding_box()
    scale = box["width"] / 32
    x = box["x"] + (left + 4) * scale
    page.mouse.move(x, box["y"] + (top + 3) * scale)
    page.mouse.down()
    page.mouse.move(x, box["y"] + (top + 9) * scale, steps=6)
    page.mouse.up()


def wait_for_strokes(page, n):
    page.wait_for_function(f"() => {{ const o = document.querySelector('#change'); "
                           f"return o.dataset.strokes === '{n}' && o.dataset.change !== ''; }}", timeout=30_000)
    return float(page.locator("#change").get_attribute("data-change"))


def canvas_difference(page) -> float:
    return page.evaluate("""() => {
        const a = document.querySelector('#original'), b = document.querySelector('#edited');
        const da = a.getContext('2d').getImageData(0, 0, a.width, a.height).data;
        const db = b.getContext('2d').getImageData(0, 0, b.width, b.height).data;
        let total = 0;
        for (let i = 0; i < da.length; i++) total += Math.abs(da[i] - db[i]);
        return total;
    }""")


def test_paint_draw_remove_and_undo_with_the_mouse(served, page):
    session, _ = served
    sid, top, left = treeless_region(session)
    assert "tree" in page.locator("#concept").inner_text()
    page.select_option("#concept", "tree")
    page.locator(f"#thumbs img[data-id='{sid}']").click()
    page.eval_on_selector("#size", "e => { e.value = 8; e.dispatchEvent(new Event('input')); }")
    assert canvas_difference(page) == 0  # before painting, the edited view is the original

    stroke(page, top, left)
    drawn = wait_for_strokes(page, 1)
    assert drawn > 0, page.locator("#change").inner_text()
    assert canvas_difference(page) > 0
    assert "tree pixels in the painted region" in page.locator("#change").inner_text()

    page.check("input[name=mode][value=remove]")
    stroke(page, top, left)
    removed = wait_for_strokes(page, 2)
    assert removed < 0, page.locator("#change").inner_text()

    page.click("#undo")
    assert wait_for_strokes(page, 1) == drawn
    if os.environ.get("GAN_MONITOR_PAINT_SCREENSHOT"):
        page.screenshot(path=os.environ["GAN_MONITOR_PAINT_SCREENSHOT"], full_page=True)
    page.check("#overlay")  # the segmentation on both views: they differ, and the legend shows
    assert canvas_difference(page) > 0 and page.locator("#legend").is_visible()
    page.uncheck("#overlay")
    page.click("#reset")
    page.wait_for_function("() => document.querySelector('#change').dataset.strokes === '0'")
    assert canvas_difference(page) == 0
    assert page.locator("#status").inner_text() == "" and not page.errors


def test_new_samples_and_server_errors_reach_the_page(served, page):
    before = page.locator("#thumbs img").count()
    page.click("#more")
    page.wait_for_function(f"() => document.querySelectorAll('#thumbs img').length > {before}")
    # a refused edit (here: the units box set beyond the concept's units) shows the server's message
    page.select_option("#concept", "tree")
    page.eval_on_selector("#units", "e => { e.value = 999; }")
    page.check("input[name=mode][value=draw]")
    stroke(page, 0, 0)
    page.wait_for_function("() => document.querySelector('#status').textContent !== ''")
    assert "units must be an integer from 1 to" in page.locator("#status").inner_text()
    assert page.locator("#change").get_attribute("data-strokes") == "0"
