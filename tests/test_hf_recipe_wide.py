"""A causal-LM decoder (``text.type`` ``hf_causal_lm``, LoRA) through the paper recipe's commands: an exact resume
(also beside VideoMAE + AST encoders, and under FSDP over two processes), bf16 / fp16 autocast on CPU, and a ``save_pretrained`` checkpoint through
``from_pretrained``, ``avlformer infer``, ``caption``, ``evaluate`` and ``serve``."""

from __future__ import annotations

import json
import math
import sys
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from avlformer.data.recipe import PreprocessRecipe
from avlformer.data.tokenizer import decode_caption, load_tokenizer
from avlformer.modeling.avlformer import AVLFormer
from avlformer.training import loop
from avlformer.training.args import parse_train_args
from avlformer.training.checkpointing import TRAINING_STATE
from avlformer.modeling.hf_audio import HFAudioConfig
from avlformer.modeling.hf_encoders import HFVideoConfig
from hf_fakes import causal_lm_config, hf_parts_config, save_ast, save_causal_lm, save_videomae
from training_fakes import FakeCaptionDataset

sys.path.insert(0, str(Path(__file__).parent))
import media_fixtures  # noqa: E402

RECIPE = PreprocessRecipe(stored_frames=8, short_side=64)
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def lm_folder(tmp_path_factory):
    return save_causal_lm(tmp_path_factory.mktemp("lm") / "llama", "llama")


@pytest.fixture(scope="module")
def encoder_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("encoders")
    return {"video": save_videomae(root / "videomae"), "audio": save_ast(root / "ast")}


def built(folder: Path, cls=AVLFormer, seed: int = 0, encoders: dict | None = None, **text) -> AVLFormer:
    """The tiny model with the LoRA causal LM in ``folder``; ``encoders``: HF video / audio folders in place of
    the paper's encoders."""
    config = causal_lm_config(folder, **{"training": "lora", **text})
    if encoders:
        config = hf_parts_config({"type": "hf_video", **HFVideoConfig.from_folder(str(encoders["video"])).to_dict()},
                                 {"type": "hf_audio", **HFAudioConfig.from_folder(str(encoders["audio"])).to_dict()},
                                 {"type": "hf_causal_lm", **config.text.to_dict()})
    torch.manual_seed(seed)
    model = cls(config)
    model.load_part_weights("text", str(folder))
    for role, part_folder in (encoders or {}).items():
        model.load_part_weights(role, str(part_folder))
    return model


def run(folder: Path, output_dir: Path, *flags: str, samples: int = 8, model=None, encoders: dict | None = None):
    """Two epochs of ``samples`` clips, batch 2; LoRA dropout on, so a resume must restore the RNG too."""
    model = model or built(folder, encoders=encoders, lora_dropout=0.2)
    argv = ["--output-dir", str(output_dir), "--per-gpu-train-batch-size", "2", "--num-train-epochs", "2",
            "--learning-rate", "1e-2", "--num-workers", "0", "--device", "cpu", "--logging-steps", "1",
            "--save-steps", "3", "--seed", "7", *flags]
    config = model.config
    result = loop.train(parse_train_args(argv, model_config=config), model=model,
                        train_dataset=FakeCaptionDataset(config, samples, tokenizer=load_tokenizer(str(folder))),
                        recipe=RECIPE)
    return result, model


@pytest.mark.parametrize("with_hf_encoders", [False, True], ids=["paper-encoders", "videomae-ast"])
def test_lora_causal_lm_resumes_exactly(lm_folder, encoder_folders, tmp_path, with_hf_encoders):
    encoders = encoder_folders if with_hf_encoders else None
    flags = ("--backbone-coef-lr", "1")
    straight, _ = run(lm_folder, tmp_path / "straight", *flags, encoders=encoders)
    assert straight.global_step == 8
    middle = tmp_path / "straight" / "checkpoint-0-3"
    resumed, _ = run(lm_folder, tmp_path / "resumed", *flags, "--resume", str(middle), encoders=encoders)
    assert resumed.global_step == 8 and resumed.last_checkpoint.name == straight.last_checkpoint.name
    final = load_file(str(straight.last_checkpoint / "model.safetensors"))
    again = load_file(str(resumed.last_checkpoint / "model.safetensors"))
    assert final.keys() == again.keys()
    for name in final:
        assert torch.equal(final[name], again[name]), name
    start = load_file(str(middle / "model.safetensors"))
    moved = {n for n in final if not torch.equal(start[n], final[n])}
    assert any("lora_" in n for n in moved) and "text.projector.0.weight" in moved  # adapters and projector trained
    assert not any(n.startswith("text.lm.") and "lora_" not in n for n in moved)  # the base stays frozen
    if with_hf_encoders:
        assert any(n.startswith("video.model.") for n in moved) and any(n.startswith("audio.model.") for n in moved)
    state_a = torch.load(straight.last_checkpoint / TRAINING_STATE, weights_only=True)["optimizer"]["state"]
    state_b = torch.load(resumed.last_checkpoint / TRAINING_STATE, weights_only=True)["optimizer"]["state"]
    assert state_a.keys() == state_b.keys() and any("lora_" in str(k) for k in state_a)
    for key in state_a:
        for field in state_a[key]:
            assert torch.equal(torch.as_tensor(state_a[key][field]), torch.as_tensor(state_b[key][field])), key



def _scalars(log_dir: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_on_cpu_trains_the_lora_lm_and_it_captions(lm_folder, tmp_path, precision):
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    model = built(lm_folder, lora_dropout=0.2)
    lm = model.part("text").lm
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    lora = next(m for n, m in lm.named_modules() if n.endswith("q_proj.lora_A.default"))
    seen = []
    lora.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    result, model = run(lm_folder, tmp_path / "run", "--precision", precision, "--num-train-epochs", "1",
                        samples=4, model=model)
    assert result.global_step == 2
    assert dtype in seen  # the LM's adapters ran under autocast
    state = torch.load(result.last_checkpoint / TRAINING_STATE, weights_only=True)
    assert bool(state["scaler"]) == (precision == "fp16")  # a loss scaler only for fp16
    losses = _scalars(tmp_path / "run" / "log")["train/loss"]
    assert len(losses) == 2 and all(math.isfinite(v) and v > 0 for v in losses)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # fp32 master weights
    after = dict(model.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in before if "lora_" in n)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    frames = torch.randint(0, 256, (2, model.config.num_frames, 3, 64, 64), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(3))
    audio = 0.1 * torch.randn(2, 1, model.config.audio.clip_samples, generator=torch.Generator().manual_seed(4))
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        out = model.generate(frames, audio)
    assert torch.isfinite(out.confidence).all()
    tokenizer = load_tokenizer(str(lm_folder))
    captions = [decode_caption(ids, tokenizer) for ids in out.token_ids.tolist()]
    assert all(captions), captions


@pytest.fixture(scope="module")
def pretrained(lm_folder, tmp_path_factory):
    """A LoRA causal-LM model with non-zero adapters, saved by ``save_pretrained`` with no vocab_dir given."""
    from avlformer.hub import AVLFormer as HubAVLFormer

    model = built(lm_folder, cls=HubAVLFormer)
    model.config.max_gen_length = 6
    with torch.no_grad():
        for name, param in model.part("text").named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    model.recipe = RECIPE
    folder = tmp_path_factory.mktemp("pretrained") / "lora-llama"
    model.eval().save_pretrained(folder)
    videos = tmp_path_factory.mktemp("videos")
    media_fixtures.write_normal(videos / "one.mp4")
    media_fixtures.write_video(videos / "two.mp4", seconds=1.0, fps=20, width=64, height=64)
    return {"model": model, "folder": folder, "videos": videos}


def expected_captions(model: AVLFormer, lm_folder: Path, videos: list[Path]) -> list[str]:
    """The in-memory model's own greedy captions of the clips, decoded with the LM folder's tokenizer."""
    from avlformer.inference import pipeline

    spec = pipeline.loaded_model(model, torch.device("cpu")).spec
    clips = [pipeline.load_clip_input(video, None, spec) for video in videos]
    with torch.no_grad():
        out = model.generate(torch.stack([c.frames for c in clips]), torch.stack([c.audio for c in clips]),
                             num_beams=1, max_length=6)
    tokenizer = load_tokenizer(str(lm_folder))
    return [decode_caption(ids, tokenizer) for ids in out.token_ids.tolist()]


def test_from_pretrained_infer_and_caption_give_the_models_own_captions(pretrained, lm_folder, tmp_path):
    from avlformer import caption
    from avlformer.cli import main as cli_main
    from avlformer.hub import AVLFormer as HubAVLFormer

    folder, model = pretrained["folder"], pretrained["model"]
    loaded = HubAVLFormer.from_pretrained(folder)
    assert loaded.config == model.config and loaded.recipe == RECIPE
    theirs = model.state_dict()
    assert all(torch.equal(tensor, theirs[name]) for name, tensor in loaded.state_dict().items())
    assert load_tokenizer(str(folder)).hf.get_vocab() == load_tokenizer(str(lm_folder)).hf.get_vocab()

    videos = sorted(pretrained["videos"].glob("*.mp4"))
    expected = expected_captions(model, lm_folder, videos)
    assert all(expected) and all(w in load_tokenizer(str(lm_folder)).hf.get_vocab()
                                 for text in expected for w in text.replace(".", " .").split())
    output = tmp_path / "pred.json"
    assert cli_main(["infer", "--eval_model_dir", str(folder), "--test_video_fname", str(pretrained["videos"]),
                     "--output", str(output), "--device", "cpu"]) == 0
    written = {p["image_id"]: p["caption"] for p in json.loads(output.read_text())}
    assert written == {video.stem: text for video, text in zip(videos, expected)}
    assert [r.caption for r in caption(loaded, videos, device="cpu")] == expected
    # and infer's file scores: references equal to the captions give BLEU-1 = 1
    references = tmp_path / "ref.json"
    references.write_text(json.dumps([{"image_id": v.stem, "caption": c} for v, c in zip(videos, expected)]))
    assert cli_main(["evaluate", "--pred", str(output), "--ref", str(references), "--metrics", "bleu",
                     "--output", str(tmp_path / "metrics.json")]) == 0
    scored = json.loads((tmp_path / "metrics.json").read_text())
    assert scored["num_scored"] == 2 and not scored["missing_predictions"] and not scored["extra_predictions"]
    assert scored["metrics"]["Bleu_1"] == pytest.approx(1.0)


def test_serve_answers_a_causal_lm_checkpoints_caption(pretrained, lm_folder):
    pytest.importorskip("python_multipart", reason="the [serve] extra is not installed")
    from avlformer.hub import AVLFormer as HubAVLFormer
    from avlformer.inference.captioner import Captioner
    from avlformer.serve.listener import CaptionServer
    from avlformer.serve.server import ServeState
    from test_serve import post_video

    videos = pretrained["videos"]
    state = ServeState(captioner=Captioner(HubAVLFormer.from_pretrained(pretrained["folder"]), device="cpu",
                                           batch_size=1), model_name="lora-llama", videos_dir=videos,
                       max_upload_bytes=200_000)
    server = CaptionServer(state, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        status, answer = post_video(server.server_address[1], "clip.mp4", (videos / "one.mp4").read_bytes())
    finally:
        server.shutdown()
        thread.join(timeout=30)
        server.server_close()
    assert status == 200, answer
    assert answer["caption"] == expected_captions(pretrained["model"], lm_folder, [videos / "one.mp4"])[0]
    assert 0.0 <= answer["confidence"] <= 1.0


@pytest.mark.slow  # two launches of two processes
def test_fsdp_two_processes_resume_the_lora_lm_exactly(lm_folder, tmp_path):
    """Two gloo processes under FSDP2: 2 steps straight == 1 step, a mid-epoch checkpoint, `--resume auto`, 1
    step (Adam's moments of the sharded adapters must come back for that step to match)."""
    import shutil

    import torch.multiprocessing as mp

    from test_hf_distributed import FINAL, FLAGS, free_port, worker

    flags = FLAGS + ["--output-dir", str(tmp_path), "--per-gpu-train-batch-size", "2", "--distributed-strategy",
                     "fsdp", "--save-steps", "1"]

    def launch(*extra: str) -> None:
        start_method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        mp.start_processes(worker, args=(2, free_port(), lm_folder, flags + list(extra)), nprocs=2, join=True,
                           start_method=start_method)

    launch()
    final = load_file(str(tmp_path / FINAL / "model.safetensors"))
    middle = load_file(str(tmp_path / "checkpoint-0-1" / "model.safetensors"))
    assert any(not torch.equal(middle[n], final[n]) for n in final if "lora_" in n)
    shutil.rmtree(tmp_path / FINAL)
    launch("--resume", "auto")
    resumed = load_file(str(tmp_path / FINAL / "model.safetensors"))
    assert resumed.keys() == final.keys()
    for name in final:
        assert torch.equal(resumed[name], final[name]), name
