# Copyright 2026 The aaformer-hf Authors. Licensed under the Apache License, Version 2.0.
"""The model families, each declared once: its timm class (through its transformers classes), transformers classes,
image processor, paper and citation, what its model card says, the methods that train it and what its paper reports.
hf/ registers them with the Auto classes, the Hub and card code and the training example read them from here.

A new family: its timm model in ``models/``, its config and model classes in ``hf/``, and one entry here.
"""
from .configuration_aaformer import AAformerConfig
from .configuration_pivl import PiVLConfig
from .configuration_pivl_resnet import PiVLResNetConfig
from .image_processing_aaformer import AAformerImageProcessor
from .image_processing_pivl import PiVLImageProcessor
from .modeling_aaformer import AAformerForReID, AAformerModel
from .modeling_pivl import PiVLForReID, PiVLModel
from .modeling_pivl_resnet import PiVLResNetForReID, PiVLResNetModel
from .timm_backed import Family, register_family

__all__ = ['AAFORMER', 'PIVL', 'PIVL_RESNET']

AAFORMER = register_family(Family(
    config_class=AAformerConfig, model_class=AAformerModel, reid_class=AAformerForReID,
    image_processor_class=AAformerImageProcessor,
    name='AAformer', authors='Zhu et al.', venue='IEEE TNNLS 2023',
    summary='A ViT with learnable [PART] tokens. In every layer and head, patch keys are assigned to the [PART] '
            'queries by a few Sinkhorn-Knopp iterations and each [PART] attends only to its patches. The re-ID '
            'feature is the CLS token and the [PART] tokens concatenated.',
    citation='@article{zhu2023aaformer,\n  title={AAformer: Auto-Aligned Transformer for Person '
             'Re-Identification},\n  author={Zhu, Kuan and Guo, Haiyun and Zhang, Shiliang and Wang, Yaowei and '
             'Liu, Jing and Wang, Jinqiao and Tang, Ming},\n  journal={IEEE Transactions on Neural Networks and '
             'Learning Systems},\n  year={2023}\n}',
    base_model='timm/vit_base_patch16_224.orig_in21k_ft_in1k',
    training_methods=('aaformer',),
    reported={  # percent, (row label, metrics, where in the paper)
        'market1501': (('AAformer', {'rank1': 95.4, 'mAP': 88.0}, 'Table II'),),
        'dukemtmc': (('AAformer', {'rank1': 90.1, 'mAP': 80.9}, 'Table II'),),
        'cuhk03': (('AAformer, labeled', {'rank1': 80.3, 'mAP': 79.0}, 'Table II'),
                   ('AAformer, detected', {'rank1': 78.1, 'mAP': 77.2}, 'Table II')),
        'msmt17': (('AAformer', {'rank1': 84.4, 'mAP': 65.6}, 'Table II'),),
        'occluded_duke': (('AAformer', {'rank1': 67.1, 'rank5': 81.6, 'mAP': 58.2}, 'Table III'),),
    },
    planned_datasets=('market1501', 'msmt17', 'dukemtmc', 'cuhk03', 'occluded_duke'),
))

PIVL_CITATION = ('@article{lin2023pivl,\n  title={Exploring Part-Informed Visual-Language Learning for Person '
                 'Re-Identification},\n  author={Lin, Yin and Liu, Cong and Chen, Yehansen and Hu, Jinshui and Yin, '
                 'Bing and Yin, Baocai and Wang, Zengfu},\n  journal={arXiv preprint arXiv:2308.02738},\n  '
                 'year={2023}\n}')

PIVL = register_family(Family(
    config_class=PiVLConfig, model_class=PiVLModel, reid_class=PiVLForReID,
    image_processor_class=PiVLImageProcessor,
    name='π-VL', authors='Lin et al.', venue='2023',
    summary='A CLIP ViT-B/16 image encoder trained with CLIP-ReID\'s two stages plus π-VL\'s part-informed text '
            'prompts and hierarchical-fusion alignment (both used only in training). At inference it is a plain '
            'CLIP ViT: the re-ID feature is the CLS token and its CLIP projection concatenated.',
    citation=PIVL_CITATION,
    base_model='timm/vit_base_patch16_clip_224.openai',
    training_methods=('clipreid', 'pivl'),
    # Table 2, ViT-B/16 rows; the paper does not say whether CLIP-ReID's SIE / overlapping patches were on
    reported={
        'msmt17': (('π-VL (ViT-B/16)', {'rank1': 90.3, 'mAP': 76.5}, 'Table 2'),),
        'market1501': (('π-VL (ViT-B/16)', {'rank1': 96.2, 'mAP': 91.2}, 'Table 2'),),
        'dukemtmc': (('π-VL (ViT-B/16)', {'rank1': 92.1, 'mAP': 84.0}, 'Table 2'),),
        'occluded_duke': (('π-VL (ViT-B/16)', {'rank1': 68.3, 'mAP': 61.0}, 'Table 2'),),
    },
    planned_datasets=('msmt17', 'market1501'),
))

PIVL_RESNET = register_family(Family(
    config_class=PiVLResNetConfig, model_class=PiVLResNetModel, reid_class=PiVLResNetForReID,
    image_processor_class=PiVLImageProcessor,
    name='π-VL', authors='Lin et al.', venue='2023',
    summary='A CLIP ResNet-50 image encoder (last stride 1, attention pooling) trained with CLIP-ReID\'s two stages '
            'plus π-VL\'s part-informed text prompts and hierarchical-fusion alignment (both used only in training). '
            'At inference it is a plain CLIP ResNet: the re-ID feature is the pooled last map and the attention '
            'pool\'s CLIP projection concatenated.',
    citation=PIVL_CITATION,
    base_model='timm/resnet50_clip.openai',
    training_methods=('clipreid', 'pivl'),
    reported={  # Table 2, CNN rows
        'msmt17': (('π-VL (CNN)', {'rank1': 85.0, 'mAP': 63.8}, 'Table 2'),),
        'market1501': (('π-VL (CNN)', {'rank1': 96.1, 'mAP': 90.2}, 'Table 2'),),
        'dukemtmc': (('π-VL (CNN)', {'rank1': 91.2, 'mAP': 81.3}, 'Table 2'),),
        'occluded_duke': (('π-VL (CNN)', {'rank1': 61.8, 'mAP': 54.0}, 'Table 2'),),
    },
    planned_datasets=(),
))
