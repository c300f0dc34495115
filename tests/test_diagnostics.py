"""benchmarks/diagnose_parts.py (issue #11's diagnostics): its measures against hand computations and against
models whose answer is known (fixed stripes are the same for every image, mirror and camera)."""
import json

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import aaformer_hf  # noqa: F401
from aaformer_hf.data.synthetic import generate_market_layout
from aaformer_hf.hf import AAformerImageProcessor, AAformerModel
from aaformer_hf.hf.timm_backed import wrap_timm_model
from benchmarks import diagnose_parts as diag

SIZE = dict(img_size=(256, 128), embed_dim=32, depth=2, num_heads=2)


@pytest.fixture(scope='module')
def root(tmp_path_factory):
    return generate_market_layout(tmp_path_factory.mktemp('d') / 'synthetic', train_ids=2, test_ids=6,
                                  images_per_id=4, distractors=0, junk=0, parsing=True, seed=2)


def _save(timm_model, folder):
    model = wrap_timm_model(timm_model)
    model.save_pretrained(folder)
    AAformerImageProcessor().save_pretrained(folder)
    return folder


def test_set_iou_and_mirroring_by_hand():
    a = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    b = torch.tensor([[0, 1, 1, 0], [0, 0, 0, 0]], dtype=torch.bool)
    assert diag.set_iou(a, b).tolist() == pytest.approx([1 / 3, 1.0])  # both empty: agreeing
    grid_2x2 = torch.tensor([1, 0, 0, 1], dtype=torch.bool)  # patches (0,0) and (1,1)
    assert diag.mirrored(grid_2x2, (2, 2)).tolist() == [False, True, True, False]
    groups = diag.part_index_per_group([torch.tensor([[[[1, 0], [0, 1], [1, 0], [0, 0], [0, 1]]]]).bool()], (2, 3))
    assert groups[0].tolist() == [[[[0, 1], [0, 2]]]]  # group 1: parts 0 / 1, group 2: parts 0 (of 3) / 2


def test_stripes_are_perfectly_consistent_and_sit_where_they_are(root, tmp_path):
    torch.manual_seed(0)
    folder = _save(timm.create_model('aaformer_tiny', assignment='stripes', part_groups=(2, 3), **SIZE),
                   tmp_path / 'stripes')
    report = diag.diagnose(folder, root, limit=30)
    c = report['consistency']
    assert c['pairs'][0] > 0
    for key in ('flip_iou', 'cross_camera_iou', 'random_pair_iou'):
        assert c[key] == [1.0, 1.0]  # every image, mirror and camera gets the same stripes
    # the 16 patch rows in halves and (6, 5, 5) thirds: mean rows 3.5 / 11.5 and 2.5 / 8 / 13; mean column 3.5
    rows = report['placement']['mean_row'][-1]
    assert rows == pytest.approx([3.5, 11.5, 2.5, 8.0, 13.0])
    assert report['placement']['mean_col'][-1] == pytest.approx([3.5] * 5)
    assert 0 < report['placement']['foreground_share_of_image'] < 1
    # layer 0's [PART] states are the tokens themselves: their pairwise cosine by hand from the parameters
    parts = F.normalize(AAformerModel.from_pretrained(folder).timm_model.part_tokens[0].detach(), dim=-1)
    third = parts[2:] @ parts[2:].T
    assert report['tokens']['part_pairwise_cosine'][0] == pytest.approx(
        [float(parts[0] @ parts[1]), float((third.sum() - third.trace()) / 6)], abs=1e-5)
    assert set(report['per_token_mAP']) == {'CLS', 'PART 1', 'PART 2', 'PART 3', 'PART 4', 'PART 5', 'all'}


def test_sinkhorn_model_writes_png_and_counts_churn(root, tmp_path):
    torch.manual_seed(0)
    timm_model = timm.create_model('aaformer_tiny', **SIZE)
    folder = _save(timm_model, tmp_path / 'run' / 'model')
    checkpoints = tmp_path / 'run' / 'checkpoints'
    state = {'timm_model.' + k: v.contiguous() for k, v in timm_model.state_dict().items()}
    for epoch, scale in ((1, 1.0), (2, 1.0), (3, -1.0)):  # unchanged, then [PART] tokens flipped in sign
        (checkpoints / f'epoch_{epoch}').mkdir(parents=True)
        changed = dict(state, **{'timm_model.part_tokens': state['timm_model.part_tokens'] * scale})
        save_file(changed, checkpoints / f'epoch_{epoch}' / 'model.safetensors')
    diag.main([str(folder), '--data_root', str(root), '--limit', '24', '--checkpoints', str(checkpoints),
               '--out', str(tmp_path / 'out')])
    written = sorted(p.name for p in (tmp_path / 'out').iterdir())  # named after the run folder: '<...>_run_'
    assert [p.endswith(('_run_diagnostics.json', '_run_diagnostics.png')) for p in written] == [True, True]
    report = json.loads(next((tmp_path / 'out').glob('*.json')).read_text())
    churn = report['churn']
    assert churn['epochs'] == [2, 3]
    assert churn['changed_share'][0] == [0.0, 0.0]  # same weights: nothing moves
    assert churn['changed_share'][1][0] > 0.1  # layer 0's scores follow the part tokens directly
    assert 0 <= min(report['consistency']['random_pair_iou']) <= 1
    assert next((tmp_path / 'out').glob('*.png')).stat().st_size > 10_000


def test_split_embeddings_gives_a_parsing_model_each_images_regions(root, tmp_path):
    """The SPReID row ([PART]s from parsing maps) is embedded with every image's own regions: the same numbers as
    one image at a time through timm's forward with masks made from that image's map."""
    import numpy as np
    from PIL import Image

    from aaformer_hf.data import load_reid_dataset
    from aaformer_hf.data.parsing import parsing_path, region_masks
    torch.manual_seed(0)
    timm_model = timm.create_model('aaformer_tiny', assignment='given', part_groups=(5,), **SIZE).eval()
    folder = _save(timm_model, tmp_path / 'spreid')
    width, (qf, qp, _), _ = diag.split_embeddings(folder, root)
    query = load_reid_dataset('market1501', root, verify_images=False)['query']
    processor = AAformerImageProcessor.from_pretrained(folder)
    assert width == 32 and qf.shape == (len(query), 6 * 32) and qp.tolist() == query['pid']
    for i in (0, len(query) - 1):
        labels = np.array(Image.open(parsing_path(query[i]['path'], root)).resize((128, 256), Image.NEAREST))
        masks = region_masks(torch.from_numpy(labels.astype(np.int64))[None], (16, 8))
        pixels = processor(query[i]['image'], return_tensors='pt')['pixel_values']
        with torch.no_grad():
            expected = timm_model.forward_head(timm_model.forward_features(pixels, part_masks=masks), pre_logits=True)
        torch.testing.assert_close(qf[i:i + 1], expected, rtol=1e-5, atol=1e-5)


def test_parser_tools_by_hand():
    """benchmarks/train_parser.py: a mirrored LIP map swaps left and right labels; agreement scores by hand."""
    from benchmarks import train_parser
    maps = torch.tensor([[[0, 14, 5], [16, 18, 19]]])
    assert train_parser.mirror_labels(maps).tolist() == [[[5, 15, 0], [18, 19, 17]]]
    truth = torch.tensor([[0, 0, 5, 5]])
    predicted = torch.tensor([[0, 5, 5, 9]])
    scores = train_parser.agreement(predicted, truth)
    # label 0: IoU 1/2, label 5: 1/3, label 9: 0/1 -> mean 5/18; foreground: pixels 2, 3 of 1, 2, 3
    assert scores['pixel_accuracy'] == pytest.approx(0.5) and scores['mean_iou'] == pytest.approx(5 / 18)
    assert scores['foreground_iou'] == pytest.approx(2 / 3)
