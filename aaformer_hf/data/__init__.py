"""Re-ID data: dataset loaders and the PK sampler; transforms and the synthetic generator follow (issue #3)."""
from .datasets import ReIDDatasetError, load_reid_dataset
from .sampler import PKSampler
