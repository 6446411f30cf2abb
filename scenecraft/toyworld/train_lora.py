"""Train one concept LoRA on the toy base model, DreamBooth-style, alone.

    python -m scenecraft.toyworld.train_lora ziggy --minutes 3

Images show the concept's sprite alone (``pair_p``: sometimes next to a plain sprite) at a
size and position drawn by the world's layout, in random settings, captioned in the compiler's
English with the concept token (``<ZIGGY> circle wearing a hat, on grass``). Rank-r LoRA on the UNet attention (to_q/to_k/to_v/to_out.0) and the text
encoder attention (q/k/v/out_proj); the base stays frozen. Saved in diffusers/PEFT form
(``StableDiffusionPipeline.save_lora_weights``), loadable with ``pipe.load_lora_weights(path)``.

Orthogonal Adaptation (Po et al., CVPR 2024), ``--orthogonal INDEX --orthogonal-count N``: per
module, the down-projection A (r x in) is frozen to rows ``INDEX*r .. (INDEX+1)*r`` of one random
orthogonal basis of the module's input space, seeded by the module's name and the same for every
concept; only the up-projection B trains. Concepts trained with different indices have mutually
orthogonal A rows (A_i A_j^T = 0), so their deltas B_i A_i act on disjoint input subspaces and can
be summed with little interference.
"""

from __future__ import annotations

import argparse
import os
import random
import time
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from scenecraft.files import atomic_output
from scenecraft.toyworld.model import BASE_DIR, LORA_DIR, images_tensor, load_toyworld_pipeline
from scenecraft.toyworld.train_base import diffusion_loss, tokenize
from scenecraft.toyworld.world import CONCEPTS, VERSION, caption, random_scene, render

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


@dataclass(frozen=True)
class LoraConfig:
    """Schedule of one concept LoRA."""

    rank: int = 4  # LoRA rank r (alpha = r, so the scale alpha/r is 1)
    minutes: float = 3.0  # wall-clock budget
    steps: int = 1_000  # step cap
    batch: int = 16  # batch size
    lr: float = 2e-3  # AdamW learning rate of the LoRA factors
    n_data: int = 512  # cached concept scenes
    pair_p: float = 0.0  # share of scenes that place the concept next to a plain sprite
    attribute_p: float = 0.2  # share of scenes where the concept wears a hat or crown
    seed: int = 0  # data / init / noise seed
    world: int = VERSION  # world version the data comes from
    orthogonal: int | None = None  # Orthogonal Adaptation: this concept's slot (A frozen)
    orthogonal_count: int = 4  # slots in the shared basis (concepts meant to be summed)
    orthogonal_seed: int = 0  # seed of the shared basis (the same for every concept)


def concept_scenes(name: str, cfg: LoraConfig) -> list[Any]:
    """Training scenes with the concept as sprite 0 (captioned by its token)."""
    rng = random.Random(cfg.seed)
    concept = CONCEPTS[name]
    scenes = []
    for _ in range(cfg.n_data):
        attribute = rng.choice(["a crown", "a hat"]) if rng.random() < cfg.attribute_p else None
        n = 2 if rng.random() < cfg.pair_p else 1
        first = concept.as_sprite(attribute)
        scenes.append(random_scene(rng, first=first, version=cfg.world, n=n))
    return scenes


def add_adapters(pipe: Any, rank: int) -> list[torch.nn.Parameter]:
    """Attach fresh LoRA adapters (peft) to the UNet and text encoder; return their parameters."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import inject_adapter_in_model

    pipe.unet.requires_grad_(False)
    pipe.text_encoder.requires_grad_(False)
    pipe.vae.requires_grad_(False)
    pipe.unet.add_adapter(
        PeftLoraConfig(
            r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=UNET_TARGETS
        )
    )
    # transformers' own add_adapter wants peft >= 0.22; peft's injector does the same job
    text_config = PeftLoraConfig(
        r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=TEXT_TARGETS
    )
    inject_adapter_in_model(text_config, pipe.text_encoder)
    pipe.text_encoder.peft_config = {"default": text_config}
    return [p for m in (pipe.unet, pipe.text_encoder) for p in m.parameters() if p.requires_grad]


def orthogonal_basis(name: str, dim: int, seed: int = 0) -> torch.Tensor:
    """One random orthogonal (dim x dim) matrix per module name, the same for every concept:
    QR of a Gaussian matrix drawn from ``seed`` and a stable hash of ``name``."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    q, r = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).to(torch.float32)  # Haar-distributed rows


def freeze_orthogonal_down(pipe: Any, index: int, count: int, seed: int = 0) -> int:
    """Set every adapter's lora_A to rows ``index*r .. (index+1)*r`` of its module's shared
    orthogonal basis (times sqrt(in)/r) and freeze it; return the number of modules changed."""
    if not 0 <= index < count:
        raise ValueError(f"orthogonal index {index} outside 0..{count - 1}")
    changed = 0
    for prefix, model in (("unet", pipe.unet), ("text_encoder", pipe.text_encoder)):
        for name, module in model.named_modules():
            down = getattr(module, "lora_A", None)
            if not isinstance(down, torch.nn.ModuleDict) or "default" not in down:
                continue
            weight = down["default"].weight  # (r, in)
            assert isinstance(weight, torch.Tensor)
            rank, dim = weight.shape
            if count * rank > dim:
                raise ValueError(
                    f"{prefix}.{name}: {count} concepts x rank {rank} > input size {dim}"
                )
            basis = orthogonal_basis(f"{prefix}.{name}", dim, seed)
            # rows scaled to the norm of peft's gaussian init (std 1/r): B's updates move the
            # delta as fast as in the normal mode; rows stay mutually orthogonal
            scale = dim**0.5 / rank
            with torch.no_grad():
                weight.copy_(basis[index * rank : (index + 1) * rank] * scale)
            weight.requires_grad = False
            changed += 1
    return changed


def save_lora(pipe: Any, path: Path) -> None:
    """Write the adapters in diffusers form to ``path`` atomically (temp file, then os.replace)."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    with atomic_output(path) as tmp:
        StableDiffusionPipeline.save_lora_weights(
            str(tmp.parent),
            unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet)),
            text_encoder_lora_layers=convert_state_dict_to_diffusers(
                get_peft_model_state_dict(pipe.text_encoder)
            ),
            weight_name=tmp.name,
        )
        os.chmod(tmp, 0o644)


def train_lora(
    name: str, cfg: LoraConfig, base: Path = BASE_DIR, out: Path | None = None, log: Any = print
) -> Any:
    """Train the concept's LoRA; returns the pipeline with the adapter attached (and saves it)."""
    torch.manual_seed(cfg.seed)
    pipe = load_toyworld_pipeline(path=base)
    scenes = concept_scenes(name, cfg)
    with torch.no_grad():
        x = images_tensor(
            [render(s, seed=cfg.seed + i, version=cfg.world) for i, s in enumerate(scenes)]
        )
        z = pipe.vae.encode(x).latent_dist.mean * pipe.vae.config.scaling_factor  # (N, 4, 16, 16)
    ids = tokenize(pipe.tokenizer, [caption(s) for s in scenes])
    params = add_adapters(pipe, cfg.rank)
    if cfg.orthogonal is not None:
        freeze_orthogonal_down(pipe, cfg.orthogonal, cfg.orthogonal_count, cfg.orthogonal_seed)
        params = [p for p in params if p.requires_grad]  # only the up-projections B train
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    pipe.unet.train()
    pipe.text_encoder.train()
    start, step, avg = time.time(), 0, 0.0
    while step < cfg.steps and time.time() - start < cfg.minutes * 60:
        idx = torch.randint(0, len(z), (cfg.batch,), generator=gen)
        loss = diffusion_loss(pipe.unet, pipe.text_encoder, pipe.scheduler, z[idx], ids[idx], gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        avg = 0.95 * avg + 0.05 * loss.item() if step else loss.item()
        if step % 50 == 0:
            log(f"{name} step {step} loss {avg:.4f} t {time.time() - start:.0f}s")
        step += 1
    log(f"{name}: {step} steps in {time.time() - start:.0f}s")
    pipe.unet.eval()
    pipe.text_encoder.eval()
    if out is not None:
        save_lora(pipe, out)
    return pipe


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("concepts", nargs="+", choices=sorted(CONCEPTS))
    parser.add_argument("--base", type=Path, default=BASE_DIR)
    parser.add_argument("--out-dir", type=Path, default=LORA_DIR)
    parser.add_argument("--minutes", type=float, default=LoraConfig.minutes)
    parser.add_argument("--steps", type=int, default=LoraConfig.steps)
    parser.add_argument("--rank", type=int, default=LoraConfig.rank)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--world", type=int, default=VERSION, choices=(1, 2))
    parser.add_argument("--pair-p", type=float, default=LoraConfig.pair_p)
    parser.add_argument("--n-data", type=int, default=LoraConfig.n_data)
    parser.add_argument("--lr", type=float, default=LoraConfig.lr)
    parser.add_argument(
        "--orthogonal",
        type=int,
        default=None,
        metavar="INDEX",
        help="Orthogonal Adaptation: freeze A to slot INDEX of the shared orthogonal basis "
        "(with several concepts, concept k gets INDEX+k)",
    )
    parser.add_argument("--orthogonal-count", type=int, default=LoraConfig.orthogonal_count)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = LoraConfig(
        rank=args.rank,
        minutes=args.minutes,
        steps=args.steps,
        world=args.world,
        pair_p=args.pair_p,
        n_data=args.n_data,
        lr=args.lr,
        orthogonal_count=args.orthogonal_count,
    )
    for k, name in enumerate(args.concepts):
        index = None if args.orthogonal is None else args.orthogonal + k
        train_lora(
            name,
            replace(cfg, orthogonal=index),
            args.base,
            args.out_dir / f"{name}.safetensors",
            lambda m: print(m, flush=True),
        )


if __name__ == "__main__":
    main()
