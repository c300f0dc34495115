"""transformers front door: configs, models, image processors, and the families' registration (``families.py``)."""
from .configuration_aaformer import AAformerConfig
from .configuration_pivl import PiVLConfig
from .configuration_pivl_resnet import PiVLResNetConfig
from .families import AAFORMER, PIVL, PIVL_RESNET
from .image_processing_aaformer import AAformerImageProcessor
from .image_processing_pivl import PiVLImageProcessor
from .modeling_aaformer import (
    AAformerForReID, AAformerModel, AAformerModelOutput, AAformerPreTrainedModel, AAformerReIDOutput,
)
from .modeling_pivl import PiVLForReID, PiVLModel, PiVLModelOutput, PiVLPreTrainedModel, PiVLReIDOutput
from .modeling_pivl_resnet import (
    PiVLResNetForReID, PiVLResNetModel, PiVLResNetModelOutput, PiVLResNetPreTrainedModel, PiVLResNetReIDOutput,
)
from .timm_backed import (
    FAMILIES, AutoModelForPersonReID, Family, TimmBackedConfig, TimmBackedPreTrainedModel, register_family,
)

__all__ = [
    'AAFORMER', 'PIVL', 'PIVL_RESNET', 'FAMILIES', 'Family', 'register_family', 'AutoModelForPersonReID', 'TimmBackedConfig',
    'TimmBackedPreTrainedModel', 'AAformerConfig', 'AAformerImageProcessor', 'AAformerModel', 'AAformerForReID',
    'AAformerPreTrainedModel', 'AAformerModelOutput', 'AAformerReIDOutput', 'PiVLConfig', 'PiVLImageProcessor',
    'PiVLModel', 'PiVLForReID', 'PiVLPreTrainedModel', 'PiVLModelOutput', 'PiVLReIDOutput', 'PiVLResNetConfig',
    'PiVLResNetModel', 'PiVLResNetForReID', 'PiVLResNetPreTrainedModel', 'PiVLResNetModelOutput',
    'PiVLResNetReIDOutput',
]
