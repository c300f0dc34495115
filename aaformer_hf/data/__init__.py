"""Re-ID data: dataset loaders, the PK sampler and a synthetic Market-layout generator (``data.synthetic``)."""
from .datasets import ReIDDatasetError, load_reid_dataset
from .sampler import PKSampler
from .transforms import build_transforms
