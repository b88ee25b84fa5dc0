"""FRPT Studio: Fine-Grained Retrieval Prompt Tuning (Wang et al., AAAI 2023) on frozen timm backbones."""
__version__ = "0.1.0"
