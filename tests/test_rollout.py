"""rollout() against a two-layer example worked out by hand."""

import torch

from xbench.methods.rollout import rollout


def test_two_layer_example_by_hand():
    # layer 1, two heads over 2 tokens; head mean [[1, 0], [0.3, 0.7]]
    # A_hat_1 = 0.5 * mean + 0.5 * I = [[1, 0], [0.15, 0.85]]
    layer1 = torch.tensor([[[1.0, 0.0], [0.5, 0.5]], [[1.0, 0.0], [0.1, 0.9]]])
    # layer 2: head mean [[1, 0], [0.4, 0.6]] -> A_hat_2 = [[1, 0], [0.2, 0.8]]
    layer2 = torch.tensor([[[1.0, 0.0], [0.2, 0.8]], [[1.0, 0.0], [0.6, 0.4]]])
    # R = A_hat_2 @ A_hat_1 = [[1, 0], [0.2 + 0.8 * 0.15, 0.8 * 0.85]] = [[1, 0], [0.32, 0.68]]
    expected = torch.tensor([[1.0, 0.0], [0.32, 0.68]])
    assert torch.allclose(rollout([layer1, layer2]), expected, atol=1e-6)


def test_rows_are_renormalised_by_hand():
    # one head whose rows do not sum to 1: [[2, 0], [1, 1]]; with residual 0.5:
    # 0.5 * A + 0.5 * I = [[1.5, 0], [0.5, 1.0]] -> rows normalised: [[1, 0], [1/3, 2/3]]
    # second layer the identity attention: A_hat = I, so R = first layer's matrix
    layer1 = torch.tensor([[[2.0, 0.0], [1.0, 1.0]]])
    layer2 = torch.eye(2)[None]
    expected = torch.tensor([[1.0, 0.0], [1 / 3, 2 / 3]])
    assert torch.allclose(rollout([layer1, layer2]), expected, atol=1e-6)
    # residual 0 leaves pure attention: R = I @ normalised([[2, 0], [1, 1]]) = [[1, 0], [0.5, 0.5]]
    assert torch.allclose(rollout([layer1, layer2], residual=0.0), torch.tensor([[1.0, 0.0], [0.5, 0.5]]), atol=1e-6)
