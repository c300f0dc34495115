"""transformers front door: configs, models, image processor, and their Auto-class registration."""
from .configuration_aaformer import AAformerConfig
from .configuration_pivl import PiVLConfig
from .image_processing_aaformer import AAformerImageProcessor, PiVLImageProcessor
from .modeling_aaformer import (
    AAformerForReID, AAformerModel, AAformerModelOutput, AAformerPreTrainedModel, AAformerReIDOutput,
)
from .modeling_pivl import PiVLForReID, PiVLModel, PiVLModelOutput, PiVLPreTrainedModel, PiVLReIDOutput
from .timm_backed import AutoModelForPersonReID, TimmBackedConfig, TimmBackedPreTrainedModel, register_family

register_family(AAformerConfig, AAformerModel, AAformerForReID, AAformerImageProcessor)
register_family(PiVLConfig, PiVLModel, PiVLForReID, PiVLImageProcessor)
