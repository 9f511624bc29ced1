import copy

import pytest
import torch
from torch import nn

from edgecompress.compress.channels import plan_channel_pruning, prune_channels
from edgecompress.core.errors import PruningError
from edgecompress.source.zoo import MobileNetV2, ResNet18
from tests.compress_fixtures import tiny_cnn, tiny_splits

EXAMPLE = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))


class ConcatNet(nn.Module):
    """Two branches of different widths concatenated, mixed back and added to the block input."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.left = nn.Conv2d(8, 6, 3, padding=1)
        self.right = nn.Conv2d(8, 10, 1)
        self.cat_bn = nn.BatchNorm2d(16)
        self.mix = nn.Conv2d(16, 8, 3, padding=1, bias=False)
        self.mix_bn = nn.BatchNorm2d(8)
        self.head = nn.Linear(24 * 4 * 4, 10)  # linear after a flatten of a 4x4 map of a second concat

    def forward(self, x):
        x = self.stem(x)
        branches = torch.cat([self.left(x), self.right(x)], dim=1)
        y = x + self.mix_bn(self.mix(torch.relu(self.cat_bn(branches))))
        y = torch.cat([y, branches], 1)
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 4), 1))


class MixedSplitNet(nn.Module):
    """Adds a concatenation to a single conv's output: channel i of one conv pairs with a slice of another."""

    def __init__(self):
        super().__init__()
        self.left, self.right, self.whole = nn.Conv2d(1, 6, 3), nn.Conv2d(1, 10, 3), nn.Conv2d(1, 16, 3)

    def forward(self, x):
        return (torch.cat([self.left(x), self.right(x)], 1) + self.whole(x)).mean((2, 3))


def randomized(model: nn.Module) -> nn.Module:
    """Non-trivial batch-norm statistics, so a channel's constant offset would show if it leaked."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            size = module.num_features
            module.running_mean.copy_(torch.randn(size, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(size, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(size, generator=generator) * 0.1)
    return model.eval()


def silenced(model: nn.Module, plan) -> nn.Module:
    """The original model with every dropped channel forced to zero wherever it appears."""
    copy_ = copy.deepcopy(model)
    modules = dict(copy_.named_modules())
    for name, keep in plan.kept_outputs().items():
        def hook(_module, _inputs, output, keep=keep):
            mask = torch.zeros(output.shape[1])
            mask[keep] = 1
            return output * mask.view(1, -1, *([1] * (output.dim() - 2)))

        modules[name].register_forward_hook(hook)
    return copy_


def assert_prunes_exactly(model: nn.Module, ratio: float = 0.5):
    """Pruning must compute what the original computes with the dropped channels silenced."""
    model = randomized(model)
    plan = plan_channel_pruning(model, EXAMPLE, ratio)
    reference = silenced(model, plan)
    before = sum(p.numel() for p in model.parameters())
    result = prune_channels(model, EXAMPLE, ratio)
    with torch.no_grad():
        torch.testing.assert_close(model(EXAMPLE), reference(EXAMPLE), atol=1e-5, rtol=1e-4)
    assert result.params_after < 0.5 * before
    return result


def test_plain_cnn_shrinks_and_keeps_its_function_on_kept_channels():
    assert_prunes_exactly(tiny_cnn((8, 16)))


def test_residual_adds_keep_their_channels_aligned():
    result = assert_prunes_exactly(ResNet18(num_classes=10, in_channels=1, width=8, small_input=True))
    stem_group = next(g for g in result.groups if "stem.0" in g["producers"])
    assert {"layers.0.conv2", "layers.1.conv2"} <= set(stem_group["producers"])  # one group across the adds


def test_depthwise_convs_follow_their_expansion_layer():
    model = MobileNetV2(num_classes=10, in_channels=1, width_mult=0.25, small_input=True)
    assert_prunes_exactly(model)
    depthwise = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert all(m.groups == m.in_channels == m.out_channels == m.weight.shape[0] for m in depthwise)


def test_concatenations_and_linear_after_flatten_are_followed():
    model = ConcatNet()
    assert_prunes_exactly(model)
    assert model.mix.in_channels == model.left.out_channels + model.right.out_channels
    assert model.mix.out_channels == model.stem[0].out_channels  # residual add kept aligned
    assert model.head.in_features == (model.mix.out_channels + model.mix.in_channels) * 16


def test_taylor_importance_keeps_the_channels_that_matter_for_the_loss():
    splits = tiny_splits()
    model = tiny_cnn((8, 16))
    plan = plan_channel_pruning(model, EXAMPLE, 0.5, "taylor", splits.train)
    assert all(len(group.keep) == group.size // 2 for group in plan.prunable())


def test_model_inputs_and_outputs_are_never_pruned():
    model = tiny_cnn((8, 16))
    prune_channels(model, EXAMPLE, 0.75)
    assert model.features[0][0].in_channels == 1 and model.classifier.out_features == 10


class GroupedConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3)
        self.grouped = nn.Conv2d(8, 8, 3, groups=2)

    def forward(self, x):
        return self.grouped(self.conv(x)).mean((2, 3))


class ShuffleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3)

    def forward(self, x):
        y = self.conv(x)
        n, c, h, w = y.shape
        return y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w).mean((2, 3))


class BranchyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3)

    def forward(self, x):
        return self.conv(x) if x.sum() > 0 else -self.conv(x)


@pytest.mark.parametrize(
    ("model", "message"),
    [(GroupedConvNet(), "grouped conv"), (ShuffleNet(), "cannot follow"), (BranchyNet(), "cannot trace"),
     (MixedSplitNet(), "different channel splits")],
)
def test_models_it_cannot_follow_are_refused_clearly(model, message):
    with pytest.raises(PruningError, match=message):
        prune_channels(model, EXAMPLE, 0.5)


def test_a_ratio_outside_zero_to_one_is_refused():
    with pytest.raises(PruningError, match="outside"):
        prune_channels(tiny_cnn(), EXAMPLE, 1.0)
