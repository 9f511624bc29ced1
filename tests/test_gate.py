import pytest

from edgecompress.compress.gate import GateConfig, compress_with_gate
from edgecompress.compress.prune import sparsity_report, total_sparsity
from edgecompress.compress.trainer import TrainConfig, fit
from edgecompress.core.errors import ConfigError, PruningError
from tests.compress_fixtures import tiny_cnn, tiny_splits

FINETUNE = TrainConfig(epochs=1, batch_size=32, lr=5e-3, patience=1)


def test_a_generous_budget_reaches_the_target_ratio_step_by_step():
    splits = tiny_splits()
    student = tiny_cnn((8, 16))
    config = GateConfig("channels", target_ratio=0.5, steps=2, max_accuracy_drop=100.0, finetune=FINETUNE)
    result = compress_with_gate(student, tiny_cnn((8, 16), seed=1), splits, config)
    assert [s.accepted for s in result.steps] == [True, True, True]
    assert result.steps[-1].params < 0.5 * result.steps[0].params
    assert sum(p.numel() for p in result.model.parameters()) == result.steps[-1].params
    assert "reached the target" in result.stopped and result.within_budget


def test_the_step_that_breaks_the_budget_is_rejected_and_the_last_good_model_kept():
    splits = tiny_splits(400)
    student = tiny_cnn((8, 16))
    fit(student, splits.train, splits.val, TrainConfig(epochs=4, batch_size=32, lr=1e-2))
    params = sum(p.numel() for p in student.parameters())
    config = GateConfig("channels", target_ratio=0.95, steps=1, max_accuracy_drop=0.0, finetune=FINETUNE)
    result = compress_with_gate(student, None, splits, config)  # no teacher: the budget is vs the input model
    assert [s.accepted for s in result.steps] == [True, False]
    assert sum(p.numel() for p in result.model.parameters()) == params
    assert "budget" in result.stopped and "kept step 0" in result.stopped


def test_unstructured_gate_ends_with_permanent_zeros():
    splits = tiny_splits()
    config = GateConfig("magnitude", target_ratio=0.6, steps=2, max_accuracy_drop=100.0, finetune=FINETUNE)
    result = compress_with_gate(tiny_cnn(), None, splits, config)
    assert [s.ratio for s in result.steps] == [0.0, 0.3, 0.6]
    assert total_sparsity(sparsity_report(result.model)) == pytest.approx(0.6, abs=1e-3)
    assert not any(name.endswith("_orig") for name in result.model.state_dict())


def test_a_student_already_outside_the_budget_is_reported_and_not_pruned():
    splits = tiny_splits(400)
    teacher = tiny_cnn((8, 16), seed=1)
    fit(teacher, splits.train, splits.val, TrainConfig(epochs=4, batch_size=32, lr=1e-2))
    config = GateConfig("channels", max_accuracy_drop=0.0, finetune=FINETUNE)
    result = compress_with_gate(tiny_cnn(), teacher, splits, config)  # an untrained student
    assert not result.within_budget and len(result.steps) == 1
    assert "already" in result.stopped


@pytest.mark.parametrize(
    ("options", "error"),
    [({"method": "random"}, ConfigError), ({"target_ratio": 1.0}, PruningError), ({"steps": 0}, ConfigError),
     ({"max_accuracy_drop": -1.0}, ConfigError)],
)
def test_bad_gate_options_are_refused(options, error):
    with pytest.raises(error):
        GateConfig(**options)
