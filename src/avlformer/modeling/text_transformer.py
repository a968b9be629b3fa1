"""The multimodal text transformer: a BERT-base encoder that also embeds AV tokens (docs/upstream.md §3.4).

Parameter names follow Hugging Face BERT v1 (``bert.*``, ``cls.predictions.*``) so a plain BERT checkpoint and
upstream's ``model.bin`` (under ``trans_encoder.``) load by name. Decoding runs this same forward with a
:mod:`~avlformer.modeling.kv_cache` cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from avlformer.config_fields import FieldTypeError, JsonDataclass
from avlformer.json_files import read_json
from avlformer.modeling.attention import attention, check_implementation
from avlformer.modeling.meta_device import check_state_dict, state_shapes
from avlformer.modeling.weights_file import read_weights_file


@dataclass
class TextTransformerConfig(JsonDataclass):
    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    img_feature_dim: int = 512
    initializer_range: float = 0.02
    attn_implementation: str = "sdpa"  # modeling/attention.py

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        check_implementation(self.attn_implementation)

    @classmethod
    def base(cls) -> "TextTransformerConfig":
        """bert-base-uncased, as in the paper."""
        return cls()

    @classmethod
    def nano(cls) -> "TextTransformerConfig":
        """Tests and the demo (full vocabulary, so real captions fit)."""
        return cls(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, max_position_embeddings=128,
                   img_feature_dim=16)

    def describe(self) -> str:
        return f"{self.num_layers}-layer text transformer"

    @classmethod
    def from_hf_bert_config(cls, hf: dict, img_feature_dim: int = 512) -> "TextTransformerConfig":
        """Map a Hugging Face BERT ``config.json`` onto ours (values type-checked as any config file's are)."""
        if not isinstance(hf, dict):
            raise ValueError(f"expected a JSON object, got {type(hf).__name__}")
        if hf.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"only erf GELU BERT models are supported, config has hidden_act={hf['hidden_act']!r}")
        absent = [theirs for theirs in _HF_REQUIRED.values() if theirs not in hf]
        if absent:
            raise ValueError(f"not a BERT config: no {', '.join(absent)}")
        names = {**_HF_REQUIRED, **_HF_OPTIONAL}
        values = {ours: hf[theirs] for ours, theirs in names.items() if theirs in hf}
        try:
            return cls.from_dict({**values, "img_feature_dim": img_feature_dim})
        except FieldTypeError as error:  # name the value as the file spells it
            raise FieldTypeError(names.get(error.field, error.field), error.expected, error.value) from None


# Our config field -> Hugging Face BertConfig name; the optional ones keep our (bert-base) default when absent.
_HF_REQUIRED = {"vocab_size": "vocab_size", "hidden_size": "hidden_size", "num_layers": "num_hidden_layers",
                "num_heads": "num_attention_heads", "intermediate_size": "intermediate_size",
                "max_position_embeddings": "max_position_embeddings", "type_vocab_size": "type_vocab_size"}
_HF_OPTIONAL = {"hidden_dropout": "hidden_dropout_prob", "attention_dropout": "attention_probs_dropout_prob",
                "layer_norm_eps": "layer_norm_eps", "initializer_range": "initializer_range"}


class BertSelfAttention(nn.Module):

    def __init__(self, cfg: TextTransformerConfig, layer_index: int = 0):
        super().__init__()
        self.num_heads, self.head_dim = cfg.num_heads, cfg.hidden_size // cfg.num_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.dropout_p = cfg.attention_dropout
        self.implementation = cfg.attn_implementation
        self.layer_index = layer_index  # which of the cache's layers is this one's

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, hidden: torch.Tensor, bias: torch.Tensor | None, output_rows: int | None = None,
                cache=None) -> torch.Tensor:
        """Attention outputs of every row, or of the first ``output_rows`` (whose queries alone are projected;
        every row still serves as a key and value)."""
        rows = hidden if output_rows is None else hidden[:, :output_rows]
        if bias is not None and output_rows is not None:
            bias = bias[..., :output_rows, :]
        query = self._split_heads(self.query(rows))
        key, value = self._split_heads(self.key(hidden)), self._split_heads(self.value(hidden))
        if cache is not None:
            query, key, value, bias = cache.update(self.layer_index, query, key, value, bias)
        context = attention(query, key, value, bias, implementation=self.implementation,
                            dropout_p=self.dropout_p if self.training else 0.0)
        if cache is not None:
            context = cache.ungroup(context)
        batch, _, length, _ = context.shape
        return context.transpose(1, 2).reshape(batch, length, self.num_heads * self.head_dim)


class _ProjectAddNorm(nn.Module):
    """The end of a post-LN sublayer: projection to the hidden size, dropout, residual, LayerNorm."""

    def __init__(self, cfg: TextTransformerConfig, in_features: int):
        super().__init__()
        self.dense = nn.Linear(in_features, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden)) + residual)


class BertSelfOutput(_ProjectAddNorm):
    """End of the attention sublayer (``attention.output.*``): the heads' concatenation, hidden -> hidden."""

    def __init__(self, cfg: TextTransformerConfig):
        super().__init__(cfg, cfg.hidden_size)


class BertOutput(_ProjectAddNorm):
    """End of the feed-forward sublayer (``output.*``): intermediate -> hidden."""

    def __init__(self, cfg: TextTransformerConfig):
        super().__init__(cfg, cfg.intermediate_size)


class BertAttention(nn.Module):
    def __init__(self, cfg: TextTransformerConfig, layer_index: int = 0):
        super().__init__()
        self.self = BertSelfAttention(cfg, layer_index)
        self.output = BertSelfOutput(cfg)

    def forward(self, hidden, bias, output_rows: int | None = None, cache=None):
        residual = hidden if output_rows is None else hidden[:, :output_rows]
        return self.output(self.self(hidden, bias, output_rows, cache), residual)


class BertIntermediate(nn.Module):
    def __init__(self, cfg: TextTransformerConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, hidden):
        return F.gelu(self.dense(hidden))


class BertLayer(nn.Module):
    def __init__(self, cfg: TextTransformerConfig, layer_index: int = 0):
        super().__init__()
        self.attention = BertAttention(cfg, layer_index)
        self.intermediate = BertIntermediate(cfg)
        self.output = BertOutput(cfg)

    def forward(self, hidden, bias, output_rows: int | None = None, cache=None):
        attended = self.attention(hidden, bias, output_rows, cache)
        return self.output(self.intermediate(attended), attended)


class BertEncoder(nn.Module):
    def __init__(self, cfg: TextTransformerConfig):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(cfg, index) for index in range(cfg.num_layers))
        self.gradient_checkpointing = False

    def forward(self, hidden, bias, output_rows: int | None = None, cache=None):
        """``output_rows``: return only the first rows' states (the last layer computes no others)."""
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        last = len(self.layer) - 1
        for index, layer in enumerate(self.layer):
            run = partial(checkpoint, layer, use_reentrant=False) if recompute else layer
            hidden = run(hidden, bias, output_rows if index == last else None, cache)
        return hidden


class BertEmbeddings(nn.Module):
    def __init__(self, cfg: TextTransformerConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout)

    def forward(self, input_ids, position_ids=None):
        if position_ids is None:
            # Explicit positions (decoding) are validated by their caller: checking values here would force a
            # device sync on every decoding step.
            if input_ids.shape[1] > self.position_embeddings.num_embeddings:
                raise ValueError(f"text of length {input_ids.shape[1]} exceeds max_position_embeddings "
                                 f"{self.position_embeddings.num_embeddings}")
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        embedded = (self.word_embeddings(input_ids) + self.position_embeddings(position_ids)
                    + self.token_type_embeddings(torch.zeros_like(input_ids)))  # upstream: every token is segment 0
        return self.dropout(self.LayerNorm(embedded))


class BertImgModel(nn.Module):
    """BERT plus ``img_embedding`` for AV tokens (run by TextTransformer.forward). No pooler: upstream computes
    one but never uses it."""

    def __init__(self, cfg: TextTransformerConfig):
        super().__init__()
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = BertEncoder(cfg)
        self.img_embedding = nn.Linear(cfg.img_feature_dim, cfg.hidden_size)
        self.img_dropout = nn.Dropout(cfg.hidden_dropout)


class BertPredictionHeadTransform(nn.Module):
    def __init__(self, cfg: TextTransformerConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, hidden):
        return self.LayerNorm(F.gelu(self.dense(hidden)))


class BertLMPredictionHead(nn.Module):
    """Untied LM head: its decoder is its own matrix (upstream ``tie_weights=False``), with a separate bias."""

    def __init__(self, cfg: TextTransformerConfig):
        super().__init__()
        self.transform = BertPredictionHeadTransform(cfg)
        self.decoder = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, hidden):
        return self.decoder(self.transform(hidden)) + self.bias


class BertCaptioningHeads(nn.Module):
    def __init__(self, cfg: TextTransformerConfig):
        super().__init__()
        self.predictions = BertLMPredictionHead(cfg)

    def forward(self, hidden):
        return self.predictions(hidden)


class TextTransformer(nn.Module):
    """Upstream's ``trans_encoder``: ``bert`` (encoder with img_embedding) and ``cls`` (LM head, which callers
    apply only to the hidden states they need logits for)."""

    def __init__(self, cfg: TextTransformerConfig):
        super().__init__()
        self.config = cfg
        self.bert = BertImgModel(cfg)
        self.cls = BertCaptioningHeads(cfg)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        """Upstream/BERT init: N(0, 0.02) for Linear and Embedding weights, zero biases, LayerNorm (1, 0)."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        self.bert.encoder.gradient_checkpointing = enabled

    def get_input_embeddings(self) -> nn.Embedding:
        return self.bert.embeddings.word_embeddings

    def forward(self, input_ids=None, av_tokens=None, attention_bias=None, position_ids=None,
                output_rows: int | None = None, cache=None):
        """Hidden states of ``[text ; AV]`` (either part may be absent), or of its first ``output_rows`` rows.
        ``attention_bias`` is additive, broadcastable to ``(B, heads, N, N)``; with a ``cache`` (KVCache) the rows
        also attend to the keys/values it holds."""
        bert, parts = self.bert, []
        if input_ids is not None:
            parts.append(bert.embeddings(input_ids, position_ids))
        if av_tokens is not None:
            parts.append(bert.img_dropout(bert.img_embedding(av_tokens)))
        hidden = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        return bert.encoder(hidden, attention_bias, output_rows, cache)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.cls(hidden)

    def load_hf_bert(self, folder: str | Path) -> list[str]:
        """Initialise from a local Hugging Face BERT folder; returns the names of our tensors it did not provide
        (e.g. img_embedding). A tied checkpoint without a decoder matrix gives the LM head a copy of the word
        embeddings."""
        folder = Path(folder)
        config_path = folder / "config.json"
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: Hugging Face BERT folder not found (expected {config_path})")
        hf_config = read_json(config_path, "Hugging Face BERT config")
        try:
            expected = TextTransformerConfig.from_hf_bert_config(hf_config, self.config.img_feature_dim)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{config_path}: {error}") from None
        mismatched = {k: (getattr(expected, k), getattr(self.config, k)) for k in _HF_REQUIRED
                      if getattr(expected, k) != getattr(self.config, k)}
        if mismatched:
            raise ValueError(f"{folder / 'config.json'}: BERT dimensions differ from this model "
                             f"(name: (folder, model)): {mismatched}")
        weights = next((folder / name for name in HF_BERT_WEIGHTS if (folder / name).is_file()), None)
        if weights is None:
            raise FileNotFoundError(f"{folder}: no model.safetensors or pytorch_model.bin")
        ours = hf_bert_to_ours(dict(read_weights_file(weights, "Hugging Face BERT weights")))
        if "cls.predictions.decoder.weight" not in ours and "bert.embeddings.word_embeddings.weight" in ours:
            ours["cls.predictions.decoder.weight"] = ours["bert.embeddings.word_embeddings.weight"].clone()
        own = state_shapes(self)
        # Every tensor given must fit; the ones it lacks (img_embedding) keep their initialisation.
        check_state_dict(ours, {name: shape for name, shape in own.items() if name in ours},
                         what=f"{weights}: BERT checkpoint")
        self.load_state_dict(ours, strict=False)
        return sorted(set(own) - set(ours))


HF_BERT_WEIGHTS = ("model.safetensors", "pytorch_model.bin")  # what load_hf_bert reads, in this order
# Parts of HF BERT checkpoints we have no module for: pooler, NSP head, position-id buffers.
_HF_IGNORED_PREFIXES = ("bert.pooler.", "cls.seq_relationship.", "bert.embeddings.position_ids",
                        "bert.embeddings.token_type_ids", "cls.predictions.decoder.bias")


def hf_bert_to_ours(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a Hugging Face BERT state dict (BertModel, BertForMaskedLM or BertForPreTraining) to our names."""
    out = {}
    for name, tensor in state_dict.items():
        if not name.startswith(("bert.", "cls.")):
            name = "bert." + name  # bare BertModel
        name = name.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        if name.startswith(_HF_IGNORED_PREFIXES):
            continue
        out[name] = tensor
    return out
