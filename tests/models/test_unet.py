"""The pix2pix U-Net decoder (wsss.models.unet): skips, dropout placement, input sizes."""

import pytest
import torch
from torch import nn

from wsss.models.unet import UNetDecoder


def test_the_first_skip_alone_carries_local_detail_to_the_output():
    """With every down block past the first cut (convolutions zeroed), the bottleneck path is
    constant and only the level-0 skip reaches the output: one input pixel must change the
    output around it and nowhere farther than its receptive field (4×4/2 conv, nearest ×2,
    3×3 conv: rows r-3 ... r+2). A decoder that dropped or misplaced the skips would not."""
    torch.manual_seed(0)
    net = UNetDecoder(4, 3, depth=3, width=4, max_width=16).eval()
    with torch.no_grad():
        for down in net.downs[1:]:
            down.body[0].weight.zero_()
    x = torch.randn(1, 4, 32, 32)
    y = x.clone()
    y[0, :, 12, 20] += 1.0
    with torch.no_grad():
        change = (net(y) - net(x)).abs().sum(dim=1)[0]
    near = torch.zeros(32, 32, dtype=torch.bool)
    near[12 - 3:12 + 3, 20 - 3:20 + 3] = True
    assert change[12, 20] > 0
    assert torch.equal(change[~near], torch.zeros_like(change[~near]))


def _dropout_blocks(net):
    def has(block):
        return any(isinstance(m, nn.Dropout) for m in block.modules())
    return [has(d) for d in net.downs], [has(u) for u in net.ups]


def test_dropout_sits_at_the_deep_levels_and_only_acts_in_train_mode():
    """pix2pix: dropout on the down blocks from the fourth (level 3) on and on the up blocks
    whose outputs are at those levels; at depth 5 (levels 0-4) the up blocks output levels
    3, 2, 1, 0, so only the first has it (an off-by-one in the level would move it)."""
    torch.manual_seed(0)
    net = UNetDecoder(4, 3, depth=5, width=4, max_width=16, dropout=0.5)
    assert _dropout_blocks(net) == ([False, False, False, True, True],
                                    [True, False, False, False])
    x = torch.randn(2, 4, 32, 32)
    with torch.no_grad():
        net.train()
        assert not torch.equal(net(x), net(x))
        net.eval()
        assert torch.equal(net(x), net(x))
        # the randomness in train mode is the dropout's: without it, or with no level >= 3
        # (depth 3), train mode is deterministic too
        for quiet in (UNetDecoder(4, 3, depth=5, width=4, max_width=16, dropout=0.0),
                      UNetDecoder(4, 3, depth=3, width=4, max_width=16, dropout=0.5)):
            quiet.train()
            assert torch.equal(quiet(x), quiet(x))


@pytest.mark.parametrize("size", [(20, 32), (32, 20)])
def test_a_side_that_is_not_a_multiple_of_two_to_the_depth_is_refused(size):
    """Either side alone must be checked; the message names the multiple needed."""
    net = UNetDecoder(4, 3, depth=3, width=4, max_width=16)
    with pytest.raises(ValueError, match="multiples of 8"):
        net(torch.zeros(1, 4, *size))
