"""PaSST audio encoder: config, mel front-end and tokens against hear21passt (the official PaSST code),
deterministic eval patchout, converter and loader."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from avlformer.modeling.passt import (
    MelFrontEnd,
    PasstAudioEncoder,
    PasstConfig,
    PasstNet,
    checkpoint_filter_fn,
    evenly_spaced_indices,
    load_official_weights,
    rms_norm,
)
from avlformer.modeling.meta_device import build_on_meta, state_shapes


def expected_parameter_shapes(config):
    return state_shapes(build_on_meta(lambda: PasstNet(config)))


def without_patchout(config):
    """The same model keeping every patch: patchout's index selection keeps them all, in order."""
    return dataclasses.replace(config, s_patchout_t=0, s_patchout_f=0)


def full_grid_twin(net):
    """A PasstNet with ``net``'s weights and mode that keeps every patch."""
    twin = PasstNet(without_patchout(net.config)).train(net.training)
    twin.load_state_dict(net.state_dict())
    return twin

hear21_passt = pytest.importorskip("hear21passt.models.passt")
hear21_preprocess = pytest.importorskip("hear21passt.models.preprocess")

# hear21passt's own deprecation noise (old stft/autocast APIs, its fixed image size), not ours.
pytestmark = pytest.mark.filterwarnings("ignore:stft with return_complex=False", "ignore:.*torch.cuda.amp.autocast",
                                        "ignore:Input image size")

MANIFEST = Path(__file__).parent / "fixtures" / "manifest_passt_s.json"
OFFICIAL_HEAD_SHAPES = {"head.1.weight": (527, 768), "head.1.bias": (527,),
                        "head_dist.weight": (527, 768), "head_dist.bias": (527,)}


@pytest.fixture(autouse=True)
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return ((ours - reference).abs().max() / reference.abs().max()).item()


def official_front_end(config: PasstConfig):
    return hear21_preprocess.AugmentMelSTFT(
        n_mels=config.n_mels, sr=config.sample_rate, win_length=config.win_length, hopsize=config.hop_length,
        n_fft=config.n_fft, freqm=config.freqm, timem=config.timem, fmin=config.fmin, fmax=None,
        fmin_aug_range=config.fmin_aug_range, fmax_aug_range=config.fmax_aug_range)


def official_net(config: PasstConfig):
    grid_f, grid_t = config.grid
    # hear21passt sizes its positional grid as img_size // stride; pick img_size so it equals ours.
    net = hear21_passt.PaSST(
        u_patchout=0, s_patchout_t=0, s_patchout_f=0, img_size=(grid_f * config.fstride, grid_t * config.tstride),
        patch_size=config.patch_size, stride=(config.fstride, config.tstride), in_chans=1, num_classes=0,
        embed_dim=config.embed_dim, depth=config.depth, num_heads=config.num_heads, mlp_ratio=config.mlp_ratio,
        qkv_bias=True, distilled=True)
    with torch.no_grad():  # LayerNorms start at 1/0 and biases at 0: perturb so every weight matters
        for parameter in net.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return net.eval()


def official_tokens(net, spectrogram: torch.Tensor) -> torch.Tensor:
    """All final-norm tokens of hear21passt's PaSST (its forward only returns cls/dist), minus cls."""
    captured = {}
    handle = net.norm.register_forward_hook(lambda module, args, output: captured.setdefault("tokens", output))
    try:
        net(spectrogram)
    finally:
        handle.remove()
    return captured["tokens"][:, 1:]


# ---------------------------------------------------------------- config


def test_paper_config_numbers_match_upstream():
    config = PasstConfig.paper()
    assert config.clip_samples == 320000
    assert config.num_mel_frames == 1000
    assert config.grid == (12, 99)
    assert config.kept_grid == (8, 59)
    assert config.num_tokens == 473
    manifest = {key: tuple(shape) for key, shape in json.loads(MANIFEST.read_text()).items()}
    expected = expected_parameter_shapes(config)
    assert expected == {k: v for k, v in manifest.items() if not k.startswith("head.0.")}


def test_paper_model_returns_473_tokens():
    config = PasstConfig.paper()
    spectrogram = MelFrontEnd(config).eval()(torch.randn(1, 1, config.clip_samples))
    assert spectrogram.shape == (1, 1, 128, 1000)
    with torch.device("meta"):  # shapes only: the full ViT-Base forward is not needed to count tokens
        net = PasstNet(config)
        full = PasstNet(without_patchout(config))
    meta_input = torch.empty(spectrogram.shape, device="meta")
    for training in (True, False):
        assert net.train(training)(meta_input).shape == (1, config.num_tokens, 768)
    assert full(meta_input).shape == (1, 1 + 12 * 99, 768)


def test_config_round_trip_and_validation():
    config = PasstConfig.nano()
    assert PasstConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="unknown keys.*bogus"):
        PasstConfig.from_dict({**config.to_dict(), "bogus": 1})
    with pytest.raises(ValueError, match="input_tdim"):
        dataclasses.replace(config, input_tdim=200)
    with pytest.raises(ValueError, match="patchout"):
        dataclasses.replace(config, s_patchout_f=config.grid[0])


# ---------------------------------------------------------------- mel front-end


def test_mel_front_end_matches_hear21passt_eval():
    config = PasstConfig.paper()
    audio = torch.randn(2, 1, 32000)
    ours = MelFrontEnd(config).eval()(audio)
    reference = official_front_end(config).eval()(audio[:, 0])
    assert ours.shape == (2, 1, config.n_mels, 100)
    assert ours.dtype == torch.float32
    assert relative_error(ours[:, 0], reference) < 1e-5


def test_mel_training_augmentation_matches_hear21passt_draws_and_is_per_example():
    config = PasstConfig.nano()
    audio = torch.randn(1, 1, config.clip_samples).expand(4, 1, -1).contiguous()
    front_end = MelFrontEnd(config).train()
    torch.manual_seed(7)
    ours = front_end(audio)
    torch.manual_seed(7)
    reference = official_front_end(config).train()(audio[:, 0])
    # Same RNG draws -> same jittered band edges and the same SpecAugment masks.
    assert relative_error(ours[:, 0], reference) < 1e-5
    masked = ours == 4.5 / 5  # SpecAugment writes 0 into the log-mel, i.e. 0.9 after normalisation
    assert masked.any()
    assert not all(torch.equal(masked[0], masked[i]) for i in range(1, 4)), "masks must differ per example"
    evaluated = front_end.eval()(audio)
    assert not torch.allclose(evaluated, ours)


def test_mel_is_float32_under_autocast():
    config = PasstConfig.nano()
    front_end = MelFrontEnd(config).eval()
    audio = torch.randn(2, 1, config.clip_samples)
    plain = front_end(audio)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = front_end(audio.bfloat16())
    assert autocast.dtype == torch.float32
    assert torch.allclose(autocast, front_end(audio.bfloat16().float()))
    assert plain.shape == (2, 1, config.n_mels, config.num_mel_frames)


def test_mel_buffers_are_not_saved():
    assert MelFrontEnd(PasstConfig.nano()).state_dict() == {}


# ---------------------------------------------------------------- tokens vs hear21passt


@pytest.mark.parametrize("config", [
    PasstConfig.nano(),
    dataclasses.replace(PasstConfig.nano(), n_mels=128, embed_dim=64, depth=3, num_heads=4, mlp_ratio=2.0),
], ids=["nano", "128-mels"])
def test_tokens_match_hear21passt_with_patchout_off(config):
    torch.manual_seed(0)
    reference_net = official_net(config)
    encoder = PasstAudioEncoder(without_patchout(config)).eval()
    converted, dropped = checkpoint_filter_fn(reference_net.state_dict(), config)
    encoder.net.load_state_dict(converted, strict=True)
    assert sorted(dropped) == ["head.0.bias", "head.0.weight"]

    audio = torch.randn(2, 1, config.clip_samples)
    with torch.no_grad():
        reference = official_tokens(reference_net, official_front_end(config).eval()(audio[:, 0]).unsqueeze(1))
        ours = encoder.net(encoder.mel(audio))
    grid_f, grid_t = config.grid
    assert ours.shape == reference.shape == (2, 1 + grid_f * grid_t, config.embed_dim)
    assert relative_error(ours, reference) < 1e-4


# ---------------------------------------------------------------- patchout


def test_eval_patchout_rule_is_even_and_keeps_the_training_count():
    for total, keep in [(99, 59), (12, 8), (9, 6), (4, 3), (7, 7), (10, 1)]:
        kept = evenly_spaced_indices(total, keep)
        assert len(kept) == keep
        assert kept[0] >= 0 and kept[-1] < total
        gaps = kept.diff()
        assert (gaps > 0).all()
        if keep > 1:
            assert gaps.max() - gaps.min() <= 1  # evenly spread
        # Kept cell [p, p+1) contains the centre (2i+1)n/(2k) of the i-th of k equal bins.
        centre_twice_k = (2 * torch.arange(keep) + 1) * total
        assert ((2 * keep * kept <= centre_twice_k) & (centre_twice_k < 2 * keep * (kept + 1))).all()
    with pytest.raises(ValueError):
        evenly_spaced_indices(5, 6)


def test_eval_patchout_selects_the_rule_indices_frequency_major():
    config = dataclasses.replace(PasstConfig.nano(), depth=0)  # final LayerNorm only: tokens stay separable
    net = PasstNet(config).eval()
    spectrogram = torch.randn(2, 1, config.n_mels, config.num_mel_frames)
    full = full_grid_twin(net)(spectrogram)
    kept = net(spectrogram)
    grid_f, grid_t = config.grid
    freq_idx = evenly_spaced_indices(grid_f, config.kept_grid[0])
    time_idx = evenly_spaced_indices(grid_t, config.kept_grid[1])
    got_freq, got_time = net.patchout_indices()
    assert torch.equal(got_freq, freq_idx) and torch.equal(got_time, time_idx)
    patches = full[:, 1:].reshape(2, grid_f, grid_t, -1)[:, freq_idx][:, :, time_idx].flatten(1, 2)
    assert kept.shape == (2, config.num_tokens, config.embed_dim)
    assert torch.equal(kept[:, 0], full[:, 0])
    assert torch.allclose(kept[:, 1:], patches)


def test_eval_is_deterministic_even_after_other_random_calls():
    config = PasstConfig.nano()
    encoder = PasstAudioEncoder(config).eval()
    audio = torch.randn(2, 1, config.clip_samples)
    with torch.no_grad():
        first = encoder(audio)
        torch.rand(1000)
        torch.manual_seed(123)
        second = encoder(audio)
    assert first.shape == (2, config.num_tokens, config.token_width)
    assert torch.equal(first, second)


def test_training_patchout_is_random_but_keeps_the_count():
    config = dataclasses.replace(PasstConfig.nano(), depth=0)
    net = PasstNet(config).train()
    spectrogram = torch.randn(1, 1, config.n_mels, config.num_mel_frames)
    full = full_grid_twin(net)(spectrogram)
    grid_f, grid_t = config.grid
    draws = set()
    for seed in range(6):
        torch.manual_seed(seed)
        freq_idx, time_idx = net.patchout_indices()
        torch.manual_seed(seed)
        tokens = net(spectrogram)
        assert tokens.shape == (1, config.num_tokens, config.embed_dim)
        expected = full[:, 1:].reshape(1, grid_f, grid_t, -1)[:, freq_idx][:, :, time_idx].flatten(1, 2)
        assert torch.allclose(tokens[:, 1:], expected)
        assert (freq_idx.diff() > 0).all() and (time_idx.diff() > 0).all()
        draws.add((tuple(freq_idx.tolist()), tuple(time_idx.tolist())))
    assert len(draws) > 1


def test_activation_checkpointing_recomputes_blocks_with_equal_gradients():
    config = PasstConfig.nano()
    plain = PasstAudioEncoder(config).train()
    checkpointed = PasstAudioEncoder(dataclasses.replace(config, use_checkpoint=True)).train()
    checkpointed.load_state_dict(plain.state_dict())
    calls = []
    checkpointed.net.blocks[0].register_forward_pre_hook(lambda *args: calls.append(1))
    audio = torch.randn(2, 1, config.clip_samples)
    results = []
    for encoder in (plain, checkpointed):
        torch.manual_seed(3)
        encoder.projection(encoder(audio)).square().mean().backward()
        results.append([p.grad for p in encoder.parameters()])
    assert len(calls) == 2  # forward, then recomputed in backward
    for ours, reference in zip(*results):
        assert torch.allclose(ours, reference, atol=1e-6)


# ---------------------------------------------------------------- encoder


def test_encoder_output_and_wrong_length():
    config = PasstConfig.nano()
    encoder = PasstAudioEncoder(config)
    assert [name for name, _ in encoder.named_children()] == ["mel", "net", "linear"]
    audio = torch.randn(2, 1, config.clip_samples)
    assert encoder.train()(audio).shape == (2, config.num_tokens, config.token_width)
    assert encoder.projection(encoder(audio)).shape == (2, config.num_tokens, config.out_dim)
    grid_f, grid_t = config.grid
    assert PasstAudioEncoder(without_patchout(config)).eval()(audio).shape == (2, 1 + grid_f * grid_t,
                                                                              config.token_width)
    encoder.eval()
    assert torch.equal(encoder(audio[:, 0]), encoder(audio))  # (B, S) is accepted as well as (B, 1, S)
    with pytest.raises(ValueError, match=rf"{config.clip_samples} samples.*got {config.clip_samples - 5}"):
        encoder(torch.randn(2, 1, config.clip_samples - 5))
    with pytest.raises(ValueError, match=r"\(2, 3, 32000\)"):
        encoder(torch.randn(2, 3, config.clip_samples))
    with pytest.raises(ValueError, match="patch grid"):
        encoder.net(torch.randn(1, 1, config.n_mels, config.num_mel_frames - 20))


def test_rms_norm_formula():
    x = torch.randn(3, 5, 16) * 4
    rms = x.square().mean(dim=-1, keepdim=True).sqrt()
    assert torch.allclose(rms_norm(x), x / (rms + 1e-6))
    assert torch.allclose(rms_norm(x).square().mean(-1), torch.ones(3, 5), atol=1e-4)
    small = torch.full((1, 4), 1e-6)
    assert torch.allclose(rms_norm(small, eps=1e-6), small / 2e-6)
    assert torch.equal(rms_norm(torch.zeros(2, 8)), torch.zeros(2, 8))


# ---------------------------------------------------------------- converter and loader


def official_state_dict(prefix: str = "") -> dict:
    shapes = {**json.loads(MANIFEST.read_text()), **OFFICIAL_HEAD_SHAPES}
    return {prefix + key: torch.empty(shape, device="meta") for key, shape in shapes.items()}


@pytest.mark.parametrize("prefix", ["", "net."])
def test_converter_on_official_layout(prefix):
    config = PasstConfig.paper()
    state_dict = official_state_dict(prefix)
    converted, dropped = checkpoint_filter_fn(state_dict, config)
    assert set(converted) == set(expected_parameter_shapes(config))
    assert sorted(dropped) == sorted(k for k in state_dict if k.removeprefix(prefix).startswith(
        ("head.0.", "head.1.", "head_dist.")))
    assert len(dropped) == 6
    assert converted["blocks.11.mlp.fc2.weight"] is state_dict[prefix + "blocks.11.mlp.fc2.weight"]


def test_converter_rejects_unknown_missing_and_misshaped_keys():
    config = PasstConfig.paper()
    state_dict = official_state_dict()
    state_dict["blocks.12.norm1.weight"] = torch.empty(768, device="meta")
    state_dict["time_new_pos_embed"] = torch.empty(1, 768, 1, 101, device="meta")
    del state_dict["norm.bias"]
    with pytest.raises(ValueError) as error:
        checkpoint_filter_fn(state_dict, config)
    message = str(error.value)
    assert "blocks.12.norm1.weight" in message
    assert "time_new_pos_embed (file [1, 768, 1, 101], model [1, 768, 1, 99])" in message
    assert "missing keys (1): norm.bias" in message

    duplicated = {**official_state_dict(), "net.norm.bias": torch.empty(768, device="meta")}
    with pytest.raises(ValueError, match=r"unexpected keys .*norm.bias"):
        checkpoint_filter_fn(duplicated, config)


def test_load_official_weights(tmp_path):
    config = PasstConfig.nano()
    source = PasstNet(config)
    state_dict = {**source.state_dict(),
                  "head.0.weight": torch.ones(config.embed_dim), "head.0.bias": torch.zeros(config.embed_dim),
                  "head.1.weight": torch.randn(527, config.embed_dim), "head.1.bias": torch.zeros(527),
                  "head_dist.weight": torch.randn(527, config.embed_dim), "head_dist.bias": torch.zeros(527)}
    path = tmp_path / "passt.pt"
    torch.save(state_dict, path)
    encoder = PasstAudioEncoder(config)
    dropped = load_official_weights(encoder, path)
    assert len(dropped) == 6
    for name, tensor in source.state_dict().items():
        assert torch.equal(encoder.net.state_dict()[name], tensor), name

    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt.pt"):
        load_official_weights(encoder, corrupt)
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        load_official_weights(encoder, tmp_path / "absent.pt")
    wrong = tmp_path / "wrong.pt"
    torch.save({"cls_token": torch.zeros(1, 1, 5)}, wrong)
    with pytest.raises(ValueError, match="wrong.pt.*cls_token"):
        load_official_weights(encoder, wrong)
