"""`avlformer demo --recipe causal-lm`: a reduced run (few clips, few steps) builds the tiny random Hugging Face
parts in its work folder, trains them through the ordinary part flags, and writes the metrics and report with the
recipe recorded; the checkpoint carries the LoRA adapters on the demo's base LM and the LM's own tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from avlformer.cli import main as cli_main
from avlformer.data import synth

NUM_TRAIN, NUM_TEST, EPOCHS = 16, 2, 3  # 16 clips in one batch: one optimizer step per epoch


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("demo_causal")
    code = cli_main(["demo", "--recipe", "causal-lm", "--workdir", str(work), "--num-train", str(NUM_TRAIN),
                     "--num-val", "1", "--num-test", str(NUM_TEST), "--epochs", str(EPOCHS), "--batch-size", "2"])
    assert code == 0
    return work


def test_causal_recipe_metrics_and_report(demo_run):
    metrics = json.loads((demo_run / "metrics.json").read_text())
    assert metrics["recipe"] == "causal-lm"
    assert metrics["train_steps"] == EPOCHS and metrics["num_captioned"] == NUM_TEST and metrics["failed"] == []
    for key in ("visual_accuracy", "sound_accuracy", "silenced_sound_accuracy", "cider", "train_cpu_seconds"):
        assert isinstance(metrics[key], float), key
    assert metrics["train_cpu_seconds"] > 0
    assert "videomae" in metrics["parts"]["video"] and "llama" in metrics["parts"]["text"]
    assert "(lora)" in metrics["parts"]["text"]
    flags = json.loads((demo_run / "train_config.json").read_text())
    for flag in ("video_encoder", "audio_encoder", "decoder"):  # the ordinary part flags, naming the built folders
        assert flags[flag].startswith("hf:") and Path(flags[flag][3:]).parent == (demo_run / "models").resolve()
    page = (demo_run / "report.html").read_text()
    assert "recipe causal-lm" in page and page.count("class='clip'") == NUM_TEST


def test_checkpoint_carries_the_adapter_and_the_tokenizer(demo_run):
    from avlformer.data.tokenizer import load_tokenizer
    from avlformer.modeling.checkpoint import load_model
    from avlformer.modeling.hf_causal_lm import HFCausalLMConfig, HFCausalLMDecoder
    from avlformer.modeling.hf_folder import weights_sha256

    checkpoint = Path(json.loads((demo_run / "metrics.json").read_text())["checkpoint"])
    config = json.loads((checkpoint / "config.json").read_text())
    base = demo_run / "models" / "llama-demo"
    assert config["text"]["type"] == "hf_causal_lm" and config["text"]["training"] == "lora"
    assert config["text"]["weights_sha256"] == weights_sha256(base)
    with safe_open(str(checkpoint / "model.safetensors"), framework="pt") as handle:
        lora = [name for name in handle.keys() if "lora_" in name]
    assert lora and all(name.startswith("text.lm.") for name in lora)

    # The trained adapters, taken out of the checkpoint, load onto a decoder built from the demo's base folder.
    model, _ = load_model(checkpoint)
    decoder = model.part("text")
    trained = decoder.adapter_state()
    assert any("lora_B" in name and tensor.abs().sum() > 0 for name, tensor in trained.items())
    decoder.save_adapter(demo_run / "adapter")
    fresh = HFCausalLMDecoder(HFCausalLMConfig.from_dict({k: v for k, v in config["text"].items() if k != "type"}))
    fresh.load_adapter(demo_run / "adapter")
    assert all(torch.equal(fresh.adapter_state()[name], tensor) for name, tensor in trained.items())

    # The LM's own word-level tokenizer travels with the checkpoint: every word of the demo's captions is known.
    assert (checkpoint / "tokenizer.json").is_file() and not (checkpoint / "vocab.txt").exists()
    tokenizer = load_tokenizer(str(checkpoint))
    caption = json.loads((demo_run / "raw" / "captions.json").read_text())[f"synth_test_{0:05d}"]
    ids, length = tokenizer.encode(caption, 64)
    unk = tokenizer.hf.unk_token_id
    assert length > 20 and unk not in ids[:length].tolist()
    assert tokenizer.decode_caption(ids[:length]) == caption
    assert synth.parse_attributes(tokenizer.decode_caption(ids[:length])) == synth.parse_attributes(caption)
