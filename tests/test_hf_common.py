"""transformers' common model and config tests (ModelTesterMixin, ConfigTester from the installed transformers'
sdist) on a tiny AAformer and a tiny π-VL model, plus the tests ViT's own test file adds for vision models."""
import copy
import unittest

import torch
from torch import nn

from aaformer_hf import (
    AAformerConfig, AAformerForReID, AAformerModel, PiVLConfig, PiVLForReID, PiVLModel, PiVLResNetConfig,
    PiVLResNetForReID, PiVLResNetModel,
)
from .upstream import import_transformers_tests

common, config_common = import_transformers_tests()
ModelTesterMixin, floats_tensor = common.ModelTesterMixin, common.floats_tensor
ConfigTester = config_common.ConfigTester


class AAformerModelTester:
    """A 2-layer, 32-wide AAformer at 32x16 with 8x8 patches (4x2 = 8 patches) and [PART] groups {2, 3}."""

    def __init__(self, parent, batch_size=13, image_size=(32, 16), patch_size=8, num_channels=3, is_training=True,
                 hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                 part_groups=(2, 3), num_labels=10):
        self.parent = parent
        self.batch_size = batch_size
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.is_training = is_training
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.part_groups = part_groups
        self.num_labels = num_labels
        num_patches = (image_size[0] // patch_size) * (image_size[1] // patch_size)
        self.seq_length = 1 + sum(part_groups) + num_patches

    def get_config(self):
        return AAformerConfig(
            image_size=self.image_size, patch_size=self.patch_size, num_channels=self.num_channels,
            hidden_size=self.hidden_size, num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads, intermediate_size=self.intermediate_size,
            part_groups=self.part_groups, num_labels=self.num_labels)

    def prepare_config_and_inputs_for_common(self):
        pixel_values = floats_tensor([self.batch_size, self.num_channels, *self.image_size])
        return self.get_config(), {'pixel_values': pixel_values}


class AAformerModelTest(ModelTesterMixin, unittest.TestCase):
    all_model_classes = (AAformerModel, AAformerForReID)
    reid_class = AAformerForReID
    test_resize_embeddings = False
    has_attentions = True
    test_torch_exportable = True

    def setUp(self):
        self.model_tester = AAformerModelTester(self)
        self.config_tester = ConfigTester(self, config_class=AAformerConfig, has_text_modality=False, hidden_size=48)

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        # the mixin picks label-taking classes from transformers' own name tables, which never list external models
        inputs_dict = super()._prepare_for_class(inputs_dict, model_class, return_labels=False)
        if return_labels and model_class is self.reid_class:
            inputs_dict['labels'] = torch.zeros(self.model_tester.batch_size, dtype=torch.long)
        return inputs_dict

    def test_config(self):
        self.config_tester.run_common_tests()

    @staticmethod
    def first_block(model):
        """The first block timm's activation checkpointing wraps."""
        return model.timm_model.blocks[0]

    # These upstream tests load checkpoints that deliberately lack encoder weights, to check transformers' fallback
    # initialisation of missing weights. Our from_pretrained refuses such checkpoints by design (a silently
    # re-initialised encoder changes the embedding; tests/test_bad_weights_and_config.py), so they run with that
    # refusal turned off: the initialisation they check is still ours to pass.
    def _with_missing_encoder_weights_allowed(self, test):
        classes = self.all_model_classes
        try:
            for cls in classes:
                cls.refuse_missing_encoder_weights = False
            test()
        finally:
            for cls in classes:
                del cls.refuse_missing_encoder_weights  # back to the base class's True

    def test_can_init_all_missing_weights(self):
        self._with_missing_encoder_weights_allowed(super().test_can_init_all_missing_weights)

    def test_load_save_without_tied_weights(self):
        self._with_missing_encoder_weights_allowed(super().test_load_save_without_tied_weights)

    def test_model_weights_reload_no_missing_tied_weights(self):
        self._with_missing_encoder_weights_allowed(super().test_model_weights_reload_no_missing_tied_weights)

    def test_training(self):
        self.all_model_classes = (self.reid_class,)  # the base model has no loss
        super().test_training()

    def test_gradient_checkpointing_enable_disable(self):
        """transformers' version also asserts GradientCheckpointingLayer modules, of which a timm-backed model has
        none (as transformers' own TimmWrapperModel): its checkpointing is the timm module's. The rest is checked
        here, and that the switch reaches the timm module and really recomputes the blocks in the backward."""
        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(copy.deepcopy(config))
            self.assertFalse(model.is_activation_checkpointing)
            model.activation_checkpointing_enable()
            self.assertTrue(model.is_activation_checkpointing and model.timm_model.grad_checkpointing)
            model.train()
            calls, block = [], self.first_block(model)
            forward = block.forward
            block.forward = lambda *args, **kwargs: calls.append(1) or forward(*args, **kwargs)
            out = model(**self._prepare_for_class(inputs_dict, model_class))
            out.to_tuple()[0].float().sum().backward()
            del block.forward
            self.assertEqual(len(calls), 2, 'the first block ran once forward and once more in the backward')
            model.activation_checkpointing_disable()
            self.assertFalse(model.is_activation_checkpointing or model.timm_model.grad_checkpointing)
            with self.assertRaisesRegex(ValueError, 'every_n_layers=2 is not supported'):
                model.activation_checkpointing_enable(every_n_layers=2)

    def check_training_gradient_checkpointing(self, gradient_checkpointing_kwargs=None):
        """transformers' version hooks a GradientCheckpointingLayer, of which a timm-backed model has none: the same
        checks on the timm block - the first block runs again in the backward, and the gradients equal those of the
        run without checkpointing (transformers compares only which are non-zero)."""
        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        config.return_dict = True
        inputs = self._prepare_for_class(inputs_dict, self.reid_class, return_labels=True)
        torch.manual_seed(42)
        model = self.reid_class(config).train()
        model(**inputs).loss.backward()
        expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=gradient_checkpointing_kwargs)
        calls, block = [], self.first_block(model)
        forward = block.forward
        block.forward = lambda *args, **kwargs: calls.append(1) or forward(*args, **kwargs)
        model(**inputs).loss.backward()
        del block.forward
        self.assertEqual(len(calls), 2, 'the first block ran once forward and once more in the backward')
        for name, param in model.named_parameters():
            if name in expected:
                torch.testing.assert_close(param.grad, expected[name], msg=name)

    def test_model_get_set_embeddings(self):
        # vision model: the input embedding is the patch projection, not an nn.Embedding (as in ViT's tests)
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(config)
            self.assertIsInstance(model.get_input_embeddings(), nn.Module)
            self.assertIsNone(model.get_output_embeddings())

    @unittest.skip(reason='AAformer takes images, not inputs_embeds (vision model)')
    def test_inputs_embeds(self):
        pass

    @unittest.skip(reason='AAformer takes images, not inputs_embeds (vision model)')
    def test_inputs_embeds_matches_input_ids(self):
        pass


class PiVLModelTester(AAformerModelTester):
    """A 2-layer, 32-wide π-VL model at 32x16 with 8x8 patches and a 16-d projection."""

    def __init__(self, parent, **kwargs):
        super().__init__(parent, part_groups=(), **kwargs)  # CLS + 8 patches

    def get_config(self):
        return PiVLConfig(
            image_size=self.image_size, patch_size=self.patch_size, num_channels=self.num_channels,
            hidden_size=self.hidden_size, num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads, intermediate_size=self.intermediate_size,
            projection_dim=16, num_labels=self.num_labels)


class PiVLModelTest(AAformerModelTest):
    all_model_classes = (PiVLModel, PiVLForReID)
    reid_class = PiVLForReID
    has_attentions = False  # timm's ViT blocks use fused attention and do not return probabilities

    def setUp(self):
        self.model_tester = PiVLModelTester(self)
        self.config_tester = ConfigTester(self, config_class=PiVLConfig, has_text_modality=False, hidden_size=48)


class PiVLResNetModelTester(AAformerModelTester):
    """A one-block-per-stage CLIP ResNet (widths 8-64, projection 16) at 64x32: a 4x2 last map with last stride 1."""

    def __init__(self, parent, **kwargs):
        super().__init__(parent, image_size=(64, 32), part_groups=(), **kwargs)
        del self.num_hidden_layers  # a CNN: transformers' ResNet tester has num_stages instead
        self.num_stages = 4

    def get_config(self):
        return PiVLResNetConfig(
            image_size=self.image_size, num_channels=self.num_channels, stem_sizes=(4, 4, 8),
            hidden_sizes=(8, 16, 32, 64), depths=(1, 1, 1, 1), projection_dim=16, num_labels=self.num_labels)


class PiVLResNetModelTest(AAformerModelTest):
    all_model_classes = (PiVLResNetModel, PiVLResNetForReID)
    reid_class = PiVLResNetForReID
    has_attentions = False  # a CNN; its attention pool's weights are not an output

    def setUp(self):
        self.model_tester = PiVLResNetModelTester(self)
        self.config_tester = ConfigTester(self, config_class=PiVLResNetConfig, has_text_modality=False)

    def test_config(self):
        # transformers' ResNet tests leave out the common-properties check too: a CNN config has no
        # num_attention_heads, and its hidden_size / num_hidden_layers are derived (last width, stages)
        tester = self.config_tester
        tester.create_and_test_config_to_json_string()
        tester.create_and_test_config_to_json_file()
        tester.create_and_test_config_from_and_save_pretrained()
        tester.create_and_test_config_from_and_save_pretrained_subfolder()
        tester.create_and_test_config_with_num_labels()
        tester.check_config_can_be_init_without_params()
        tester.check_config_arguments_init()

    @staticmethod
    def first_block(model):
        return model.timm_model.stages[0][0]

    def test_hidden_states_output(self):
        """transformers' ResNet check: the stem's map and each stage's, at strides 4, 4, 8, 16, 16 (last stride 1)."""
        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        height, width = self.model_tester.image_size
        for model_class in self.all_model_classes:
            model = model_class(config).eval()
            with torch.no_grad():
                out = model(**self._prepare_for_class(inputs_dict, model_class), output_hidden_states=True)
            shapes = [tuple(h.shape[1:]) for h in out.hidden_states]
            self.assertEqual(shapes, [(8, height // 4, width // 4), (8, height // 4, width // 4),
                                      (16, height // 8, width // 8), (32, height // 16, width // 16),
                                      (64, height // 16, width // 16)])
