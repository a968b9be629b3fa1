"""Tiny random Hugging Face models and a tokenizer, built from ``transformers`` config classes and saved into a
temporary folder with safetensors (no download), for the tests of the Hugging Face parts."""

from __future__ import annotations

from pathlib import Path

import torch

from avlformer.modeling.avlformer import AVLFormerConfig
from training_fakes import CAPTIONS, deterministic_tiny_config

SPECIALS = ["<pad>", "<unk>", "<eos>"]


def save_tokenizer(folder: Path) -> None:
    """A word-level tokenizer over the words of the fake captions and the prompt, with an end-of-text token."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for text in CAPTIONS + ["describe what is seen and heard:"]
                    for w in pre_tokenizers.BertPreTokenizer().pre_tokenize_str(text.lower()) for w in [w[0]]})
    vocab = {token: index for index, token in enumerate(SPECIALS + words)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>")
    fast.save_pretrained(str(folder))


def save_causal_lm(folder: Path, family: str, seed: int = 0) -> Path:
    """A 2-layer random ``llama`` or ``gpt2`` causal LM (+ tokenizer) in ``folder``; weights drawn wider than
    transformers' default (std 0.02), whose logits barely depend on the input, so captions differ by video."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    save_tokenizer(folder)
    torch.manual_seed(seed)
    if family == "llama":
        config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                             eos_token_id=2, pad_token_id=0, bos_token_id=2, initializer_range=0.3)
        model = LlamaForCausalLM(config)
    else:
        config = GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=128, eos_token_id=2,
                            bos_token_id=2, pad_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                            initializer_range=0.3)
        model = GPT2LMHeadModel(config)
    model.save_pretrained(str(folder), safe_serialization=True)
    return folder


def causal_lm_config(folder: Path, **text) -> AVLFormerConfig:
    """The tiny test model with the causal LM in ``folder`` as its decoder."""
    from avlformer.modeling.hf_causal_lm import HFCausalLMConfig

    tree = deterministic_tiny_config().to_dict()
    tree["learn_mask_enabled"] = False
    text = {"training": "full", **text}
    tree["text"] = {"type": "hf_causal_lm",
                    **HFCausalLMConfig.from_folder(str(folder), img_feature_dim=32, **text).to_dict()}
    return AVLFormerConfig.from_dict(tree)


def _small(**values) -> dict:
    return dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, **values)


def save_videomae(folder: Path) -> Path:
    """VideoMAE taking the tiny model's 8 frames of 64 px: 4 tubelets x 4x4 patches = 64 tokens."""
    from transformers import VideoMAEConfig, VideoMAEImageProcessor, VideoMAEModel

    torch.manual_seed(1)
    VideoMAEModel(VideoMAEConfig(**_small(image_size=64, patch_size=16, num_frames=8, tubelet_size=2))
                  ).save_pretrained(str(folder), safe_serialization=True)
    VideoMAEImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}).save_pretrained(
        str(folder))
    return folder


def save_clip(folder: Path) -> Path:
    """A whole CLIP (text and vision towers), 64 px images in 4x4 patches; the per-frame part takes its vision
    tower."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(2)
    config = CLIPConfig(text_config=_small(vocab_size=64, max_position_embeddings=16),
                        vision_config=_small(image_size=64, patch_size=16), projection_dim=16)
    CLIPModel(config).save_pretrained(str(folder), safe_serialization=True)
    CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}).save_pretrained(str(folder))
    return folder


def save_ast(folder: Path) -> Path:
    """AST on 16 mel bins x 100 frames (1 s at 16 kHz): 1 x 9 patches + 2 = 11 tokens."""
    from transformers import ASTConfig, ASTFeatureExtractor, ASTModel

    torch.manual_seed(3)
    ASTModel(ASTConfig(**_small(num_mel_bins=16, max_length=100, frequency_stride=10, time_stride=10))
             ).save_pretrained(str(folder), safe_serialization=True)
    ASTFeatureExtractor(num_mel_bins=16, max_length=100).save_pretrained(str(folder))
    return folder


def save_whisper(folder: Path) -> Path:
    """A whole Whisper (encoder and decoder) on 1 s windows of 16 mel bins: 50 encoder tokens."""
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    torch.manual_seed(4)
    config = WhisperConfig(d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=4,
                           decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=16,
                           max_source_positions=50, max_target_positions=16, vocab_size=64,
                           pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
                           begin_suppress_tokens=None, suppress_tokens=None)
    WhisperForConditionalGeneration(config).save_pretrained(str(folder), safe_serialization=True)
    WhisperFeatureExtractor(feature_size=16, chunk_length=1).save_pretrained(str(folder))
    return folder


def hf_parts_config(video: dict, audio: dict, text: dict | None = None) -> AVLFormerConfig:
    """The tiny test model with the given part dicts (``{"type": ..., **fields}``) in place of the paper's."""
    tree = deterministic_tiny_config().to_dict()
    tree["video"], tree["audio"] = video, {**audio, "clip_seconds": 1.0}
    if text is not None:
        tree["text"], tree["learn_mask_enabled"] = text, False
    return AVLFormerConfig.from_dict(tree)


def _tiny_image_processor(folder: Path, kind: str = "videomae", **values) -> None:
    """A processor config for 64 px inputs with a mean/std other than ImageNet's (so renormalising matters)."""
    import transformers

    cls = getattr(transformers, {"videomae": "VideoMAEImageProcessor", "vivit": "VivitImageProcessor",
                                 "siglip": "SiglipImageProcessor", "bit": "BitImageProcessor"}[kind])
    values = {"size": {"shortest_edge": 64}, "crop_size": {"height": 64, "width": 64}, **values}
    if kind == "siglip":
        values = {"size": {"height": 64, "width": 64}}
    elif kind != "vivit":
        values.setdefault("image_mean", [0.4, 0.45, 0.5])
        values.setdefault("image_std", [0.2, 0.25, 0.3])
    cls(**values).save_pretrained(str(folder))


def save_timesformer(folder: Path) -> Path:
    """TimeSformer on the tiny model's 8 frames of 64 px: 1 + 8 x 4x4 = 129 tokens."""
    from transformers import TimesformerConfig, TimesformerModel

    torch.manual_seed(5)
    TimesformerModel(TimesformerConfig(**_small(image_size=64, patch_size=16, num_frames=8))).save_pretrained(
        str(folder), safe_serialization=True)
    _tiny_image_processor(folder)
    return folder


def save_vivit(folder: Path) -> Path:
    """ViViT, 2x16x16 tubelets: 1 + 4 x 4x4 = 65 tokens; its processor scales pixels to [-1, 1] (offset)."""
    from transformers import VivitConfig, VivitModel

    torch.manual_seed(6)
    VivitModel(VivitConfig(**_small(image_size=64, num_frames=8, tubelet_size=[2, 16, 16])), add_pooling_layer=False
               ).save_pretrained(str(folder), safe_serialization=True)
    _tiny_image_processor(folder, "vivit")
    return folder


def save_siglip(folder: Path) -> Path:
    """A whole SigLIP (no class token: all 4x4 patches are tokens)."""
    from transformers import SiglipConfig, SiglipModel

    torch.manual_seed(7)
    config = SiglipConfig(text_config=_small(vocab_size=64, max_position_embeddings=16),
                          vision_config=_small(image_size=64, patch_size=16))
    SiglipModel(config).save_pretrained(str(folder), safe_serialization=True)
    _tiny_image_processor(folder, "siglip")
    return folder


def save_dinov2(folder: Path) -> Path:
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(8)
    Dinov2Model(Dinov2Config(**_small(image_size=64, patch_size=16))).save_pretrained(str(folder),
                                                                                      safe_serialization=True)
    _tiny_image_processor(folder, "bit")
    return folder


def save_xclip(folder: Path) -> Path:
    """A whole X-CLIP; its vision tower exchanges a message token between the 8 frames in every layer."""
    from transformers import XCLIPConfig, XCLIPModel

    torch.manual_seed(9)
    config = XCLIPConfig(text_config=_small(vocab_size=64, max_position_embeddings=16),
                         vision_config=_small(image_size=64, patch_size=16, num_frames=8, mit_hidden_size=32,
                                              mit_intermediate_size=64, mit_num_hidden_layers=1,
                                              mit_num_attention_heads=4),
                         projection_dim=16, prompt_layers=1, prompt_attention_heads=4)
    XCLIPModel(config).save_pretrained(str(folder), safe_serialization=True)
    _tiny_image_processor(folder)
    return folder


def _save_timm(folder: Path, architecture: str, seed: int, **args) -> Path:
    """A timm model saved by timm's own Hub writer (config.json with architecture, model_args, pretrained_cfg)."""
    import timm
    from timm.models import save_for_hf

    torch.manual_seed(seed)
    model = timm.create_model(architecture, pretrained=False, num_classes=0, **args)
    model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (3, 64, 64), "mean": (0.4, 0.45, 0.5),
                            "std": (0.2, 0.25, 0.3)}
    folder.mkdir(parents=True, exist_ok=True)
    save_for_hf(model, str(folder), model_args=args, safe_serialization=True)
    return folder


def save_timm_vit(folder: Path) -> Path:
    """A timm ViT: a class token and 4x4 patch tokens per frame."""
    return _save_timm(folder, "vit_tiny_patch16_224", 10, img_size=64, embed_dim=32, depth=2, num_heads=4)


def save_timm_resnet(folder: Path) -> Path:
    """timm's tiny test ResNet: a (96, 2, 2) feature map per 64 px frame."""
    return _save_timm(folder, "test_resnet", 14)


def _waveform_config(cls, seed: int, folder: Path) -> Path:
    """wav2vec2 / HuBERT with a 3-layer front end striding 320 samples: 1 s at 16 kHz -> 50 tokens."""
    from transformers import Wav2Vec2FeatureExtractor

    torch.manual_seed(seed)
    config_cls, model_cls = cls
    config = config_cls(**_small(conv_dim=(16, 16, 16), conv_kernel=(10, 8, 4), conv_stride=(10, 8, 4),
                                 num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, vocab_size=8))
    model_cls(config).save_pretrained(str(folder), safe_serialization=True)
    Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True).save_pretrained(str(folder))
    return folder


def save_wav2vec2(folder: Path) -> Path:
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    return _waveform_config((Wav2Vec2Config, Wav2Vec2Model), 11, folder)


def save_hubert(folder: Path) -> Path:
    from transformers import HubertConfig, HubertModel

    return _waveform_config((HubertConfig, HubertModel), 12, folder)


def save_clap(folder: Path) -> Path:
    """A whole CLAP (text and audio towers); the audio tower (HTSAT) on 16 mel bins at 48 kHz, its spectrogram
    resized to 64², 2 stages: 8 x 8 = 64 tokens of width 32."""
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel

    torch.manual_seed(13)
    audio = dict(num_mel_bins=16, spec_size=64, patch_size=4, patch_stride=[4, 4], window_size=4, depths=[1, 1],
                 num_attention_heads=[2, 4], patch_embeds_hidden_size=16, hidden_size=32, projection_dim=16,
                 enable_fusion=False)
    config = ClapConfig(text_config=_small(vocab_size=64, max_position_embeddings=24), audio_config=audio,
                        projection_dim=16)
    ClapModel(config).save_pretrained(str(folder), safe_serialization=True)
    ClapFeatureExtractor(feature_size=16, sampling_rate=48000, hop_length=480, fft_window_size=1024,
                         max_length_s=1, truncation="rand_trunc", padding="repeatpad").save_pretrained(str(folder))
    return folder
