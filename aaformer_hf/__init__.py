"""aaformer-hf: AAformer and π-VL (ViT and CNN) person re-ID models for timm and transformers.

Importing the package registers the timm models (``timm.create_model('aaformer_base')``) and the transformers Auto
classes (``AutoModel.from_pretrained(...)``, no ``trust_remote_code`` needed). It does so without importing timm or
transformers itself: registration happens now if they are already imported, else as soon as they are (``_lazy``), so
``from aaformer_hf.reid import evaluate`` costs only torch. The model classes below load on first access.
"""
import importlib

from . import _moved
from ._lazy import after_import, lazy_exports

__version__ = '0.1.0'

_EXPORTS = {  # public name -> the submodule that defines it
    'AAformerConfig': 'hf', 'AAformerForReID': 'hf', 'AAformerImageProcessor': 'hf', 'AAformerModel': 'hf',
    'AutoModelForPersonReID': 'hf', 'AAformer': 'models',
    'PiVLConfig': 'hf', 'PiVLModel': 'hf', 'PiVLForReID': 'hf', 'PiVLImageProcessor': 'hf', 'PiVLViT': 'models',
    'PiVLResNetConfig': 'hf', 'PiVLResNetModel': 'hf', 'PiVLResNetForReID': 'hf', 'PiVLResNet': 'models',
}
__all__ = sorted(_EXPORTS) + ['__version__']
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
_moved.install()  # old import paths (before the package was grouped by role) name the new ones

# importing aaformer_hf.models registers the timm entrypoints; aaformer_hf.hf the Auto classes
after_import('timm', lambda: importlib.import_module('.models', __name__))
after_import('transformers', lambda: importlib.import_module('.hf', __name__))
