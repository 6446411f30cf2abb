"""Configs and builders for the toy world's tiny Stable Diffusion (standard diffusers parts).

64x64 RGB <-> 16x16x4 latents (a 4x AutoencoderKL), a small UNet2DConditionModel with
v-prediction and a zero-terminal-SNR DDIM schedule, and a CLIP text encoder over a tokenizer
generated from the world's words with every concept token added as a whole token.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scenecraft.models import quiet_libraries
from scenecraft.sdparts import assemble_pipeline, sd_scheduler, tiny_vocab
from scenecraft.toyworld.world import CONCEPTS, words

WEIGHTS = Path(__file__).parent / "weights"
BASE_DIR = WEIGHTS / "base"  # the shipped diffusers folder
LORA_DIR = WEIGHTS / "loras"  # the shipped concept LoRAs, <name>.safetensors


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of the toy model; the defaults are the shipped model."""

    max_tokens: int = 24  # tokenizer model_max_length (longer prompts are truncated)
    text_dim: int = 64  # text encoder width = UNet cross_attention_dim
    text_layers: int = 3  # text encoder depth
    text_heads: int = 4  # text encoder heads
    unet_channels: tuple[int, ...] = (32, 64, 64)  # UNet block widths at 16, 8, 4 latent res.
    unet_layers: int = 1  # resnets per UNet block
    vae_channels: tuple[int, ...] = (16, 32, 32)  # VAE widths; 3 blocks = 4x downsampling
    finest_cross_attention: bool = False  # cross-attention at the finest latent grid (16x16)
    seed: int = 0  # init seed


WORLD2 = ModelConfig(max_tokens=64, finest_cross_attention=True)
"""World 2's model: captions of four sprites reach ~60 tokens (some words split into pieces),
and placements anywhere want the prompt at the finest latent grid too."""
MODELS = {1: ModelConfig(), 2: WORLD2}  # per world version

TINY = ModelConfig(
    max_tokens=24,
    text_dim=32,
    text_layers=1,
    text_heads=2,
    unet_channels=(16, 16, 16),
    vae_channels=(16, 16, 16),
)  # for tests: trains a few steps in well under a second


def build_tokenizer(config: ModelConfig) -> Any:
    """CLIPTokenizer over the world's words (whole-word merges) plus the concept tokens."""
    from transformers import CLIPTokenizer

    vocab, merges = tiny_vocab(words())
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=config.max_tokens)
    tokenizer.add_tokens([c.token for c in CONCEPTS.values()])
    return tokenizer


def build_text_encoder(config: ModelConfig, tokenizer: Any) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(config.seed)
    return CLIPTextModel(
        CLIPTextConfig(
            hidden_size=config.text_dim,
            intermediate_size=config.text_dim * 2,
            num_attention_heads=config.text_heads,
            num_hidden_layers=config.text_layers,
            vocab_size=len(tokenizer),
            max_position_embeddings=config.max_tokens,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )


def build_unet(config: ModelConfig) -> Any:
    """The UNet. With ``finest_cross_attention`` (world 2) the 16x16 blocks attend to the prompt
    too, so a prompt (or a region's prompt) can say *where* at the latent grid's own resolution;
    those blocks use only cross-attention (``only_cross_attention``: both attention layers attend
    to the text), because 256-token self-attention doubled the step time."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(config.seed)
    n = len(config.unet_channels)
    first = "CrossAttn" if config.finest_cross_attention else ""
    return UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=config.unet_channels,
        layers_per_block=config.unet_layers,
        down_block_types=(f"{first}DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + (f"{first}UpBlock2D",),
        only_cross_attention=(config.finest_cross_attention,) + (False,) * (n - 1),
        mid_block_only_cross_attention=False,
        cross_attention_dim=config.text_dim,
        attention_head_dim=4,
        norm_num_groups=16,
    )


def build_vae(config: ModelConfig) -> Any:
    from diffusers import AutoencoderKL

    torch.manual_seed(config.seed)
    n = len(config.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=config.vae_channels,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=min(32, config.vae_channels[0]),
        sample_size=64,
        mid_block_add_attention=False,
    )


def build_scheduler() -> Any:
    """DDIM, v-prediction, zero terminal SNR with trailing timesteps (flat backdrops stay true)."""

    return sd_scheduler(
        prediction_type="v_prediction", rescale_betas_zero_snr=True, timestep_spacing="trailing"
    )


def build_components(config: ModelConfig) -> dict[str, Any]:
    """Fresh, untrained components of the toy pipeline."""
    tokenizer = build_tokenizer(config)
    return {
        "unet": build_unet(config),
        "vae": build_vae(config),
        "text_encoder": build_text_encoder(config, tokenizer),
        "tokenizer": tokenizer,
        "scheduler": build_scheduler(),
    }


def assemble(components: dict[str, Any]) -> Any:
    """A StableDiffusionPipeline from components (no safety checker)."""

    return assemble_pipeline(components)


def load_toyworld_pipeline(device: str = "cpu", path: str | Path | None = None) -> Any:
    """The shipped toy model through the standard diffusers path (``from_pretrained``).

    ``path`` defaults to ``scenecraft/toyworld/weights/base``; fp32 on ``device``.
    """
    from diffusers import StableDiffusionPipeline

    quiet_libraries()
    pipe = StableDiffusionPipeline.from_pretrained(
        str(path or BASE_DIR),
        local_files_only=True,
        safety_checker=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


DEFAULT_STEPS = 20  # sampling steps the shipped model is judged with
DEFAULT_GUIDANCE = 4.0  # classifier-free guidance scale the shipped model is judged with


def images_tensor(images: list[Any]) -> torch.Tensor:
    """PIL images -> (N, 3, 64, 64) float in [-1, 1]."""
    arr = np.stack([np.asarray(im, dtype=np.float32) for im in images])  # (N, 64, 64, 3)
    return torch.from_numpy(arr).permute(0, 3, 1, 2) / 127.5 - 1.0
