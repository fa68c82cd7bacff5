"""FSR's ViT encoder (wsss.models.vit) and its heads (wsss.models.vit_heads)."""

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.vision_transformer import VisionTransformer

from wsss.errors import BackboneError
from wsss.models.backbones import _load_weights, build_backbone
from wsss.models.vit import NOT_IN_TORCHVISION, TorchvisionWeights, ViT, from_torchvision
from wsss.models.vit_heads import DINOHead, LargeFOV


def _vit(**kw) -> ViT:
    arch = {"patch": 8, "dim": 16, "depth": 4, "heads": 2, "pos_grid": (4, 4), **kw}
    return ViT(**arch)


def _torchvision_vit(seed: int = 0) -> VisionTransformer:
    """A small torchvision ViT with every weight random (its own init leaves LayerNorms at
    identity and attention biases at zero, which would hide swapped names)."""
    torch.manual_seed(seed)
    tv = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                           hidden_dim=16, mlp_dim=64)
    with torch.no_grad():
        for name, p in tv.named_parameters():
            p.copy_(torch.randn_like(p) * 0.2 + (1.0 if "ln" in name and "weight" in name else 0))
    return tv.eval()


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_from_torchvision_reproduces_torchvisions_encoder(tmp_path):
    tv = _torchvision_vit()
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    state = torch.load(tmp_path / "tv.pth", weights_only=True)
    ours = _vit(depth=2, aux_layer=0).eval()
    missing, unexpected = ours.load_state_dict(from_torchvision(state, ours), strict=False)
    assert unexpected == [] and missing
    assert all(k.startswith(NOT_IN_TORCHVISION) for k in missing), missing
    torch.manual_seed(1)
    x = torch.randn(2, 3, 32, 32)
    pos = tv.encoder.pos_embedding
    with torch.no_grad():
        patches = tv._process_input(x) + pos[:, 1:]
        _close(ours.embed(x).flatten(2).transpose(1, 2), patches)
        # our blocks on torchvision's whole sequence, cls token included
        seq = torch.cat([tv.class_token.expand(2, -1, -1) + pos[:, :1], patches], dim=1)
        ref = tv.encoder.layers(seq)
        mine = seq
        for block in ours.blocks:
            mine = block(mine)
        _close(mine, ref)
        _close(ours.norm(mine), tv.encoder.ln(ref))
        # and our forward (patches only) is torchvision's encoder on the patch sequence
        expected = tv.encoder.ln(tv.encoder.layers(patches))
        _close(ours(x).flatten(2).transpose(1, 2), expected)


def test_from_torchvision_positions_drop_cls_and_interpolate():
    tv = _torchvision_vit()
    state = tv.state_dict()
    rows, cols = torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="ij")
    grid = torch.stack([10 * rows + cols, -rows] + [cols] * 14)  # 16×4×4, row-major positions
    state["encoder.pos_embedding"] = torch.cat([torch.full((1, 1, 16), 999.0),
                                                grid.flatten(1).T[None]], dim=1)
    native = from_torchvision(state, _vit(depth=2, aux_layer=0))["pos_embed"]
    assert torch.equal(native, grid[None])  # orientation kept, the cls position dropped
    small = from_torchvision(state, _vit(depth=2, aux_layer=0, pos_grid=(2, 2)))["pos_embed"]
    expected = F.interpolate(grid[None], size=(2, 2), mode="bicubic", align_corners=False)
    _close(small, expected)
    assert small.abs().max() < 999


def test_vit_b16_takes_every_weight_of_torchvisions_vit_b_16():
    from torchvision.models import vit_b_16

    with torch.device("meta"):  # shapes only: nothing allocated, nothing downloaded
        tv = vit_b_16(weights=None)
        ours = build_backbone("vit_b16", 16)
    mapped = from_torchvision(tv.state_dict(), ours)
    missing, unexpected = ours.load_state_dict(mapped, strict=False, assign=True)
    assert unexpected == []
    assert {k.split(".")[0] for k in missing} == {"cls_blocks", "mask_token"}
    assert len(mapped) == len(tv.state_dict()) - 2  # all but the classifier head's two


def test_torchvision_weights_report_what_does_not_fit():
    class Fake:
        def __init__(self, state):
            self.state = state

        def get_state_dict(self, progress=True):
            return dict(self.state)

    state = _torchvision_vit().state_dict()
    net = _vit(depth=2, aux_layer=0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    _load_weights(net, "imagenet", "vit_b16", TorchvisionWeights(Fake(state), net))
    assert torch.equal(net.patch_embed.weight, state["conv_proj.weight"])
    for key in ("cls_blocks.0.attn.q.weight", "mask_token"):  # no torchvision counterpart
        assert torch.equal(net.state_dict()[key], before[key])
    broken = {k: v for k, v in state.items() if k != "encoder.ln.bias"}
    with pytest.raises(BackboneError, match="norm.bias"):
        _load_weights(net, "imagenet", "vit_b16", TorchvisionWeights(Fake(broken), net))
    wide = _vit(depth=2, aux_layer=0, dim=32)
    with pytest.raises(BackboneError, match="(?s)do not fit.*patch_embed.weight"):
        _load_weights(wide, "imagenet", "vit_b16", TorchvisionWeights(Fake(state), wide))
    odd = {**state, "encoder.layers.encoder_layer_0.extra.weight": torch.zeros(1)}
    with pytest.raises(BackboneError, match="encoder_layer_0.extra.weight"):
        from_torchvision(odd, net)


def test_masked_keys_get_no_class_attention():
    torch.manual_seed(0)
    net = _vit().eval()
    x = torch.randn(2, 3, 32, 32)
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[0, :2] = True
    mask[1, 3, 1:] = True
    flat = mask.flatten(1)
    noise = torch.randn(2, 16, 16) * 5 * flat[..., None]
    with torch.no_grad():
        out = net.encode(x, mask)
        weights = out.attention  # B×heads×N
        assert torch.all(weights.masked_select(flat[:, None]) == 0)
        _close(weights.sum(-1), torch.ones(2, 2))
        assert torch.all(net.encode(x, mask, mask_keys=False).attention.masked_select(
            flat[:, None]) > 0)
        # new content at the masked positions of the final patch tokens
        hook = net.blocks[-1].register_forward_hook(lambda m, i, o: o + noise)
        changed = net.encode(x, mask)
        changed_ref = net.encode(x, mask, mask_keys=False)
        hook.remove()
        reference = net.encode(x, mask, mask_keys=False)
    _close(changed.cls, out.cls)
    assert (changed_ref.cls - reference.cls).abs().max() > 1e-2


def test_class_attention_reads_normed_patches():
    """Keys and values come from the LayerNorm of the patch tokens (Eq. 5-6): a per-token
    rescaling and shift of the patches leaves the cls output as it is."""
    torch.manual_seed(0)
    block = _vit().cls_blocks[0].eval()
    cls, patches = torch.randn(2, 1, 16), torch.randn(2, 16, 16)
    scale = torch.rand(2, 16, 1) * 3 + 0.5
    with torch.no_grad():
        out, weights = block(cls, patches)
        moved, moved_weights = block(cls, patches * scale + torch.randn(2, 16, 1))
    torch.testing.assert_close(moved, out, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(moved_weights, weights, atol=1e-4, rtol=1e-4)


def test_aux_is_the_chosen_blocks_output_not_normed():
    torch.manual_seed(0)
    net = _vit().eval()  # depth 4, aux_layer -3: the second block's output
    seen = []
    net.blocks[1].register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        out = net.encode(torch.randn(2, 3, 32, 40))
    assert torch.equal(out.aux.flatten(2).transpose(1, 2), seen[-1])


def test_every_token_masked_attends_all():
    torch.manual_seed(0)
    net = _vit().eval()
    x = torch.randn(2, 3, 32, 32)
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[0, 2:] = True
    mask[1] = True
    with torch.no_grad():
        out = net.encode(x, mask)
        ref = net.encode(x, mask, mask_keys=False)
    assert torch.isfinite(out.cls).all()
    assert torch.equal(out.cls[1], ref.cls[1])
    assert not torch.allclose(out.cls[0], ref.cls[0])


def test_mask_token_replaces_the_masked_pixels():
    torch.manual_seed(0)
    net = _vit().eval()
    x = torch.randn(1, 3, 32, 32, requires_grad=True)
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, 1, 2] = True  # pixels 8:16 × 16:24
    other = x.detach().clone()
    other[..., 8:16, 16:24] = torch.randn(3, 8, 8) * 3
    out = net.encode(x, mask)
    (out.cls.sum() + out.tokens.sum()).backward()
    with torch.no_grad():
        again = net.encode(other, mask)
        _close(again.cls, out.cls)
        _close(again.tokens, out.tokens)
        assert not torch.allclose(net.encode(other).cls, net.encode(x).cls)
        embedded = net.embed(x, mask)[0, :, 1, 2]
        _close(embedded, net.mask_token[0] + net.pos_embed[0, :, 1, 2])
    assert torch.all(x.grad[..., 8:16, 16:24] == 0)
    assert x.grad[..., :8, :].abs().sum() > 0
    assert net.mask_token.grad.abs().sum() > 0


def test_padding_to_the_patch_gives_the_ceil_grid():
    torch.manual_seed(0)
    net = _vit().eval()
    x = torch.randn(1, 3, 30, 37)
    with torch.no_grad():
        out = net(x)
        padded = net(F.pad(x, (0, 3, 0, 2)))
        aux, tokens = net.forward_stages(x)
    assert out.shape[-2:] == (4, 5)
    assert torch.equal(out, padded)
    assert torch.equal(tokens, out) and not torch.allclose(aux, out)


def test_positions_are_interpolated_on_other_grids():
    net = _vit()
    rows, cols = torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="ij")
    with torch.no_grad():
        net.pos_embed.zero_()
        net.pos_embed[0, 0], net.pos_embed[0, 1] = rows, cols
        net.patch_embed.weight.zero_()
        net.patch_embed.bias.zero_()
        x = torch.zeros(1, 3, 48, 80)  # a 6×10 grid
        pos = net.embed(x)[0]
        assert torch.equal(net.embed(x[..., :32, :32])[0], net.pos_embed[0])  # native grid
        assert net.encode(torch.randn(1, 3, 48, 80)).tokens.shape[-2:] == (6, 10)
    assert pos.shape[-2:] == (6, 10)
    _close(pos, F.interpolate(net.pos_embed.detach(), size=(6, 10), mode="bicubic",
                              align_corners=False)[0])
    # rows vary down the grid and not across it, columns the other way round
    assert torch.allclose(pos[0], pos[0, :, :1].expand(6, 10))
    assert torch.all(pos[0, 1:, 0] >= pos[0, :-1, 0]) and pos[0, -1, 0] > pos[0, 0, 0] + 2
    assert torch.allclose(pos[1], pos[1, :1, :].expand(6, 10))


@pytest.mark.parametrize("aggregate", ["gap", "gmp"])
def test_gap_and_gmp_pool_the_unmasked_final_tokens(aggregate):
    torch.manual_seed(0)
    net = _vit().eval()
    x = torch.randn(2, 3, 32, 32)
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[0, 0] = True
    mask[1, :, :3] = True
    seen = []
    net.norm.register_forward_pre_hook(lambda m, inp: seen.append(inp[0]))
    with torch.no_grad():
        out = net.encode(x, mask, aggregate=aggregate)
        pre = seen[-1][:, 1:]  # the final patch tokens, before the final norm
        for b in range(2):
            kept = pre[b][~mask[b].flatten()]
            pooled = kept.mean(0) if aggregate == "gap" else kept.amax(0)
            _close(out.cls[b], net.norm(pooled))
        assert out.attention is None
        for block in net.cls_blocks:  # not used by gap / gmp
            block.mlp.fc2.bias.add_(1.0)
        assert torch.equal(net.encode(x, mask, aggregate=aggregate).cls, out.cls)


def test_drop_path_only_in_train_mode():
    torch.manual_seed(0)
    net = _vit(drop_path=0.5)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        net.train()
        assert not torch.equal(net(x), net(x))
        net.eval()
        assert torch.equal(net(x), net(x))
        net.train()
        net.set_drop_path(0.0)
        assert torch.equal(net(x), net(x))


def test_pretrain_style_round_trip(tmp_path, monkeypatch):
    torch.manual_seed(0)
    source = build_backbone("vit_tiny", 8).eval()
    path = tmp_path / "vit_tiny.pt"
    torch.save({"state_dict": source.net_state_dict(), "backbone": "vit_tiny"}, path)
    torch.manual_seed(1)
    loaded = build_backbone("vit_tiny", 8, str(path)).eval()
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        a, b = source.encode(x), loaded.encode(x)
    assert torch.equal(a.cls, b.cls) and torch.equal(a.tokens, b.tokens)
    torch.save({"state_dict": source.net_state_dict(), "backbone": "tiny"}, tmp_path / "r.pt")
    with pytest.raises(BackboneError, match="'tiny'"):
        build_backbone("vit_tiny", 8, str(tmp_path / "r.pt"))
    with pytest.raises(BackboneError, match="output_stride"):
        build_backbone("vit_tiny", 16)
    with pytest.raises(BackboneError, match="output_stride"):
        build_backbone("vit_b16", 8)
    with pytest.raises(BackboneError, match="no ImageNet weights"):
        build_backbone("vit_tiny", 8, "imagenet")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BackboneError, match=r"results/pretrained/vit_tiny\.pt.*pretrain stage"):
        build_backbone("vit_tiny", 8, "synthetic")


def test_largefov_reaches_two_dilations_on_the_lattice():
    torch.manual_seed(0)
    head = LargeFOV(4, 3, width=32)
    x = torch.randn(1, 4, 31, 31, requires_grad=True)
    out = head(x)
    assert out.shape == (1, 3, 31, 31)
    out[0, :, 15, 15].sum().backward()
    ys, xs = torch.nonzero(x.grad.abs().sum(1)[0], as_tuple=True)
    dy, dx = ys - 15, xs - 15
    assert torch.all(dy % 5 == 0) and torch.all(dx % 5 == 0)  # dilated taps only
    assert dy.abs().max() == 10 and dx.abs().max() == 10  # two 3×3 convs at dilation 5


def test_dino_head_keeps_unit_rows_and_trains_its_mlp():
    torch.manual_seed(0)
    head = DINOHead(16, 10, hidden=32, bottleneck=8)
    tokens = torch.randn(2, 5, 16)
    out = head(tokens)
    _close(head(tokens[:, 2]), out[:, 2])
    assert out.abs().max() <= 1 + 1e-6  # cosines: unit inputs against unit rows
    out.pow(2).sum().backward()
    assert head.mlp[0].weight.grad.abs().sum() > 0 and head.last_v.grad.abs().sum() > 0
    opt = torch.optim.SGD(head.parameters(), lr=10.0)
    opt.step()
    _close(head.last_weight().norm(dim=1), torch.ones(10))
    with torch.no_grad():
        before = head(tokens)
        head.last_v.mul_(3.0)  # only the direction counts: g stays 1
        _close(head(tokens), before)
        for p in head.mlp[-1].parameters():  # the bottleneck is L2-normalised
            p.mul_(5.0)
        _close(head(tokens), before)


def test_conv_stem_embeds_on_the_patch_grid_from_a_local_window():
    """The convolutional stem gives the patch embedding's grid (ceil, on the padded input);
    a token sees more than its own patch (three 3×3 stride-2 layers: 15 px a side around it),
    yet nothing far away: a pixel of patch (0, 0) moves tokens (0, 0) and (0, 1), not (3, 3)."""
    torch.manual_seed(0)
    net = ViT(patch=8, dim=16, depth=4, heads=2, pos_grid=(4, 4), stem="conv").eval()
    x = torch.randn(1, 3, 30, 37)
    with torch.no_grad():
        assert net(x).shape[-2:] == (4, 5)
        y = torch.randn(1, 3, 32, 32)
        moved = y.clone()
        moved[..., 7, 7] += 5.0
        diff = (net.embed(moved) - net.embed(y)).abs().sum(dim=1)[0]
    assert diff[0, 0] > 0 and diff[0, 1] > 0 and diff[3, 3] == 0
    with pytest.raises(BackboneError, match="stem"):
        ViT(patch=8, dim=16, depth=4, heads=2, stem="convolutional")
