"""A SYNTHETIC re-ID dataset in the exact Market-1501 layout, for demos and tests (real re-ID data cannot ship).

Every identity is a set of part-level cues — hair colour, upper-body colour and pattern, trouser colour, shoe colour,
an optional bag on one side — so identity lives in body parts, as AAformer assumes. Each image adds nuisances:
a per-camera colour cast and brightness, detector misalignment (scale and offset), background clutter and,
optionally, an occluding box. The test split has junk files (pid -1) and distractors (pid 0) like the real gallery.
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

__all__ = ['LIP_LABELS', 'COLOUR_NAMES', 'CAPTIONS_FILE', 'colour_name', 'caption', 'generate_market_layout']

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


def _render(person: _Identity, camera: int, rng, occlude: bool):
    """One image and its parsing map, both HEIGHT x WIDTH."""
    image = Image.fromarray(rng.integers(70, 150, (HEIGHT, WIDTH, 3), dtype=np.uint8))  # background
    parsing = Image.new('L', (WIDTH, HEIGHT), 0)
    draw, label = ImageDraw.Draw(image), ImageDraw.Draw(parsing)
    for _ in range(3):  # clutter
        x, y = rng.integers(0, WIDTH), rng.integers(0, HEIGHT)
        draw.rectangle([x, y, x + rng.integers(4, 16), y + rng.integers(4, 16)], fill=_colour(rng))
    scale, dx, dy = rng.uniform(0.85, 1.1), rng.uniform(-0.08, 0.08) * WIDTH, rng.uniform(-0.05, 0.05) * HEIGHT

    def box(x0, y0, x1, y1):  # person-relative coordinates in [0, 1] -> pixels, with the detector's misalignment
        cx, cy = WIDTH / 2 + dx, HEIGHT / 2 + dy
        return [cx + (x0 - .5) * WIDTH * scale, cy + (y0 - .5) * HEIGHT * scale,
                cx + (x1 - .5) * WIDTH * scale, cy + (y1 - .5) * HEIGHT * scale]

    def part(coords, fill, name, shape='rectangle'):
        getattr(draw, shape)(box(*coords), fill=fill)
        getattr(label, shape)(box(*coords), fill=_LABEL[name])

    part((.38, .03, .62, .10), person.hair, 'Hair', 'ellipse')
    part((.39, .07, .61, .17), (224, 172, 105), 'Face', 'ellipse')
    part((.28, .18, .72, .52), person.upper, 'Upper-clothes')
    if person.upper_pattern != 'solid':
        for i in range(4):  # stripes, or a checker of squares
            y0 = .20 + i * .08
            xs = [(.28, .72)] if person.upper_pattern == 'stripes' else [(.28 + j * .11, .33 + j * .11) for j in (0, 2)]
            for x0, x1 in xs:
                draw.rectangle(box(x0, y0, x1, y0 + .03), fill=person.pattern_colour)
    part((.18, .20, .28, .48), (224, 172, 105), 'Left-arm')
    part((.72, .20, .82, .48), (224, 172, 105), 'Right-arm')
    part((.32, .52, .48, .92), person.pants, 'Left-leg')
    part((.52, .52, .68, .92), person.pants, 'Right-leg')
    part((.30, .92, .48, .97), person.shoes, 'Left-shoe')
    part((.52, .92, .70, .97), person.shoes, 'Right-shoe')
    if person.bag:
        x0 = .70 if person.bag == 'right' else .12
        draw.rectangle(box(x0, .30, x0 + .18, .50), fill=person.bag_colour)  # not a LIP class: background
        label.rectangle(box(x0, .30, x0 + .18, .50), fill=0)
    if occlude:
        top = rng.uniform(.4, .7)
        draw.rectangle(box(-.1, top, 1.1, 1.1), fill=(90, 90, 90))
        label.rectangle(box(-.1, top, 1.1, 1.1), fill=0)
    # camera: colour cast and brightness
    cast = np.random.default_rng(1000 + camera).uniform(0.75, 1.2, 3)
    pixels = np.clip(np.asarray(image, dtype=np.float32) * cast * rng.uniform(0.85, 1.15), 0, 255)
    return Image.fromarray(pixels.astype(np.uint8)), parsing


def generate_market_layout(
        root, train_ids: int = 40, test_ids: int = 30, images_per_id: int = 6, num_cameras: int = 6,
        distractors: int = 10, junk: int = 5, occlusion: float = 0.0, parsing: bool = False, captions: bool = True,
        seed: int = 0) -> Path:
    """Write a synthetic dataset in the Market-1501 layout under ``root`` and return ``root``.

    Train identities are 1..train_ids, test identities follow; each test identity gets one query image and the rest
    in the gallery, from other cameras than the query where possible. ``occlusion`` is the share of images with an
    occluding box. File names follow Market's ``PPPP_cCsS_FFFFFF_BB.jpg``.
    """
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
        image, parse = _render(person, camera, rng, occlude=rng.random() < occlusion)
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
    parser.add_argument('--parsing', action='store_true', help='also write LIP-label parsing maps')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    try:
        root = generate_market_layout(
            args.root, args.train_ids, args.test_ids, args.images_per_id, args.num_cameras,
            occlusion=args.occlusion, parsing=args.parsing, seed=args.seed)
    except (ValueError, FileExistsError) as error:
        parser.error(str(error))
    print(f'wrote a SYNTHETIC Market-1501-layout dataset to {root}')


if __name__ == '__main__':
    main()
