"""The built-in example is a preset of options: a ResNet-style teacher, a wide student pruned to int8-friendly widths."""

from __future__ import annotations

import torch
from torch import nn

from edgecompress.compress.channels import prune_channels
from edgecompress.compress.gate import GateConfig, step_ratio
from edgecompress.core.config import BuildConfig, make_config
from edgecompress.presets.example import EXAMPLE_MODEL
from edgecompress.core.config import EXAMPLE_OPTIONS
from edgecompress.source.zoo import BasicBlock, build_model


def test_the_example_preset_applies_when_no_model_is_given():
    config = make_config({}, {})
    assert (config.student, config.prune, config.prune_ratio, config.prune_steps) == ("cnn-wide", "channels", 0.25, 1)
    assert config.epochs == EXAMPLE_OPTIONS["epochs"]


def test_the_users_options_override_the_example_preset():
    config = make_config({"prune_ratio": 0.5}, {"student": "cnn-small", "epochs": 6})
    assert (config.student, config.prune_ratio, config.epochs) == ("cnn-small", 0.5, 6)
    assert config.prune == "channels"  # what the user left unset still comes from the preset


def test_the_example_preset_leaves_a_users_own_model_alone():
    config = make_config({}, {"model": "model.onnx"})
    defaults = {key: BuildConfig.model_fields[key].default for key in EXAMPLE_OPTIONS}
    assert {key: getattr(config, key) for key in EXAMPLE_OPTIONS} == defaults


def test_the_example_teacher_is_resnet_style():
    teacher = build_model(EXAMPLE_MODEL)
    assert sum(isinstance(module, BasicBlock) for module in teacher.modules()) == 8  # ResNet-18 layout
    assert teacher(torch.zeros(2, 1, 32, 32)).shape == (2, 10)


def test_the_example_student_pruned_by_the_preset_keeps_channel_counts_in_multiples_of_16():
    config = make_config({}, {})
    student = build_model(config.student)
    gate = GateConfig(config.prune, config.prune_ratio, config.prune_steps)
    ratio = step_ratio(gate, config.prune_steps)
    prune_channels(student, torch.zeros(1, 1, 32, 32), ratio)
    widths = [module.out_channels for module in student.modules() if isinstance(module, nn.Conv2d)]
    assert widths == [48, 48, 96, 96, 192, 192]
    assert student(torch.zeros(2, 1, 32, 32)).shape == (2, 10)
