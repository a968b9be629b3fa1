"""The multimodal text transformer: a BERT-base encoder (HF parameter names) that also embeds AV tokens.

Parameter names follow Hugging Face BERT v1 (``bert.embeddings.*``, ``bert.encoder.layer.i.*``, ``cls.predictions.*``)
so that both a plain BERT checkpoint and upstream's released ``model.bin`` (under ``trans_encoder.``) load by name.
Post-LN, erf GELU, attention through ``scaled_dot_product_attention`` with an additive float bias (upstream's
``-10000·(1-mask)``, so soft mask values are meaningful). AV tokens get ``img_embedding`` + dropout only: no position
or type embedding and no LayerNorm (docs/upstream.md §3.4).

Attention is split into :meth:`BertSelfAttention.project` and :meth:`BertSelfAttention.attend`, and a layer's
feed-forward half is :meth:`BertLayer.feed_forward`, so KV-cached decoding (:mod:`avlformer.modeling.generation`)
runs the same modules with its own attention over cached keys/values.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from avlformer.config_fields import FieldTypeError, checked_fields
from avlformer.json_files import read_json
from avlformer.modeling.cpu_attention import biased_attention, uses_biased_attention
from avlformer.modeling.weights_file import read_weights_file

ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager")


@dataclass
class TextTransformerConfig:
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
    # "eager" is the textbook matmul-softmax-matmul; it exists as the benchmark baseline and as a cross-check.
    attn_implementation: str = "sdpa"

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.attn_implementation not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"attn_implementation must be one of {ATTENTION_IMPLEMENTATIONS}, "
                             f"got {self.attn_implementation!r}")

    @classmethod
    def base(cls) -> "TextTransformerConfig":
        """bert-base-uncased dimensions, as in the paper."""
        return cls()

    @classmethod
    def nano(cls) -> "TextTransformerConfig":
        """A model that runs in milliseconds on CPU, for tests and the demo (full vocabulary, so real captions fit)."""
        return cls(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, max_position_embeddings=128,
                   img_feature_dim=16)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def describe(self) -> str:
        return f"{self.num_layers}-layer text transformer"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TextTransformerConfig":
        return cls(**checked_fields(cls, data))

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
    def __init__(self, cfg: TextTransformerConfig):
        super().__init__()
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.dropout_p = cfg.attention_dropout
        self.implementation = cfg.attn_implementation

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, N, heads·head_dim)`` -> ``(B, heads, N, head_dim)``."""
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def project(self, hidden: torch.Tensor):
        """Queries, keys and values, each ``(B, heads, N, head_dim)``."""
        return (self._split_heads(self.query(hidden)), *self.project_keys_values(hidden))

    def project_keys_values(self, hidden: torch.Tensor):
        return self._split_heads(self.key(hidden)), self._split_heads(self.value(hidden))

    def merge_heads(self, context: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`_split_heads`."""
        batch, _, length, _ = context.shape
        return context.transpose(1, 2).reshape(batch, length, self.num_heads * self.head_dim)

    def forward(self, hidden: torch.Tensor, bias: torch.Tensor | None, output_rows: int | None = None):
        """Attention outputs of every row, or of the first ``output_rows`` (whose queries alone are projected;
        every row still serves as a key and value)."""
        if output_rows is None:
            return self.attend(*self.project(hidden), bias)
        query = self._split_heads(self.query(hidden[:, :output_rows]))
        return self.attend(query, *self.project_keys_values(hidden),
                           None if bias is None else bias[..., :output_rows, :])

    def attend(self, query, key, value, bias: torch.Tensor | None) -> torch.Tensor:
        dropout_p = self.dropout_p if self.training else 0.0
        if bias is not None:
            bias = bias.to(query.dtype)
        if self.implementation == "sdpa" and uses_biased_attention(query, bias, dropout_p):
            context = biased_attention(query, key, value, bias, dropout_p=dropout_p)
        elif self.implementation == "sdpa":
            context = F.scaled_dot_product_attention(query, key, value, attn_mask=bias, dropout_p=dropout_p)
        else:
            context = eager_attention(query, key, value, bias, dropout_p)
        return self.merge_heads(context)


def eager_attention(query, key, value, bias, dropout_p: float) -> torch.Tensor:
    """Upstream's formulation (scores / sqrt(d) + bias, softmax, dropout, weighted sum): the SDPA baseline."""
    scores = query @ key.transpose(-1, -2) / math.sqrt(query.shape[-1])
    if bias is not None:
        scores = scores + bias
    probs = F.dropout(scores.softmax(dim=-1), p=dropout_p)
    return probs @ value


class _ProjectAddNorm(nn.Module):
    """How each sublayer of a post-LN BERT layer ends: projection to the hidden size, dropout, residual, LayerNorm."""

    def __init__(self, cfg: TextTransformerConfig, in_features: int):
        super().__init__()
        self.dense = nn.Linear(in_features, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self._add_norm(self.dense(hidden), residual)

    def add_norm(self, projected: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """The same end for a projection computed elsewhere without its bias (``projected``: the sum of partial
        products over slices of ``dense``'s input, as a decoding step cut in two computes it)."""
        return self._add_norm(projected + self.dense.bias, residual)

    def _add_norm(self, dense_output: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(dense_output) + residual)


class BertSelfOutput(_ProjectAddNorm):
    """End of the attention sublayer (``attention.output.*``): the heads' concatenation, hidden -> hidden."""

    def __init__(self, cfg: TextTransformerConfig):
        super().__init__(cfg, cfg.hidden_size)


class BertOutput(_ProjectAddNorm):
    """End of the feed-forward sublayer (``output.*``): intermediate -> hidden."""

    def __init__(self, cfg: TextTransformerConfig):
        super().__init__(cfg, cfg.intermediate_size)


class BertAttention(nn.Module):
    def __init__(self, cfg: TextTransformerConfig):
        super().__init__()
        self.self = BertSelfAttention(cfg)
        self.output = BertSelfOutput(cfg)

    def forward(self, hidden, bias, output_rows: int | None = None):
        residual = hidden if output_rows is None else hidden[:, :output_rows]
        return self.output(self.self(hidden, bias, output_rows), residual)


class BertIntermediate(nn.Module):
    def __init__(self, cfg: TextTransformerConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, hidden):
        return F.gelu(self.dense(hidden))


class BertLayer(nn.Module):
    def __init__(self, cfg: TextTransformerConfig):
        super().__init__()
        self.attention = BertAttention(cfg)
        self.intermediate = BertIntermediate(cfg)
        self.output = BertOutput(cfg)

    def forward(self, hidden, bias, output_rows: int | None = None):
        return self.feed_forward(self.attention(hidden, bias, output_rows))

    def feed_forward(self, attended: torch.Tensor) -> torch.Tensor:
        return self.output(self.intermediate(attended), attended)


class BertEncoder(nn.Module):
    def __init__(self, cfg: TextTransformerConfig):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(cfg) for _ in range(cfg.num_layers))
        self.gradient_checkpointing = False

    def recomputes(self) -> bool:
        """Whether a pass with gradients over these layers recomputes them in backward (``--activation_checkpointing
        text``); never while decoding, which runs without gradients. Passes that run the layers themselves (the
        SCST log-prob pass, the AV prefill) follow the same switch."""
        return self.gradient_checkpointing and self.training and torch.is_grad_enabled()

    def forward(self, hidden, bias, output_rows: int | None = None):
        """``output_rows``: return only the first rows' states. The last layer then computes no others: in
        training the AV rows' last outputs feed nothing (1257 of 1557 rows at the paper size)."""
        recompute = self.recomputes()
        last = len(self.layer) - 1
        for index, layer in enumerate(self.layer):
            rows = output_rows if index == last else None
            if recompute:
                hidden = checkpoint(layer, hidden, bias, rows, use_reentrant=False)
            else:
                hidden = layer(hidden, bias, rows)
        return hidden


class BertEmbeddings(nn.Module):
    def __init__(self, cfg: TextTransformerConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout)

    def forward(self, input_ids, position_ids=None, token_type_ids=None):
        if position_ids is None:
            # Explicit positions (decoding) are validated by their caller: checking values here would force a
            # device sync on every decoding step.
            if input_ids.shape[1] > self.position_embeddings.num_embeddings:
                raise ValueError(f"text of length {input_ids.shape[1]} exceeds max_position_embeddings "
                                 f"{self.position_embeddings.num_embeddings}")
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)  # upstream: every token is segment 0
        embedded = (self.word_embeddings(input_ids) + self.position_embeddings(position_ids)
                    + self.token_type_embeddings(token_type_ids))
        return self.dropout(self.LayerNorm(embedded))


class BertImgModel(nn.Module):
    """BERT plus ``img_embedding`` for AV tokens. No pooler: upstream computes one but never uses it."""

    def __init__(self, cfg: TextTransformerConfig):
        super().__init__()
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = BertEncoder(cfg)
        self.img_embedding = nn.Linear(cfg.img_feature_dim, cfg.hidden_size)
        self.img_dropout = nn.Dropout(cfg.hidden_dropout)

    def embed_av(self, av_tokens: torch.Tensor) -> torch.Tensor:
        return self.img_dropout(self.img_embedding(av_tokens))

    def forward(self, input_ids, av_tokens=None, attention_bias=None, position_ids=None, token_type_ids=None,
                output_rows: int | None = None):
        """Hidden states of ``[text ; AV]`` (AV optional), or of its first ``output_rows`` rows.
        ``attention_bias`` is additive, broadcastable to ``(B, heads, N, N)``; see
        :mod:`avlformer.modeling.attention_mask`."""
        hidden = self.embeddings(input_ids, position_ids, token_type_ids)
        if av_tokens is not None:
            hidden = torch.cat([hidden, self.embed_av(av_tokens)], dim=1)
        return self.encoder(hidden, attention_bias, output_rows)


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
    """Upstream's ``trans_encoder``: ``bert`` (encoder with img_embedding) and ``cls`` (LM head).

    The LM head is never applied to every position: callers pass only the hidden states they need logits for
    (a 30522-way projection over 300 positions would dominate the cost)."""

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

    def forward(self, input_ids, av_tokens=None, attention_bias=None, position_ids=None, token_type_ids=None,
                output_rows: int | None = None):
        return self.bert(input_ids, av_tokens, attention_bias, position_ids, token_type_ids, output_rows)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.cls(hidden)

    def load_hf_bert(self, folder: str | Path) -> list[str]:
        """Initialise from a local Hugging Face BERT folder (``config.json`` + ``model.safetensors`` or
        ``pytorch_model.bin``). Returns the names of our tensors the folder did not provide (e.g. img_embedding).

        The MLM head, when present, initialises our untied LM head; a tied checkpoint that stores no decoder
        matrix gets a copy of the word embeddings, which then train separately."""
        folder = Path(folder)
        config_path = folder / "config.json"
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: Hugging Face BERT folder not found (expected {config_path})")
        hf_config = read_json(config_path, "Hugging Face BERT config")
        try:
            expected = TextTransformerConfig.from_hf_bert_config(hf_config, self.config.img_feature_dim)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{config_path}: {error}") from None
        mismatched = {k: (getattr(expected, k), getattr(self.config, k)) for k in
                      ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                       "max_position_embeddings", "type_vocab_size")
                      if getattr(expected, k) != getattr(self.config, k)}
        if mismatched:
            raise ValueError(f"{folder / 'config.json'}: BERT dimensions differ from this model "
                             f"(name: (folder, model)): {mismatched}")
        ours = hf_bert_to_ours(_read_weights(folder))
        if "cls.predictions.decoder.weight" not in ours and "bert.embeddings.word_embeddings.weight" in ours:
            ours["cls.predictions.decoder.weight"] = ours["bert.embeddings.word_embeddings.weight"].clone()
        own = self.state_dict()
        unexpected = sorted(set(ours) - set(own))
        misshaped = sorted(f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                           for k, v in ours.items() if k in own and v.shape != own[k].shape)
        if unexpected or misshaped:
            raise ValueError(f"{folder}: cannot load BERT weights; unexpected keys {unexpected}, "
                             f"misshaped {misshaped}")
        self.load_state_dict(ours, strict=False)
        return sorted(set(own) - set(ours))


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return dict(read_weights_file(folder / name, "Hugging Face BERT weights"))
    raise FileNotFoundError(f"{folder}: no model.safetensors or pytorch_model.bin")


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
