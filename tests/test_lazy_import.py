"""Start-up: the evaluation, data and losses modules import without timm, torchvision, transformers or datasets;
the models are registered with timm and the Auto classes whichever is imported first, aaformer_hf or the library."""
import subprocess
import sys

import pytest

HEAVY = ('transformers', 'timm', 'torchvision', 'datasets', 'accelerate')


def run(code: str) -> str:
    done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.parametrize('statement', [
    'import aaformer_hf',
    'from aaformer_hf.reid.evaluation import evaluate, re_rank',
    'from aaformer_hf.data import PKSampler',
    'from aaformer_hf.reid.losses import identity_loss',
    'import aaformer_hf.data.synthetic',
])
def test_light_modules_import_no_heavy_library(statement):
    out = run(f'{statement}\nimport sys\nprint(sorted(m for m in {HEAVY!r} if m in sys.modules))')
    assert out.strip() == '[]'


REGISTERED = '''
import timm, torch
from transformers import AutoConfig, AutoModel
assert timm.list_models('aaformer*') == ['aaformer_base', 'aaformer_base_cls_embedding', 'aaformer_small',
                                         'aaformer_tiny']
config = AutoConfig.for_model('aaformer', num_hidden_layers=1, hidden_size=32, num_attention_heads=2,
                              intermediate_size=64)
model = AutoModel.from_config(config)
print(type(config).__name__, type(model).__name__, timm.create_model('aaformer_tiny').num_parts)
'''


@pytest.mark.parametrize('first', [
    'import aaformer_hf',                                    # the libraries come later
    'import timm\nimport aaformer_hf',                       # timm already there, transformers later
    'import transformers\nimport aaformer_hf',               # transformers already there, timm later
    'import timm, transformers\nimport aaformer_hf',         # both already there
    'import aaformer_hf\nfrom transformers import AutoConfig',  # transformers first through its lazy Auto names
])
def test_registration_whatever_the_import_order(first):
    assert run(first + '\n' + REGISTERED).split() == ['AAformerConfig', 'AAformerModel', '5']


def test_public_names_load_on_first_access():
    out = run('import aaformer_hf, sys\nprint("transformers" in sys.modules)\n'
              'print(aaformer_hf.AAformerConfig.__name__, "transformers" in sys.modules)\n'
              'print(sorted(n for n in dir(aaformer_hf) if n.startswith("AA")))')
    assert out.split('\n')[:3] == ['False', 'AAformerConfig True',
                                   "['AAformer', 'AAformerConfig', 'AAformerForReID', 'AAformerImageProcessor', "
                                   "'AAformerModel']"]
    with pytest.raises(AssertionError, match='has no attribute'):
        run('import aaformer_hf\naaformer_hf.NotAThing')
