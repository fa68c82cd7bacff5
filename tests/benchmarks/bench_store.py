"""Size against write/read speed of the HDF5 stores' compression and chunking options, and the
store sizes they imply at VOC / COCO scale (a script, not a pytest test).

    OMP_NUM_THREADS=1 .venv/bin/python tests/benchmarks/bench_store.py \
        --results /tmp/m16/results/synthetic [--repeats 3] [--emulate voc coco] \
        [--photo some.jpg] [--json out.json]

Three parts:

1. native: the arrays of real stores of a finished (synthetic) run, per kind: `cam` and
   `cam_lowres` (a CAM store), `seg` (a single-stage method's CAM store), `label` (a refiner's
   label store) and `pred` (a DeepLab prediction store). Per option a fresh HDF5 file with the
   store's layout (a group per image holding the dataset for the CAM kinds, a dataset per image
   for labels) is written from memory, then opened, every image's array read with `[()]` and
   closed. Options: contiguous without compression, lzf, gzip 1/4/6, each with and without the
   shuffle filter; chunked options with h5py's automatic chunks ("auto", what the stores use
   today), one chunk per plane (1×H×W, 3-D kinds) or the whole array as one chunk ("whole");
   and lzf/auto in a libver="latest" file ("@latest": the same data, less HDF5 overhead).
2. emulated VOC / COCO arrays: the benchmark's images are ~92 px, where a CAM is rougher per
   pixel than a real one. Real CAMs are bilinear upsamplings of a stride-16 grid (ResNet-50
   OS16, ViT-B/16) summed over scales and mirrors. So each benchmark map is sampled at the cell
   centres of the grid the network would produce on a view of a 500×375 (VOC) or 640×480
   (COCO) image at each inference scale, and upsampled to the strided-up extent, cropped,
   mirrored back and fused exactly as `wsss.cams.multiscale_maps` does (the mirror's cells are
   aligned to the other edge, as in the pipeline). `seg` gets the dataset's C + 1 planes (21,
   81): background and labelled classes from the image's own logits (log of the stored
   probabilities), the absent classes from the image's absent-class logits, cycled through
   flips and shifts, then FSR's flip_sum_max fusion and a softmax over all planes. Labels:
   the label store upsampled nearest (a lower bound: real masks have more complex boundaries),
   DeepLab-like predictions as the argmax of a stride-8, 5-scale mean-of-softmax emulation, and
   with --photo a dense CRF of emulated CAMs on a real photograph (boundaries that follow
   image edges).
3. totals: per image and per dataset (VOC train_aug, COCO train) from the emulated
   bytes per pixel and plane, the dataset's mean image size and labelled classes per image,
   plus the per-image HDF5 overhead (group, object headers, keys) measured on the real stores.

Timings: MB/s of raw (uncompressed) array bytes, 1e6 bytes per MB; the median of --repeats
runs, the options interleaved round-robin within each repeat. Writes end at `close` (data in
the page cache, no fsync) and reads come from the page cache, so both measure the CPU cost of
HDF5 and its filters, not the disk. Run with OMP_NUM_THREADS=1.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
import torch.nn.functional as F

os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")

# (name, compression, level, shuffle)
FILTERS: list[tuple[str, str | None, int | None, bool]] = [
    ("none", None, None, False),
    ("lzf", "lzf", None, False),
    ("lzf+shuf", "lzf", None, True),
    ("gzip1", "gzip", 1, False),
    ("gzip1+shuf", "gzip", 1, True),
    ("gzip4", "gzip", 4, False),
    ("gzip4+shuf", "gzip", 4, True),
    ("gzip6", "gzip", 6, False),
    ("gzip6+shuf", "gzip", 6, True),
]
# the stores' settings today (wsss.store): lzf with h5py's chunks, cam_lowres contiguous raw
CURRENT = {"cam": "lzf/auto", "cam_lowres": "none", "seg": "lzf/auto", "label": "lzf/auto",
           "pred": "lzf/auto"}

DATASETS = {
    # name: images, mean (H, W), mean labelled classes per image, classes, emulated as
    "voc": {"label": "VOC train_aug", "images": 10582, "hw": (372, 496), "k": 1.5,
            "classes": 20, "emulate": "voc"},
    "coco": {"label": "COCO 2014 train", "images": 82081, "hw": (484, 578), "k": 2.9,
             "classes": 80, "emulate": "coco"},
}
EMULATE = {
    # target (H, W), classes (seg planes - 1)
    "voc": {"hw": (375, 500), "classes": 20},
    "coco": {"hw": (480, 640), "classes": 80},
}
CAM_STRIDE = 16          # ResNet-50 OS16 (baseline, IRN) and ViT-B/16 (FSR)
CAM_SCALES = (1.0, 0.5, 1.5, 2.0)       # workflow/configs/voc.yaml, baseline
SEG_SCALES = (1.0, 1.25, 1.5)           # voc.yaml, fsr (flip_sum_max)
DEEPLAB_STRIDE = 8                      # DeepLabV2 ResNet-101 OS8
DEEPLAB_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5)


# ---------------------------------------------------------------------------- options


def options(ndim: int) -> list[dict[str, Any]]:
    """Every filter × chunking option for arrays of `ndim` dimensions."""
    chunkings = ["auto", "plane", "whole"] if ndim == 3 else ["auto", "whole"]
    out = []
    for name, comp, level, shuffle in FILTERS:
        for chunking in ["contiguous"] if comp is None else chunkings:
            label = name if comp is None else f"{name}/{chunking}"
            out.append({"name": label, "filter": name, "compression": comp, "level": level,
                        "shuffle": shuffle, "chunking": chunking, "libver": None})
    # the stores' option in a file of the newer format (libver="latest", HDF5 >= 1.10 readers):
    # compact groups and chunk indexes; only the file's overhead differs
    out.append({**out[1], "name": out[1]["name"] + "@latest", "libver": "latest"})
    return out


def _dataset_kwargs(opt: dict[str, Any], shape: tuple[int, ...]) -> dict[str, Any]:
    if opt["compression"] is None:
        return {}
    kw: dict[str, Any] = {"compression": opt["compression"], "shuffle": opt["shuffle"]}
    if opt["level"] is not None:
        kw["compression_opts"] = opt["level"]
    if opt["chunking"] == "plane":
        kw["chunks"] = (1, *shape[1:])
    elif opt["chunking"] == "whole":
        kw["chunks"] = tuple(shape)
    return kw  # "auto": h5py picks the chunks (as the stores do today)


def write_file(path: Path, arrays: dict[str, np.ndarray], opt: dict[str, Any],
               member: str | None) -> float:
    """Write `arrays` (a group per id holding `member`, or a dataset per id); seconds."""
    t0 = time.perf_counter()
    with h5py.File(path, "w", locking=False, libver=opt["libver"]) as f:
        for image_id, a in arrays.items():
            parent, name = (f.create_group(image_id), member) if member else (f, image_id)
            parent.create_dataset(name, data=a, **_dataset_kwargs(opt, a.shape))
    return time.perf_counter() - t0


def read_file(path: Path, ids: Sequence[str], member: str | None) -> float:
    """Open, read every image's array, close; seconds."""
    t0 = time.perf_counter()
    with h5py.File(path, "r", locking=False) as f:
        for image_id in ids:
            ds = f[image_id][member] if member else f[image_id]
            ds[()]
    return time.perf_counter() - t0


def storage(path: Path, ids: Sequence[str], member: str | None,
            planes: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Bytes the arrays take on disk (and, for plane chunks, split by `planes` masks)."""
    total, chunks, split = 0, None, {}
    with h5py.File(path, "r", locking=False) as f:
        for n, image_id in enumerate(ids):
            ds = f[image_id][member] if member else f[image_id]
            total += ds.id.get_storage_size()
            if n == 0:
                chunks = ds.chunks
            if planes is not None and ds.chunks is not None and ds.chunks[0] == 1 \
                    and ds.ndim == 3 and ds.chunks[1:] == ds.shape[1:]:
                sizes = np.array([ds.id.get_chunk_info(i).size for i in range(ds.shape[0])])
                for key, mask in planes[image_id].items():
                    b, p = split.get(key, (0, 0))
                    split[key] = (b + int(sizes[mask].sum()), p + int(mask.sum()) * ds.shape[1]
                                  * ds.shape[2])
    return {"data_bytes": total, "chunks_first": chunks,
            "plane_split": {k: b / p for k, (b, p) in split.items()} or None}


def bench_kind(mode: str, kind: str, arrays: dict[str, np.ndarray], member: str | None,
               repeats: int, tmp: Path, planes: dict[str, dict[str, np.ndarray]] | None = None,
               log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """All options on one kind's arrays: sizes once, timings `repeats` times round-robin."""
    ids = list(arrays)
    first = arrays[ids[0]]
    opts = options(first.ndim)
    raw = sum(a.nbytes for a in arrays.values())
    pixels_planes = sum(a.size for a in arrays.values())
    writes: dict[str, list[float]] = {o["name"]: [] for o in opts}
    reads: dict[str, list[float]] = {o["name"]: [] for o in opts}
    info: dict[str, dict[str, Any]] = {}
    for rep in range(repeats):
        for opt in opts:
            path = tmp / f"{mode}-{kind}.h5"
            writes[opt["name"]].append(write_file(path, arrays, opt, member))
            reads[opt["name"]].append(read_file(path, ids, member))
            if rep == 0:
                info[opt["name"]] = {**storage(path, ids, member, planes),
                                     "file_bytes": path.stat().st_size}
            path.unlink()
    n = len(ids)
    rows = []
    for opt in opts:
        i = info[opt["name"]]
        w, r = statistics.median(writes[opt["name"]]), statistics.median(reads[opt["name"]])
        rows.append({
            "mode": mode, "kind": kind, "option": opt["name"], "filter": opt["filter"],
            "chunking": opt["chunking"], "images": n, "first_shape": list(first.shape),
            "chunks_first": list(i["chunks_first"]) if i["chunks_first"] else None,
            "raw_bytes_per_image": raw / n,
            "data_bytes_per_image": i["data_bytes"] / n,
            "file_bytes_per_image": i["file_bytes"] / n,
            "ratio": raw / i["data_bytes"],
            "bytes_per_pixel_plane": i["data_bytes"] / pixels_planes,
            "plane_split": i["plane_split"],
            "write_MBps": raw / w / 1e6, "read_MBps": raw / r / 1e6,
            "write_s": writes[opt["name"]], "read_s": reads[opt["name"]],
        })
    print_table(rows, log)
    return rows


def print_table(rows: list[dict[str, Any]], log: Callable[[str], None] = print) -> None:
    r0 = rows[0]
    log(f"\n[{r0['mode']}] {r0['kind']}: {r0['images']} images, raw "
        f"{r0['raw_bytes_per_image'] / 1e3:.1f} kB/image, first array {tuple(r0['first_shape'])}")
    log(f"{'option':22s} {'kB/img data':>11s} {'kB/img file':>11s} {'ratio':>6s} "
        f"{'B/px/plane':>10s} {'write MB/s':>10s} {'read MB/s':>10s}  chunks(first)")
    for r in rows:
        log(f"{r['option']:22s} {r['data_bytes_per_image'] / 1e3:11.2f} "
            f"{r['file_bytes_per_image'] / 1e3:11.2f} {r['ratio']:6.2f} "
            f"{r['bytes_per_pixel_plane']:10.4f} {r['write_MBps']:10.1f} "
            f"{r['read_MBps']:10.1f}  {tuple(r['chunks_first']) if r['chunks_first'] else '-'}")


# ---------------------------------------------------------------------------- reading stores


def load_member(path: Path, member: str | None, limit: int | None = None
                ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """{id: array} of one member of every image (and {id: keys} for CAM stores)."""
    arrays, keys = {}, {}
    with h5py.File(path, "r", locking=False) as f:
        ids = json.loads(f.attrs["ids"])[:limit]
        for image_id in ids:
            if member:
                g = f[image_id]
                arrays[image_id] = g[member][()]
                keys[image_id] = g["keys"][()]
            else:
                arrays[image_id] = f[image_id][()]
    return arrays, keys


def overhead_per_image(path: Path) -> dict[str, float]:
    """(file size - bytes of every dataset's data) / images of a real store: the HDF5 cost of
    the layout (groups, object headers, chunk indexes, keys' own data is counted as data)."""
    with h5py.File(path, "r", locking=False) as f:
        ids = json.loads(f.attrs["ids"])
        data = 0

        def visit(_name, obj):
            nonlocal data
            if isinstance(obj, h5py.Dataset):
                data += obj.id.get_storage_size()

        f.visititems(visit)
    size = path.stat().st_size
    return {"images": len(ids), "file_bytes": size, "data_bytes": data,
            "overhead_per_image": (size - data) / len(ids)}


# ---------------------------------------------------------------------------- emulation


def _views(src: torch.Tensor, hw: tuple[int, int], stride: int, scales: Sequence[float],
           unit: int = 1) -> list[list[torch.Tensor]]:
    """Per scale, [view, mirror] maps at the output size (⌈H/unit⌉×⌈W/unit⌉) of one image's
    P×h×w `src`: sampled at the cell centres of the stride-`stride` grid of the scaled view,
    upsampled bilinearly to the extent the cells cover, cropped, the mirror flipped back (the
    pipeline's `multiscale_maps` / `view_maps` geometry)."""
    big_h, big_w = hw
    oh, ow = math.ceil(big_h / unit), math.ceil(big_w / unit)
    out = []
    for s in scales:
        vh, vw = max(1, round(big_h * s)), max(1, round(big_w * s))
        ch, cw = math.ceil(vh / stride), math.ceil(vw / stride)
        gy = 2 * (torch.arange(ch) + 0.5) * stride / vh - 1
        gx = 2 * (torch.arange(cw) + 0.5) * stride / vw - 1
        grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1)[None].float()
        eh = max(oh, -(-ch * stride * big_h // (vh * unit)))
        ew = max(ow, -(-cw * stride * big_w // (vw * unit)))
        pair = []
        for mirrored in (False, True):
            x = src.flip(-1) if mirrored else src
            cells = F.grid_sample(x[None], grid, mode="bilinear", padding_mode="border",
                                  align_corners=False)
            up = F.interpolate(cells, size=(eh, ew), mode="bilinear",
                               align_corners=False)[0, :, :oh, :ow]
            pair.append(up.flip(-1) if mirrored else up)
        out.append(pair)
    return out


def emulate_cam(cam: np.ndarray, hw: tuple[int, int], unit: int = 1) -> np.ndarray:
    """K×H×W float16 CAM: the sum over scales and mirrors, each plane divided by its max."""
    src = torch.from_numpy(cam.astype(np.float32))
    total = sum(v for pair in _views(src, hw, CAM_STRIDE, CAM_SCALES, unit) for v in pair)
    peak = total.flatten(1).amax(dim=1).clamp_min(0) + 1e-5
    return (total / peak[:, None, None]).numpy().astype(np.float16)


def _logits(seg: np.ndarray) -> np.ndarray:
    """Per-view logits whose flip_sum_max fusion gives back about `seg`: the stored p is the
    softmax of (view + mirror) logits, so half of log p (up to a per-pixel constant)."""
    return 0.5 * np.log(np.clip(seg.astype(np.float32), 1e-8, 1.0))


def _absent_variants(planes: np.ndarray, need: int) -> list[np.ndarray]:
    """`need` absent-class logit planes from the image's own absent planes, cycled through
    flips and shifts so that no two are identical."""
    out = []
    if len(planes) == 0:
        return out
    h, w = planes.shape[1:]
    transforms = [
        lambda p: p, lambda p: p[::-1], lambda p: p[:, ::-1], lambda p: p[::-1, ::-1],
        lambda p: np.roll(p, h // 3, 0), lambda p: np.roll(p, w // 3, 1),
        lambda p: np.roll(p[::-1], w // 2, 1), lambda p: np.roll(p[:, ::-1], h // 2, 0),
    ]
    i = 0
    while len(out) < need:
        plane = planes[i % len(planes)]
        t = transforms[(i // len(planes)) % len(transforms)]
        shift = i // (len(planes) * len(transforms))  # beyond 8 variants: extra shifts
        out.append(np.roll(t(plane), (shift * 7, shift * 11), (0, 1)))
        i += 1
    return out


def emulate_seg(seg: np.ndarray, keys: np.ndarray, classes: int, hw: tuple[int, int]
                ) -> tuple[np.ndarray, np.ndarray]:
    """(C+1)×H×W float16 probabilities (FSR's flip_sum_max fusion) with background first, the
    image's classes next, then absent classes; and the mask of present planes."""
    lg = _logits(seg)
    present = np.r_[0, np.asarray(keys, np.int64) + 1]
    absent = np.setdiff1d(np.arange(len(lg)), present)
    planes = [lg[p] for p in present] + _absent_variants(lg[absent], classes + 1 - len(present))
    src = torch.from_numpy(np.ascontiguousarray(np.stack(planes)))
    fused = None
    for v, m in _views(src, hw, CAM_STRIDE, SEG_SCALES):
        s = v + m
        fused = s if fused is None else torch.maximum(fused, s)
    mask = np.zeros(classes + 1, bool)
    mask[: len(present)] = True
    return fused.softmax(dim=0).numpy().astype(np.float16), mask


def emulate_pred(seg: np.ndarray, keys: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """uint8 argmax of a DeepLab-like (stride 8, 5 scales + flip, mean of softmax) prediction
    from the image's logits (the store's class indices: 0 bg, k + 1 class k)."""
    src = torch.from_numpy(_logits(seg))
    probs = sum(v.softmax(0) + m.softmax(0)
                for v, m in _views(src, hw, DEEPLAB_STRIDE, DEEPLAB_SCALES))
    return probs.argmax(dim=0).numpy().astype(np.uint8)


def emulate_label_nearest(label: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    t = torch.from_numpy(label.astype(np.float32))[None, None]
    return F.interpolate(t, size=hw, mode="nearest")[0, 0].numpy().astype(np.uint8)


def emulate_label_crf(cam: np.ndarray, keys: np.ndarray, photo: np.ndarray) -> np.ndarray:
    """uint8 dense-CRF labels of emulated CAMs on a real photograph (constant bg 0.3)."""
    from wsss.ops.densecrf import DEFAULT_CRF, dense_crf

    up = emulate_cam(cam, photo.shape[:2]).astype(np.float32)
    probs = np.concatenate([np.full((1, *up.shape[1:]), 0.3, np.float32), up])
    planes = np.r_[0, np.asarray(keys, np.int64) + 1].astype(np.uint8)
    return planes[dense_crf(photo, probs, DEFAULT_CRF).argmax(axis=0)]


def _spread(ids: Sequence[str], n: int) -> list[str]:
    """`n` ids spread evenly over the list (every image of a store for n >= len)."""
    if n >= len(ids):
        return list(ids)
    return [ids[round(i * (len(ids) - 1) / max(1, n - 1))] for i in range(n)]


# ---------------------------------------------------------------------------- totals


def _rate(rows: list[dict[str, Any]], mode: str, kind: str, option: str) -> dict[str, Any]:
    for r in rows:
        if r["mode"] == mode and r["kind"] == kind and r["option"] == option:
            return r
    raise KeyError((mode, kind, option))


def per_image_bytes(rows: list[dict[str, Any]], ds: dict[str, Any], kind: str,
                    option: str) -> float:
    """Data bytes per image of `kind` for the dataset's mean image, from its emulation."""
    mode = ds["emulate"]
    h, w = ds["hw"]
    k, c = ds["k"], ds["classes"]
    r = _rate(rows, mode, kind, option)
    bpp = r["bytes_per_pixel_plane"]
    if kind == "cam":
        return bpp * k * h * w
    if kind == "cam_lowres":
        return bpp * k * math.ceil(h / 4) * math.ceil(w / 4)
    if kind == "seg":
        # the emulation's planes at the sample's mean K; shift K to the dataset's with the
        # present/absent rates of the same filter on plane chunks (equal without compression)
        per_px = bpp * (c + 1)
        if r["filter"] != "none":
            split = _rate(rows, mode, kind, f"{r['filter']}/plane")["plane_split"]

            def mix(kk: float) -> float:
                return (1 + kk) * split["present"] + (c - kk) * split["absent"]

            per_px *= mix(k) / mix(r["sample_k"])
        return per_px * h * w
    return bpp * h * w  # label, pred: one plane


def totals(rows: list[dict[str, Any]], overheads: dict[str, float],
           kinds: dict[str, str]) -> list[dict[str, Any]]:
    """Totals per dataset for the option per kind in `kinds` (e.g. CURRENT)."""
    out = []
    for ds in DATASETS.values():
        if not any(r["mode"] == ds["emulate"] for r in rows):
            continue
        row = {"dataset": ds["label"], "images": ds["images"]}
        for kind, option in kinds.items():
            try:
                b = per_image_bytes(rows, ds, kind, option)
            except KeyError:
                continue
            row[kind] = {"option": option, "bytes_per_image": b,
                         "total_GB": b * ds["images"] / 1e9}
        ov_cam, ov_seg, ov_lab = (overheads.get(k, 0.0) for k in ("cams", "cams_seg", "labels"))
        row["overhead_per_image"] = {"cams": ov_cam, "cams_with_seg": ov_seg, "labels": ov_lab}
        out.append(row)
    return out


def print_totals(title: str, table: list[dict[str, Any]], log: Callable[[str], None] = print
                 ) -> None:
    log(f"\n{title}")
    log(f"{'dataset':16s} {'kind':11s} {'option':16s} {'kB/image':>10s} {'total GB':>10s}")
    for row in table:
        for kind in ("cam", "cam_lowres", "seg", "label", "pred"):
            if kind in row:
                v = row[kind]
                log(f"{row['dataset']:16s} {kind:11s} {v['option']:16s} "
                    f"{v['bytes_per_image'] / 1e3:10.1f} {v['total_GB']:10.2f}")
        ov = row["overhead_per_image"]
        log(f"{row['dataset']:16s} HDF5 overhead per image: CAM store {ov['cams']:.0f} B, "
            f"with seg {ov['cams_with_seg']:.0f} B, label store {ov['labels']:.0f} B")


def print_restricted_seg(rows: list[dict[str, Any]], log: Callable[[str], None] = print
                         ) -> None:
    """What `seg` would take holding only the background and the image's labelled classes
    (the planes the seghead refiner reads on restricted, i.e. training, splits)."""
    log("\nseg restricted to background + labelled planes (present-plane rate, plane chunks):")
    for ds in DATASETS.values():
        h, w = ds["hw"]
        for r in rows:
            if r["mode"] == ds["emulate"] and r["kind"] == "seg" and r["plane_split"]:
                b = (1 + ds["k"]) * h * w * r["plane_split"]["present"]
                log(f"  {ds['label']:16s} {r['option']:18s} {b / 1e3:9.1f} kB/img "
                    f"{b * ds['images'] / 1e9:9.2f} GB  (absent planes "
                    f"{r['plane_split']['absent']:.3f}, present {r['plane_split']['present']:.3f}"
                    f" B/px)")


def report_totals(rows: list[dict[str, Any]], overheads: dict[str, float],
                  modes: Sequence[str]) -> dict[str, Any]:
    """Print the totals (current settings, every option per kind, restricted seg)."""
    current = totals(rows, overheads, CURRENT)
    print_totals("Totals, current settings (data bytes; add the HDF5 overhead per image)", current)
    for kind in ("cam", "cam_lowres", "seg", "label", "pred"):
        print(f"\nTotals of {kind} per option (GB):")
        names = [r["option"] for r in rows if r["mode"] == modes[0] and r["kind"] == kind]
        for name in names:
            cells = []
            for ds in DATASETS.values():
                if ds["emulate"] in modes:
                    b = per_image_bytes(rows, ds, kind, name)
                    cells.append(f"{ds['label']}: {b / 1e3:9.1f} kB/img "
                                 f"{b * ds['images'] / 1e9:9.2f} GB")
            print(f"  {name:18s} " + " | ".join(cells))
    print_restricted_seg(rows)
    return current


# ---------------------------------------------------------------------------- main


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=Path("/tmp/m16/results/synthetic"),
                   help="a finished run's results/<dataset> folder")
    p.add_argument("--cam-store", default="baseline/cams/train.h5")
    p.add_argument("--seg-store", default="fsr/cams/train.h5")
    p.add_argument("--label-store", default="baseline/crf/labels/train.h5")
    p.add_argument("--pred-store", default="baseline/crf/deeplab/pred/val.h5")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--emulate", nargs="*", default=["voc", "coco"], choices=list(EMULATE))
    p.add_argument("--emulate-images", type=int, default=24,
                   help="images emulated per target for cam, cam_lowres and labels")
    p.add_argument("--seg-images", type=int, nargs=2, default=[12, 6], metavar=("VOC", "COCO"),
                   help="images emulated for seg (21 / 81 planes are large)")
    p.add_argument("--photo", type=Path, default=None,
                   help="a photograph for CRF-refined emulated labels (optional)")
    p.add_argument("--skip-native", action="store_true")
    p.add_argument("--tmpdir", default=None, help="where the test files go (default: TMPDIR)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--totals-from", type=Path, default=None,
                   help="only print the totals of a previous run's --json output")
    args = p.parse_args()
    if args.totals_from is not None:
        saved = json.loads(args.totals_from.read_text())
        modes = [m for m in EMULATE if any(r["mode"] == m for r in saved["rows"])]
        report_totals(saved["rows"], saved["overheads"], modes)
        return
    torch.set_num_threads(1)
    if not args.results.is_dir():
        raise SystemExit(f"{args.results}: no such results folder")
    print(f"h5py {h5py.version.version}, HDF5 {h5py.version.hdf5_version}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, repeats {args.repeats}")

    cam_path = args.results / args.cam_store
    seg_path = args.results / args.seg_store
    label_path = args.results / args.label_store
    pred_path = args.results / args.pred_store
    cams, cam_keys = load_member(cam_path, "cam")
    segs, seg_keys = load_member(seg_path, "seg")
    labels, _ = load_member(label_path, None)
    sizes = np.array([a.shape[1:] for a in cams.values()])
    print(f"{cam_path}: {len(cams)} images, H×W mean {sizes.mean(0).round(1).tolist()}, "
          f"min {sizes.min(0).tolist()}, max {sizes.max(0).tolist()}, "
          f"K mean {np.mean([len(k) for k in cam_keys.values()]):.2f}, "
          f"zero fraction {np.mean([(a == 0).mean() for a in cams.values()]):.3f}")

    overheads = {"cams": overhead_per_image(cam_path)["overhead_per_image"],
                 "cams_seg": overhead_per_image(seg_path)["overhead_per_image"],
                 "labels": overhead_per_image(label_path)["overhead_per_image"]}
    print(f"HDF5 overhead per image in the real stores: {json.dumps(overheads)}")

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(dir=args.tmpdir) as tmp_dir:
        tmp = Path(tmp_dir)
        if not args.skip_native:
            lowres, _ = load_member(cam_path, "cam_lowres")
            preds, _ = load_member(pred_path, None)
            rows += bench_kind("native", "cam", cams, "cam", args.repeats, tmp)
            rows += bench_kind("native", "cam_lowres", lowres, "cam_lowres", args.repeats, tmp)
            rows += bench_kind("native", "seg", segs, "seg", args.repeats, tmp)
            rows += bench_kind("native", "label", labels, None, args.repeats, tmp)
            rows += bench_kind("native", "pred", preds, None, args.repeats, tmp)
            del lowres, preds

        photo = None
        if args.photo is not None:
            from PIL import Image
            photo = Image.open(args.photo).convert("RGB")
        for target in args.emulate:
            hw, classes = EMULATE[target]["hw"], EMULATE[target]["classes"]
            n_seg = args.seg_images[0 if target == "voc" else 1]
            ids = _spread(list(cams), args.emulate_images)
            t0 = time.perf_counter()
            e_cam = {i: emulate_cam(cams[i], hw) for i in ids}
            e_low = {i: emulate_cam(cams[i], hw, unit=4) for i in ids}
            sids = _spread(list(segs), n_seg)
            e_seg, masks = {}, {}
            for i in sids:
                e_seg[i], mask = emulate_seg(segs[i], seg_keys[i], classes, hw)
                masks[i] = {"present": mask, "absent": ~mask}
            lids = [i for i in ids if i in labels]
            e_lab = {i: emulate_label_nearest(labels[i], hw) for i in lids}
            pids = [i for i in ids if i in segs]
            e_pred = {i: emulate_pred(segs[i], seg_keys[i], hw) for i in pids}
            absent = np.concatenate([e_seg[i][masks[i]["absent"]].ravel()[::97] for i in sids])
            print(f"\n== emulated {target}: {hw[0]}x{hw[1]} (H×W), stride {CAM_STRIDE}, "
                  f"{classes + 1} seg planes; built in {time.perf_counter() - t0:.1f} s; "
                  f"cam zero fraction "
                  f"{np.mean([(a == 0).mean() for a in e_cam.values()]):.3f}, "
                  f"seg absent planes: median p {np.median(absent):.2e}, "
                  f"exact zeros {np.mean(absent == 0):.3f}")
            sample_k = {"cam": np.mean([len(cam_keys[i]) for i in ids]),
                        "seg": np.mean([len(seg_keys[i]) for i in sids])}
            for kind, arrays, member, planes in (
                ("cam", e_cam, "cam", None), ("cam_lowres", e_low, "cam_lowres", None),
                ("seg", e_seg, "seg", masks), ("label", e_lab, None, None),
                ("pred", e_pred, None, None),
            ):
                got = bench_kind(target, kind, arrays, member, args.repeats, tmp, planes)
                for r in got:
                    r["sample_k"] = float(sample_k.get(kind, np.nan))
                rows += got
            if photo is not None:
                img = np.asarray(photo.resize((hw[1], hw[0])), np.uint8)
                t0 = time.perf_counter()
                e_crf = {i: emulate_label_crf(cams[i], cam_keys[i], img) for i in lids}
                print(f"(CRF labels on {args.photo.name} resized to {hw[1]}x{hw[0]}: "
                      f"{time.perf_counter() - t0:.1f} s)")
                rows += bench_kind(target, "label_crf_photo", e_crf, None, args.repeats, tmp)
            del e_cam, e_low, e_seg, e_lab, e_pred

    result: dict[str, Any] = {"rows": rows, "overheads": overheads, "datasets": DATASETS,
                              "emulate": EMULATE, "current": CURRENT}
    if args.emulate:
        result["totals_current"] = report_totals(rows, overheads, args.emulate)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1, default=float) + "\n")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
