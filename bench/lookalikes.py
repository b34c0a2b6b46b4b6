"""Look-alike images for the out-of-distribution benchmark (bench/ood.py): images that a colour / modality check
may let through but that are nothing a checkpoint learned from. Made here from what ships in packages
(scikit-image's sample files, pydicom's test files) or generated; nothing is downloaded.

    lookalike_sets("fundus" | "chest", size, own_images, other_images) -> {set name: (N, 3, S, S) in [0, 1]}

`own_images`: images of the checkpoint's own kind (their transforms: corner crops, blur, flips, grey);
`other_images`: images of the other kind (tinted / colour-mapped radiographs for the fundus model).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

COLOUR_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "hubble_deep_field.jpg", "ihc.png",
                 "color.png", "motorcycle_left.png", "motorcycle_right.png", "logo.png", "chessboard_RGB.png")
GREY_PICTURES = ("camera.png", "coins.png", "moon.png", "page.png", "text.png", "brick.png", "grass.png",
                 "gravel.png", "horse.png", "clock_motion.png", "cell.png", "phantom.png", "chessboard_GRAY.png",
                 "microaneurysms.png")
GREY_DICOMS = ("RG3_UNCR.dcm", "MR2_UNCR.dcm", "CT_small.dcm", "J2K_pixelrep_mismatch.dcm", "693_J2KI.dcm",
               "bad_sequence.dcm", "explicit_VR-UN.dcm", "examples_overlay.dcm", "MR-SIEMENS-DICOM-WithOverlays.dcm",
               "JPEG2000.dcm", "image_dfl.dcm", "MR_small_jpeg_ls_lossless.dcm")
COLOUR_DICOMS = ("examples_rgb_color.dcm", "US1_UNCI.dcm", "color-pl.dcm", "SC_rgb_jpeg.dcm", "examples_palette.dcm")


def _square(pixels: np.ndarray, size: int) -> torch.Tensor:
    from dprotonet_core.data.io import pixels_to_tensor, resize_square

    pixels = np.asarray(pixels)
    if pixels.ndim == 3 and pixels.shape[2] == 4:
        pixels = pixels[..., :3]
    pixels = pixels.astype(np.float32) / (255.0 if pixels.dtype == np.uint8 else max(float(pixels.max()), 1.0))
    return resize_square(pixels_to_tensor(pixels, 3), size).clamp(0, 1)


def _skimage_files(names: tuple[str, ...], size: int, grey: bool) -> list[torch.Tensor]:
    import skimage.data

    out = []
    for name in names:
        path = Path(skimage.data.data_dir) / name
        if path.is_file():
            with Image.open(path) as im:
                out.append(_square(np.asarray(im.convert("L" if grey else "RGB")), size))
    return out


def _dicoms(names: tuple[str, ...], size: int) -> list[torch.Tensor]:
    from pydicom.data import get_testdata_file

    from dprotonet_core.data.io import read_image, to_model_input

    out = []
    for name in names:
        try:
            path = get_testdata_file(name)
            if path:
                out.append(to_model_input(read_image(Path(path).read_bytes()), size)[0])
        except Exception:  # noqa: BLE001 - a codec not installed: the file is skipped, the count printed says so
            continue
    return out


def _portraits(size: int, count: int) -> list[torch.Tensor]:
    import skimage.data

    path = Path(skimage.data.data_dir) / "lfw_subset.npy"
    if not path.is_file():
        return []
    faces = np.load(path)[:count]
    return [_square((face * 255).astype(np.uint8) if face.max() <= 1 else face, size) for face in faces]


def grey(images: torch.Tensor) -> torch.Tensor:
    lum = 0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2]
    return lum[:, None].expand(-1, 3, -1, -1).contiguous()


def corner_crops(images: torch.Tensor) -> torch.Tensor:
    """The top-left quarter of each image, enlarged to the full size."""
    size = images.shape[-1]
    return F.interpolate(images[:, :, : size // 4, : size // 4], size=(size, size), mode="bilinear",
                         align_corners=False).clamp(0, 1)


def heavy_blur(images: torch.Tensor, factor: int = 28) -> torch.Tensor:
    size = images.shape[-1]
    small = F.interpolate(images, size=(size // factor, size // factor), mode="area")
    return F.interpolate(small, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)


def tinted(images: torch.Tensor) -> torch.Tensor:
    """Radiographs tinted red-orange (a fundus photograph's hue), sepia and green."""
    lum = grey(images)[:, :1]
    tints = torch.tensor([[1.0, 0.45, 0.2], [0.95, 0.8, 0.6], [0.5, 1.0, 0.5]])
    return torch.cat([lum * t.view(1, 3, 1, 1) for t in tints]).clamp(0, 1)


def colour_mapped(images: torch.Tensor) -> torch.Tensor:
    from matplotlib import colormaps

    lum = grey(images)[:, 0].numpy()
    out = [torch.from_numpy(colormaps[name](lum)[..., :3]).permute(0, 3, 1, 2).float()
           for name in ("jet", "hot", "viridis")]
    return torch.cat(out)


def red_discs(size: int) -> torch.Tensor:
    """A bright red-orange disc on black, like a fundus photograph's field of view with nothing in it."""
    coords = (torch.arange(size) + 0.5) / size - 0.5
    radius = torch.sqrt(coords[None, :] ** 2 + coords[:, None] ** 2)
    discs = []
    for edge, colour in ((0.45, (0.9, 0.35, 0.15)), (0.4, (0.8, 0.45, 0.2)), (0.3, (1.0, 0.2, 0.1))):
        disc = (radius < edge).float()
        discs.append(disc[None] * torch.tensor(colour).view(3, 1, 1))
    return torch.stack(discs)


def noise_and_blanks(size: int, colour: bool, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    channels = 3 if colour else 1
    uniform = torch.rand(3, channels, size, size, generator=g).expand(-1, 3, -1, -1)
    gaussian = (0.5 + 0.15 * torch.randn(3, channels, size, size, generator=g)).clamp(0, 1).expand(-1, 3, -1, -1)
    blanks = [torch.full((3, size, size), v) for v in (0.0, 0.5, 1.0)]
    near = [(v + 0.02 * torch.randn(channels, size, size, generator=g)).clamp(0, 1).expand(3, -1, -1)
            for v in (0.03, 0.5)]
    if colour:
        blanks.append(torch.tensor([0.05, 0.02, 0.01]).view(3, 1, 1).expand(3, size, size))
    return {"noise": torch.cat([uniform, gaussian]), "blank and near-blank": torch.stack([*blanks, *near])}


def lookalike_sets(kind: str, size: int, own: torch.Tensor, other: torch.Tensor) -> dict[str, torch.Tensor]:
    """Named look-alike sets for a checkpoint of `kind` ("fundus" or "chest")."""
    sets: dict[str, list[torch.Tensor] | torch.Tensor] = {}
    if kind == "fundus":
        photos = _skimage_files(COLOUR_PHOTOS, size, grey=False)
        sets["colour photographs (scikit-image)"] = photos
        sets["colour photographs rotated / flipped"] = [torch.rot90(p, 1, dims=(1, 2)) for p in photos[:4]] + \
            [torch.flip(p, dims=[1]) for p in photos[4:8]]
        sets["tinted chest radiographs"] = tinted(other[:4])
        sets["colour-mapped chest radiographs"] = colour_mapped(other[:4])
        sets["colour ultrasound / secondary-capture DICOMs (pydicom)"] = _dicoms(COLOUR_DICOMS, size)
        sets["red disc on black"] = red_discs(size)
        sets["textures tinted red"] = [t * torch.tensor([1.0, 0.5, 0.3]).view(3, 1, 1)
                                       for t in _skimage_files(("brick.png", "grass.png", "gravel.png"), size, True)]
        sets["corner crops of fundus photographs"] = corner_crops(own[:4])
        sets["heavily blurred fundus photographs"] = heavy_blur(own[4:8])
        sets.update(noise_and_blanks(size, colour=True))
    elif kind == "chest":
        sets["grey pictures and textures (scikit-image)"] = _skimage_files(GREY_PICTURES, size, grey=True)
        sets["grey photographs (scikit-image)"] = _skimage_files(COLOUR_PHOTOS[:6], size, grey=True)
        sets["grey portraits (scikit-image LFW)"] = _portraits(size, 4)
        sets["CT / MR / NM / bone radiograph DICOMs (pydicom)"] = _dicoms(GREY_DICOMS, size)
        sets["fundus photographs in grey"] = grey(other[:6])
        sets["radiographs upside down"] = torch.flip(own[:6], dims=[2])
        sets["radiographs mirrored left-right"] = torch.flip(own[6:12], dims=[3])
        sets["corner crops of radiographs"] = corner_crops(own[12:16])
        sets["heavily blurred radiographs"] = heavy_blur(own[16:20])
        sets.update(noise_and_blanks(size, colour=False))
    else:
        raise ValueError(f"unknown kind {kind!r}")
    return {name: torch.stack(list(images)) if isinstance(images, list) else images
            for name, images in sets.items() if len(images)}


# Held out: made after the card's score was chosen (commands/_demo_ood.py CHOSEN), from files and transforms the
# sets above do not use, to see whether the choice holds on look-alikes it was not picked on.
HELDOUT_GREY_DICOMS = ("emri_small.dcm", "MR_small.dcm", "JPGLosslessP14SV1_1s_1f_8b.dcm", "mlut_18.dcm",
                       "vlut_04.dcm", "eCT_Supplemental.dcm")
HELDOUT_COLOUR_DICOMS = ("OBXXXX1A.dcm", "gdcm-US-ALOKA-16.dcm", "examples_ybr_color.dcm",
                         "SC_jpeg_no_color_transform.dcm", "color3d_jpeg_baseline.dcm")


def inverted(images: torch.Tensor) -> torch.Tensor:
    return 1.0 - images


def mosaics(images: torch.Tensor) -> torch.Tensor:
    """2 x 2 mosaics of consecutive images, each tile a quarter-size copy."""
    size = images.shape[-1]
    half = F.interpolate(images, size=(size // 2, size // 2), mode="area")
    out = []
    for k in range(0, len(half) - 3, 4):
        top = torch.cat([half[k], half[k + 1]], dim=2)
        bottom = torch.cat([half[k + 2], half[k + 3]], dim=2)
        out.append(F.interpolate(torch.cat([top, bottom], dim=1)[None], size=(size, size), mode="nearest")[0])
    return torch.stack(out)


def hue_rotated(images: torch.Tensor) -> torch.Tensor:
    """RGB -> GBR and BRG: a fundus photograph made green or blue."""
    return torch.cat([images[:, [1, 2, 0]], images[:, [2, 0, 1]]])


def generated_colour(size: int, seed: int = 1) -> torch.Tensor:
    """An HSV colour wheel and random coloured rectangles (Mondrian-like)."""
    import colorsys

    coords = (torch.arange(size) + 0.5) / size - 0.5
    angle = (torch.atan2(coords[:, None], coords[None, :]) / (2 * np.pi)) % 1.0
    radius = torch.sqrt(coords[None, :] ** 2 + coords[:, None] ** 2).clamp(max=0.5) * 2
    wheel = torch.tensor([[colorsys.hsv_to_rgb(float(h), float(s), 1.0) for h, s in zip(hr, rr)]
                          for hr, rr in zip(angle, radius)]).permute(2, 0, 1).float()
    g = torch.Generator().manual_seed(seed)
    rects = []
    for _ in range(3):
        canvas = torch.ones(3, size, size)
        for _ in range(8):
            x0, y0 = torch.randint(0, size - 8, (2,), generator=g).tolist()
            w, h = torch.randint(8, size // 2, (2,), generator=g).tolist()
            canvas[:, y0:y0 + h, x0:x0 + w] = torch.rand(3, 1, 1, generator=g)
        rects.append(canvas)
    return torch.stack([wheel, *rects])


def generated_grey(size: int, seed: int = 2) -> torch.Tensor:
    """Grey gradients and smooth random blobs."""
    coords = (torch.arange(size) + 0.5) / size
    ramps = [coords[None, :].expand(size, size), coords[:, None].expand(size, size),
             ((coords[None, :] + coords[:, None]) / 2)]
    g = torch.Generator().manual_seed(seed)
    blobs = [heavy_blur(torch.rand(1, 1, size, size, generator=g), factor=16)[0, 0] for _ in range(3)]
    return torch.stack([t[None].expand(3, -1, -1) for t in [*ramps, *blobs]]).contiguous()


def heldout_sets(kind: str, size: int, own: torch.Tensor, other: torch.Tensor) -> dict[str, torch.Tensor]:
    """Named held-out look-alike sets for a checkpoint of `kind`: none of their files or transforms is in
    lookalike_sets, and own / other images are taken from indices lookalike_sets does not use."""
    from matplotlib import colormaps

    sets: dict[str, list[torch.Tensor] | torch.Tensor] = {}
    if kind == "fundus":
        sets["ultrasound / secondary-capture colour DICOMs (pydicom, unused files)"] = _dicoms(HELDOUT_COLOUR_DICOMS,
                                                                                             size)
        lum = grey(other[4:8])[:, 0].numpy()
        sets["chest radiographs in new colour maps (plasma, inferno, cividis)"] = torch.cat(
            [torch.from_numpy(colormaps[n](lum)[..., :3]).permute(0, 3, 1, 2).float()
             for n in ("plasma", "inferno", "cividis")])
        sets["chest radiographs in new tints (purple, cyan)"] = torch.cat(
            [grey(other[4:8])[:, :1] * torch.tensor(t).view(1, 3, 1, 1) for t in ((0.7, 0.4, 0.9), (0.3, 0.9, 0.9))])
        sets["grey pictures tinted a fundus orange"] = [p * torch.tensor([1.0, 0.45, 0.15]).view(3, 1, 1)
                                                        for p in _skimage_files(("camera.png", "moon.png",
                                                                                 "coins.png", "horse.png"), size,
                                                                                True)]
        sets["fundus photographs made green / blue"] = hue_rotated(own[8:12])
        sets["fundus photographs as negatives"] = inverted(own[12:16])
        sets["2 x 2 mosaics of fundus photographs"] = mosaics(own[16:32])
        sets["colour wheel and coloured rectangles"] = generated_colour(size)
    elif kind == "chest":
        sets["MR / CT / US / OT DICOMs (pydicom, unused files)"] = _dicoms(HELDOUT_GREY_DICOMS, size)
        sets["grey photographs (scikit-image, unused in grey)"] = _skimage_files(COLOUR_PHOTOS[6:], size, grey=True)
        sets["grey portraits (LFW, unused faces)"] = _portraits(size, 12)[4:]
        sets["fundus photographs in grey (unused photographs)"] = grey(other[6:12])
        sets["radiographs turned 90 degrees"] = torch.rot90(own[20:26], 1, dims=(2, 3))
        sets["radiographs as negatives"] = inverted(own[26:32])
        sets["2 x 2 mosaics of radiographs"] = mosaics(own[32:48])
        sets["grey gradients and smooth blobs"] = generated_grey(size)
    else:
        raise ValueError(f"unknown kind {kind!r}")
    return {name: torch.stack(list(images)) if isinstance(images, list) else images
            for name, images in sets.items() if len(images)}
