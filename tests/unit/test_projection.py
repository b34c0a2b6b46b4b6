"""Multi-image prototype learning (eq. 9-11)."""

from __future__ import annotations

import pytest
import torch

from dprotonet_core.train.data import TensorImages
from dprotonet_core.train.projection import (
    multi_image_prototype,
    nearest_feature_vector,
    project_prototypes,
    prototype_records,
)


def test_eq9_nearest_feature_vector_per_view():
    z = torch.tensor(
        [
            [[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]],  # view 1: mask 1 is nearest to p = (1, 2)
            [[1.0, 3.0], [9.0, 9.0], [0.0, 0.0]],  # view 2: mask 0
        ]
    )
    nearest, e = nearest_feature_vector(z, torch.tensor([1.0, 2.0]))
    assert e.tolist() == [1, 0]
    assert torch.equal(nearest, torch.tensor([[1.0, 1.0], [1.0, 3.0]]))


def test_eq11_is_the_mean_and_minimises_eq10():
    nearest = torch.tensor([[1.0, 1.0], [1.0, 3.0], [4.0, 2.0]])
    p = multi_image_prototype(nearest)
    assert torch.allclose(p, torch.tensor([2.0, 2.0]))
    # eq. 10: no nearby point has a smaller sum of squared distances
    cost = lambda q: ((nearest - q) ** 2).sum()  # noqa: E731
    for delta in (torch.tensor([0.1, 0.0]), torch.tensor([0.0, -0.1])):
        assert cost(p) < cost(p + delta)


def _data(tiny_config, n=8):
    torch.manual_seed(3)
    images = torch.rand(n, 3, tiny_config.input_size, tiny_config.input_size)
    labels = torch.arange(n) % 2
    return TensorImages(images, labels, ["a", "b"])


def test_r1_without_augmentation_is_single_image_projection(tiny_model, tiny_config):
    data = _data(tiny_config)
    with torch.no_grad():
        out = tiny_model(data.images)
    before = tiny_model.prototypes.detach().clone()
    result = project_prototypes(tiny_model, data, views=1, augment=None, batch_size=3)
    classes = tiny_model.prototype_classes()
    for j in range(before.shape[0]):
        # ProtoPNet's push by hand: the image of the prototype's class and the mask with the smallest s
        s = out.distances[:, :, j].clone()
        s[torch.tensor(data.labels) != classes[j]] = float("inf")
        i, mask = divmod(int(s.argmin()), s.shape[1])
        assert result.source_indices[j] == i and result.mask_indices[j] == mask
        assert torch.allclose(tiny_model.prototypes[j], out.z[i, mask], atol=1e-6)
        assert data.labels[i] == classes[j]
    assert result.views == 1 and result.images[0].dtype.name == "uint8"
    assert result.images[0].shape == (tiny_config.input_size, tiny_config.input_size, 3)


def test_views_of_identical_images_equal_single_image(tiny_model, tiny_config):
    data = _data(tiny_config)
    a = project_prototypes(tiny_model, data, views=1, update=False).prototypes
    b = project_prototypes(tiny_model, data, views=4, augment=lambda x: x.clone(), update=False).prototypes
    assert torch.allclose(a, b, atol=1e-6)


def test_augmented_views_average_and_records(tiny_model, tiny_config):
    data = _data(tiny_config)
    result = project_prototypes(tiny_model, data, views=3, augment=lambda x: (x + 0.1 * torch.rand_like(x)).clamp(0, 1))
    again = project_prototypes(tiny_model, data, views=3, augment=lambda x: (x + 0.1 * torch.rand_like(x)).clamp(0, 1),
                               update=False)
    records = prototype_records(result, ["a", "b"], tiny_model.prototype_classes().tolist())
    assert [r.class_name for r in records] == ["a", "a", "b", "b"]
    assert all(r.views == 3 and r.source_id.startswith("image_") for r in records)
    assert tiny_model.training is False and torch.isfinite(result.prototypes).all()
    assert again.prototypes.shape == result.prototypes.shape


def test_distinct_sources_gives_each_prototype_of_a_class_its_own_image():
    from dprotonet_core.train.projection import distinct_sources

    # 3 prototypes of class 0 and one of class 1, each with its 3 nearest images (rows: nearest first)
    image = torch.tensor([[5, 5, 5, 5], [6, 7, 6, 8], [7, 6, 9, 9]])
    dist = torch.tensor([[0.1, 0.2, 0.3, 0.1], [0.5, 0.6, 0.4, 0.2], [0.9, 0.7, 0.8, 0.3]])
    mask = torch.arange(12).view(3, 4)
    classes = torch.tensor([0, 0, 0, 1])
    chosen, masks, dists = distinct_sources(dist, image, mask, classes)
    # class 0: p0 takes 5 (0.1); then p2 -> 6 (0.4) is fixed before p1 -> 7 (0.6), both nearer ones being taken
    assert chosen.tolist() == [5, 7, 6, 5]  # class 1 may reuse image 5: only classes are kept apart
    assert masks.tolist() == [0, 5, 6, 3] and dists.tolist() == pytest.approx([0.1, 0.6, 0.4, 0.1])


def test_project_distinct_on_a_tiny_model(tiny_model, tiny_config):
    torch.manual_seed(0)
    images = torch.rand(12, 3, tiny_config.input_size, tiny_config.input_size)
    data = TensorImages(images, torch.tensor([0, 1] * 6))
    result = project_prototypes(tiny_model, data, views=1, update=False, distinct=True)
    classes = tiny_model.prototype_classes().tolist()
    for c in set(classes):
        own = [i for i, k in zip(result.source_indices, classes) if k == c]
        assert len(own) == len(set(own)), "two prototypes of a class share a source image"
