"""Prototype pooling on hand-made tensors with known answers."""

import pytest
import torch

from labeler.method.prototypes import EmptyWeightsError, class_prototypes, instance_prototypes


def test_weighted_mean_with_fractional_weights():
    # One instance on a 2x2 grid, D=2.
    features = torch.tensor([[[[1.0, 0.0], [3.0, 2.0]], [[5.0, 4.0], [7.0, 6.0]]]])
    weights = torch.tensor([[[1.0, 0.5], [0.0, 0.5]]])
    # sum(w f) = [1,0] + 0.5*[3,2] + 0.5*[7,6] = [6, 4]; sum(w) = 2
    assert torch.allclose(instance_prototypes(features, weights), torch.tensor([[3.0, 2.0]]))


def test_each_instance_pooled_with_its_own_weights():
    features = torch.arange(2 * 2 * 2 * 1, dtype=torch.float32).reshape(2, 2, 2, 1)  # values 0..7
    weights = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.25, 0.75]]])
    # instance 0 -> feature 0; instance 1 -> 0.25*6 + 0.75*7 = 6.75
    assert torch.allclose(instance_prototypes(features, weights), torch.tensor([[0.0], [6.75]]))


def test_zero_weights_is_an_error_naming_the_instance_never_nan():
    features = torch.ones(3, 2, 2, 4)
    weights = torch.ones(3, 2, 2)
    weights[1] = 0
    with pytest.raises(EmptyWeightsError) as info:
        instance_prototypes(features, weights)
    assert info.value.indices == [1]


def test_class_prototype_is_normalised_mean_of_its_shots():
    instances = torch.tensor([[2.0, 0.0], [0.0, 2.0], [0.0, -5.0], [3.0, 4.0]])
    class_index = torch.tensor([0, 0, 1, 0])
    prototypes = class_prototypes(instances, class_index, 2)
    # class 0: mean([2,0],[0,2],[3,4]) = [5/3, 2] -> normalised; class 1: [0,-1]
    expected0 = torch.tensor([5 / 3, 2.0]) / torch.tensor([5 / 3, 2.0]).norm()
    assert torch.allclose(prototypes[0], expected0)
    assert torch.allclose(prototypes[1], torch.tensor([0.0, -1.0]))
    assert torch.allclose(prototypes.norm(dim=1), torch.ones(2))


def test_class_without_instance_is_an_error():
    with pytest.raises(ValueError, match="positions \\[1\\]"):
        class_prototypes(torch.ones(2, 3), torch.tensor([0, 2]), 3)
