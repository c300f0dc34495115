"""The web app in a real browser (Debian's Chromium under Playwright), against the app served by the test on
127.0.0.1: the page loads, a query goes in through the file input, the k results are drawn with their captions, the
model's map follows the layer slider and a clicked result, a bad upload and one over the size limit say why and the
next good query still works.
A screenshot is left in the test's temporary folder (its path is printed; ``AAFORMER_HF_SCREENSHOTS`` names a folder
to copy it to).

tools/test.sh installs Chromium where it can (Debian, as root) and then sets AAFORMER_HF_REQUIRE_BROWSER=1, so that
CI fails rather than skips when the browser does not start; elsewhere the tests skip, saying why."""
import os
import shutil
from pathlib import Path

import pytest

from .app_browser import (
    UPLOAD, browser_page, captions, map_source, missing_browser, open_app, query, set_slider,
)
from .test_app import demo, market, model_dir  # noqa: F401  (the fixtures)

_REASON = missing_browser()
if _REASON and os.environ.get('AAFORMER_HF_REQUIRE_BROWSER') == '1':
    raise RuntimeError(f'the browser tests must run here (AAFORMER_HF_REQUIRE_BROWSER=1), but {_REASON}')
pytestmark = pytest.mark.skipif(_REASON is not None, reason=f'browser tests: {_REASON}')


@pytest.fixture(scope='module')
def page_on_app(demo):  # noqa: F811
    pytest.importorskip('gradio', reason='the app extra (aaformer-hf[app]) is not installed')
    from aaformer_hf.apps.app import launch
    app = launch(demo, host='127.0.0.1', block=False)
    try:
        with browser_page() as page:
            open_app(page, app.local_url)
            yield page
    finally:
        app.close()


def test_query_results_map_and_a_bad_upload_in_the_browser(page_on_app, demo, tmp_path):  # noqa: F811
    page = page_on_app
    assert 'person re-identification' in page.title()
    assert 'up to 10 MB' in page.locator('#status').inner_text()  # the limit is said before it is met
    image, _ = demo.example(3)
    good = tmp_path / 'person.png'
    image.save(good)
    set_slider(page, 'k', 5)
    query(page, good, k=5)
    shown = captions(page)
    assert [c.split()[0] for c in shown] == [f'#{i}' for i in range(1, 6)]
    ranked = demo.search(image, 5)
    assert [float(c.split('d=')[1].split()[0]) for c in shown] == pytest.approx(ranked.distances, abs=1e-3)
    assert 'Top 5 of' in page.locator('#status').inner_text()

    # the layer slider redraws the map: the first layer's assignment is another picture
    last = map_source(page)
    assert 'layer 1' in page.locator('#map_caption').inner_text()
    set_slider(page, 'layer', 0)
    page.wait_for_function("() => document.querySelector('#map_caption').innerText.includes('layer 0')")
    page.wait_for_function("(old) => document.querySelector('#model_map img')?.src !== old", arg=last)
    # the view radio, then a clicked result
    page.get_by_label('each head').check()
    page.wait_for_function("() => document.querySelector('#map_caption').innerText.includes('one panel per head')")
    page.locator('#results button.thumbnail-item').nth(1).click()
    page.wait_for_function("() => document.querySelector('#map_caption').innerText.startsWith('Result #2')")

    # a bad upload: its reason on the page; then a good one works again
    bad = tmp_path / 'notes.png'
    bad.write_bytes(b'this is text, not a picture')
    page.set_input_files(UPLOAD, str(bad))
    page.wait_for_function("() => document.querySelector('#status').innerText.includes('not an image')")
    assert page.locator('#results img').count() == 0
    query(page, good, k=5)
    assert len(captions(page)) == 5
    # over the size limit: Gradio refuses it in the browser with its own toast; the status line says why as well and
    # the last results go, as for any refused query; then a good one works again
    big = tmp_path / 'big.png'
    big.write_bytes(b'\0' * (demo.max_upload_bytes + 1))
    page.set_input_files(UPLOAD, str(big))
    page.wait_for_function("() => document.querySelector('#status').innerText.includes('the limit is 10 MB')")
    assert 'the upload is 10.0 MB' in page.locator('#status').inner_text()
    page.wait_for_function("() => document.querySelector('#results img') === null")
    assert 'exceed the maximum allowed size' in page.locator('body').inner_text()  # Gradio's toast
    query(page, good, k=5)
    assert len(captions(page)) == 5

    shot = tmp_path / 'app.png'
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    print(f'screenshot: {shot}')
    if os.environ.get('AAFORMER_HF_SCREENSHOTS'):
        shutil.copy(shot, Path(os.environ['AAFORMER_HF_SCREENSHOTS']) / 'app.png')


def test_an_example_query_is_judged_under_the_protocol_in_the_browser(page_on_app, demo):  # noqa: F811
    page = page_on_app
    set_slider(page, 'k', 4)
    page.locator('#examples button.thumbnail-item').first.click()
    page.wait_for_function("() => document.querySelector('#status').innerText.includes('left out')")
    page.wait_for_function("() => document.querySelectorAll('#results .caption-label').length === 4")
    image, identity = demo.example(0)
    ranked = demo.search(image, 4, identity)
    marks = ['✓' in c for c in captions(page)]
    assert marks == ranked.correct
