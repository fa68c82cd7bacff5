"""Embedded synthetic benchmark in PASCAL VOC layout, built to show the two WSSS failure modes.

Scene: one textured background (grass, sand, water or sky) with 1-3 objects drawn over it; later
objects occlude earlier ones and the mask holds only visible pixels, with a thin void (255) band
along every label boundary as in VOC. Image sides vary (default 72-112 px, mostly non-square).

Partial activation. Every class (disc, box, wedge, ring, star, cross, diamond, hexagon) has:
  * a PART: a small disc (`part_frac` of the object area, default 8 %) at a fixed, class-specific
    place in the object's own frame (disc: upper right, box: top-left corner, wedge: near the
    apex, ring: lower-right band, star: base of the upper arm, cross: end of the right arm,
    diamond: lower half, hexagon: lower left). It carries a saturated colour pair and pattern
    unique to the class (checker / bullseye / stripes; e.g. disc = yellow-black checker, wedge =
    white-red stripes). No body or background uses these colours, so the part alone identifies
    the class.
  * a BODY whose statistics are class-specific but overlap: hue drawn around a class centre in
    one shared purple-red-orange band (centres 280-378 degrees, 13-15 apart, std 15), a class-
    preferred texture (stripes, dots, smooth noise, gradient) used only half of the time, random
    size, aspect and rotation. The part is a far cheaper cue than the body, so plain CAMs peak on
    the part and miss most of the body.
  Body hues are clipped to 265-395 degrees with saturation >= 0.35, clear of every background
  (green grass, pale tan sand, blue water, light-blue sky), so a method that expands from the
  part CAN recover the whole object from low-level cues. SegmentationPart/<id>.png marks the
  visible part pixels (value k+1 for class k) so the part/body split of a CAM can be measured.

Co-occurrence leakage. `cooccur` maps a background to classes (default water -> wedge, ring).
An image containing any of those classes gets that background with probability `cooccur_prob`
(default 0.85); every other image gets it with probability `rare_prob` (default 0.05). Water
thus becomes evidence for wedge and ring, and their plain CAMs leak onto the waves.
generator.json records the mapping ("cooccurring"), each image's background
("image_backgrounds") and the realised statistics, so leakage can be measured per background.

Determinism: each image draws from np.random.default_rng((seed, split, index)), so the output is
byte-identical for the same config whatever the number of worker processes. The dataset is
written into a hidden sibling directory and renamed onto `root` only when complete.

Modules: `classes` (the class designs and the shape geometry), `config` (DEFAULTS and their
validation), `textures` (backgrounds, bodies, parts), `render` (one image), `dataset` (the
dataset on disk), `command` (the stand-alone command line and the preview sheet).
"""

from wsss.data.synthetic.classes import CLASS_SPECS, ClassSpec
from wsss.data.synthetic.command import main, write_preview
from wsss.data.synthetic.config import BACKGROUNDS, COOCCURRING, DEFAULTS, SPLITS, resolve_config
from wsss.data.synthetic.dataset import dataset_config, generate, image_id
from wsss.data.synthetic.render import Sample, render_image
from wsss.data.synthetic.textures import TEXTURES

__all__ = [
    "BACKGROUNDS",
    "CLASS_SPECS",
    "COOCCURRING",
    "DEFAULTS",
    "SPLITS",
    "TEXTURES",
    "ClassSpec",
    "Sample",
    "dataset_config",
    "generate",
    "image_id",
    "main",
    "render_image",
    "resolve_config",
    "write_preview",
]
