"""Re-ID data: dataset loaders, the PK sampler, training/evaluation DataLoaders and a synthetic Market-layout
generator (``data.synthetic``).

Names load on first access, so ``from aaformer_hf.data import PKSampler`` imports neither ``datasets`` nor
torchvision."""
from .._lazy import lazy_exports

_EXPORTS = {'ReIDDatasetError': 'datasets', 'load_reid_dataset': 'datasets', 'load_image_split': 'datasets',
            'DATASET_NAMES': 'datasets',
            'PKSampler': 'sampler', 'build_transforms': 'transforms', 'ReIDItems': 'loaders',
            'SeededEpochSampler': 'loaders', 'train_loader': 'loaders', 'eval_loader': 'loaders',
            'add_parsing_column': 'parsing', 'NUM_PARSING_CLASSES': 'parsing'}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
