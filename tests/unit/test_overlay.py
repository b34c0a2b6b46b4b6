"""Eq. 15-18 on hand-checkable arrays; gamma edge cases; boxes of known components; legend."""

from __future__ import annotations

import numpy as np
import pytest

from dprotonet_core.explain import overlay as ov


def _stack() -> np.ndarray:
    """D = 2 vectors on 2 x 3 pixels; S = [[0, 1, 2], [3, 4, 2]]."""
    g1 = np.array([[0.0, 0.5, 1.0], [1.0, 1.0, 1.0]], np.float32)
    g2 = np.array([[0.0, 0.5, 1.0], [2.0, 3.0, 1.0]], np.float32) / np.float32(1)
    return np.stack([g1, g2 - 0.0])


def test_cam_eq15_hand_computed():
    s = ov.mask_sum(_stack())
    np.testing.assert_allclose(s, [[0, 1, 2], [3, 4, 2]])
    c = ov.cam(_stack(), gamma=2.0)
    # 1{S >= 2} S = [[0,0,2],[3,4,2]] -> N: (X - 0) / 4
    np.testing.assert_allclose(c.map, [[0, 0, 0.5], [0.75, 1.0, 0.5]])
    assert not c.empty and c.max_sum == 4.0
    np.testing.assert_array_equal(c.region, [[False, False, True], [True, True, True]])
    np.testing.assert_allclose(ov.cam(s, 2.0).map, c.map)  # the sum may be passed directly


def test_cam_gamma_zero_is_normalised_sum():
    c = ov.cam(_stack(), gamma=0.0)
    np.testing.assert_allclose(c.map, np.array([[0, 1, 2], [3, 4, 2]]) / 4)
    assert c.region.all()


def test_cam_gamma_equal_to_d_and_above_max():
    d = 10
    stack = np.ones((d, 4, 4), np.float32)
    stack[:, 0, 0] = 0.5
    at_d = ov.cam(stack, gamma=float(d))
    assert not at_d.empty and at_d.region.sum() == 15
    assert np.isfinite(at_d.map).all() and at_d.map.max() == 1.0
    above = ov.cam(stack, gamma=float(d) + 0.5)
    assert above.empty
    assert np.array_equal(above.map, np.zeros((4, 4), np.float32))
    assert not np.isnan(above.map).any()
    assert ov.decision_boxes(above) == []


def test_cam_constant_sum_never_nan():
    flat = np.full((3, 5, 5), 0.4, np.float32)
    assert np.array_equal(ov.cam(flat, 1.0).map, np.ones((5, 5), np.float32))
    assert ov.cam(np.zeros((3, 5, 5), np.float32), 0.0).map.max() == 0.0
    with pytest.raises(ValueError):
        ov.cam(flat, -1.0)


def test_heatmap_eq17_and_binary_eq18():
    x = np.full((2, 2, 3), 0.5, np.float32)
    a = np.array([[0.0, 1.0], [0.5, 0.0]], np.float32)
    lut = ov.colormap_lut("jet").astype(np.float32) / 255
    h = ov.heatmap_image(x, a, alpha=0.5, beta=0.3, colormap="jet")
    expected = np.clip(0.5 * 0.5 + 0.3 * lut[[[0, 255], [128, 0]]], 0, 1)
    np.testing.assert_allclose(h / 255.0, expected, atol=1 / 255)
    b = ov.binary_image(x, a)
    np.testing.assert_allclose(b[..., 0] / 255.0, 0.5 * a, atol=1 / 255)
    # uint8 and channel-first inputs are accepted
    assert ov.binary_image((x * 255).astype(np.uint8).transpose(2, 0, 1), a).shape == (2, 2, 3)


def test_colormaps_and_legend():
    jet = ov.colormap_lut("jet")
    assert jet.shape == (256, 3) and jet.dtype == np.uint8
    assert jet[0, 2] > 100 and jet[0, 0] < 50  # jet starts blue (RGB)
    assert jet[255, 0] > 100 and jet[255, 2] < 50  # and ends red
    for name in ov.COLORMAPS:
        assert ov.colormap_lut(name).shape == (256, 3)
    bar = ov.colorbar_image("jet", height=50, width=8)
    assert bar.shape == (50, 8, 3)
    np.testing.assert_array_equal(bar[0, 0], jet[255])  # A = 1 at the top
    np.testing.assert_array_equal(bar[-1, 0], jet[0])
    with pytest.raises(ValueError):
        ov.colormap_lut("nope")


def test_decision_boxes_of_known_components():
    region = np.zeros((20, 30), bool)
    region[2:5, 3:8] = True  # 15 px
    region[10:18, 20:26] = True  # 48 px
    region[0, 29] = True  # 1 px
    boxes = ov.decision_boxes(region)
    assert boxes[0] == ov.Box(20, 10, 26, 18, 48)
    assert boxes[1] == ov.Box(3, 2, 8, 5, 15)
    assert boxes[2] == ov.Box(29, 0, 30, 1, 1)
    assert len(ov.decision_boxes(region, min_area=2)) == 2
    assert boxes[0].as_dict() == {"x0": 20, "y0": 10, "x1": 26, "y1": 18, "area": 48}


def test_outline_image_draws_outline_and_box():
    x = np.zeros((20, 20, 3), np.uint8)
    region = np.zeros((20, 20), bool)
    region[5:15, 5:15] = True
    outline = ov.region_outline(region)
    assert outline.sum() == 36 and not outline[7, 7]
    img = ov.outline_image(x, region, thickness=1, outline_color=(0, 255, 0), box_color=(255, 0, 0))
    assert img.shape == (20, 20, 3)
    assert tuple(img[5, 5]) == (255, 0, 0)  # the box corner drawn last
    assert tuple(img[10, 10]) == (0, 0, 0)  # interior untouched


def test_the_slider_path_needs_only_the_mask_stack():
    # moving gamma / alpha / beta re-thresholds the cached stack: no model, the same images from the same inputs
    # (its speed is measured in bench/app.py, not asserted here)
    rng = np.random.default_rng(0)
    stack = rng.random((10, 224, 224), dtype=np.float32)
    x = rng.random((224, 224, 3), dtype=np.float32)
    s = ov.mask_sum(stack)
    c = ov.cam(s, 5.0)
    first = ov.heatmap_image(x, c.map), ov.binary_image(x, c.map), ov.outline_image(x, c)
    again = ov.heatmap_image(x, ov.cam(ov.mask_sum(stack), 5.0).map)
    assert all(img.shape == (224, 224, 3) and img.dtype == np.uint8 for img in first)
    assert np.array_equal(first[0], again)
    assert not np.array_equal(ov.cam(s, 6.0).map, c.map)  # a higher gamma keeps fewer pixels
