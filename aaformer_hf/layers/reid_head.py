"""Re-ID head pieces shared by the model families: BNNeck and per-token identity classifiers."""
import torch
import torch.nn as nn

__all__ = ['BNNeck', 'TokenClassifiers']


class BNNeck(nn.BatchNorm1d):
    """BatchNorm1d whose shift is fixed at zero ("Bag of Tricks", Luo et al. 2019).

    The bias is a buffer rather than a frozen parameter, so every parameter of the model is trainable (optimizers,
    DDP and timm's gradient tests need no special case) while the state-dict key ``bias`` stays where BoT-style
    checkpoints have it. One BNNeck over a concatenation of T tokens of width D is exactly T per-token BNNecks: batch
    norm is per channel.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, device=None, dtype=None) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum, affine=True, device=device, dtype=dtype)
        bias = self.bias.detach().zero_()
        del self.bias
        self.register_buffer('bias', bias)


class TokenClassifiers(nn.Module):
    """T independent bias-free linear identity classifiers, one per token (Eq. 6: "classifiers ... are not shared").

    Stored as one (T, C, D) weight so all tokens are classified in a single batched matmul.
    Input (B, T, D) -> logits (B, T, C).
    """

    def __init__(self, num_tokens: int, in_features: int, num_classes: int, device=None, dtype=None) -> None:
        super().__init__()
        self.num_tokens = num_tokens
        self.in_features = in_features
        self.num_classes = num_classes
        self.weight = nn.Parameter(torch.empty(num_tokens, num_classes, in_features, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # BoT's classifier init: N(0, 0.001)
        nn.init.normal_(self.weight, std=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum('btd,tcd->btc', x, self.weight)

    def extra_repr(self) -> str:
        return f'num_tokens={self.num_tokens}, in_features={self.in_features}, num_classes={self.num_classes}'
