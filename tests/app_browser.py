"""Driving the web app in a real browser: Debian's Chromium under Playwright's Python package (its own browsers are
not downloaded; the system's is pointed at). Used by tests/test_app_browser.py and benchmarks/bench_app.py; run as a
script it serves the demo's trained model (after `bash tools/demo.sh`) and writes the README's screenshot:

    .venv/bin/python -m tests.app_browser docs/app.png
"""
import os
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

# without the background-networking flags Chromium keeps reaching for Google's hosts, which a closed network refuses
CHROMIUM_FLAGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-sync',
                  '--disable-background-networking', '--disable-component-update']
UPLOAD = 'input[type=file]'  # the upload button's file input (its sibling; the page has no other)


def chromium_path() -> Optional[str]:
    """The system Chromium (``AAFORMER_HF_CHROMIUM`` overrides), or None when there is none."""
    for candidate in (os.environ.get('AAFORMER_HF_CHROMIUM'), shutil.which('chromium'), '/usr/bin/chromium'):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def missing_browser() -> Optional[str]:
    """Why the browser tests cannot run here, or None when they can."""
    try:
        import playwright  # noqa: F401
    except ImportError:
        return 'the playwright package is not installed (the dev extra installs it)'
    if chromium_path() is None:
        return 'no Chromium here (on Debian: apt-get install chromium; tools/setup.sh does so as root)'
    return None


@contextmanager
def browser_page(width: int = 1400, height: int = 1000) -> Iterator:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS)
        try:
            yield browser.new_page(viewport={'width': width, 'height': height})
        finally:
            browser.close()


def open_app(page, url: str, timeout_ms: int = 60000) -> None:
    page.goto(url, timeout=timeout_ms)
    page.wait_for_selector(UPLOAD, state='attached', timeout=timeout_ms)
    page.wait_for_selector('#results', state='attached', timeout=timeout_ms)


DRAWN = """(k) => {
  const images = [...document.querySelectorAll('#results img')];
  return images.length === k && images.every(i => i.complete && i.naturalWidth > 0)
         && [...document.querySelectorAll('#model_map img')].some(i => i.complete && i.naturalWidth > 0);
}"""
RENDERED = DRAWN.replace('return images', 'return window.__cleared && images')  # and cleared since the upload
# the page clears the last results when an upload starts: seeing that (with an observer, as it may last only a few
# milliseconds) tells the new results from the old ones, which can be the very same crops
WATCH_CLEARING = """() => {
  window.__cleared = false;
  window.__watch?.disconnect();
  window.__watch = new MutationObserver(() => {
    if (!document.querySelector('#results img')) window.__cleared = true;
  });
  window.__watch.observe(document.querySelector('#results'), {childList: true, subtree: true});
}"""


def query(page, image: Path, k: int, timeout_ms: int = 60000) -> float:
    """Upload ``image`` through the file input and wait until the ``k`` results and the model's map are drawn (every
    image loaded). Returns the seconds from the upload to that."""
    page.evaluate(WATCH_CLEARING)
    start = time.perf_counter()
    page.set_input_files(UPLOAD, str(image))
    page.wait_for_function(RENDERED, arg=k, timeout=timeout_ms, polling=10)
    return time.perf_counter() - start


def captions(page):
    return page.locator('#results .caption-label').all_inner_texts()


def map_source(page) -> str:
    return page.locator('#model_map img').first.get_attribute('src')


def set_slider(page, elem_id: str, value: int) -> None:
    """Move a Gradio slider to ``value`` as a drag ends there (the range input's input and change events)."""
    page.locator(f'#{elem_id} input[type=range]').fill(str(value))


def main(argv=None) -> int:
    """Serve the demo's trained model on its SYNTHETIC gallery, search the first example query and save a
    screenshot of the page."""
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0] if argv else 'docs/app.png')
    reason = missing_browser()
    if reason:
        sys.exit(f'cannot take the screenshot: {reason}')
    from aaformer_hf.apps.app import DEFAULT_DATASET, DEFAULT_MODEL, ReIDDemo, launch, model_card_text
    from aaformer_hf.apps.extract import load_inference_model
    from aaformer_hf.apps.gallery import gallery_from_dataset

    model = load_inference_model(str(DEFAULT_MODEL))
    gallery = gallery_from_dataset(model, str(DEFAULT_MODEL), *DEFAULT_DATASET)
    demo = ReIDDemo(model, str(DEFAULT_MODEL), gallery, model_card_text(str(DEFAULT_MODEL), model))
    app = launch(demo, block=False)
    try:
        with browser_page(1280, 900) as page:
            open_app(page, app.local_url)
            page.locator('#examples button.thumbnail-item').first.click()  # an example: its identity is known
            page.wait_for_function("() => document.querySelector('#status').innerText.includes('left out')")
            page.wait_for_function(DRAWN, arg=10, timeout=60000)
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out), full_page=True)
    finally:
        app.close()
    from PIL import Image
    with Image.open(out) as shot:
        shot = shot.convert('RGB')
    shot.quantize(256).save(out, optimize=True)  # 256 colours: a fraction of the bytes, for the README
    print(f'{out}: screenshot of the app')
    return 0


if __name__ == '__main__':
    sys.exit(main())
