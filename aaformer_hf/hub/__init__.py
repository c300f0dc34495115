"""Distribution: what a saved model folder holds (``folders``), its model card (``cards``, ``templates/``) and the
push to the Hub that both timm and transformers load from (``push``)."""
from .._lazy import lazy_exports

_EXPORTS = {'push_to_hub': 'push', 'prepare_folder': 'push', 'push_model_folder': 'push',
            'check_push_supported': 'push', 'check_folder_loads': 'push',
            'card_for_folder': 'cards', 'model_card': 'cards', 'write_card': 'cards',
            'folder_config': 'folders', 'read_json': 'folders', 'check_folder_preprocessing': 'folders'}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
