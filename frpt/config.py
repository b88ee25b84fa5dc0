"""Model and training configurations, and the two named presets.

``paper`` follows the AAAI 2023 text (Eqs. 1-10, Sec. "Implementation Details"); ``official`` follows the
released code (github.com/Pual2013/FRPT, ``saliency_sampler.py``, ``retrieval_head.py``, ``cub.yml``).
``compact`` is ours: FRPT for small compute (a 2-core CPU), with every departure listed in :data:`COMPACT_DEPARTURES`
and measured in bench/RESULTS.md.
../shared/research/frpt-paper.md lists every difference. Configs are plain dataclasses so that a checkpoint
stores them as JSON (``dataclasses.asdict``) and never as pickled objects.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from .errors import ConfigError

PRESETS = ("paper", "official", "compact")
# Table 1 rows. "pt" = frozen backbone's pooled features, nothing trained.
VARIANTS = ("frpt", "dpp+pt", "pt+cah", "no-in", "finetune", "pt")
DPP_VARIANTS = ("frpt", "dpp+pt", "no-in")  # the rows with a discriminative perturbation prompt
PROMPTS = ("warp", "crop")  # warp: the published DPP sampler; crop: the compact preset's rigid zoom
# Views whose normalised embeddings are averaged. "zoom" and "zoom-flip" are ours (compact, issue 30): a square
# part zoom of half-side ModelConfig.zoom_half on the crop prompt's saliency peak, beside the object crop.
VIEWS = ("orig", "flip", "crop", "crop-flip", "zoom", "zoom-flip")
ZOOM_VIEWS = ("zoom", "zoom-flip")  # the part zoom's views (issue 30)
PROMPT_VIEWS = ("crop", "crop-flip", *ZOOM_VIEWS)  # the views a prompt produces (none without one)

# What the compact preset changes, why, and where its effect is measured (bench/RESULTS.md, "compact preset").
COMPACT_DEPARTURES: dict[str, str] = {
    "prompt": "rigid zoom on the saliency's box instead of the inhomogeneous warp: the warp bends the object and "
              "frozen features pay for it (cpu-recipe-notes.md)",
    "saliency": "a 1x1 conv on the frozen final map (stride 32), initialised to the channel mean (the backbone's "
                "activation energy), instead of a 31x31 conv on block-1 features",
    "views": "the embedding averages the L2-normalised embeddings of the original, its flip, the crop and its flip",
    "pooling": "GeM (p = 3), as the released code, instead of GAP; no BNNeck (on frozen features its per-channel "
               "standardisation cost 1 R@1 and 2.5 MAP@R on the validation classes)",
    "training": "features of the frozen backbone are computed once and cached (fp16); the prompt is trained first, "
                "then the head, each on the cache, with the epoch chosen on a validation split of training classes",
    "head": "the CAH gate starts open (W_C ~ 1, so the untrained head equals PT) and trains with AdamW on cached maps",
    "loss": "cross-entropy with label smoothing 0.1",
    "zoom": "opt-in only (--views ...,zoom,zoom-flip): two more views, a square of half-side S on the soft peak of "
            "the crop prompt's saliency (its mean at temperature 1/4) and its flip, S chosen on the validation "
            "classes: a part zoom beside the object crop (the paper's warp magnifies several parts at once, a "
            "rigid crop one); issue 30's probe: 69.04 R@1 / 25.09 MAP@R on CUB at 288 px against 68.86 / 24.49",
    "boxes": "opt-in only (--prompt-supervision boxes): the crop's centre is regressed onto the training images' "
             "ground-truth boxes instead of being learned from class labels; no shipped checkpoint uses it",
    "whitening": "opt-in only (--whitening): after CAH and GeM, the embedding is whitened by the training classes' "
                 "within-class covariance (closed form, its shrinkage chosen on the validation classes), a step "
                 "Eq. 9 and the paper's embedding do not have",
}
PROMPT_SUPERVISION = ("labels", "boxes")


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild an FRPT model (the backbone weights aside)."""

    preset: str = "paper"
    variant: str = "frpt"
    backbone: str = "efficientnet_lite0"
    num_classes: int = 0
    input_size: int = 224
    # DPP (Sec. 3.2). paper: block-1 (stride 4) features, one sigma x sigma kernel, sigma = 31 (Eq. 1).
    # official: stride-16 stage, ReLU, 1x1 conv with bias.
    saliency_stride: int = 4
    saliency_kernel: int = 31
    saliency_relu: bool = False
    saliency_bias: bool = False
    grid_size: int = 31      # Recasens et al. sampler, as in the released saliency_sampler.py
    grid_padding: int = 30
    gaussian_fwhm: float = 13.0
    # Which sampler the prompt uses (PROMPTS). The crop box is mean +- crop_std_scale * std of the saliency per
    # axis, widened by crop_margin, each half-width clamped to [crop_min_half, crop_max_half] (image fractions).
    prompt: str = "warp"
    crop_std_scale: float = 2.0
    crop_margin: float = 0.1
    crop_min_half: float = 0.2
    crop_max_half: float = 0.5
    # Comma-separated VIEWS averaged into the embedding; PROMPT_VIEWS are used only by variants with a prompt.
    views: str = "orig"
    # Ours (compact, issue 30): half-side of the "zoom" views' square, in image fractions; 0 = not chosen yet
    # (compact training chooses it on the validation classes). Checkpoints without zoom views ignore it.
    zoom_half: float = 0.0
    # Not in the paper or the code: 0 = unbounded logits, as published. B > 0 passes the saliency logits through
    # B * tanh(logits / B) before the softmax, so no cell can outweigh another by more than exp(2B) and the
    # softmax can never turn one-hot (the collapse in bench/RESULTS.md "DPP collapse").
    saliency_bound: float = 0.0
    # CAH (Sec. 3.3, Eqs. 7-9). official adds a 1x1 + 3x3 conv block after the gated IN.
    se_reduction: int = 8
    head_conv_block: bool = False
    cah_identity_init: bool = False  # ours (compact): the channel gate starts open, so the untrained head is PT
    # Embedding: paper = GAP + linear classifier; official = GeM(p=3) + BNNeck (bias frozen at 0).
    pooling: str = "avg"
    bnneck: bool = False
    classifier_bias: bool = True
    # Ours (compact only, opt-in): whiten the embedding by the training classes' within-class covariance
    # (frpt.models.head.WithinClassWhitening), fitted in closed form after the head.
    whitening: bool = False

    @property
    def use_dpp(self) -> bool:
        return self.variant in DPP_VARIANTS

    @property
    def view_list(self) -> tuple[str, ...]:
        """The views this variant embeds: the configured ones, without prompt views when there is no prompt."""
        views = tuple(v for v in self.views.split(",") if v)
        return tuple(v for v in views if self.use_dpp or v not in PROMPT_VIEWS)

    @property
    def use_cah(self) -> bool:
        return self.variant in ("frpt", "pt+cah", "no-in")

    @property
    def cah_instance_norm(self) -> bool:
        return self.variant != "no-in"

    @property
    def finetune(self) -> bool:
        return self.variant == "finetune"

    @property
    def trainable(self) -> bool:
        return self.variant != "pt"


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation recipe. Defaults are the paper's; ``official`` overrides them (frpt-paper.md Sec. 2)."""

    epochs: int = 500
    batch_size: int = 32
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    bias_weight_decay: bool = True
    schedule: str = "step"          # "step": x gamma every step_epochs; "cosine": linear warm-up then cosine
    step_epochs: int = 50
    step_gamma: float = 0.9
    warmup_iters: int = 0
    warmup_factor: float = 0.1
    min_lr: float = 0.0
    label_smoothing: float = 0.0
    grad_clip: float = 0.0          # per-parameter L2 clip, as fast-reid's clip_gradients ("value" mode)
    # Learning-rate multiplier for the DPP's saliency conv. 1.0 in both presets (as published); the saliency
    # gradient is orders of magnitude larger than the head's, and at scale 1.0 the softmax turns one-hot within
    # tens of steps (every output pixel then reads one input point), see bench/RESULTS.md.
    prompt_lr_scale: float = 1.0
    recipe: str = "paper"           # train-time augmentation, see frpt.data.transforms
    optimizer: str = "sgd"          # "sgd" (both published presets) or "adamw" (compact: heads on cached features)
    seed: int = 0
    workers: int = 0
    eval_every: int = 0             # evaluate R@1 on the test split every N epochs (0 = never)
    # compact preset (trained on cached frozen features): share of the training classes held out (whole) to choose
    # the epoch, and the epochs given to the prompt before the head.
    val_fraction: float = 0.0
    prompt_epochs: int = 0
    # What trains the compact crop prompt: "labels" (class labels only, through a proxy classifier) or "boxes"
    # (a departure, named: the training images' part/object boxes supervise the crop's centre directly).
    prompt_supervision: str = "labels"


_PRESET_MODEL: dict[str, dict[str, Any]] = {
    "paper": dict(saliency_stride=4, saliency_kernel=31, saliency_relu=False, saliency_bias=False,
                  se_reduction=8, head_conv_block=False, pooling="avg", bnneck=False, classifier_bias=True),
    "official": dict(saliency_stride=16, saliency_kernel=1, saliency_relu=True, saliency_bias=True,
                     se_reduction=1, head_conv_block=True, pooling="gem", bnneck=True, classifier_bias=False),
    "compact": dict(prompt="crop", saliency_stride=32, saliency_kernel=1, saliency_relu=False, saliency_bias=False,
                    se_reduction=8, head_conv_block=False, cah_identity_init=True, pooling="gem", bnneck=False,
                    classifier_bias=False, views="orig,flip,crop,crop-flip"),
}
_PRESET_TRAIN: dict[str, dict[str, Any]] = {
    "paper": dict(epochs=500, batch_size=32, lr=1e-3, momentum=0.9, weight_decay=1e-4, schedule="step",
                  step_epochs=50, step_gamma=0.9, label_smoothing=0.0, grad_clip=0.0, recipe="paper"),
    # cub.yml: momentum 0, wd 5e-4 (0 on biases), 1000 warm-up iterations from 0.1x, cosine to 2e-5,
    # per-parameter gradient clipping at 5, CE with label smoothing 0.3.
    "official": dict(epochs=500, batch_size=256, lr=0.02, momentum=0.0, weight_decay=5e-4,
                     bias_weight_decay=False, schedule="cosine", warmup_iters=1000, warmup_factor=0.1,
                     min_lr=2e-5, label_smoothing=0.3, grad_clip=5.0, recipe="official"),
    # Epochs over the cached features (seconds each on 2 cores); the best one on the held-out classes is kept.
    "compact": dict(epochs=10, batch_size=64, lr=1e-3, momentum=0.9, weight_decay=1e-4, schedule="cosine",
                    warmup_iters=0, min_lr=1e-5, label_smoothing=0.1, grad_clip=0.0, recipe="paper",
                    optimizer="adamw", val_fraction=0.2, prompt_epochs=10),
}


def model_config(preset: str = "paper", variant: str = "frpt", **overrides: Any) -> ModelConfig:
    """Resolve a preset and a Table 1 variant into a :class:`ModelConfig`."""
    if preset not in PRESETS:
        raise ConfigError(f"Unknown preset {preset!r}; choose one of {', '.join(PRESETS)}.")
    if variant not in VARIANTS:
        raise ConfigError(f"Unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}.")
    if overrides.get("whitening") and (preset != "compact" or variant in ("finetune", "pt")):
        raise ConfigError("--whitening is fitted by the compact preset's training on cached maps; use it with "
                          "--preset compact and a variant other than finetune or pt.")
    config = ModelConfig(preset=preset, variant=variant, **{**_PRESET_MODEL[preset], **overrides})
    views = config.views.split(",")
    if any(v not in VIEWS for v in views) or len(set(views)) != len(views):
        raise ConfigError(f"Unknown or repeated view in {config.views!r}; choose among {', '.join(VIEWS)}.")
    if any(v in ZOOM_VIEWS for v in views) and config.prompt != "crop":
        raise ConfigError("The zoom views read the crop prompt's saliency; use them with --preset compact.")
    if not 0 <= config.zoom_half <= 0.5:
        raise ConfigError(f"--zoom-half {config.zoom_half} is not a half-side in (0, 0.5] (0: chosen on validation).")
    return config


def train_config(preset: str = "paper", **overrides: Any) -> TrainConfig:
    """The preset's optimisation recipe with ``overrides`` (e.g. from the CLI) applied; None values are ignored."""
    if preset not in PRESETS:
        raise ConfigError(f"Unknown preset {preset!r}; choose one of {', '.join(PRESETS)}.")
    given = {k: v for k, v in overrides.items() if v is not None}
    if given.get("prompt_supervision", "labels") not in PROMPT_SUPERVISION:
        raise ConfigError(f"Unknown prompt supervision {given['prompt_supervision']!r}; choose one of "
                          f"{', '.join(PROMPT_SUPERVISION)}.")
    return TrainConfig(**{**_PRESET_TRAIN[preset], **given})


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a config dataclass from JSON, rejecting unknown keys (a card from another version or tool)."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"Configuration has unknown fields {unknown}; it was written by another tool or version.")
    return cls(**data)


__all__ = ["PRESETS", "VARIANTS", "DPP_VARIANTS", "PROMPTS", "VIEWS", "ZOOM_VIEWS", "PROMPT_VIEWS", "COMPACT_DEPARTURES",
           "PROMPT_SUPERVISION", "ModelConfig", "TrainConfig", "model_config", "train_config", "from_dict"]
