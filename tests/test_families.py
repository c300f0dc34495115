"""The family registry (``aaformer_hf.hf.families``): each family declared once, and every reader finds it there."""
import sys
from pathlib import Path

import pytest
import timm
from transformers import AutoConfig, AutoModel

import aaformer_hf  # noqa: F401  (registers the families)
from aaformer_hf.hf import AAFORMER, FAMILIES, PIVL, PIVL_RESNET, AutoModelForPersonReID
from aaformer_hf.hf.timm_backed import family_of_timm_model, wrap_timm_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'examples'))


TINY = {'aaformer': dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64),
        'pivl_resnet': dict(depths=(1, 1, 1, 1), hidden_sizes=(16, 32, 64, 128), stem_sizes=(8, 8, 16),
                            projection_dim=32)}
TINY['pivl'] = TINY['aaformer']


def test_every_family_is_registered_under_its_model_type():
    assert FAMILIES == {'aaformer': AAFORMER, 'pivl': PIVL, 'pivl_resnet': PIVL_RESNET}


@pytest.mark.parametrize('family', [AAFORMER, PIVL, PIVL_RESNET], ids=lambda f: f.model_type)
def test_every_library_door_leads_to_the_declared_classes(family):
    config = family.config_class(**TINY[family.model_type])
    assert type(AutoConfig.for_model(family.model_type)) is family.config_class
    assert type(AutoModel.from_config(config)) is family.model_class
    assert type(AutoModelForPersonReID.from_config(config)) is family.reid_class
    timm_model = timm.create_model(config.timm_architecture, **config.timm_kwargs())
    assert type(timm_model) is family.timm_class
    assert family_of_timm_model(timm_model) is family
    assert type(wrap_timm_model(timm_model)) is family.model_class


def test_paper_facts_come_from_the_timm_registry():
    """Title and arXiv id are written once, in timm's pretrained cfg; the card text is built from them."""
    assert AAFORMER.paper == ('Zhu et al., "AAformer: Auto-Aligned Transformer for Person Re-Identification", '
                              'IEEE TNNLS 2023')
    assert AAFORMER.arxiv == '2104.00921' and PIVL.arxiv == PIVL_RESNET.arxiv == '2308.02738'
    assert 'Part-Informed Visual-Language' in PIVL.paper and PIVL.arxiv in PIVL.citation


def test_the_trainer_takes_every_method_a_family_declares():
    from train_config import METHODS

    declared = {method for family in FAMILIES.values() for method in family.training_methods}
    assert declared == set(METHODS) == {'aaformer', 'clipreid', 'pivl'}
