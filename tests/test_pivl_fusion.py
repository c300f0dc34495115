"""π-VL's alignment pieces (examples/train_fusion.py): parsing on the feature grid, the text-embedding map, the
fusion head."""
import pytest
import torch

from train_fusion import PatchProjection, SimpleFeaturePyramidFusion, build_alignment_head, parsing_on_grid, \
    text_embedding_map


def test_parsing_majority_label_per_cell_by_hand():
    parsing = torch.tensor([[[0, 0, 5, 5],
                             [0, 2, 5, 9],
                             [9, 9, 1, 1],
                             [9, 0, 1, 3]]])
    labels, share = parsing_on_grid(parsing, (2, 2))
    assert labels.tolist() == [[[0, 5], [9, 1]]]
    torch.testing.assert_close(share, torch.tensor([[[0.75, 0.75], [0.75, 0.75]]]))
    # a one-pixel-wide part keeps its cells on a fine grid; a tie goes to the lower label (background)
    thin = torch.zeros(1, 4, 4, dtype=torch.long)
    thin[0, :, 3] = 14
    assert parsing_on_grid(thin, (2, 4))[0].tolist() == [[[0, 0, 0, 14], [0, 0, 0, 14]]]
    labels, share = parsing_on_grid(thin, (1, 2))
    assert labels.tolist() == [[[0, 0]]] and share.tolist() == [[[1.0, 0.5]]]
    # unequal cells (an overlapping-patch grid, 5 rows into 3 cells) take adaptive pooling's cells: rows 0-1, 1-3, 3-4
    odd = torch.tensor([[[1], [1], [2], [2], [3]]])
    labels, share = parsing_on_grid(odd, (3, 1))
    assert labels.tolist() == [[[1], [2], [2]]]
    torch.testing.assert_close(share, torch.tensor([[[1.0], [2 / 3], [0.5]]]))
    # both ways agree on a random map whose cells are equal
    random_map = torch.randint(0, 20, (3, 32, 16), generator=torch.Generator().manual_seed(0))
    one_hot = torch.nn.functional.one_hot(random_map, 20).permute(0, 3, 1, 2).float()
    pooled = torch.nn.functional.avg_pool2d(one_hot, (4, 4))
    labels, share = parsing_on_grid(random_map, (8, 4))
    torch.testing.assert_close(share, pooled.amax(dim=1))
    assert bool((pooled.gather(1, labels[:, None]).squeeze(1) == pooled.amax(dim=1)).all())


def test_text_embedding_map_looks_up_identity_and_part():
    part_texts = torch.arange(3 * 4 * 2, dtype=torch.float32).reshape(3, 4, 2)  # 3 identities, 4 parts, E = 2
    cells = torch.tensor([[[0, 3]], [[2, 2]]])  # (B=2, h=1, w=2)
    out = text_embedding_map(part_texts, torch.tensor([2, 0]), cells)
    assert out.shape == (2, 2, 1, 2)
    torch.testing.assert_close(out[0, :, 0, 0], part_texts[2, 0])
    torch.testing.assert_close(out[0, :, 0, 1], part_texts[2, 3])
    torch.testing.assert_close(out[1, :, 0, 1], part_texts[0, 2])


def test_fusion_head_output_at_half_the_patch_stride_with_every_level_contributing():
    torch.manual_seed(0)
    head = SimpleFeaturePyramidFusion(in_dim=32, out_dim=16, hidden=8).eval()
    patches = torch.randn(2, 32, 16, 8)  # a 16x8 ViT patch grid (stride 16 at 256x128)
    with torch.no_grad():
        out = head(patches)
        assert out.shape == (2, 16, 32, 16)  # stride 8
        for level in head.levels:  # silencing any one pyramid level changes the output: all four are summed
            norm = level[-1]
            saved = norm.weight.clone(), norm.bias.clone()
            norm.weight.zero_(), norm.bias.zero_()
            assert not torch.allclose(head(patches), out)
            norm.weight.copy_(saved[0]), norm.bias.copy_(saved[1])
        # an odd grid (overlapping patches: 21x10) works too
        assert head(torch.randn(1, 32, 21, 10)).shape == (1, 16, 42, 20)
    assert isinstance(build_alignment_head('linear', 32, 16), PatchProjection)
    assert build_alignment_head('linear', 32, 16)(patches).shape == (2, 16, 16, 8)
    with pytest.raises(ValueError, match="'pyramid' or 'linear'"):
        build_alignment_head('fpn', 32, 16)


def test_cnn_fusion_by_hand():
    """Eq. 9-10 on a hand case: 1x1 depth-wise convolutions (all weights 1, no bias) repeat each input channel
    E / C_i times; F2 is averaged over 2x2 blocks, F4 (one cell) spread over the stride-8 grid; 'all' adds F3,
    'eq10' leaves it out as Eq. 10 is printed."""
    from train_fusion import CNNHierarchicalFusion

    head = CNNHierarchicalFusion((2, 4, 8), 8)
    assert [conv.groups for conv in head.align] == [2, 4, 8]  # depth-wise: one group per input channel
    with torch.no_grad():
        for conv in head.align:
            conv.weight.fill_(1.0)
            conv.bias.zero_()
    c2 = torch.arange(2 * 4 * 4, dtype=torch.float).view(1, 2, 4, 4)
    c3 = torch.arange(4 * 2 * 2, dtype=torch.float).view(1, 4, 2, 2) * 10
    c4 = torch.tensor([100.0, 200, 300, 400, 500, 600, 700, 800]).view(1, 8, 1, 1)
    # F2: channel k of 8 comes from input channel k // 4; the 2x2 block means of channel 0 are 2.5, 4.5, 10.5, 12.5
    block_means = [[[2.5, 4.5], [10.5, 12.5]], [[18.5, 20.5], [26.5, 28.5]]]
    f2 = torch.tensor([block_means[k // 4] for k in range(8)])
    f3 = torch.stack([c3[0, k // 2] for k in range(8)])
    f4 = c4[0].expand(8, 2, 2)
    torch.testing.assert_close(head((c2, c3, c4))[0], f2 + f3 + f4)
    head.fusion_sum = 'eq10'
    torch.testing.assert_close(head((c2, c3, c4))[0], f2 + f4)
    # ResNet-50 to CLIP's 1024: true depth-wise convolutions (x4, x2, x1), 1024 weights + 1024 biases each
    rn50 = CNNHierarchicalFusion((256, 512, 1024), 1024)
    assert [conv.groups for conv in rn50.align] == [256, 512, 1024]
    assert sum(p.numel() for p in rn50.parameters()) == 3 * 2048
    with pytest.raises(ValueError, match='three widths'):
        CNNHierarchicalFusion((256, 512), 1024)
