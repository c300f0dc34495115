# Copyright 2026 The aaformer-hf Authors. Licensed under the Apache License, Version 2.0.
"""The web app (``aaformer-hf app``, a Gradio app; ``pip install "aaformer-hf[app]"``): a query crop - uploaded, or
one of the dataset's queries - then the gallery ranked by distance, marked correct or wrong when the query's identity
is known, and what the model looked at: an AAformer's patch-to-[PART] assignment (per group by majority over heads,
per head, or the heads' agreement; any layer), or a π-VL model's CLS attention (its CNN's attention pool).

``ReIDDemo`` does the work and knows nothing of Gradio (tests call it directly); ``build_app`` lays it out as a page.
What a visitor sends is only ever decoded as an image in memory, never used as a path; a bad upload gets its reason
on the page and the app keeps serving.
"""
import io
import re
import warnings
from pathlib import Path
from typing import List, Optional, Tuple

import torch
from PIL import Image

from ..data.images import as_rgb, read_rgb
from .gallery import Gallery, Ranked

__all__ = ['ReIDDemo', 'UploadError', 'build_app', 'launch', 'model_card_text', 'DEFAULT_MODEL', 'DEFAULT_DATASET']

DEFAULT_MODEL = Path('outputs/synthetic/model')  # what `bash tools/demo.sh` trains ...
DEFAULT_DATASET = ('market1501', Path('data/synthetic_market'))  # ... on this SYNTHETIC set
THUMB = (64, 128)  # example-strip thumbnails (w, h)
RESULT = (96, 192)  # result crops as shown
MIN_SIDE = 16  # smaller uploads are refused: nothing of a person is left
KEEP_SIDE = 1024  # larger uploads are scaled down to this on their longer side once decoded
VIEWS = {'parts': ('majority over heads', 'each head', 'heads agreeing'), 'attention': ('each head and mean',)}

INTENDED_USE = (
    'Person re-identification matches crops of people across cameras, which makes it a surveillance technology. '
    'This demo is meant for research and for checking what a model does; it is not meant for identifying or '
    'tracking real people without their consent, and its rankings are similarity scores, not evidence of identity.')


class UploadError(ValueError):
    """An upload the app cannot use; the message says why, for the visitor."""


class ReIDDemo:
    """A model, a ``Gallery`` and the drawing of what the model does - the app's work, without the page.

    Args:
        model: a timm re-ID model in eval mode (``load_inference_model``).
        model_name: how the page names it.
        gallery: the searchable gallery.
        card: the model card's text (Markdown) for the page's panel.
        max_pixels: uploads above this many pixels are refused (decoding them costs memory; crop the person first).
        max_upload_bytes: uploads above this size are refused (Gradio's ``max_file_size`` stops them earlier).
    """

    def __init__(self, model, model_name: str, gallery: Gallery, card: str = '', max_pixels: int = 25_000_000,
                 max_upload_bytes: int = 10 * 2 ** 20) -> None:
        from ..data import build_transforms
        from .visualize import attention_depth

        self.model, self.model_name, self.gallery, self.card = model, model_name, gallery, card
        self.max_pixels, self.max_upload_bytes = max_pixels, max_upload_bytes
        self.transform = build_transforms(model.pretrained_cfg, train=False)
        self.kind = 'parts' if getattr(model, 'assigns_patches', False) else 'attention'
        self.depth = attention_depth(model)
        if not self.depth:
            raise ValueError(f'{model_name}: the app draws an AAformer, a π-VL ViT or a π-VL CNN; got '
                             f'{type(model).__name__}')
        self._examples: Optional[List[Image.Image]] = None

    # --- queries -----------------------------------------------------------------------------------------------
    def decode_upload(self, data: Optional[bytes]) -> Image.Image:
        """The uploaded bytes as an RGB image (scaled down to ``KEEP_SIDE`` pixels on its longer side when larger: the
        session keeps it for redraws, and the model sees 256x128), or ``UploadError`` saying why not (never naming a
        server path)."""
        if not data:
            raise UploadError('the upload is empty')
        if len(data) > self.max_upload_bytes:
            raise UploadError(self.size_refusal(len(data)))
        try:
            with warnings.catch_warnings():  # PIL's bomb warning: the size check below refuses such images itself
                warnings.simplefilter('ignore', Image.DecompressionBombWarning)
                image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as error:  # over twice PIL's own limit: refused in the header already
            raise UploadError(f'the image has too many pixels ({error}); the limit is '
                              f'{self.max_pixels / 1e6:.0f} MP - upload the crop of one person') from None
        except Exception as error:  # PIL: UnidentifiedImageError, SyntaxError, ... for what is not an image
            raise UploadError(f'not an image this app can read ({type(error).__name__}); upload a JPEG, PNG, BMP '
                              'or WebP crop of a person') from None
        width, height = image.size  # from the header: nothing decoded yet
        if width * height > self.max_pixels:
            raise UploadError(f'the image is {width}x{height} pixels ({width * height / 1e6:.0f} MP); the limit is '
                              f'{self.max_pixels / 1e6:.0f} MP - upload the crop of one person')
        if min(width, height) < MIN_SIDE:
            raise UploadError(f'the image is {width}x{height} pixels; a person crop needs at least {MIN_SIDE} '
                              'pixels on each side')
        try:
            image.load()  # the full decode: a truncated file fails here
        except Exception as error:
            raise UploadError(f'the image could not be decoded ({type(error).__name__}: {error}); the file may be '
                              'truncated or damaged') from None
        try:
            image = as_rgb(image, 'the upload')
        except ValueError as error:
            raise UploadError(str(error)) from None
        if max(image.size) > KEEP_SIDE:  # kept for the session's redraws; the model sees 256x128 anyway
            image.thumbnail((KEEP_SIDE, KEEP_SIDE), Image.BICUBIC)
        return image

    def size_refusal(self, size: float) -> str:
        """Why an upload of ``size`` bytes is refused (the page's own check in the browser reports sizes through
        this too, so both say the same)."""
        return f'the upload is {size / 2 ** 20:.1f} MB; the limit is {self.upload_limit_text()}'

    def upload_limit_text(self) -> str:
        return f'{self.max_upload_bytes / 2 ** 20:g} MB'

    def example(self, index: int) -> Tuple[Image.Image, Optional[Tuple[int, int]]]:
        """Example query ``index`` (a position in the strip, not a path) and its identity when known."""
        if not 0 <= index < len(self.gallery.queries):
            raise UploadError(f'no example query {index}')
        path, identity = self.gallery.queries[index]
        return read_rgb(path), identity

    def examples(self, limit: int = 48) -> List[Tuple[Image.Image, str]]:
        """Thumbnails of the first ``limit`` example queries, captioned with their identity and camera."""
        if self._examples is None:
            self._examples = [read_rgb(path).resize(THUMB) for path, _ in self.gallery.queries[:limit]]
        return [(thumb, _identity_text(identity)) for thumb, (_, identity) in
                zip(self._examples, self.gallery.queries[:limit])]

    # --- search ------------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def embed(self, image: Image.Image) -> torch.Tensor:
        """The query's embedding, made as the gallery's were (with the mirror's averaged in when they were)."""
        from ..reid.evaluation import flip_features
        from .extract import embed

        pixels = self.transform(image).unsqueeze(0)
        if self.gallery.flip:
            return flip_features(lambda x: embed(self.model, x), pixels)[0]
        return embed(self.model, pixels)[0]

    def search(self, image: Image.Image, k: int, identity: Optional[Tuple[int, int]] = None) -> Ranked:
        return self.gallery.rank(self.embed(image), int(k), identity)

    def results(self, ranked: Ranked) -> List[Tuple[Image.Image, str]]:
        """The ranked crops with captions: rank, ✓ (same person) / ✗ when judged, distance, identity and camera
        when known."""
        shown = []
        for rank, (index, distance) in enumerate(zip(ranked.indices, ranked.distances), start=1):
            caption = f'#{rank}'
            if ranked.correct is not None:  # the verdict first: long captions are cut short on the page
                caption += ' ✓' if ranked.correct[rank - 1] else ' ✗'
            caption += f' d={distance:.3f}'
            label = self.gallery.label(index)
            if label is not None:
                caption += f' {_identity_text(label)}'
            shown.append((read_rgb(self.gallery.paths[index]).resize(RESULT), caption))
        return shown

    def summary(self, ranked: Ranked, identity: Optional[Tuple[int, int]]) -> str:
        """What the page says above the results: how many, how judged, what the protocol left out."""
        n = len(self.gallery)
        text = f'Top {len(ranked.indices)} of {n} gallery crops by cosine distance (1 - cos, smaller = closer)'
        text += '.' if self.gallery.method == 'exact' else f' ({self.gallery.method}).'
        if identity is None:
            return text + ' The query\'s identity is unknown, so results are not marked correct or wrong.'
        if ranked.correct is None:
            return text + ' The gallery has no identities, so results are not marked correct or wrong.'
        hits = sum(ranked.correct)
        return (text + f' Query {_identity_text(identity)}: {hits} of {len(ranked.correct)} shown are the same '
                f'person (✓). Evaluation protocol (Market-1501): {ranked.left_out} gallery crop(s) left out - this '
                'identity under the query\'s own camera, and junk (id -1).')

    # --- what the model looked at ------------------------------------------------------------------------------
    def views(self) -> Tuple[str, ...]:
        return VIEWS[self.kind]

    @torch.inference_mode()
    def model_map(self, image: Image.Image, layer: int, view: Optional[str] = None) -> Image.Image:
        """An AAformer's [PART] assignment of ``image`` in ``layer`` (``view``: one of ``views()``), or a π-VL
        model's CLS attention (per head, then the mean); PNG-sized, 16 screen pixels per patch."""
        from .visualize import attention_figure, part_panels, tile

        layer = int(layer)
        if not 0 <= layer < self.depth:
            raise UploadError(f'layer {layer}: the model has {self.depth} (0..{self.depth - 1})')
        pixels = self.transform(image).unsqueeze(0)
        if self.kind == 'attention':
            return attention_figure(self.model, [image], pixels, layer)
        assigned = self.model.forward_tokens(pixels, output_assignments=True).assignments[layer][0]
        panels = part_panels(image, assigned, self.model.part_groups, self.model.patch_embed.grid_size)
        view = view or self.views()[0]
        if view == 'majority over heads':
            return tile([[panels.image] + panels.majority])
        if view == 'each head':
            return tile([[panels.image] + heads for heads in panels.heads])
        if view == 'heads agreeing':
            return tile([[panels.image, panels.agreement]])
        raise UploadError(f'unknown view {view!r}; one of {", ".join(self.views())}')

    def map_caption(self, layer: int, view: Optional[str], what: str) -> str:
        if self.kind == 'attention':
            if self.depth == 1:
                return (f'{what}: where the CNN\'s attention pool looks (its mean token, per head, then the mean) '
                        '- the map behind the CLIP embedding.')
            return f'{what}: CLS attention in layer {int(layer)} (per head, then the mean over heads).'
        groups = ', '.join(str(g) for g in self.model.part_groups)
        meaning = {'majority over heads': 'each patch coloured by the [PART] most heads gave it, one panel per group',
                   'each head': 'one row per group, one panel per head',
                   'heads agreeing': 'the share of heads that agree with the majority [PART] of the first group '
                                     '(white: all, black: none)'}
        return (f'{what}: patch-to-[PART] assignment in layer {int(layer)} ({groups} parts per group): '
                f'{meaning.get(view, "")}.')


def _identity_text(identity: Optional[Tuple[int, int]]) -> str:
    return '' if identity is None else f'id {identity[0]} cam {identity[1] + 1}'  # cameras shown from 1, as named


def model_card_text(spec: str, model) -> str:
    """The model card's Markdown (its YAML header removed): a folder's README.md, a Hub repo's (from the cache or
    the Hub), or, when there is none, what the model is; then the intended-use note."""
    text = None
    path = Path(spec)
    if path.is_dir():
        readme = path / 'README.md'
        text = readme.read_text(errors='replace') if readme.is_file() else None
    elif '/' in spec and not path.exists():
        try:
            from huggingface_hub import hf_hub_download
            repo, _, revision = spec.removeprefix('hf-hub:').partition('@')
            text = Path(hf_hub_download(repo, 'README.md', revision=revision or None)).read_text(errors='replace')
        except Exception:  # offline without it cached, or no card in the repo: the page says so below
            text = None
    if text is not None:
        text = re.sub(r'\A---\n.*?\n---\n', '', text, flags=re.S)
    else:
        cfg = getattr(model, 'pretrained_cfg', {}) or {}
        text = (f'**{spec}** has no model card. Architecture `{cfg.get("architecture", type(model).__name__)}`, '
                f'input {cfg.get("input_size")}, embedding of {getattr(model, "head_hidden_size", "?")} values.')
    return f'{text}\n\n### Intended use and limitations\n\n{INTENDED_USE}\n'


def build_app(demo: ReIDDemo, title: str = 'aaformer-hf: person re-identification'):
    """The page (a ``gradio.Blocks``) around ``demo``; call ``.queue(...)`` and ``.launch(...)`` on it (``launch``
    does both)."""
    import gradio as gr

    has_examples = bool(demo.gallery.queries)
    last = demo.depth - 1

    def shown(state, layer, view):
        if not state:
            return '', None
        if state['shown'] is None:
            image, what = state['image'], 'Query'
        else:
            index = state['ranked'][state['shown']]
            image = read_rgb(demo.gallery.paths[index])
            what = f'Result #{state["shown"] + 1}'
        return demo.map_caption(layer, view, what), demo.model_map(image, layer, view)

    def run(image, identity, k, layer, view):
        ranked = demo.search(image, k, identity)
        state = dict(image=image, identity=identity, ranked=ranked.indices, shown=None)
        caption, drawn = shown(state, layer, view)
        return state, image, demo.summary(ranked, identity), demo.results(ranked), caption, drawn

    def failed(message, toast=True):
        if toast:
            gr.Warning(message)
        return None, None, f'**Could not use this query:** {message}', [], '', None

    def on_refused(size):  # the browser refused an over-size upload and showed Gradio's own toast for it
        try:
            size = float(size)
        except (TypeError, ValueError):
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        return failed(demo.size_refusal(size), toast=False)

    def on_upload(data, k, layer, view):
        try:
            return run(demo.decode_upload(data), None, k, layer, view)
        except UploadError as error:
            return failed(str(error))

    def on_example(k, layer, view, selected: gr.SelectData):
        try:
            image, identity = demo.example(int(selected.index))
            return run(image, identity, k, layer, view)
        except ValueError as error:  # UploadError, or an unreadable example file
            return failed(str(error))

    def on_k(state, k, layer, view):
        if not state:
            return gr.skip(), gr.skip()
        ranked = demo.search(state['image'], k, state['identity'])
        state['ranked'], state['shown'] = ranked.indices, None
        return demo.summary(ranked, state['identity']), demo.results(ranked)

    def on_result(state, layer, view, selected: gr.SelectData):
        if not state:
            return state, '', None
        state['shown'] = int(selected.index)
        return (state, *shown(state, layer, view))

    def on_query_click(state, layer, view):
        if state:
            state['shown'] = None
        return (state, *shown(state, layer, view))

    def on_map(state, layer, view):
        return shown(state, layer, view)

    with gr.Blocks(title=title, analytics_enabled=False) as app:
        gr.Markdown(f'## {title}\n**Model** `{demo.model_name}` · **gallery** {len(demo.gallery)} crops '
                    f'({"with" if demo.gallery.pids is not None else "without"} identities) · upload a person crop'
                    + (' or click one of the example queries.' if has_examples else '.'))
        state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1, min_width=240):
                upload = gr.UploadButton('Upload a person crop', type='binary', file_count='single',
                                         variant='primary', elem_id='upload')
                query = gr.Image(label='Query (click to map it again)', interactive=False, height=256,
                                 elem_id='query')
                k = gr.Slider(1, min(50, len(demo.gallery)), value=min(10, len(demo.gallery)), step=1,
                              label='results shown (k)', elem_id='k')
                examples = gr.Gallery(demo.examples() if has_examples else None, label='Example queries (click one)',
                                      columns=6, height=300, allow_preview=False, visible=has_examples,
                                      elem_id='examples')
            with gr.Column(scale=3):
                status = gr.Markdown(f'Upload a crop (JPEG, PNG, BMP or WebP, up to {demo.upload_limit_text()}) '
                                     'to search the gallery.', elem_id='status')
                results = gr.Gallery(label='Ranked gallery (click a result to map it)', columns=5, height=420,
                                     allow_preview=False, object_fit='contain', elem_id='results')
                with gr.Row():
                    layer = gr.Slider(0, max(last, 1), value=last, step=1, label='layer', elem_id='layer',
                                      visible=last > 0)  # a CNN's one attention: its pool
                    view = gr.Radio(list(demo.views()), value=demo.views()[0], label='view', elem_id='view',
                                    visible=len(demo.views()) > 1)
                map_caption = gr.Markdown(elem_id='map_caption')
                model_map = gr.Image(label='What the model looked at', interactive=False, format='png',
                                     elem_id='model_map')
        with gr.Accordion('Model card', open=False):
            gr.Markdown(demo.card or model_card_text(demo.model_name, demo.model), elem_id='card')
        # Gradio's client refuses an over-size upload before any event runs (its toast says so); this pair, in the DOM
        # but not shown, lets the page's own listener (WATCH_SIZES) carry the size to the status line as well
        refused_size = gr.Number(visible='hidden', elem_id='refused_size')
        refused = gr.Button(visible='hidden', elem_id='refused')

        outputs = [state, query, status, results, map_caption, model_map]
        # the last query's results go at once, in the browser (no round trip), while the new one is searched
        upload.upload(None, None, [results, model_map], js='() => [[], null]', api_name=False, queue=False).then(
            on_upload, [upload, k, layer, view], outputs, api_name='search')
        examples.select(on_example, [k, layer, view], outputs, api_name=False)
        k.change(on_k, [state, k, layer, view], [status, results], api_name=False, trigger_mode='always_last')
        results.select(on_result, [state, layer, view], [state, map_caption, model_map], api_name=False)
        query.select(on_query_click, [state, layer, view], [state, map_caption, model_map], api_name=False)
        layer.change(on_map, [state, layer, view], [map_caption, model_map], api_name=False,
                     trigger_mode='always_last')  # a drag: only its last value is drawn
        view.change(on_map, [state, layer, view], [map_caption, model_map], api_name=False)
        refused.click(on_refused, [refused_size], outputs, js='() => [window.__aaformer_refused]', api_name=False,
                      queue=False)
        app.load(None, js=WATCH_SIZES.replace('LIMIT', str(demo.max_upload_bytes)))
    return app


# on the document, before Gradio's own handler on the file input: the size of an upload over the limit, then a click
WATCH_SIZES = """() => {
  document.addEventListener('change', (event) => {
    const input = event.target;
    if (!(input instanceof HTMLInputElement) || input.type !== 'file') return;
    const over = [...input.files].find((file) => file.size > LIMIT);
    if (!over) return;
    window.__aaformer_refused = over.size;
    document.querySelector('#refused')?.click();
  }, true);
}"""


def launch(demo: ReIDDemo, host: str = '127.0.0.1', port: Optional[int] = None, share: bool = False,
           concurrency: int = 2, block: bool = True):
    """Serve the page: Gradio's queue runs at most ``concurrency`` queries at once (the rest wait their turn), uploads
    above the demo's ``max_upload_bytes`` are refused (by Gradio, in the browser and on the server, before they are
    read), and no public link is made unless ``share``. Returns the app (with ``block=False``, serving in the
    background: its ``local_url`` and ``close()``)."""
    app = build_app(demo)
    app.queue(default_concurrency_limit=concurrency, max_size=64)
    app.launch(server_name=host, server_port=port, share=share, max_file_size=demo.max_upload_bytes,
               prevent_thread_lock=not block, show_error=False, quiet=not block)  # no server details to visitors
    return app
