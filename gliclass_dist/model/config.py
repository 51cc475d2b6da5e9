"""``GLiClassConfig``: reads and writes the published ``config.json`` unchanged.

It is a transformers ``PretrainedConfig`` with ``model_type = "GLiClass"``. It is deliberately
not registered with ``AutoConfig``, so it never clashes with the reference package loaded in the
same process. Unknown keys are kept as attributes (and written back on save).
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig
from transformers.models.auto import CONFIG_MAPPING

ARCHITECTURES = ("uni-encoder", "bi-encoder", "bi-encoder-fused", "encoder-decoder", "encoder-decoder-cls", "decoder-kv")
SUPPORTED_ARCHITECTURES = ("uni-encoder",)
POOLING_STRATEGIES = ("first", "last", "avg", "max", "sum", "rms", "abs_max", "abs_avg")
SUPPORTED_SCORERS = ("simple", "mlp", "weighted-dot")
CLASS_TOKEN_POOLINGS = ("first", "average")

LABEL_TOKEN = "<<LABEL>>"
SEP_TOKEN = "<<SEP>>"
EXAMPLE_TOKEN = "<<EXAMPLE>>"
SPECIAL_TOKENS = (LABEL_TOKEN, SEP_TOKEN, EXAMPLE_TOKEN)


def build_encoder_config(encoder_config: Any) -> PretrainedConfig:
    """Turn the nested ``encoder_config`` dict of a checkpoint into the backbone's config object."""
    if isinstance(encoder_config, PretrainedConfig):
        return encoder_config
    if encoder_config is None:
        return CONFIG_MAPPING["deberta-v2"]()
    if not isinstance(encoder_config, dict):
        raise ValueError(f"encoder_config must be a mapping, got {type(encoder_config).__name__}")
    data = dict(encoder_config)
    model_type = data.get("model_type", "deberta-v2")
    if model_type not in CONFIG_MAPPING:
        raise ValueError(
            f"encoder_config.model_type {model_type!r} is not known to this transformers version; "
            "upgrade transformers or use another backbone"
        )
    data["model_type"] = model_type
    return CONFIG_MAPPING[model_type](**data)


class GLiClassConfig(PretrainedConfig):
    """Configuration of a GLiClass model (field names and defaults as in the published checkpoints)."""

    model_type = "GLiClass"
    has_no_defaults_at_init = False

    def __init__(
        self,
        encoder_config: Any = None,
        encoder_model: str | None = None,
        class_token_index: int = -1,
        text_token_index: int = -1,
        example_token_index: int = -1,
        hidden_size: int | None = None,
        projector_hidden_act: str = "gelu",
        vocab_size: int | None = None,
        problem_type: str = "single_label_classification",
        max_num_classes: int = 25,
        use_lstm: bool = False,
        initializer_range: float = 0.03,
        scorer_type: str = "simple",
        scorer_num_heads: int = 16,
        scorer_mlp_hidden_size: int = 1024,
        pooling_strategy: str = "first",
        class_token_pooling: str = "first",
        focal_loss_alpha: float = 0.5,
        focal_loss_gamma: float = 2,
        logit_scale_init_value: float = 2.6592,
        normalize_features: bool = False,
        extract_text_features: bool = False,
        contrastive_loss_coef: float = 0,
        architecture_type: str = "uni-encoder",
        prompt_first: bool = False,
        squeeze_layers: bool = False,
        layer_wise: bool = False,
        encoder_layer_id: int = -1,
        embed_class_token: bool = True,
        dropout: float = 0.1,
        use_segment_embeddings: bool = False,
        **kwargs: Any,
    ) -> None:
        self.encoder_config = build_encoder_config(encoder_config)
        self.encoder_model_name = encoder_model if encoder_model is not None else kwargs.pop("encoder_model_name", None)
        kwargs.pop("encoder_model_name", None)
        enc = self.encoder_config
        self.hidden_size = hidden_size if hidden_size is not None else enc.hidden_size
        self.vocab_size = vocab_size if vocab_size is not None else enc.vocab_size
        self.class_token_index = self.vocab_size if class_token_index == -1 else class_token_index
        self.text_token_index = self.vocab_size + 1 if text_token_index == -1 else text_token_index
        self.example_token_index = self.vocab_size + 2 if example_token_index == -1 else example_token_index
        self.projector_hidden_act = projector_hidden_act
        self.max_num_classes = max_num_classes
        self.use_lstm = use_lstm
        self.initializer_range = initializer_range
        self.scorer_type = scorer_type
        self.scorer_num_heads = scorer_num_heads
        self.scorer_mlp_hidden_size = scorer_mlp_hidden_size
        self.pooling_strategy = pooling_strategy
        self.class_token_pooling = class_token_pooling
        self.focal_loss_alpha = focal_loss_alpha
        self.focal_loss_gamma = focal_loss_gamma
        self.logit_scale_init_value = logit_scale_init_value
        self.normalize_features = normalize_features
        self.extract_text_features = extract_text_features
        self.contrastive_loss_coef = contrastive_loss_coef
        self.architecture_type = architecture_type
        self.prompt_first = prompt_first
        self.squeeze_layers = squeeze_layers
        self.layer_wise = layer_wise
        self.encoder_layer_id = encoder_layer_id
        self.embed_class_token = embed_class_token
        self.dropout = dropout
        self.use_segment_embeddings = use_segment_embeddings
        kwargs.setdefault("pad_token_id", getattr(enc, "pad_token_id", None))
        super().__init__(problem_type=problem_type, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["encoder_config"] = self.encoder_config.to_dict()
        # The reference package needs a name here (it joins it into a path), so never write null.
        out["encoder_model_name"] = self.encoder_model_name or self.encoder_config.model_type
        out.pop("encoder_model", None)
        return out

    def check_supported(self) -> None:
        """Fail fast, with a message that says what is wrong, on settings this implementation lacks."""
        if self.architecture_type not in ARCHITECTURES:
            raise ValueError(f"unknown architecture_type {self.architecture_type!r} (known: {', '.join(ARCHITECTURES)})")
        if self.architecture_type not in SUPPORTED_ARCHITECTURES:
            raise NotImplementedError(
                f"architecture_type {self.architecture_type!r} is not supported yet; only uni-encoder checkpoints load"
            )
        if self.scorer_type not in SUPPORTED_SCORERS:
            raise NotImplementedError(
                f"scorer_type {self.scorer_type!r} is not supported yet (supported: {', '.join(SUPPORTED_SCORERS)})"
            )
        if self.pooling_strategy not in POOLING_STRATEGIES:
            raise NotImplementedError(
                f"pooling_strategy {self.pooling_strategy!r} is not supported (supported: {', '.join(POOLING_STRATEGIES)})"
            )
        if self.class_token_pooling not in CLASS_TOKEN_POOLINGS:
            raise NotImplementedError(f"class_token_pooling {self.class_token_pooling!r} is not supported")
        if self.squeeze_layers or self.layer_wise:
            raise NotImplementedError("squeeze_layers / layer_wise checkpoints are not supported yet")
