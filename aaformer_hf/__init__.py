"""aaformer-hf: AAformer (and later π-VL) person re-ID models for timm and transformers.

Importing the package registers the timm models (``timm.create_model('aaformer_base')``) and the transformers Auto
classes (``AutoModel.from_pretrained(...)``, no ``trust_remote_code`` needed).
"""
from .hf import (
    AAformerConfig, AAformerForReID, AAformerImageProcessor, AAformerModel, AutoModelForPersonReID,
)
from .models import AAformer

__version__ = '0.1.0'
