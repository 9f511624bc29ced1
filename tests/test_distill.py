import numpy as np
import pytest
import torch
from torch.nn import functional as F

from edgecompress.compress.distill import DistillConfig, DistillationLoss, distill, kd_loss
from edgecompress.compress.trainer import TrainConfig, accuracy, best_checkpoint_path, fit
from edgecompress.source.data import LabelledArrays
from edgecompress.core.errors import DistillationError, TrainingError
from tests.compress_fixtures import tiny_cnn, tiny_splits

FAST = TrainConfig(epochs=2, batch_size=32, lr=5e-3, patience=2)


def logits_pair(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(6, 10, generator=generator), torch.randn(6, 10, generator=generator), torch.arange(6)


def test_alpha_one_is_plain_cross_entropy():
    student, teacher, labels = logits_pair()
    assert torch.allclose(kd_loss(student, teacher, labels, 1.0, 4.0), F.cross_entropy(student, labels))


def test_alpha_zero_is_temperature_scaled_kl_to_the_teacher():
    student, teacher, labels = logits_pair()
    t = 3.0
    expected = t * t * F.kl_div(F.log_softmax(student / t, 1), F.softmax(teacher / t, 1), reduction="batchmean")
    assert torch.allclose(kd_loss(student, teacher, labels, 0.0, t), expected, atol=1e-6)


def test_soft_loss_vanishes_when_student_matches_teacher():
    _, teacher, labels = logits_pair()
    assert float(kd_loss(teacher.clone(), teacher, labels, 0.0, 4.0)) == pytest.approx(0.0, abs=1e-6)


def test_mixed_loss_is_the_weighted_sum_of_both_ends():
    student, teacher, labels = logits_pair()
    mixed = kd_loss(student, teacher, labels, 0.3, 2.0)
    ends = 0.3 * kd_loss(student, teacher, labels, 1.0, 2.0) + 0.7 * kd_loss(student, teacher, labels, 0.0, 2.0)
    assert torch.allclose(mixed, ends, atol=1e-6)


def test_feature_distillation_learns_an_adapter_where_channels_differ():
    splits = tiny_splits()
    teacher, student = tiny_cnn((8, 16), seed=1), tiny_cnn((4, 8))
    config = DistillConfig(alpha=0.5, feature_pairs=(("features.1", "features.1"),))
    loss = DistillationLoss(student, teacher, config, splits.train)
    adapter = loss.adapters[0]
    assert isinstance(adapter, torch.nn.Conv2d) and (adapter.in_channels, adapter.out_channels) == (4, 8)
    before = adapter.weight.detach().clone()
    from edgecompress.compress.trainer import fit as train

    train(student, splits.train, splits.val, FAST, loss, extra_modules=loss.adapters)
    loss.close()
    assert not torch.equal(before, adapter.weight.detach())


def test_distillation_moves_the_student_towards_the_teacher():
    splits = tiny_splits()
    teacher, student = tiny_cnn((8, 16), seed=1), tiny_cnn((4, 8))
    x = torch.from_numpy(splits.val.x)

    def soft_gap() -> float:
        with torch.no_grad():
            return float(kd_loss(student.eval()(x), teacher.eval()(x), None, 0.0, 1.0))

    before = soft_gap()
    config = TrainConfig(epochs=4, batch_size=32, lr=1e-2, patience=4)
    distill(student, teacher, splits.train, splits.val, config, DistillConfig(alpha=0.0, temperature=1.0))
    assert soft_gap() < 0.7 * before


def test_soft_only_distillation_needs_no_labels():
    splits = tiny_splits()
    unlabelled = LabelledArrays(splits.train.x, np.full(len(splits.train), -1))
    result = distill(tiny_cnn(), tiny_cnn((8, 16), seed=1), unlabelled, splits.val, FAST, DistillConfig(alpha=0.0))
    assert result.epochs_run >= 1 and result.best_val_accuracy >= 0


def test_hard_label_loss_without_labels_is_refused():
    splits = tiny_splits()
    unlabelled = LabelledArrays(splits.train.x, np.full(len(splits.train), -1))
    with pytest.raises(DistillationError, match="alpha = 0"):
        distill(tiny_cnn(), tiny_cnn(seed=1), unlabelled, splits.val, FAST, DistillConfig(alpha=0.5))


def test_teacher_and_student_with_different_output_sizes_are_refused():
    from edgecompress.source.zoo import PlainCNN

    splits = tiny_splits()
    with pytest.raises(DistillationError, match="number of classes"):
        distill(PlainCNN((4,), num_classes=7, in_channels=1), tiny_cnn(), splits.train, splits.val, FAST)


def test_unknown_feature_layer_is_refused_with_close_names():
    splits = tiny_splits()
    config = DistillConfig(feature_pairs=(("feature.1", "features.1"),))
    with pytest.raises(DistillationError, match="no layer named .feature.1. .* did you mean features.1"):
        DistillationLoss(tiny_cnn(), tiny_cnn(seed=1), config, splits.train)


@pytest.mark.parametrize("options", [{"alpha": 1.5}, {"temperature": 0.0}, {"feature_weight": -1.0}])
def test_out_of_range_distillation_options_are_refused(options):
    with pytest.raises(DistillationError):
        DistillConfig(**options)


class _Interrupt(Exception):
    pass


def test_resumed_training_ends_with_the_same_weights_as_an_uninterrupted_run(tmp_path):
    splits = tiny_splits()
    config = TrainConfig(epochs=3, batch_size=32, lr=5e-3, patience=3)
    reference = tiny_cnn()
    fit(reference, splits.train, splits.val, config)

    calls = {"n": 0}

    def crashing_loss(logits, batch):
        calls["n"] += 1
        if calls["n"] == 6:  # in the middle of the second epoch (4 batches per epoch)
            raise _Interrupt
        return F.cross_entropy(logits, batch.labels)

    checkpoint = tmp_path / "run.pt"
    with pytest.raises(_Interrupt):
        fit(tiny_cnn(), splits.train, splits.val, config, crashing_loss, checkpoint=checkpoint)
    resumed = tiny_cnn(seed=5)  # different initial weights: everything must come from the checkpoint
    result = fit(resumed, splits.train, splits.val, config, checkpoint=checkpoint)
    assert result.resumed_from_epoch == 1
    for name, tensor in reference.state_dict().items():
        assert torch.allclose(tensor.float(), resumed.state_dict()[name].float()), name


def test_best_validation_weights_are_kept_on_disk(tmp_path):
    splits = tiny_splits()
    model = tiny_cnn()
    result = fit(model, splits.train, splits.val, FAST, checkpoint=tmp_path / "run.pt")
    best = tiny_cnn(seed=3)
    best.load_state_dict(torch.load(best_checkpoint_path(tmp_path / "run.pt"), weights_only=True))
    assert accuracy(best, splits.val) == pytest.approx(result.best_val_accuracy)


def test_checkpoint_of_a_different_run_is_refused(tmp_path):
    splits = tiny_splits()
    fit(tiny_cnn(), splits.train, splits.val, FAST, checkpoint=tmp_path / "run.pt")
    with pytest.raises(TrainingError, match="different model"):
        fit(tiny_cnn((4, 16)), splits.train, splits.val, FAST, checkpoint=tmp_path / "run.pt")
