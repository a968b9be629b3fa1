"""Text transformer: equality with Hugging Face BERT, HF initialisation, attention layout, eager/SDPA, checkpointing."""

import json

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, BertModel

from avlformer.modeling.attention_mask import (MASK_BIAS, build_attention_mask, learned_av_mask, mask_to_bias,
                                               sparsity_loss)
from avlformer.modeling.text_transformer import TextTransformer, TextTransformerConfig, hf_bert_to_ours

torch.set_num_threads(1)

SMALL = dict(vocab_size=128, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
             max_position_embeddings=64, img_feature_dim=16)


def hf_config(**overrides):
    return BertConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=64, **overrides)


def padded_batch(seed=0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 128, (3, 12), generator=generator)
    padding = torch.ones(3, 12, dtype=torch.long)
    padding[1, 7:] = 0
    padding[2, 3:] = 0
    return ids * padding, padding


def relative_error(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_text_only_hidden_states_equal_hf_bert(implementation):
    torch.manual_seed(0)
    reference = BertModel(hf_config(), add_pooling_layer=False).eval()
    ours = TextTransformer(TextTransformerConfig(**SMALL, attn_implementation=implementation)).eval()
    missing = ours.load_state_dict(hf_bert_to_ours(reference.state_dict()), strict=False).missing_keys
    assert sorted(missing) == sorted(k for k in ours.state_dict() if k.startswith(("cls.", "bert.img_embedding")))
    ids, padding = padded_batch()
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=padding).last_hidden_state
        got = ours(ids, attention_bias=mask_to_bias(padding.float()[:, None]))
    keep = padding.bool()  # HF and upstream differ only in what masked keys get (-inf vs -10000): compare real rows
    assert relative_error(got[keep], expected[keep]) < 1e-5
    assert relative_error(got, expected) < 1e-5


def test_load_hf_bert_folder_matches_hf_mlm_logits(tmp_path):
    torch.manual_seed(1)
    reference = BertForMaskedLM(hf_config()).eval()
    reference.save_pretrained(tmp_path)
    ours = TextTransformer(TextTransformerConfig(**SMALL)).eval()
    not_provided = ours.load_hf_bert(tmp_path)
    assert not_provided == ["bert.img_embedding.bias", "bert.img_embedding.weight"]
    ids, padding = padded_batch(1)
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=padding).logits
        got = ours.logits(ours(ids, attention_bias=mask_to_bias(padding.float()[:, None])))
    keep = padding.bool()
    assert relative_error(got[keep], expected[keep]) < 1e-5
    # Untied: the LM decoder is its own tensor after loading, even though HF's was tied.
    assert ours.cls.predictions.decoder.weight.data_ptr() != ours.bert.embeddings.word_embeddings.weight.data_ptr()


def test_load_hf_bert_from_a_local_bert_model_folder(tmp_path):
    """What ``--model_name_or_path`` gives training: a local Hugging Face BertModel folder (no download), whose
    encoder then computes what HF's does; the LM head it lacks starts from the word embeddings."""
    torch.manual_seed(2)
    reference = BertModel(hf_config(), add_pooling_layer=True).eval()
    reference.save_pretrained(tmp_path)
    ours = TextTransformer(TextTransformerConfig(**SMALL)).eval()
    not_provided = ours.load_hf_bert(tmp_path)
    assert "bert.img_embedding.weight" in not_provided and "cls.predictions.transform.dense.weight" in not_provided
    assert not any(name.startswith("bert.encoder.") or name.startswith("bert.embeddings.") for name in not_provided)
    assert torch.equal(ours.cls.predictions.decoder.weight, reference.embeddings.word_embeddings.weight)
    ids, padding = padded_batch(2)
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=padding).last_hidden_state
        got = ours(ids, attention_bias=mask_to_bias(padding.float()[:, None]))
    keep = padding.bool()
    assert relative_error(got[keep], expected[keep]) < 1e-5


def test_load_hf_bert_config_errors_name_the_file(tmp_path):
    BertModel(hf_config()).save_pretrained(tmp_path)
    config_path = tmp_path / "config.json"
    data = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**data, "num_hidden_layers": "two"}))
    ours = TextTransformer(TextTransformerConfig(**SMALL))
    with pytest.raises(ValueError) as error:
        ours.load_hf_bert(tmp_path)
    assert str(error.value) == f"{config_path}: num_hidden_layers must be an integer, got 'two'"
    config_path.write_text(json.dumps({k: v for k, v in data.items() if k != "vocab_size"}))
    with pytest.raises(ValueError, match=r"config.json: not a BERT config: no vocab_size"):
        ours.load_hf_bert(tmp_path)


def test_attention_and_feed_forward_outputs_are_named_for_their_roles():
    from avlformer.modeling.text_transformer import BertOutput, BertSelfOutput

    layer = TextTransformer(TextTransformerConfig(**SMALL)).bert.encoder.layer[0]
    assert type(layer.attention.output) is BertSelfOutput and type(layer.output) is BertOutput
    assert layer.attention.output.dense.in_features == 32 and layer.output.dense.in_features == 64


def test_load_hf_bert_refuses_unexpected_and_misshaped_weights_before_loading(tmp_path):
    from safetensors.torch import load_file, save_file

    BertModel(hf_config(), add_pooling_layer=False).save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    weights["encoder.layer.0.output.dense.weight"] = torch.zeros(3, 3)
    weights["encoder.extra.weight"] = torch.zeros(1)
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    ours = TextTransformer(TextTransformerConfig(**SMALL))
    before = {name: tensor.clone() for name, tensor in ours.state_dict().items()}
    with pytest.raises(ValueError, match=r"model.safetensors: BERT checkpoint does not match the model: unexpected "
                                         r"keys \(1\): bert.encoder.extra.weight; misshaped keys \(1\): "
                                         r"bert.encoder.layer.0.output.dense.weight \(file \[3, 3\]"):
        ours.load_hf_bert(tmp_path)
    assert all(torch.equal(tensor, before[name]) for name, tensor in ours.state_dict().items())


def test_load_hf_bert_rejects_other_dimensions(tmp_path):
    BertModel(hf_config()).save_pretrained(tmp_path)
    ours = TextTransformer(TextTransformerConfig(**{**SMALL, "hidden_size": 64}))
    with pytest.raises(ValueError, match="hidden_size"):
        ours.load_hf_bert(tmp_path)
    with pytest.raises(FileNotFoundError, match="config.json"):
        ours.load_hf_bert(tmp_path / "absent")


def test_parameter_names_follow_released_layout():
    names = set(TextTransformer(TextTransformerConfig(**SMALL)).state_dict())
    for expected in ("bert.embeddings.word_embeddings.weight", "bert.embeddings.LayerNorm.bias",
                     "bert.encoder.layer.1.attention.self.query.weight",
                     "bert.encoder.layer.1.attention.output.LayerNorm.weight",
                     "bert.encoder.layer.1.intermediate.dense.weight", "bert.encoder.layer.1.output.dense.bias",
                     "bert.img_embedding.weight", "cls.predictions.transform.dense.weight",
                     "cls.predictions.transform.LayerNorm.bias", "cls.predictions.decoder.weight",
                     "cls.predictions.bias"):
        assert expected in names
    assert "cls.predictions.decoder.bias" not in names  # the separate `bias` holds it, as upstream


def test_eager_and_sdpa_agree_with_soft_bias_and_av_tokens():
    torch.manual_seed(2)
    sdpa = TextTransformer(TextTransformerConfig(**SMALL)).eval()
    eager = TextTransformer(TextTransformerConfig(**SMALL, attn_implementation="eager")).eval()
    eager.load_state_dict(sdpa.state_dict())
    ids, _ = padded_batch(2)
    av = torch.randn(3, 5, 16)
    mask = build_attention_mask(torch.tensor([12, 7, 3]), 12, 5, learned_av_mask(torch.randn(25, 1), 5))
    with torch.no_grad():
        a = sdpa(ids, av, mask_to_bias(mask))
        b = eager(ids, av, mask_to_bias(mask))
    assert a.shape == (3, 17, 32)
    assert relative_error(a, b) < 1e-5


def test_dropout_only_in_training():
    torch.manual_seed(3)
    model = TextTransformer(TextTransformerConfig(**{**SMALL, "hidden_dropout": 0.3, "attention_dropout": 0.3}))
    ids, padding = padded_batch(3)
    bias = mask_to_bias(padding.float()[:, None])
    model.train()
    assert not torch.equal(model(ids, attention_bias=bias), model(ids, attention_bias=bias))
    model.eval()
    assert torch.equal(model(ids, attention_bias=bias), model(ids, attention_bias=bias))


def test_gradient_checkpointing_gives_same_gradients():
    torch.manual_seed(4)
    config = TextTransformerConfig(**{**SMALL, "hidden_dropout": 0.0, "attention_dropout": 0.0})
    model = TextTransformer(config).train()
    ids, padding = padded_batch(4)
    bias = mask_to_bias(padding.float()[:, None])
    grads = []
    for enabled in (False, True):
        model.zero_grad()
        model.set_gradient_checkpointing(enabled)
        model.logits(model(ids, attention_bias=bias)).square().mean().backward()
        grads.append(model.bert.encoder.layer[0].attention.self.query.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-7)


def test_checkpointing_recomputes_the_same_attention_dropout():
    """The recompute in backward must redraw exactly the forward's dropout masks: the CPU training attention seeds
    its draws from torch's generator, whose state checkpointing restores."""
    config = TextTransformerConfig(**{**SMALL, "hidden_dropout": 0.1, "attention_dropout": 0.3})
    model = TextTransformer(config).train()
    ids, padding = padded_batch(6)
    bias = mask_to_bias(padding.float()[:, None]).requires_grad_(True)  # a bias that needs a gradient: CPU training path
    grads = []
    for enabled in (False, True):
        model.zero_grad()
        model.set_gradient_checkpointing(enabled)
        torch.manual_seed(11)
        model.logits(model(ids, attention_bias=bias)).square().mean().backward()
        grads.append(model.bert.encoder.layer[0].attention.self.key.weight.grad.clone())
    model.zero_grad()
    torch.manual_seed(12)
    model.logits(model(ids, attention_bias=bias)).square().mean().backward()  # another seed, other draws
    assert relative_error(grads[1], grads[0]) < 1e-5
    assert relative_error(model.bert.encoder.layer[0].attention.self.key.weight.grad, grads[0]) > 1e-2


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_output_rows_equal_the_full_forward_sliced_with_gradients(implementation, checkpointing):
    """Training's forward asks only for the text rows: the last layer then computes no AV rows, which must change
    nothing the text rows get, forward or backward (learned-style bias that needs a gradient included)."""
    torch.manual_seed(5)
    config = TextTransformerConfig(**{**SMALL, "hidden_dropout": 0.0, "attention_dropout": 0.0,
                                      "attn_implementation": implementation})
    model = TextTransformer(config).train()
    model.set_gradient_checkpointing(checkpointing)
    text_len, num_av = torch.tensor([9, 5, 12]), 6
    av_tokens = torch.randn(3, num_av, 16)
    soft = 1 - 1e-3 * torch.rand(num_av, num_av)  # biases of -10..0: the AV rows' softmax stays soft
    results = []
    for output_rows in (None, 12):
        model.zero_grad()
        av_weights = soft.clone().requires_grad_(True)
        bias = mask_to_bias(build_attention_mask(text_len, 12, num_av, av_weights))
        hidden = model(padded_batch(5)[0], av_tokens, bias, output_rows=output_rows)
        if output_rows is None:
            hidden = hidden[:, :12]
        assert hidden.shape == (3, 12, 32)
        model.logits(hidden).square().mean().backward()
        last = model.bert.encoder.layer[-1]
        results.append((hidden, av_weights.grad, last.attention.self.query.weight.grad.clone(),
                        last.output.dense.weight.grad.clone(), model.bert.img_embedding.weight.grad.clone()))
    for sliced, full in zip(results[1], results[0]):
        torch.testing.assert_close(sliced, full, rtol=1e-5, atol=1e-6)
    assert results[0][1].abs().sum() > 0  # the AV mask got a gradient through the kept rows


def test_attention_layout_matches_upstream_rules():
    text_len, max_len, num_av = torch.tensor([4, 2]), 5, 3
    av_mask = torch.tensor([[1.0, 0.2, 0.3], [0.4, 1.0, 0.6], [0.7, 0.8, 1.0]])
    mask = build_attention_mask(text_len, max_len, num_av, av_mask)
    assert mask.shape == (2, 8, 8)
    for b, length in enumerate(text_len.tolist()):
        for i in range(8):
            for j in range(8):
                if i < max_len:  # text row
                    allowed = i < length and ((j < max_len and j <= i) or j >= max_len)
                    expected = float(allowed)
                else:  # AV row: no text, learned AV block
                    expected = 0.0 if j < max_len else float(av_mask[i - max_len, j - max_len])
                assert mask[b, i, j].item() == pytest.approx(expected), (b, i, j)
    assert torch.equal(build_attention_mask(text_len, max_len, num_av)[:, 5:, 5:], torch.ones(2, 3, 3))


def test_attention_layout_rejects_bad_lengths():
    with pytest.raises(ValueError, match="text_len"):
        build_attention_mask(torch.tensor([6]), 5, 3)
    with pytest.raises(ValueError, match="text_len"):
        build_attention_mask(torch.tensor([[2]]), 5, 3)


def test_bias_is_minus_10000_times_one_minus_mask():
    mask = torch.tensor([[[1.0, 0.0], [0.25, 1.0]]])
    bias = mask_to_bias(mask)
    assert bias.shape == (1, 1, 2, 2)
    assert torch.allclose(bias[0, 0], torch.tensor([[0.0, MASK_BIAS], [0.75 * MASK_BIAS, 0.0]]))
    assert mask_to_bias(torch.tensor([[[1, 0]]])).shape == (1, 1, 1, 2)


def test_learned_mask_diagonal_one_and_sparsity_loss():
    weight = torch.randn(16, 1, requires_grad=True)
    mask = learned_av_mask(weight, 4)
    sig = torch.sigmoid(weight.detach().view(4, 4))
    assert torch.equal(mask.diagonal(), torch.ones(4))
    off = ~torch.eye(4, dtype=torch.bool)
    assert torch.allclose(mask[off], sig[off])
    loss = sparsity_loss(weight, 4)
    assert loss.item() == pytest.approx(float(sig[off].sum() / 16), rel=1e-6)  # mean over all V² entries
    loss.backward()
    assert torch.all(weight.grad.view(4, 4).diagonal() == 0)  # the diagonal is not learned
    assert torch.all(weight.grad.view(4, 4)[off] != 0)
    hard = learned_av_mask(weight, 4, soft2hard=True)
    assert torch.equal(hard[off], (sig[off] >= 0.5).float())
    with pytest.raises(ValueError, match=r"\(25, 1\)"):
        learned_av_mask(weight, 5)


def test_text_longer_than_position_table_is_refused():
    model = TextTransformer(TextTransformerConfig(**SMALL))
    with pytest.raises(ValueError, match="max_position_embeddings 64"):
        model(torch.ones(1, 65, dtype=torch.long))
