"""The zoo's MobileNetV2 for phones: full width, depthwise convolutions, any digits size."""

import torch

from edgecompress.source.zoo import build_model


def test_wide_digits_mobilenet_is_full_width_with_depthwise_convs_and_takes_a_48px_digit():
    model = build_model("mobilenetv2-digits-wide").eval()
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    depthwise = [c for c in convs if c.groups == c.in_channels > 1]
    assert convs[0].in_channels == 1 and convs[0].stride == (2, 2)
    assert len(depthwise) == 17 and max(c.out_channels for c in convs) == 1280
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 48, 48)).shape == (1, 10)
