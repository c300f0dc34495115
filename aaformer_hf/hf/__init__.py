"""transformers front door: configs, models, image processor, and their Auto-class registration."""
from .configuration_aaformer import AAformerConfig
from .image_processing_aaformer import AAformerImageProcessor
from .modeling_aaformer import (
    AAformerForReID, AAformerModel, AAformerModelOutput, AAformerPreTrainedModel, AAformerReIDOutput,
)
from .timm_backed import AutoModelForPersonReID, TimmBackedConfig, TimmBackedPreTrainedModel, register_family

register_family(AAformerConfig, AAformerModel, AAformerForReID, AAformerImageProcessor)
