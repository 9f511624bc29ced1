"""A local Hugging Face checkpoint folder as --model: tiny BERT, sentence-transformers and ViT checkpoints built here."""

from __future__ import annotations

import json
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from edgecompress.core.errors import InputShapeError, ModelLoadError
from edgecompress.export.torch_export import export_torch
from edgecompress.source.model import load_source_model

transformers = pytest.importorskip("transformers")


def _bert_config(**overrides):
    return transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=64, max_position_embeddings=64, **overrides)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("bert")
    torch.manual_seed(0)
    transformers.BertModel(_bert_config()).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def sentence_transformers_dir(tmp_path_factory):
    """The all-MiniLM layout: the encoder at the root, then Pooling (mean) and Normalize modules."""
    path = tmp_path_factory.mktemp("minilm")
    torch.manual_seed(1)
    transformers.BertModel(_bert_config()).save_pretrained(path)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (path / "modules.json").write_text(json.dumps(modules))
    (path / "1_Pooling").mkdir()
    (path / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 32, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True}
    ))
    return path


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("vit")
    torch.manual_seed(0)
    config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=64)
    transformers.ViTModel(config).save_pretrained(path)
    return path


def _padded_batch(batch: int, length: int):
    ids = torch.randint(1, 100, (batch, length), generator=torch.Generator().manual_seed(3))
    mask = torch.ones(batch, length, dtype=torch.int64)
    mask[-1, length // 2:] = 0
    return ids, mask


def test_bert_folder_loads_as_text_encoder_with_int64_inputs(bert_dir):
    source = load_source_model(str(bert_dir), None, [])
    assert isinstance(source.module, torch.nn.Module)
    assert source.input_shapes == {"input_ids": (1, 64), "attention_mask": (1, 64)}  # 128 capped at 64 positions
    assert source.input_dtypes == {"input_ids": "int64", "attention_mask": "int64"}
    assert source.output_names == ["last_hidden_state"]  # auto without sentence-transformers files: no pooling


def test_input_shape_fixes_the_sequence_length_of_both_inputs(bert_dir):
    source = load_source_model(str(bert_dir), None, ["input_ids:1,16"])
    assert source.input_shapes == {"input_ids": (1, 16), "attention_mask": (1, 16)}


def test_mean_pooling_is_the_mask_weighted_token_mean_normalised(bert_dir):
    source = load_source_model(str(bert_dir), None, ["1,16"], pooling="mean")
    assert source.output_names == ["sentence_embedding"]
    ids, mask = _padded_batch(3, 16)
    with torch.no_grad():
        got = source.module(ids, mask)
        hidden = transformers.BertModel.from_pretrained(str(bert_dir)).eval()(input_ids=ids, attention_mask=mask).last_hidden_state
    weights = mask.unsqueeze(-1).float()
    mean = (hidden * weights).sum(1) / weights.sum(1)
    torch.testing.assert_close(got, mean / mean.norm(dim=-1, keepdim=True), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(3))


def test_cls_pooling_is_the_first_token_normalised(bert_dir):
    source = load_source_model(str(bert_dir), None, ["1,16"], pooling="cls")
    ids, mask = _padded_batch(2, 16)
    with torch.no_grad():
        got = source.module(ids, mask)
        first = source.module.encoder(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]
    torch.testing.assert_close(got, torch.nn.functional.normalize(first, dim=-1))


def test_sentence_transformers_folder_uses_its_own_pooling_and_normalisation(sentence_transformers_dir):
    source = load_source_model(str(sentence_transformers_dir), None, ["1,16"])
    assert source.output_names == ["sentence_embedding"]
    assert (source.module.pooling.mode, source.module.pooling.normalize) == ("mean", True)


def test_content_hash_changes_with_pooling_and_keys_the_export(bert_dir):
    from edgecompress.core.config import BuildConfig
    from edgecompress.pipeline.pipeline import export_key

    mean = load_source_model(str(bert_dir), None, ["1,16"], pooling="mean")
    cls = load_source_model(str(bert_dir), None, ["1,16"], pooling="cls")
    assert mean.content_hash != cls.content_hash
    assert export_key(mean, BuildConfig()) != export_key(cls, BuildConfig())


def test_text_encoder_exports_int64_inputs_with_a_dynamic_batch_equal_to_torch(bert_dir, tmp_path):
    source = load_source_model(str(bert_dir), None, ["1,16"], pooling="mean")
    info = export_torch(source.module, source.input_shapes, tmp_path / "bert.onnx",
                        input_dtypes=source.input_dtypes, output_names=source.output_names)
    model = onnx.load(str(info.path))
    int64 = onnx.TensorProto.INT64
    assert [(i.name, i.type.tensor_type.elem_type) for i in model.graph.input] == [("input_ids", int64), ("attention_mask", int64)]
    assert [o.name for o in model.graph.output] == ["sentence_embedding"]
    assert info.inputs[0].shape == (None, 16)
    ids, mask = _padded_batch(3, 16)
    got = ort.InferenceSession(str(info.path)).run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    with torch.no_grad():
        expected = source.module(ids, mask).numpy()
    assert got.shape == (3, 32)
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_vit_folder_exports_pixel_values_to_the_pooled_output(vit_dir, tmp_path):
    source = load_source_model(str(vit_dir), None, [])
    assert source.input_shapes == {"pixel_values": (1, 3, 32, 32)}
    assert source.output_names == ["pooled_output"]
    info = export_torch(source.module, source.input_shapes, tmp_path / "vit.onnx", exporter="torchscript",
                        input_dtypes=source.input_dtypes, output_names=source.output_names)
    pixels = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    got = ort.InferenceSession(str(info.path)).run(None, {"pixel_values": pixels})[0]
    with torch.no_grad():
        expected = source.module.encoder(pixel_values=torch.from_numpy(pixels)).pooler_output.numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_vit_saved_without_a_pooler_gives_its_cls_token_not_a_random_pooler(tmp_path):
    config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1,
                                    num_attention_heads=2, intermediate_size=64)
    transformers.ViTModel(config, add_pooling_layer=False).save_pretrained(tmp_path / "dino-like")
    source = load_source_model(str(tmp_path / "dino-like"), None, [])
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(source.module(pixels), source.module.encoder(pixel_values=pixels).last_hidden_state[:, 0])


def test_vit_without_pooling_exports_the_hidden_states(vit_dir):
    source = load_source_model(str(vit_dir), None, [], pooling="none")
    assert source.output_names == ["last_hidden_state"]
    with torch.no_grad():
        assert source.module(torch.zeros(2, 3, 32, 32)).shape == (2, 17, 32)  # 16 patches + CLS


def test_float_examples_are_unchanged_and_int_examples_exercise_padding():
    from edgecompress.export.torch_export import example_inputs

    shapes = {"x": (1, 3, 4), "input_ids": (1, 8), "attention_mask": (1, 8)}
    x, ids, mask = example_inputs(None, shapes, {"input_ids": "int64", "attention_mask": "int64"})
    torch.testing.assert_close(x, torch.randn((2, 3, 4), generator=torch.Generator().manual_seed(0)))
    assert ids.dtype == torch.int64 and int(ids.min()) >= 1
    assert mask.tolist() == [[1] * 8, [1] * 6 + [0] * 2]


def _write(path, name, text):
    path.mkdir(parents=True, exist_ok=True)
    (path / name).write_text(text)
    return path


@pytest.mark.parametrize("make, message", [
    (lambda tmp: _write(tmp / "empty", "README.md", "hi"), "not a Hugging Face checkpoint: no config.json"),
    (lambda tmp: _write(tmp / "bare", "config.json", json.dumps({"model_type": "bert"})), "has a config.json but no weights"),
])
def test_folder_that_is_not_a_checkpoint_is_refused(tmp_path, make, message):
    with pytest.raises(ModelLoadError, match=message):
        load_source_model(str(make(tmp_path)), None, [])


def test_unknown_model_type_is_named(tmp_path):
    folder = _write(tmp_path / "odd", "config.json", json.dumps({"model_type": "not-a-transformer"}))
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="'not-a-transformer'") as error:
        load_source_model(str(folder), None, [])
    assert ".onnx" in error.value.fix


def test_encoder_decoder_model_is_refused_by_name(tmp_path):
    config = transformers.T5Config(vocab_size=100, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
    transformers.T5Model(config).save_pretrained(tmp_path / "t5")
    with pytest.raises(ModelLoadError, match="T5Model"):
        load_source_model(str(tmp_path / "t5"), None, [])


def test_unreadable_weights_are_a_load_error(tmp_path, bert_dir):
    folder = _write(tmp_path / "broken", "config.json", (bert_dir / "config.json").read_text())
    (folder / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelLoadError, match="cannot load the checkpoint"):
        load_source_model(str(folder), None, [])


def test_missing_transformers_names_the_extra(bert_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ModelLoadError) as error:
        load_source_model(str(bert_dir), None, [])
    assert 'pip install "edgecompress[transformers]"' in error.value.fix


@pytest.mark.parametrize("model, pooling, message", [
    ("vit", "mean", "for text encoders"),
    ("onnx", "cls", "applies to Hugging Face checkpoint folders"),
])
def test_pooling_that_does_not_fit_the_model_is_refused(vit_dir, tiny_onnx, model, pooling, message):
    with pytest.raises(ModelLoadError, match=message):
        load_source_model(str(vit_dir if model == "vit" else tiny_onnx), None, [], pooling=pooling)


@pytest.mark.parametrize("shape, message", [(["1,65"], "beyond the model's 64 positions"), (["pixels:1,16"], "no input named")])
def test_text_input_shape_that_does_not_fit_is_refused(bert_dir, shape, message):
    with pytest.raises(InputShapeError, match=message):
        load_source_model(str(bert_dir), None, shape)
