import pytest
import torch

from edgecompress.compress.prune import (
    make_permanent, prunable_layers, prune_unstructured, sparsity_report, taylor_scores, total_sparsity,
)
from edgecompress.compress.trainer import TrainConfig, fit
from edgecompress.core.errors import PruningError
from tests.compress_fixtures import tiny_cnn, tiny_splits


def weights(model):
    return [module.weight.detach() for _, module in prunable_layers(model)]


def test_global_magnitude_prunes_the_smallest_weights_of_the_whole_model():
    model = tiny_cnn()
    prune_unstructured(model, 0.5, "magnitude", "global")
    flat = torch.cat([w.flatten() for w in weights(model)])
    original = torch.cat([m.weight_orig.detach().flatten() for _, m in prunable_layers(model)])
    assert total_sparsity(sparsity_report(model)) == pytest.approx(0.5, abs=1e-3)
    assert original[flat == 0].abs().max() <= original[flat != 0].abs().min()


def test_per_layer_magnitude_prunes_each_layer_by_the_ratio():
    model = tiny_cnn()
    prune_unstructured(model, 0.4, "magnitude", "layer")
    for layer in sparsity_report(model):
        assert layer.sparsity == pytest.approx(0.4, abs=1.0 / layer.params + 1e-6), layer.name


def test_taylor_prunes_the_weights_with_the_least_first_order_loss_change():
    splits = tiny_splits()
    model = tiny_cnn()
    scores = torch.cat([s.flatten() for s in taylor_scores(model, splits.train).values()])
    prune_unstructured(model, 0.5, "taylor", "global", splits.train)
    pruned = torch.cat([w.flatten() for w in weights(model)]) == 0
    assert total_sparsity(sparsity_report(model)) == pytest.approx(0.5, abs=1e-3)
    assert scores[pruned].max() <= scores[~pruned].min()


def test_made_permanent_the_model_has_plain_weights_and_keeps_its_zeros():
    model = tiny_cnn()
    keys = set(model.state_dict())
    prune_unstructured(model, 0.3)
    make_permanent(model)
    assert set(model.state_dict()) == keys
    assert total_sparsity(sparsity_report(model)) == pytest.approx(0.3, abs=1e-3)


def test_pruned_weights_stay_zero_while_fine_tuning():
    splits = tiny_splits()
    model = tiny_cnn()
    prune_unstructured(model, 0.6)
    fit(model, splits.train, splits.val, TrainConfig(epochs=1, batch_size=32))
    assert total_sparsity(sparsity_report(make_permanent(model))) == pytest.approx(0.6, abs=1e-3)


def test_a_larger_ratio_continues_from_the_zeros_already_there():
    model = tiny_cnn()
    prune_unstructured(model, 0.3)
    first = [w == 0 for w in weights(model)]
    prune_unstructured(model, 0.6)
    assert total_sparsity(sparsity_report(model)) == pytest.approx(0.6, abs=1e-3)
    assert all(bool((w[mask] == 0).all()) for w, mask in zip(weights(model), first))


@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.5])
def test_a_ratio_outside_zero_to_one_is_refused(ratio):
    with pytest.raises(PruningError, match="outside"):
        prune_unstructured(tiny_cnn(), ratio)


def test_taylor_without_data_is_refused():
    with pytest.raises(PruningError, match="labelled data"):
        prune_unstructured(tiny_cnn(), 0.5, "taylor")


def test_taylor_gives_a_layer_forward_never_uses_no_importance():
    """Its weights have no gradient, and removing them changes no loss (it used to fail with `Tensor * None`)."""
    model, splits = tiny_cnn(), tiny_splits()
    model.unused_head = torch.nn.Linear(4, 2)  # registered, never called by forward()
    scores = taylor_scores(model, splits.train)
    assert float(scores[model.unused_head].abs().sum()) == 0.0
