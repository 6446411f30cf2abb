"""Tiny, offline Stable Diffusion parts for tests and benchmarks (random weights, no downloads).

Follows diffusers' own test recipe: tiny configs, a CLIP tokenizer written from a generated
byte-level vocabulary, and LoRA files written in diffusers/PEFT and kohya form.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

# runtime parts the toy world builds its pipeline from too (re-exported for tests/benchmarks)
from scenecraft.models import quiet_libraries
from scenecraft.sdparts import assemble_pipeline, sd_scheduler, tiny_vocab

__all__ = ["assemble_pipeline", "quiet_libraries", "sd_scheduler", "tiny_vocab"]


def tiny_tokenizer(
    words: tuple[str, ...] = ("photo", "of", "a", "man", "dog"), pad_token: str = "<|endoftext|>"
) -> Any:
    """A CLIP tokenizer over `tiny_vocab`; SDXL's second tokenizer pads with ``"!"``."""
    from transformers import CLIPTokenizer

    vocab, merges = tiny_vocab(words)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77, pad_token=pad_token)


def tiny_vae(seed: int = 0, **overrides: Any) -> Any:
    """A tiny AutoencoderKL (2 blocks of 32/64 channels, 4 latent channels), seeded."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        norm_num_groups=32,
        **overrides,
    )


def tiny_components(seed: int = 0, cross_attention_dim: int = 32) -> dict[str, Any]:
    """The parts of a tiny SD 1.x pipeline; identical for the same seed."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        norm_num_groups=32,
    )
    vae = tiny_vae(seed)
    torch.manual_seed(seed)
    text_config = CLIPTextConfig(
        hidden_size=cross_attention_dim,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=5,
        vocab_size=len(tokenizer),
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    text_encoder = CLIPTextModel(text_config)
    scheduler = sd_scheduler()
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler": scheduler,
    }


def tiny_pipeline(seed: int = 0) -> Any:
    """A tiny StableDiffusionPipeline on CPU in fp32; a 64x64, 4-step call takes < 1 s."""
    return assemble_pipeline(tiny_components(seed))


def sd15_pipeline(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> Any:
    """An SD 1.5-shaped StableDiffusionPipeline (860M UNet, CLIP ViT-L/14-sized text encoder,
    VAE) with random weights from the published config shapes, built directly on ``device``.

    For benchmarks at real size with no download; the tokenizer is the tiny one (prompts are
    spelled out in characters), the text encoder keeps CLIP's 49,408-row embedding table.
    """
    from diffusers import (
        AutoencoderKL,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = tiny_tokenizer(("photo", "of", "a", "man", "woman", "dog", "cat"))
    torch.manual_seed(seed)
    with torch.device(device):
        unet = UNet2DConditionModel(
            sample_size=64,
            block_out_channels=(320, 640, 1280, 1280),
            layers_per_block=2,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=768,
            attention_head_dim=8,
        )
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=4,
            layers_per_block=2,
            sample_size=512,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                hidden_size=768,
                intermediate_size=3072,
                num_attention_heads=12,
                num_hidden_layers=12,
                vocab_size=49408,
                max_position_embeddings=77,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
    pipe = assemble_pipeline(
        {
            "vae": vae,
            "text_encoder": text_encoder,
            "tokenizer": tokenizer,
            "unet": unet,
            "scheduler": sd_scheduler(),
        }
    )
    return pipe.to(device, dtype)


def tiny_sdxl_components(
    seed: int = 0, widths: tuple[int, int] = (32, 48), projection_dim: int = 40
) -> dict[str, Any]:
    """The parts of a tiny SDXL pipeline, as diffusers' own SDXL tests build them: CLIP
    (``text_encoder``, width ``widths[0]``) and OpenCLIP-style ``text_encoder_2`` with a
    projection (width ``widths[1]``, pooled ``projection_dim``), tokenizers over a generated
    vocabulary (the second pads with ``"!"`` as SDXL's does), a small UNet with
    ``addition_embed_type="text_time"`` reading the concatenated context (``sum(widths)``) and
    pooled text + 6 time ids, a tiny VAE. Identical for the same seed.

    The two widths differ on purpose: a mix-up of the encoders fails on shapes.

    Long because it writes one configuration out, component by component, as diffusers' tests
    do.
    """
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    time_dim = 8
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * time_dim + projection_dim,
        cross_attention_dim=sum(widths),
        norm_num_groups=1,
    )
    vae = tiny_vae(seed, sample_size=128)
    tokenizer = tiny_tokenizer()
    tokenizer_2 = tiny_tokenizer(pad_token="!")

    def text_config(width: int, **extra: Any) -> Any:
        return CLIPTextConfig(
            hidden_size=width,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=5,
            vocab_size=len(tokenizer),
            max_position_embeddings=77,
            hidden_act="gelu",
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **extra,
        )

    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(text_config(widths[0]))
    torch.manual_seed(seed + 1)
    text_encoder_2 = CLIPTextModelWithProjection(
        text_config(widths[1], projection_dim=projection_dim)
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
    )
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer_2,
        "scheduler": scheduler,
    }


def assemble_sdxl_pipeline(components: dict[str, Any]) -> Any:
    """A StableDiffusionXLPipeline from its parts, progress bars off."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sdxl_pipeline(seed: int = 0) -> Any:
    """A tiny StableDiffusionXLPipeline on CPU in fp32 (`tiny_sdxl_components`)."""
    return assemble_sdxl_pipeline(tiny_sdxl_components(seed))


def save_tiny_sdxl_pipeline(path: str | Path, seed: int = 0) -> Path:
    """Write a tiny SDXL pipeline as a local diffusers folder (for the real loading path)."""
    path = Path(path)
    tiny_sdxl_pipeline(seed).save_pretrained(path)
    return path


def sdxl_pipeline(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> Any:
    """An SDXL-shaped StableDiffusionXLPipeline with random weights from the published config
    shapes (2.6B UNet: 320/640/1280 channels, 1/2/10 transformer blocks per level, 2048-wide
    context, text_time added conditioning; CLIP ViT-L and OpenCLIP bigG text encoders; the
    SDXL VAE), built directly on ``device``. For benchmarks at real size with no download;
    the tokenizers are the tiny ones, the embedding tables keep CLIP's 49,408 rows.

    Long because it writes one published configuration out, component by component, to be read
    against SDXL's own.
    """
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    words = ("photo", "of", "a", "man", "woman", "dog", "cat")
    tokenizer, tokenizer_2 = tiny_tokenizer(words), tiny_tokenizer(words, pad_token="!")

    def text_config(width: int, layers: int, heads: int, act: str, **extra: Any) -> Any:
        return CLIPTextConfig(
            hidden_size=width,
            intermediate_size=4 * width,
            num_attention_heads=heads,
            num_hidden_layers=layers,
            vocab_size=49408,
            max_position_embeddings=77,
            hidden_act=act,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **extra,
        )

    torch.manual_seed(seed)
    with torch.device(device):
        unet = UNet2DConditionModel(
            sample_size=128,
            block_out_channels=(320, 640, 1280),
            layers_per_block=2,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10),
            attention_head_dim=(5, 10, 20),
            use_linear_projection=True,
            cross_attention_dim=2048,
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
        )
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=4,
            layers_per_block=2,
            sample_size=1024,
            scaling_factor=0.13025,
        )
        text_encoder = CLIPTextModel(text_config(768, 12, 12, "quick_gelu"))
        text_encoder_2 = CLIPTextModelWithProjection(
            text_config(1280, 32, 20, "gelu", projection_dim=1280)
        )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
    )
    pipe = assemble_sdxl_pipeline(
        {
            "vae": vae,
            "text_encoder": text_encoder,
            "text_encoder_2": text_encoder_2,
            "tokenizer": tokenizer,
            "tokenizer_2": tokenizer_2,
            "unet": unet,
            "scheduler": scheduler,
        }
    )
    return pipe.to(device, dtype)


def save_tiny_pipeline(path: str | Path, seed: int = 0) -> Path:
    """Write a tiny pipeline as a local diffusers folder (for the real loading path)."""
    path = Path(path)
    tiny_pipeline(seed).save_pretrained(path)
    return path
