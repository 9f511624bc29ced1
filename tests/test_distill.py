import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from edgecompress.compress.batch import Batch
from edgecompress.compress.distill import DistillConfig, DistillationLoss, distill, kd_loss, predict
from edgecompress.compress.trainer import TrainConfig, accuracy, best_checkpoint_path, fit
from edgecompress.source.data import LabelledArrays
from edgecompress.core.errors import DistillationError, TrainingError
from tests.compress_fixtures import tiny_cnn, tiny_splits
from tests.quant_models import ridge_digits_net

FAST = TrainConfig(epochs=2, batch_size=32, lr=5e-3, patience=2)


def logits_pair(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(6, 10, generator=generator), torch.randn(6, 10, generator=generator), torch.arange(6)


# Hand-made logits (2 samples, 3 classes) and the loss computed directly from its definition,
# in float64 and plain Python: alpha * CE(student, y) + (1 - alpha) * T^2 * KL(p_teacher^T || p_student^T).
STUDENT = [[2.0, 1.0, -1.0], [0.5, -0.5, 3.0]]
TEACHER = [[3.0, 0.0, -2.0], [-1.0, 1.0, 2.0]]
LABELS = [1, 2]


def _softmax(row: list[float], temperature: float) -> list[float]:
    exps = [math.exp(v / temperature) for v in row]
    return [e / sum(exps) for e in exps]


def direct_kd_loss(alpha: float, temperature: float) -> float:
    cross_entropy = sum(-math.log(_softmax(s, 1.0)[y]) for s, y in zip(STUDENT, LABELS)) / len(STUDENT)
    kl = sum(
        sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(_softmax(t, temperature), _softmax(s, temperature)))
        for s, t in zip(STUDENT, TEACHER)
    ) / len(STUDENT)
    return alpha * cross_entropy + (1 - alpha) * temperature**2 * kl


@pytest.mark.parametrize("alpha, temperature", [(0.0, 1.0), (0.0, 4.0), (0.3, 2.0), (0.7, 4.0), (1.0, 4.0)])
def test_loss_is_alpha_ce_plus_one_minus_alpha_t_squared_kl(alpha, temperature):
    loss = kd_loss(torch.tensor(STUDENT, dtype=torch.float64), torch.tensor(TEACHER, dtype=torch.float64),
                   torch.tensor(LABELS), alpha, temperature)
    assert float(loss) == pytest.approx(direct_kd_loss(alpha, temperature), rel=1e-9)


def test_alpha_one_is_plain_cross_entropy_whatever_the_teacher_says():
    student, teacher, labels = logits_pair()
    assert torch.allclose(kd_loss(student, teacher, labels, 1.0, 4.0), F.cross_entropy(student, labels))
    assert torch.equal(kd_loss(student, teacher, labels, 1.0, 4.0), kd_loss(student, -teacher, labels, 1.0, 4.0))


def test_soft_loss_vanishes_when_student_matches_teacher():
    _, teacher, labels = logits_pair()
    assert float(kd_loss(teacher.clone(), teacher, labels, 0.0, 4.0)) == pytest.approx(0.0, abs=1e-6)
    student, _, _ = logits_pair(seed=1)
    assert float(kd_loss(student, teacher, labels, 0.0, 4.0)) > 0.1  # and only then


def test_t_squared_keeps_soft_gradients_the_same_size_at_any_high_temperature():
    """Hinton's reason for T^2: at high T the soft gradient tends to (s - t) / (classes * batch), free of T."""
    student, teacher, _ = logits_pair()
    student, teacher = student - student.mean(1, keepdim=True), teacher - teacher.mean(1, keepdim=True)
    limit = (student - teacher) / (student.shape[1] * student.shape[0])
    for temperature in (20.0, 40.0):
        logits = student.clone().requires_grad_(True)
        kd_loss(logits, teacher, None, 0.0, temperature).backward()
        assert torch.allclose(logits.grad, limit, rtol=0.05, atol=2e-4), temperature


@pytest.mark.parametrize("feature_pairs", [(), (("features.1", "features.1"),)], ids=["cached teacher", "feature pairs"])
def test_gradients_reach_the_student_and_never_the_teacher(feature_pairs):
    splits = tiny_splits()
    teacher, student = tiny_cnn((8, 16), seed=1), tiny_cnn((4, 8))
    loss = DistillationLoss(student, teacher, DistillConfig(alpha=0.5, feature_pairs=feature_pairs), splits.train)
    batch = Batch(torch.from_numpy(splits.train.x[:16]), torch.from_numpy(splits.train.y[:16]), torch.arange(16))
    student.train()
    loss(student(batch.inputs), batch).backward()
    loss.close()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in loss.adapters.parameters())


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


def test_soft_only_distillation_without_labels_validates_on_agreement_with_the_teacher():
    splits = tiny_splits()
    teacher, student = ridge_digits_net(), tiny_cnn()  # a 97%-accurate teacher, fitted in closed form
    unlabelled = LabelledArrays(splits.train.x, np.full(len(splits.train), -1))
    unlabelled_val = LabelledArrays(splits.val.x, np.full(len(splits.val), -1))
    teacher_top1 = LabelledArrays(splits.val.x, predict(teacher, splits.val.x).argmax(1).numpy())
    before = accuracy(student, teacher_top1)
    config = TrainConfig(epochs=6, batch_size=16, lr=2e-2, patience=6)
    result = distill(student, teacher, unlabelled, unlabelled_val, config, DistillConfig(alpha=0.0, temperature=1.0))
    assert result.best_val_accuracy == pytest.approx(accuracy(student, teacher_top1))  # the kept weights' agreement
    assert result.best_val_accuracy >= before + 25  # measured: 10% (chance) -> 50%


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


def test_training_inside_torch_no_grad_trains_as_it_does_outside():
    """A caller under torch.no_grad() (an evaluation helper, a benchmark) gets the same trained model, not a RuntimeError."""
    splits = tiny_splits()
    config = TrainConfig(epochs=3, batch_size=32, lr=1e-2, patience=3)
    plain, guarded = tiny_cnn((4, 8), seed=3), tiny_cnn((4, 8), seed=3)
    expected = fit(plain, splits.train, splits.val, config)
    with torch.no_grad():
        result = fit(guarded, splits.train, splits.val, config)
    assert result.history == expected.history and expected.history[-1]["loss"] < expected.history[0]["loss"]
    for name, value in plain.state_dict().items():
        assert torch.equal(guarded.state_dict()[name], value), name


def test_hard_label_distillation_without_labels_is_refused_with_the_fix():
    logits = torch.zeros(4, 10)
    with pytest.raises(DistillationError, match="needs labels"):
        kd_loss(logits, logits, None, alpha=0.5, temperature=2.0)
    assert float(kd_loss(logits, logits, None, alpha=0.0, temperature=2.0)) == 0.0  # the teacher alone needs none
