"""Cost of candidate `vit_tiny` shapes against the tiny ResNet (a script, not a test): the
seconds of one forward + backward pass of a batch of random 3×96×96 crops (the embedded
benchmark's crop), one torch thread, median over repeats after a warm-up.

    OMP_NUM_THREADS=1 .venv/bin/python tests/benchmarks/bench_vit.py [--batch 16] [--repeats 10]

Two columns per ViT: `backbone`, the backbone interface (`net(x)`, the token map; what the
pretrain stage and the CAM methods run: mean over the map, backward), and `encode`, FSR's full
pass (`net.encode(x)`: class-attention included; backward from the cls token and the map).
Patch 8 (the 12×12 grid of the tiny ResNet at output stride 8), head dim 32, cls_depth 2.
The pick is the shape whose backbone time is closest to the tiny ResNet's; among shapes within
5 % of each other, the deeper one.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from wsss.models.backbones import build_backbone
from wsss.models.vit import ViT


def _seconds(net: torch.nn.Module, loss: Callable[[torch.Tensor], torch.Tensor],
             x: torch.Tensor, repeats: int) -> float:
    times = []
    for i in range(repeats + 2):  # two warm-up passes
        net.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        loss(x).backward()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--dims", type=int, nargs="+", default=[64, 96, 128])
    parser.add_argument("--depths", type=int, nargs="+", default=[4, 5, 6])
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, 96, 96)

    resnet = build_backbone("tiny", 8).train()
    base = _seconds(resnet, lambda v: resnet(v).mean(dim=(2, 3)).sum(), x, args.repeats)
    params = sum(p.numel() for p in resnet.parameters())
    print(f"{'network':<22}{'params':>10}{'backbone s':>12}{'ratio':>8}{'encode s':>10}")
    print(f"{'tiny resnet (os 8)':<22}{params:>10}{base:>12.4f}{1.0:>8.2f}{'':>10}")
    rows = []
    for dim in args.dims:
        for depth in args.depths:
            net = ViT(patch=8, dim=dim, depth=depth, heads=dim // 32, pos_grid=(12, 12)).train()
            fwd = _seconds(net, lambda v, n=net: n(v).mean(dim=(2, 3)).sum(), x, args.repeats)

            def full(v, n=net):
                out = n.encode(v)
                return out.cls.sum() + out.tokens.mean(dim=(2, 3)).sum()

            enc = _seconds(net, full, x, args.repeats)
            params = sum(p.numel() for p in net.parameters())
            rows.append((dim, depth, fwd))
            print(f"{f'vit d{dim} L{depth} h{dim // 32}':<22}{params:>10}{fwd:>12.4f}"
                  f"{fwd / base:>8.2f}{enc:>10.4f}")
    best = min(abs(r[2] - base) for r in rows)
    close = [r for r in rows if abs(r[2] - base) <= best + 0.05 * base]
    dim, depth, _ = max(close, key=lambda r: (r[1], -abs(r[2] - base)))
    print(f"pick: dim {dim}, depth {depth}, heads {dim // 32}")


if __name__ == "__main__":
    main()
