"""timm's own generic model tests (tests/test_models.py of the installed timm's sdist) on every aaformer model."""
import inspect

import pytest
import timm

import aaformer_hf  # noqa: F401  registers the models
from .upstream import import_timm_tests

MODELS = timm.list_models('aaformer*')
TAGGED = timm.list_models('aaformer*', include_tags=True)


@pytest.fixture(scope='module')
def upstream():
    return import_timm_tests()


def _call(fn, **kwargs):
    """Pass only the arguments this timm version's test function takes (signatures move between releases)."""
    params = inspect.signature(fn).parameters
    return fn(**{k: v for k, v in kwargs.items() if k in params})


def test_registered():
    assert MODELS == ['aaformer_base', 'aaformer_small', 'aaformer_tiny']


@pytest.mark.parametrize('name', MODELS)
def test_forward(upstream, name):
    _call(upstream.test_model_forward, model_name=name, batch_size=1)


@pytest.mark.parametrize('name', MODELS)
def test_backward(upstream, name):
    _call(upstream.test_model_backward, model_name=name, batch_size=2)


@pytest.mark.parametrize('name', TAGGED)
def test_default_cfgs_non_std(upstream, name):
    _call(upstream.test_model_default_cfgs_non_std, model_name=name, batch_size=1, cfg_device='meta')


@pytest.mark.parametrize('name', MODELS)
def test_forward_intermediates(upstream, name):
    _call(upstream.test_model_forward_intermediates, model_name=name, batch_size=1)


@pytest.mark.parametrize('name', MODELS)
def test_forward_intermediates_features(upstream, name):
    _call(upstream.test_model_forward_intermediates_features, model_name=name, batch_size=1)
