"""The re-ID library: retrieval evaluation (CMC, mAP, mINP), k-reciprocal re-ranking, nearest-neighbour search and
the identity loss. Plain torch on features and labels: nothing here knows the models, timm or transformers."""
from .._lazy import lazy_exports

_EXPORTS = {'evaluate': 'evaluation', 'summarise': 'evaluation', 'pairwise_distance': 'evaluation',
            'flip_features': 'evaluation', 're_rank': 'reranking', 'search': 'search', 'recall_at': 'search',
            'identity_loss': 'losses'}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
