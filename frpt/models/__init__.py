from .backbone import OFFLINE_BACKBONES, RANDOM_WEIGHTS, Backbone, file_sha256, load_weights, offline_weights_path
from .edit import PromptEdit
from .frpt import FRPT, FRPTOutput, build_model
from .head import CategoryAwarenessHead, EmbeddingHead, GeneralizedMeanPooling
from .prompt import DiscriminativePerturbationPrompt, PromptOutput
from .sampler import SaliencySampler, focus_score, identity_grid, sampling_density

__all__ = ["OFFLINE_BACKBONES", "RANDOM_WEIGHTS", "Backbone", "file_sha256", "load_weights", "offline_weights_path",
           "PromptEdit", "FRPT", "FRPTOutput", "build_model", "CategoryAwarenessHead", "EmbeddingHead", "GeneralizedMeanPooling",
           "DiscriminativePerturbationPrompt", "PromptOutput", "SaliencySampler", "focus_score", "identity_grid",
           "sampling_density"]
