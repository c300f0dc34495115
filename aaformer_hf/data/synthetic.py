"""A SYNTHETIC re-ID dataset in the exact Market-1501 layout, for demos and tests (real re-ID data cannot ship).

Every identity is a set of part-level cues — hair colour, upper-body colour and pattern, trouser colour, shoe colour,
an optional bag on one side — so identity lives in body parts, as AAformer assumes. Each image adds nuisances:
a per-camera colour cast and brightness, detector misalignment (scale and offset), background clutter and,
optionally, an occluding box; severity options (stronger misalignment, occluders from any side, back and side
views; the 'misaligned' preset) make a set where fixed horizontal stripes stop matching body parts. The test split
has junk files (pid -1) and distractors (pid 0) like the real gallery.
With ``parsing=True`` it also writes LIP-label parsing maps (20 classes, SCHP's label order) to
``<root>/parsing/<split>/<stem>.png``; with ``captions=True`` a caption per image describing its identity's parts in
words (``<root>/captions.json``: image path relative to root -> caption), the text a tiny CLIP learns from.

    python -m aaformer_hf.data.synthetic --root data/synthetic_market --train_ids 40 --test_ids 30

Everything it writes is synthetic: no real person is depicted.
"""
import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
from PIL import Image, ImageDraw

__all__ = ['LIP_LABELS', 'COLOUR_NAMES', 'CAPTIONS_FILE', 'PRESETS', 'colour_name', 'caption', 'generate_market_layout']

# SCHP's LIP label order
LIP_LABELS = ('Background', 'Hat', 'Hair', 'Glove', 'Sunglasses', 'Upper-clothes', 'Dress', 'Coat', 'Socks', 'Pants',
              'Jumpsuits', 'Scarf', 'Skirt', 'Face', 'Left-arm', 'Right-arm', 'Left-leg', 'Right-leg', 'Left-shoe',
              'Right-shoe')
_LABEL = {name: i for i, name in enumerate(LIP_LABELS)}
WIDTH, HEIGHT = 64, 128
Colour = Tuple[int, int, int]
CAPTIONS_FILE = 'captions.json'
# colour words for captions: a generated colour is named by the nearest of these (in RGB)
COLOUR_NAMES = {
    'black': (20, 20, 20), 'white': (235, 235, 235), 'grey': (128, 128, 128), 'red': (200, 30, 30),
    'orange': (240, 140, 20), 'yellow': (230, 220, 40), 'green': (40, 170, 50), 'teal': (20, 140, 140),
    'blue': (30, 60, 200), 'purple': (130, 40, 170), 'pink': (240, 130, 190), 'brown': (120, 70, 30),
    'navy': (20, 25, 90), 'olive': (110, 120, 30), 'maroon': (110, 20, 40), 'cyan': (60, 220, 230),
}
_PATTERN_WORDS = {'solid': 'plain', 'stripes': 'striped', 'checks': 'checked'}


@dataclass(frozen=True)
class _Identity:
    hair: Colour
    upper: Colour
    upper_pattern: str  # 'solid', 'stripes' or 'checks'
    pattern_colour: Colour
    pants: Colour
    shoes: Colour
    bag: Optional[str]  # None, 'left' or 'right'
    bag_colour: Colour


def _colour(rng) -> Colour:
    return tuple(int(c) for c in rng.integers(0, 256, 3))


def _identity(rng) -> _Identity:
    return _Identity(
        hair=_colour(rng), upper=_colour(rng), upper_pattern=str(rng.choice(['solid', 'stripes', 'checks'])),
        pattern_colour=_colour(rng), pants=_colour(rng), shoes=_colour(rng),
        bag=[None, 'left', 'right'][int(rng.integers(0, 3))], bag_colour=_colour(rng))


def colour_name(colour: Colour) -> str:
    """The name of the nearest ``COLOUR_NAMES`` entry."""
    return min(COLOUR_NAMES, key=lambda name: sum((a - b) ** 2 for a, b in zip(colour, COLOUR_NAMES[name])))


def caption(person: _Identity) -> str:
    """A description of an identity's parts in words, e.g. "a person with black hair, a red striped top with white
    stripes, blue trousers and grey shoes, carrying a green bag on the left." """
    top = f'a {colour_name(person.upper)} {_PATTERN_WORDS[person.upper_pattern]} top'
    if person.upper_pattern != 'solid':
        top += f' with {colour_name(person.pattern_colour)} {person.upper_pattern}'
    text = (f'a person with {colour_name(person.hair)} hair, {top}, {colour_name(person.pants)} trousers and '
            f'{colour_name(person.shoes)} shoes')
    if person.bag:
        text += f', carrying a {colour_name(person.bag_colour)} bag on the {person.bag}'
    return text + '.'


@dataclass(frozen=True)
class _Nuisance:
    """How hard the images are. All zero / 'bottom' is the original generator, where every body part sits at a
    fixed height within ±5 % (fixed stripes are then the ideal partition): the control."""
    misalignment: float = 0.0  # 0..1: detector error from ±5 % vertical shift, scale 0.85-1.1 up to ±25 %, 0.7-1.0
    occluder: str = 'bottom'  # 'bottom': a grey box over the lower 30-60 %; 'any': an object from any side
    occluder_max: float = 0.3  # 'any': the largest share of the person's box an occluder covers
    view_mix: float = 0.0  # share of images seen from the back (no face, sides mirrored) or the side (narrower)


def _occluder_box(rng, max_share: float) -> Tuple[float, float, float, float]:
    """A box in person-relative coordinates covering ``max_share`` / 3 .. ``max_share`` of the person's box, entering
    from a random side (an object or another person in front, as in Occluded-Duke)."""
    share = rng.uniform(max_share / 3, max_share)
    side = int(rng.integers(4))  # top, bottom, left, right
    if side < 2:  # a full-width band of height `share`
        top = 0.0 if side == 0 else 1.0 - share
        return 0.0, top, 1.0, top + share
    width = min(1.0, share / rng.uniform(0.5, 1.0))  # part of the height, wide enough for the area
    height = share / width
    top = rng.uniform(0, 1 - height)
    left = 0.0 if side == 2 else 1.0 - width
    return left, top, left + width, top + height


def _render(person: _Identity, camera: int, rng, occlude: bool, nuisance: _Nuisance = _Nuisance()):
    """One image and its parsing map, both HEIGHT x WIDTH."""
    image = Image.fromarray(rng.integers(70, 150, (HEIGHT, WIDTH, 3), dtype=np.uint8))  # background
    parsing = Image.new('L', (WIDTH, HEIGHT), 0)
    draw, label = ImageDraw.Draw(image), ImageDraw.Draw(parsing)
    for _ in range(3):  # clutter
        x, y = rng.integers(0, WIDTH), rng.integers(0, HEIGHT)
        draw.rectangle([x, y, x + rng.integers(4, 16), y + rng.integers(4, 16)], fill=_colour(rng))
    m = nuisance.misalignment  # the same draws at every severity: severity 0 reproduces the original images
    scale = rng.uniform(0.85 - 0.15 * m, 1.1 - 0.1 * m)
    dx, dy = rng.uniform(-0.08, 0.08) * WIDTH, rng.uniform(-0.05 - 0.2 * m, 0.05 + 0.2 * m) * HEIGHT
    # extra draws only when asked for, so the control's random stream is untouched
    view = 'front' if nuisance.view_mix <= 0 or rng.random() >= nuisance.view_mix else str(rng.choice(['back', 'side']))

    def box(x0, y0, x1, y1):  # person-relative coordinates in [0, 1] -> pixels, with the detector's misalignment
        cx, cy = WIDTH / 2 + dx, HEIGHT / 2 + dy
        return [cx + (x0 - .5) * WIDTH * scale, cy + (y0 - .5) * HEIGHT * scale,
                cx + (x1 - .5) * WIDTH * scale, cy + (y1 - .5) * HEIGHT * scale]

    def part(coords, fill, name, shape='rectangle'):
        getattr(draw, shape)(box(*coords), fill=fill)
        getattr(label, shape)(box(*coords), fill=_LABEL[name])

    # the image's left/right: from the front the person's right side is on the image's left, from the back the
    # other way round; a side view shows one arm and one leg in front of the other, on a narrower body
    left, right = ('Left', 'Right') if view != 'back' else ('Right', 'Left')
    part((.38, .03, .62, .10 if view != 'back' else .17), person.hair, 'Hair', 'ellipse')
    if view != 'back':
        part((.39, .07, .61, .17), (224, 172, 105), 'Face', 'ellipse')
    x0, x1 = (.28, .72) if view != 'side' else (.36, .64)
    part((x0, .18, x1, .52), person.upper, 'Upper-clothes')
    if person.upper_pattern != 'solid':
        for i in range(4):  # stripes, or a checker of squares
            y0 = .20 + i * .08
            xs = [(x0, x1)] if person.upper_pattern == 'stripes' else \
                [(x0 + j * .11, x0 + .05 + j * .11) for j in (0, 2)]
            for a, b in xs:
                draw.rectangle(box(a, y0, b, y0 + .03), fill=person.pattern_colour)
    if view == 'side':
        part((.44, .20, .56, .48), (224, 172, 105), 'Left-arm')
        part((.40, .52, .60, .92), person.pants, 'Left-leg')
        part((.40, .92, .64, .97), person.shoes, 'Left-shoe')
    else:
        part((.18, .20, .28, .48), (224, 172, 105), f'{left}-arm')
        part((.72, .20, .82, .48), (224, 172, 105), f'{right}-arm')
        part((.32, .52, .48, .92), person.pants, f'{left}-leg')
        part((.52, .52, .68, .92), person.pants, f'{right}-leg')
        part((.30, .92, .48, .97), person.shoes, f'{left}-shoe')
        part((.52, .92, .70, .97), person.shoes, f'{right}-shoe')
    if person.bag and view != 'side':
        on_right = (person.bag == 'right') == (view == 'front')
        x0 = .70 if on_right else .12
        draw.rectangle(box(x0, .30, x0 + .18, .50), fill=person.bag_colour)  # not a LIP class: background
        label.rectangle(box(x0, .30, x0 + .18, .50), fill=0)
    if occlude and nuisance.occluder == 'bottom':
        top = rng.uniform(.4, .7)
        draw.rectangle(box(-.1, top, 1.1, 1.1), fill=(90, 90, 90))
        label.rectangle(box(-.1, top, 1.1, 1.1), fill=0)
    elif occlude:
        corners = _occluder_box(rng, nuisance.occluder_max)
        draw.rectangle(box(*corners), fill=_colour(rng))
        label.rectangle(box(*corners), fill=0)
    # camera: colour cast and brightness
    cast = np.random.default_rng(1000 + camera).uniform(0.75, 1.2, 3)
    pixels = np.clip(np.asarray(image, dtype=np.float32) * cast * rng.uniform(0.85, 1.15), 0, 255)
    return Image.fromarray(pixels.astype(np.uint8)), parsing


# named difficulty settings (generate_market_layout's arguments); 'aligned' is the original generator, the control
PRESETS = {
    'aligned': dict(misalignment=0.0, occlusion=0.0, occluder='bottom', occluder_max=0.3, view_mix=0.0),
    # where adaptive parts should beat fixed stripes (AAformer's claim): detector misalignment up to ±25 % vertical
    # shift and 0.7-1.0 scale, an occluder over up to 30 % of the person in 30 % of the images, half the images
    # from the back or the side
    'misaligned': dict(misalignment=1.0, occlusion=0.3, occluder='any', occluder_max=0.3, view_mix=0.5),
}


def generate_market_layout(
        root, train_ids: int = 40, test_ids: int = 30, images_per_id: int = 6, num_cameras: int = 6,
        distractors: int = 10, junk: int = 5, occlusion: float = 0.0, parsing: bool = False, captions: bool = True,
        seed: int = 0, misalignment: float = 0.0, occluder: str = 'bottom', occluder_max: float = 0.3,
        view_mix: float = 0.0, preset: Optional[str] = None) -> Path:
    """Write a synthetic dataset in the Market-1501 layout under ``root`` and return ``root``.

    Train identities are 1..train_ids, test identities follow; each test identity gets one query image and the rest
    in the gallery, from other cameras than the query where possible. ``occlusion`` is the share of images with an
    occluding box: ``occluder`` 'bottom' (a grey box over the lower 30-60 % of the person) or 'any' (an object from
    a random side over ``occluder_max`` / 3 .. ``occluder_max`` of the person's box). ``misalignment`` (0..1) widens
    the detector error from ±5 % vertical shift and scale 0.85-1.1 to ±25 % and 0.7-1.0; ``view_mix`` is the share
    of images seen from the back or the side. ``preset`` ('aligned' | 'misaligned', ``PRESETS``) sets those four
    (do not pass them too). File names follow Market's ``PPPP_cCsS_FFFFFF_BB.jpg``.
    """
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f'preset must be one of {sorted(PRESETS)}, got {preset!r}')
        given = dict(misalignment=misalignment, occlusion=occlusion, occluder=occluder, occluder_max=occluder_max,
                     view_mix=view_mix)
        defaults = PRESETS['aligned']  # the signature's defaults
        clash = sorted(k for k in PRESETS[preset] if given[k] != defaults[k] and given[k] != PRESETS[preset][k])
        if clash:
            raise ValueError(f'preset {preset!r} sets {clash}; do not also pass them')
        given.update(PRESETS[preset])
        misalignment, occlusion, occluder = given['misalignment'], given['occlusion'], given['occluder']
        occluder_max, view_mix = given['occluder_max'], given['view_mix']
    valid = 0 <= misalignment <= 1 and 0 <= view_mix <= 1 and 0 < occluder_max <= 1
    if not valid or occluder not in ('bottom', 'any'):
        raise ValueError(f'need misalignment and view_mix in [0, 1] (got {misalignment}, {view_mix}), occluder_max '
                         f"in (0, 1] (got {occluder_max}), occluder 'bottom' or 'any' (got {occluder!r})")
    nuisance = _Nuisance(misalignment, occluder, occluder_max, view_mix)
    if images_per_id < 2 or num_cameras < 2:
        raise ValueError('images_per_id and num_cameras must be >= 2 (queries need a gallery match on another camera)')
    if train_ids < 1 or test_ids < 1 or distractors < 0 or junk < 0 or not 0 <= occlusion <= 1:
        raise ValueError(f'need train_ids >= 1 and test_ids >= 1 (got {train_ids}, {test_ids}), distractors and junk '
                         f'>= 0 (got {distractors}, {junk}), occlusion in [0, 1] (got {occlusion})')
    if train_ids + test_ids > 9999:  # Market file names have 4 identity digits
        raise ValueError(f'train_ids + test_ids must be <= 9999, got {train_ids + test_ids}')
    root = Path(root)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        # writing into another dataset would merge the two (and leak training identities into the test set)
        raise FileExistsError(f'{root}: exists and is not an empty folder; choose a new root')
    rng = np.random.default_rng(seed)
    frame = 0
    texts = {}

    def save(split: str, pid: int, camera: int, person: Optional[_Identity]) -> None:
        nonlocal frame
        frame += 1
        if person is None:  # junk / distractor: a random identity nobody else has
            person = _identity(rng)
        image, parse = _render(person, camera, rng, occlude=rng.random() < occlusion, nuisance=nuisance)
        stem = f'{pid:04d}_c{camera + 1}s1_{frame:06d}_00' if pid >= 0 else f'-1_c{camera + 1}s1_{frame:06d}_00'
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f'{stem}.jpg', quality=95)
        texts[f'{split}/{stem}.jpg'] = caption(person)
        if parsing:
            (root / 'parsing' / split).mkdir(parents=True, exist_ok=True)
            parse.save(root / 'parsing' / split / f'{stem}.png')

    for pid in range(1, train_ids + 1):
        person = _identity(rng)
        for _ in range(images_per_id):
            save('bounding_box_train', pid, int(rng.integers(num_cameras)), person)
    for pid in range(train_ids + 1, train_ids + test_ids + 1):
        person = _identity(rng)
        query_camera = int(rng.integers(num_cameras))
        save('query', pid, query_camera, person)
        for i in range(images_per_id - 1):
            others = [c for c in range(num_cameras) if c != query_camera]
            camera = others[int(rng.integers(len(others)))] if i == 0 else int(rng.integers(num_cameras))
            save('bounding_box_test', pid, camera, person)
    for _ in range(distractors):
        save('bounding_box_test', 0, int(rng.integers(num_cameras)), None)
    for _ in range(junk):
        save('bounding_box_test', -1, int(rng.integers(num_cameras)), None)
    if captions:
        (root / CAPTIONS_FILE).write_text(json.dumps(texts, indent=0))
    (root / 'README.txt').write_text(
        'SYNTHETIC re-ID data generated by aaformer_hf.data.synthetic (Market-1501 layout). No real person appears.\n')
    return root


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--root', required=True, type=Path)
    parser.add_argument('--train_ids', type=int, default=40)
    parser.add_argument('--test_ids', type=int, default=30)
    parser.add_argument('--images_per_id', type=int, default=6)
    parser.add_argument('--num_cameras', type=int, default=6)
    parser.add_argument('--occlusion', type=float, default=0.0)
    parser.add_argument('--occluder', choices=('bottom', 'any'), default='bottom')
    parser.add_argument('--occluder_max', type=float, default=0.3)
    parser.add_argument('--misalignment', type=float, default=0.0)
    parser.add_argument('--view_mix', type=float, default=0.0)
    parser.add_argument('--preset', choices=sorted(PRESETS), help='named settings of the four above')
    parser.add_argument('--parsing', action='store_true', help='also write LIP-label parsing maps')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    try:
        root = generate_market_layout(
            args.root, args.train_ids, args.test_ids, args.images_per_id, args.num_cameras,
            occlusion=args.occlusion, parsing=args.parsing, seed=args.seed, misalignment=args.misalignment,
            occluder=args.occluder, occluder_max=args.occluder_max, view_mix=args.view_mix, preset=args.preset)
    except (ValueError, FileExistsError) as error:
        parser.error(str(error))
    print(f'wrote a SYNTHETIC Market-1501-layout dataset to {root}')


if __name__ == '__main__':
    main()
