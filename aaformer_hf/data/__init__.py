"""Re-ID data: samplers now; dataset loaders, transforms and the synthetic generator follow (issue #3)."""
from .sampler import PKSampler
