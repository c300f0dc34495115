from .aaformer import AAformer, AAformerTokens, ReIDHeadOutput, checkpoint_filter_fn
from .pivl import PiVLViT
from .pivl_resnet import PiVLResNet
