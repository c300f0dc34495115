"""Locate and import timm's and transformers' own generic test suites (from their PyPI source distributions).

``tools/fetch_upstream_tests.sh`` (run by ``tools/test.sh`` and CI) unpacks the sdists of the *installed* versions
into ``.upstream/``. ``TIMM_TESTS_DIR`` / ``TRANSFORMERS_TESTS_DIR`` override the locations.
"""
import importlib.util
import os
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def tests_dir(package: str, env_var: str) -> Path:
    module = importlib.import_module(package)
    default = ROOT / '.upstream' / f'{package}-{module.__version__}' / 'tests'
    path = Path(os.environ.get(env_var, default))
    if not path.is_dir():
        # not a silent skip: the suites are part of this project's contract, so their absence fails loudly
        pytest.fail(
            f'{package} {module.__version__} test suite not found at {path}; run tools/fetch_upstream_tests.sh '
            f'(or set {env_var})', pytrace=False)
    return path


def load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def import_timm_tests():
    return load_module('timm_upstream_test_models', tests_dir('timm', 'TIMM_TESTS_DIR') / 'test_models.py')


def import_transformers_tests():
    """Import transformers' tests/ as the package ``hf_upstream_tests``, stubbing the modules the sdist lacks."""
    path = tests_dir('transformers', 'TRANSFORMERS_TESTS_DIR')
    if 'hf_upstream_tests' not in sys.modules:
        init = path / '__init__.py'
        if not init.exists():
            init.touch()  # ConfigTester execs tests/__init__.py
        pkg = types.ModuleType('hf_upstream_tests')
        pkg.__path__ = [str(path)]
        sys.modules['hf_upstream_tests'] = pkg
        stubs = {
            'hf_upstream_tests.exporters': {},
            'hf_upstream_tests.exporters.test_export': {'ExportTesterMixin': type('ExportTesterMixin', (), {})},
            'hf_upstream_tests.generation': {},
            'hf_upstream_tests.generation.test_utils': {
                'GenerationTesterMixin': type('GenerationTesterMixin', (), {})},
            'hf_upstream_tests.utils': {},
            'hf_upstream_tests.utils.test_configuration_utils': {'config_common_kwargs': {
                'return_dict': False, 'output_hidden_states': True, 'torchscript': True, 'dtype': 'float16',
                'use_bfloat16': True, 'pruned_heads': {'a': 1}, 'tie_word_embeddings': False,
                'is_decoder': True, 'cross_attention_hidden_size': 128, 'add_cross_attention': True,
                'tie_encoder_decoder': True, 'chunk_size_feed_forward': 5, 'architectures': ['BertModel'],
                'finetuning_task': 'translation', 'id2label': {0: 'label'}, 'label2id': {'label': '0'},
                'tokenizer_class': 'BertTokenizerFast', 'prefix': 'prefix', 'bos_token_id': 6,
                'pad_token_id': 7, 'eos_token_id': 8, 'sep_token_id': 9, 'decoder_start_token_id': 10,
                'task_specific_params': {'translation': 'some_params'}, 'problem_type': 'regression'}},
        }
        for name, attrs in stubs.items():
            mod = sys.modules.setdefault(name, types.ModuleType(name))
            if not attrs:
                mod.__path__ = []
            for key, value in attrs.items():
                setattr(mod, key, value)
    common = importlib.import_module('hf_upstream_tests.test_modeling_common')
    config = importlib.import_module('hf_upstream_tests.test_configuration_common')
    return common, config
