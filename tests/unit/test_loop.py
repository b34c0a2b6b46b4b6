"""Trainer helpers: the stratified validation split it carves (the loaders' one) and batch-norm recalibration."""

from __future__ import annotations

import torch

from dprotonet_core.data.datasets import stratified_split
from dprotonet_core.train.data import TensorImages
from dprotonet_core.train.epochs import recalibrate_batch_norm


def test_stratified_split_keeps_class_shares_and_is_seeded():
    labels = [0] * 30 + [1] * 10
    train, val = stratified_split(labels, 0.2, seed=1)
    assert sorted(train + val) == list(range(40)) and not set(train) & set(val)
    assert sum(labels[i] == 0 for i in val) == 6 and sum(labels[i] == 1 for i in val) == 2
    assert stratified_split(labels, 0.2, seed=1) == (train, val)
    assert stratified_split(labels, 0.2, seed=2) != (train, val)


def test_recalibrate_batch_norm_sets_the_data_average(tiny_model, tiny_config):
    torch.manual_seed(0)
    images = torch.rand(10, 3, tiny_config.input_size, tiny_config.input_size)
    data = TensorImages(images, torch.zeros(10, dtype=torch.long))
    first_bn = tiny_model.backbone[1]
    first_bn.running_mean.fill_(5.0)  # two equal batches: the average of batch means is the mean
    assert recalibrate_batch_norm(tiny_model, data, batch_size=5, device=torch.device("cpu")) == 4
    with torch.no_grad():
        conv = tiny_model.backbone[0]((images - tiny_model.mean) / tiny_model.std)
    assert torch.allclose(first_bn.running_mean, conv.mean(dim=(0, 2, 3)), atol=1e-5)
    assert first_bn.momentum == 0.1 and not tiny_model.training
