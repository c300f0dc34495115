"""One weight layout behind two front doors: timm <-> transformers <-> disk give identical embeddings; the Auto
classes, the image processor and the feature-extraction pipeline work offline."""
import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoImageProcessor, AutoModel, pipeline

from aaformer_hf import AAformerConfig, AAformerForReID, AAformerImageProcessor, AutoModelForPersonReID

TINY = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=2, intermediate_size=256)
TIMM_TINY = dict(embed_dim=64, depth=2, num_heads=2)


@pytest.fixture
def pixels():
    torch.manual_seed(0)
    return torch.randn(2, 3, 256, 128)


def test_transformers_folder_loads_into_timm(tmp_path, pixels):
    model = AutoModel.from_config(AAformerConfig(**TINY)).eval()
    model.save_pretrained(tmp_path)
    keys = load_file(tmp_path / 'model.safetensors').keys()
    assert 'pos_embed' in keys and not any(k.startswith('timm_model') for k in keys)  # timm's own key layout
    timm_model = timm.create_model(
        'aaformer_base', pretrained=True, **TIMM_TINY,
        pretrained_cfg_overlay=dict(file=str(tmp_path / 'model.safetensors'))).eval()
    torch.testing.assert_close(timm_model(pixels), model(pixels).pooler_output, atol=0, rtol=0)


def test_timm_weights_load_into_transformers(tmp_path, pixels):
    timm_model = timm.create_model('aaformer_base', **TIMM_TINY).eval()
    with torch.no_grad():
        timm_model.bnneck.running_mean.normal_()  # non-default buffers must travel too
    AAformerConfig(**TINY).save_pretrained(tmp_path)
    save_file(timm_model.state_dict(), tmp_path / 'model.safetensors')
    model = AutoModel.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(model(pixels).pooler_output, timm_model(pixels), atol=0, rtol=0)
    # and back to disk: the same tensors under the same names
    model.save_pretrained(tmp_path / 'again')
    again = load_file(tmp_path / 'again' / 'model.safetensors')
    original = timm_model.state_dict()
    assert again.keys() == original.keys()
    assert all(torch.equal(again[k], original[k]) for k in original)


def test_reid_head_round_trip_and_auto_class(tmp_path, pixels):
    model = AAformerForReID(AAformerConfig(**TINY, num_labels=7)).eval()
    model.save_pretrained(tmp_path)
    loaded = AutoModelForPersonReID.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, AAformerForReID)
    out, out2 = model(pixels), loaded(pixels)
    assert out.logits.shape == (2, 6, 7)
    torch.testing.assert_close(out2.logits, out.logits, atol=0, rtol=0)
    # the classifier checkpoint also serves the timm model (whose cfg must then say the checkpoint has 7 classes,
    # or timm drops the classifier as for any head mismatch) and the bare encoder
    timm_model = timm.create_model(
        'aaformer_base', pretrained=True, num_classes=7, **TIMM_TINY,
        pretrained_cfg_overlay=dict(file=str(tmp_path / 'model.safetensors'), num_classes=7)).eval()
    torch.testing.assert_close(timm_model(pixels), out.logits, atol=0, rtol=0)
    encoder = AutoModel.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(encoder(pixels).pooler_output, out.embeddings, atol=0, rtol=0)


def test_identity_loss_in_reid_head(pixels):
    model = AAformerForReID(AAformerConfig(**TINY, num_labels=7, label_smoothing=0.0)).eval()
    labels = torch.tensor([3, 5])
    out = model(pixels, labels=labels)
    by_hand = torch.stack([
        torch.nn.functional.cross_entropy(out.logits[:, t], labels) for t in range(out.logits.shape[1])]).mean()
    torch.testing.assert_close(out.loss, by_hand)


def test_auto_config_and_outputs(pixels):
    config = AutoConfig.for_model('aaformer', **TINY)
    assert isinstance(config, AAformerConfig)
    model = AutoModel.from_config(config).eval()
    out = model(pixels, output_hidden_states=True, output_attentions=True, output_assignments=True)
    assert out.last_hidden_state.shape == (2, 134, 64) and out.pooler_output.shape == (2, 384)
    assert len(out.hidden_states) == 3 and len(out.attentions) == 2
    assert [a.shape for a in out.assignments] == [(2, 2, 5, 128)] * 2


def test_bad_config_names_the_field():
    with pytest.raises(ValueError, match='assignment'):
        AAformerConfig(assignment='kmeans')
    with pytest.raises(ValueError, match='num_labels'):
        AAformerForReID(AAformerConfig(**TINY, num_labels=0))


def test_image_processor_resizes_and_normalises(tmp_path):
    processor = AAformerImageProcessor()
    image = Image.fromarray(np.full((300, 90, 3), 255, dtype=np.uint8))
    pixels = processor(image, return_tensors='pt')['pixel_values']
    assert pixels.shape == (1, 3, 256, 128)
    torch.testing.assert_close(pixels, torch.ones_like(pixels))  # (1 - 0.5) / 0.5
    imagenet = AAformerImageProcessor.from_timm_pretrained_cfg(
        dict(input_size=(3, 384, 128), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)))
    assert imagenet(image, return_tensors='pt')['pixel_values'].shape == (1, 3, 384, 128)
    # a folder's processor is its config's preprocessing, whichever file transformers reads
    config = AAformerConfig(**TINY, image_mean=(0.485, 0.456, 0.406), image_std=(0.229, 0.224, 0.225))
    config.save_pretrained(tmp_path)
    AAformerImageProcessor.from_config(config).save_pretrained(tmp_path)
    loaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded, AAformerImageProcessor) and list(loaded.image_mean) == [0.485, 0.456, 0.406]


def test_feature_extraction_pipeline_returns_the_reid_embedding(tmp_path):
    model = AutoModel.from_config(AAformerConfig(**TINY)).eval()
    model.save_pretrained(tmp_path)
    AAformerImageProcessor().save_pretrained(tmp_path)
    extractor = pipeline('image-feature-extraction', model=str(tmp_path), pool=True)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 128, 3), dtype=np.uint8))
    embedding = torch.tensor(extractor(image))
    expected = model(AAformerImageProcessor()(image, return_tensors='pt')['pixel_values']).pooler_output
    torch.testing.assert_close(embedding.reshape(expected.shape), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('kwargs', [dict(), dict(assignment='stripes', part_groups=(6,), drop_path_rate=0.1),
                                    dict(part_groups=(), attn_drop_rate=0.1, embedding='before_bnneck')])
def test_config_from_timm_model(tmp_path, pixels, kwargs):
    """A model made (and trained) through timm is described by a config, wrapped, saved and reloaded unchanged."""
    timm_model = timm.create_model('aaformer_tiny', num_classes=9, **kwargs).eval()
    config = AAformerConfig.from_timm_model(timm_model, num_labels=9)
    assert config.num_hidden_layers == 4 and config.hidden_size == 64 and config.intermediate_size == 256
    rebuilt = timm.create_model('aaformer_tiny', num_classes=9, **{
        k: v for k, v in config.timm_kwargs().items() if k not in ('embed_dim', 'depth', 'num_heads')})
    assert repr(rebuilt) == repr(timm_model)  # same architecture, dropout rates included
    model = AAformerForReID(config)
    model.load_state_dict(timm_model.state_dict())
    model.save_pretrained(tmp_path)
    loaded = AutoModelForPersonReID.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(loaded(pixels).logits, timm_model(pixels), atol=0, rtol=0)


def test_pivl_cnn_config_from_timm_model(tmp_path, pixels):
    """The CNN family: a timm model (other widths, last stride 2, dropout) is described by its config, wrapped, saved
    and reloaded by transformers and timm unchanged."""
    from aaformer_hf import PiVLResNetConfig
    from aaformer_hf.hf.timm_backed import wrap_timm_model
    timm_model = timm.create_model('pivl_resnet_tiny', num_classes=7, last_stride=2, drop_rate=0.1,
                                   depths=(1, 2, 1, 1), embedding='after_bnneck').eval()
    config = PiVLResNetConfig.from_timm_model(timm_model, num_labels=7)
    assert (config.depths, config.last_stride, config.classifier_dropout) == ((1, 2, 1, 1), 2, 0.1)
    rebuilt = timm.create_model('pivl_resnet_tiny', num_classes=7, **config.timm_kwargs())
    assert repr(rebuilt) == repr(timm_model)
    model = wrap_timm_model(timm_model)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForPersonReID.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(loaded(pixels).logits, timm_model(pixels), atol=0, rtol=0)
    again = timm.create_model(f'local-dir:{tmp_path}', pretrained=True).eval()
    torch.testing.assert_close(again.forward_head(again.forward_features(pixels), pre_logits=True),
                               loaded(pixels).embeddings, atol=0, rtol=0)


def test_forward_refuses_unknown_keyword_arguments():
    """A misspelt argument is an error naming it and what forward takes, not silently dropped."""
    from aaformer_hf import PiVLConfig, PiVLModel
    x = torch.randn(1, 3, 256, 128)
    model = AutoModel.from_config(AAformerConfig(**TINY)).eval()
    with pytest.raises(TypeError, match=r'AAformerModel.forward\(\) got unexpected keyword argument\(s\) '
                                        r'output_assignment \(it takes .*output_assignments'):
        model(x, output_assignment=True)
    assert model(x, output_attentions=False).pooler_output.shape == (1, 6 * TINY['hidden_size'])
    pivl = PiVLModel(PiVLConfig(**{**TINY, 'projection_dim': 32})).eval()
    pivl(x, output_attentions=False)  # transformers' generic switch, off: accepted
    with pytest.raises(TypeError, match='unexpected keyword argument.* output_attentions'):
        pivl(x, output_attentions=True)  # timm's fused attention returns no probabilities: not silently ignored
