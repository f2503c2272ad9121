import math

import torch

from iqa_adapter.projection import LinearProjection, MLPProjection, quality_features


def test_flag_and_encoding_layout_by_hand():
    z = torch.tensor([[0.5, -0.25]])
    assert torch.equal(quality_features(z, flag_feature=False, encoding_frequencies=0), z)
    assert torch.equal(
        quality_features(z, flag_feature=True, encoding_frequencies=0), torch.tensor([[0.5, -0.25, 1.0]])
    )
    encoded = quality_features(z, flag_feature=True, encoding_frequencies=2)
    v = [0.5, -0.25, 1.0]
    sines = [math.sin(2**level * math.pi * x) for x in v for level in range(2)]
    cosines = [math.cos(2**level * math.pi * x) for x in v for level in range(2)]
    assert encoded.shape == (1, 3 * 5)
    assert torch.allclose(encoded, torch.tensor([v + sines + cosines]), atol=1e-6)


def test_projections_make_normalised_tokens_with_official_parameter_names():
    linear = LinearProjection(feature_dim=3, num_tokens=2, cross_attention_dim=16)
    mlp = MLPProjection(feature_dim=3, num_tokens=2, cross_attention_dim=16, hidden_dim=8)
    assert set(linear.state_dict()) == {"proj.weight", "proj.bias", "norm.weight", "norm.bias"}
    assert set(mlp.state_dict()) == {
        "proj.0.weight",
        "proj.0.bias",
        "proj.2.weight",
        "proj.2.bias",
        "norm.weight",
        "norm.bias",
    }
    for module in (linear, mlp):
        tokens = module(torch.randn(5, 3))
        assert tokens.shape == (5, 2, 16)
        assert torch.allclose(tokens.mean(-1), torch.zeros(5, 2), atol=1e-5)  # LayerNorm over the width
