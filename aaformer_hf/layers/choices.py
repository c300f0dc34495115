"""Settings that take one of a few names: the names are the ``Literal`` types the signatures declare, and one check
reads them, so the layer, the timm model and the transformers config cannot drift apart."""
from typing import Any, get_args

__all__ = ['check_choice']


def check_choice(name: str, value: Any, choices: Any) -> None:
    """Raise ``ValueError`` naming ``name`` and the allowed values unless ``value`` is one of the ``Literal``
    ``choices``."""
    allowed = get_args(choices)
    if value not in allowed:
        raise ValueError(f'{name} must be one of {allowed}, got {value!r}')
