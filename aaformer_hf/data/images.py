"""Reading person crops: the one path every loader and command takes (dataset checks, ``extract``, ``visualize``,
the ``datasets`` rows of a Hub split), so an image one of them refuses is refused by all.

A file is decoded completely (a truncated file fails here, not half-way through a job) and must be an 8-bit image:
PIL's conversion of 16- and 32-bit images (modes I;16*, I, F) to RGB clips instead of scaling, which turns a 16-bit
crop all white - embedded silently, it would match nothing. Errors name the file.
"""
from pathlib import Path
from typing import Optional, Union

from PIL import Image

__all__ = ['WIDE_MODES', 'read_rgb', 'as_rgb', 'image_problem', 'UnreadableImageError']

# PIL modes whose conversion to RGB clips rather than scales (Pillow before 11 opens a 16-bit PNG as mode I)
WIDE_MODES = {'I;16': '16-bit', 'I;16L': '16-bit', 'I;16B': '16-bit', 'I;16N': '16-bit', 'I': '16/32-bit integer',
              'F': '32-bit float'}


class UnreadableImageError(ValueError):
    """An image that cannot be read as an 8-bit RGB crop; the message names it and says why."""


def _wide_mode_reason(image: Image.Image) -> Optional[str]:
    if image.mode not in WIDE_MODES:
        return None
    return (f'{image.mode} image ({WIDE_MODES[image.mode]}): convert it to 8-bit first, e.g. '
            'Image.fromarray((numpy.asarray(image) >> 8).astype(numpy.uint8))')


def as_rgb(image: Image.Image, name: Union[str, Path]) -> Image.Image:
    """``image`` (already decoded, e.g. a ``datasets`` row's) as RGB; a 16/32-bit one is refused, naming ``name``."""
    reason = _wide_mode_reason(image)
    if reason is not None:
        raise UnreadableImageError(f'{name}: {reason}')
    return image if image.mode == 'RGB' else image.convert('RGB')  # PIL's convert copies even an RGB image


def read_rgb(path: Union[str, Path]) -> Image.Image:
    """The image file at ``path``, fully decoded, as RGB."""
    try:
        with Image.open(path) as image:
            image.load()  # full decode: catches truncated files, which Image.verify() lets through
            return as_rgb(image, path)
    except UnreadableImageError:
        raise
    except Exception as error:  # PIL raises many types (OSError, SyntaxError, DecompressionBombError, ...)
        raise UnreadableImageError(f'{path}: unreadable image ({type(error).__name__}: {error})') from error


def image_problem(path: Union[str, Path]) -> Optional[str]:
    """None if ``path`` reads as ``read_rgb`` reads it, else the reason (the check, without the RGB conversion)."""
    try:
        with Image.open(path) as image:
            image.load()
            return _wide_mode_reason(image)
    except Exception as error:
        return f'unreadable image ({type(error).__name__}: {error})'
