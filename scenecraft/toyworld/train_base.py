"""Train the toy world's base model: first the 4x VAE, then UNet + text encoder (v-prediction).

    python -m scenecraft.toyworld.train_base --vae-minutes 6 --minutes 40 --out DIR
    python -m scenecraft.toyworld.train_base --vae OLD/vae --vae-init --vae-only --out VAE
    python -m scenecraft.toyworld.train_base --init OLD_BASE --vae VAE --steps 11000 --out DIR

``--regional P``: on a share P of the multi-sprite training scenes the UNet's cross-attention is
regional, exactly as `scenecraft.render.regions` samples it: each sprite's box (its body and hat,
grown by a random amount up to the canvas edge or the next sprite) reads that sprite's region
prompt (the compiler's `regions on` text: that sprite described, then the global prompt; the
shipped base was trained on the text of the time, the whole scene with only that sprite
described, docs/toyworld.md) and the rest of the canvas reads the global prompt (every sprite by
shape).
A base trained only on whole-image captions places sprites where the noise puts them and
ignores a box (docs/toyworld.md has the figures); SD-scale models localise region prompts
without this, the toy base has to be shown it.

``--vae DIR --vae-init`` fine-tunes a trained VAE (both halves) on ``--world``'s scenes.
``--init`` starts from a trained base (world 1's weights, the recipe in docs/toyworld.md): its
VAE is kept (same 64x64 canvas) unless ``--vae`` gives another, every UNet / text-encoder weight
that still fits is copied, and what is new (the 16x16 attention blocks, longer position table,
new concept tokens) starts as a no-op or from the old values; then UNet + text encoder train on
``--world``'s scenes.

Deterministic for a seed (data, init and noise come from seeded generators; wall-clock budgets
only decide when to stop). Logs loss to stdout and writes the pipeline to ``--out`` (a diffusers
folder) at every checkpoint and at the end.
"""

from __future__ import annotations

import argparse
import math
import random
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from scenecraft.toyworld.model import (
    BASE_DIR,
    MODELS,
    TINY,
    ModelConfig,
    assemble,
    build_components,
)
from scenecraft.toyworld.train_data import (  # noqa: F401 - re-exported for callers of train_base
    NormBox,
    SceneRegions,
    TrainConfig,
    grown_boxes,
    scene_batch,
    scene_batch_with_boxes,
    scene_regions,
)
from scenecraft.toyworld.world import (
    VERSION,
    caption,
)


def train_vae(vae: Any, cfg: TrainConfig, log: Any = print, out: Path | None = None) -> None:
    """Reconstruction (L1 + 1e-6 KL) on freshly drawn scenes; stops at the time or step budget
    (with ``out``: the VAE is saved there every ``checkpoint_minutes``)."""
    rng = random.Random(cfg.seed + 1)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    start = last_ckpt = time.time()
    step = 0
    vae.train()
    budget = cfg.vae_minutes * 60
    while step < cfg.vae_steps and (elapsed := time.time() - start) < budget:
        frac = step / cfg.vae_steps if cfg.vae_steps < TrainConfig.vae_steps else elapsed / budget
        for group in opt.param_groups:  # cosine to a tenth of the peak
            group["lr"] = cfg.vae_lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))
        x, _ = scene_batch(rng, cfg.vae_batch, cfg.world)  # (B, 3, 64, 64)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.mean + 0.1 * torch.randn_like(posterior.mean)).sample
        loss = F.l1_loss(recon, x) + 1e-6 * posterior.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0:
            log(f"vae step {step} loss {loss.item():.4f} t {time.time() - start:.0f}s")
        step += 1
        if out is not None and time.time() - last_ckpt > cfg.checkpoint_minutes * 60:
            vae.save_pretrained(out)  # a long run keeps what it has learnt
            last_ckpt = time.time()
            log(f"vae checkpoint at step {step}")
    vae.eval()


def finetune_decoder(vae: Any, cfg: TrainConfig, minutes: float, log: Any = print) -> None:
    """Decoder-only reconstruction training with the encoder frozen: latents (and so the
    trained UNet) stay valid while the decoded images get sharper. Latents get 0.1 noise so the
    decoder tolerates the UNet's imperfect samples."""
    rng = random.Random(cfg.seed + 4)
    vae.requires_grad_(False)
    params = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=cfg.vae_lr / 2, weight_decay=0.0)
    start, step = time.time(), 0
    while time.time() - start < minutes * 60 and step < cfg.vae_steps:
        x, _ = scene_batch(rng, cfg.vae_batch, cfg.world)  # (B, 3, 64, 64)
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mean  # (B, 4, 16, 16)
        loss = F.l1_loss(vae.decode(z + 0.1 * torch.randn_like(z)).sample, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0:
            log(f"decoder step {step} loss {loss.item():.4f} t {time.time() - start:.0f}s")
        step += 1
    vae.requires_grad_(False)
    vae.eval()


@torch.no_grad()
def cache_latents(
    components: dict[str, Any], cfg: TrainConfig, keep_scale: bool = False
) -> tuple[torch.Tensor, list[str], list[SceneRegions]]:
    """Encode ``n_data`` scenes; sets the VAE's scaling_factor so latents have unit std
    (``keep_scale``: a warm start keeps the scale its UNet was trained with). Also each scene's
    regional text (its boxes grown by a separate generator, so the latents do not depend on
    whether the run trains regions)."""
    rng = random.Random(cfg.seed + 2)
    grow = random.Random(cfg.seed + 5)
    vae = components["vae"]
    latents, captions, regions = [], [], []
    for i in range(0, cfg.n_data, 256):
        x, scenes, boxes = scene_batch_with_boxes(rng, min(256, cfg.n_data - i), cfg.world)
        latents.append(vae.encode(x).latent_dist.mean)  # (b, 4, 16, 16)
        captions += [caption(s) for s in scenes]
        regions += [scene_regions(s, b, grow) for s, b in zip(scenes, boxes, strict=True)]
    z = torch.cat(latents)
    if not keep_scale:
        vae.register_to_config(scaling_factor=float(1.0 / z.std()))
    return z * vae.config.scaling_factor, captions, regions


def tokenize(tokenizer: Any, captions: list[str]) -> torch.Tensor:
    return tokenizer(
        captions,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


RegionBatch = tuple[torch.Tensor, list[list[NormBox | None]]]  # ids (R, B, T), boxes per image


def diffusion_loss(
    unet: Any,
    text_encoder: Any,
    scheduler: Any,
    z0: torch.Tensor,
    ids: torch.Tensor,
    gen: torch.Generator,
    regions: RegionBatch | None = None,
) -> torch.Tensor:
    """v-prediction loss: ||v_theta(z_t, t, c) - (alpha_t eps - sigma_t z0)||^2; with
    ``regions`` the UNet's cross-attention is regional (`scenecraft.render.regions`)."""
    b = z0.shape[0]
    eps = torch.randn(z0.shape, generator=gen)  # (B, 4, 16, 16)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (b,), generator=gen)
    zt = scheduler.add_noise(z0, eps, t)
    v = scheduler.get_velocity(z0, eps, t)
    c = text_encoder(ids)[0]  # (B, T, D)
    if regions is None:
        return F.mse_loss(unet(zt, t, c).sample, v)
    from scenecraft.render.regions import RegionalState, installed

    region_ids, boxes = regions
    R = region_ids.shape[0]
    c_r = text_encoder(region_ids.flatten(0, 1))[0].unflatten(0, (R, b))  # (R, B, T, D)
    state = RegionalState(
        embeds=c_r, negative=c_r, boxes=boxes, latent_hw=(z0.shape[-2], z0.shape[-1])
    )
    with installed(unet, state):
        return F.mse_loss(unet(zt, t, c).sample, v)


def region_batch(
    rows: list[int], regions: list[SceneRegions], tokenizer: Any, empty: torch.Tensor, b: int
) -> tuple[RegionBatch, list[str]]:
    """The regional conditioning of a batch whose ``rows`` (batch index) are regional, from
    their scenes' ``regions`` (same order); other rows get no box. Also the rows' global
    prompts."""
    R = max(len(r.regions) for r in regions)
    ids = empty[None, None].repeat(R, b, 1)  # (R, B, T): padding reads the empty prompt
    boxes: list[list[NormBox | None]] = [[None] * R for _ in range(b)]
    for row, scene in zip(rows, regions, strict=True):
        ids[: len(scene.regions), row] = tokenize(tokenizer, [p for _, p in scene.regions])
        boxes[row][: len(scene.regions)] = [box for box, _ in scene.regions]
    return (ids, boxes), [r.prompt for r in regions]


def save_pipeline(components: dict[str, Any], out: Path) -> None:
    """Write the diffusers folder next to ``out`` and swap it in (no half-written folder)."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    assemble(components).save_pretrained(tmp)
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def train_unet(
    components: dict[str, Any],
    cfg: TrainConfig,
    out: Path | None,
    log: Any = print,
    keep_scale: bool = False,
) -> None:
    """Joint UNet + text-encoder training on cached latents; EMA weights are what gets saved.
    ``keep_scale``: keep the VAE's latent scale (a warm start on its own VAE). One long loop on
    purpose: schedule, regional batches, EMA and checkpoints share its step state."""
    z, captions, texts = cache_latents(components, cfg, keep_scale=keep_scale)
    ids = tokenize(components["tokenizer"], captions)
    empty = tokenize(components["tokenizer"], [""])[0]
    unet, te, sched = components["unet"], components["text_encoder"], components["scheduler"]
    params = [*unet.parameters(), *te.parameters()]
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed + 3)
    start, last_ckpt, step, avg = time.time(), time.time(), 0, 0.0
    unet.train()
    te.train()
    budget = cfg.minutes * 60
    while step < cfg.steps and (elapsed := time.time() - start) < budget:
        # cosine over the step cap when one is set (bit-reproducible), else over the time budget
        frac = step / cfg.steps if cfg.steps < TrainConfig.steps else min(1.0, elapsed / budget)
        lr = (
            cfg.lr
            * min(1.0, (step + 1) / cfg.warmup)
            * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        )
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(0, len(z), (cfg.batch,), generator=gen)
        batch_ids = ids[idx].clone()
        drop = torch.rand(cfg.batch, generator=gen) < cfg.drop_caption
        batch_ids[drop] = empty
        regions = None
        if cfg.regional > 0:  # rows drawn regional: multi-sprite, caption kept
            pick = torch.rand(cfg.batch, generator=gen) < cfg.regional
            rows = [
                k
                for k in range(cfg.batch)
                if pick[k] and not drop[k] and len(texts[int(idx[k])].regions) >= 2
            ]
            if rows:
                chosen = [texts[int(idx[k])] for k in rows]
                regions, prompts = region_batch(
                    rows, chosen, components["tokenizer"], empty, cfg.batch
                )
                batch_ids[rows] = tokenize(components["tokenizer"], prompts)
        loss = diffusion_loss(unet, te, sched, z[idx], batch_ids, gen, regions)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(cfg.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema, params, strict=True):
                e.lerp_(p, 1 - decay)
        avg = 0.98 * avg + 0.02 * loss.item() if step else loss.item()
        if step % 100 == 0:
            log(f"step {step} loss {avg:.4f} lr {lr:.2e} t {elapsed:.0f}s")
        step += 1
        if out is not None and time.time() - last_ckpt > cfg.checkpoint_minutes * 60:
            _save_ema(components, params, ema, out, log)
            last_ckpt = time.time()
            log(f"checkpoint at step {step}")
    log(f"done: {step} steps in {time.time() - start:.0f}s")
    _swap_in(params, ema)
    unet.eval()
    te.eval()
    if out is not None:
        save_pipeline(components, out)


def _swap_in(params: list[torch.Tensor], ema: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for p, e in zip(params, ema, strict=True):
            p.copy_(e)


def _save_ema(
    components: dict[str, Any],
    params: list[torch.Tensor],
    ema: list[torch.Tensor],
    out: Path,
    log: Any,
) -> None:
    """Save the EMA weights and log the judge's scores of 16 single and 16 paired scenes."""
    from scenecraft.toyworld.evaluate import plain_scenes, score

    live = [p.detach().clone() for p in params]
    _swap_in(params, ema)
    components["unet"].eval()
    components["text_encoder"].eval()
    save_pipeline(components, out)
    t0 = time.time()
    try:
        with torch.no_grad():
            for label, pairs in (("single", False), ("pairs", True)):
                means, _ = score(assemble(components), plain_scenes(16, 1, pairs), seed=1000)
                log(f"judge {label}: " + " ".join(f"{k} {v:.2f}" for k, v in means.items()))
        log(f"judged in {time.time() - t0:.0f}s")
    except Exception as exc:  # a progress report must never stop a long run
        log(f"judging failed: {exc!r}")
    components["unet"].train()
    components["text_encoder"].train()
    _swap_in(params, live)


def warm_start(components: dict[str, Any], init: Path, log: Any = print) -> None:
    """Copy a trained base into fresh components (see the module docstring)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    components["vae"] = AutoencoderKL.from_pretrained(init / "vae")
    unet = components["unet"]
    old = UNet2DConditionModel.from_pretrained(init / "unet").state_dict()
    missing, unexpected = unet.load_state_dict(old, strict=False)
    if unexpected or any(".attentions." not in k for k in missing):
        raise ValueError(f"{init} does not fit this UNet: {unexpected or missing}")
    new_blocks = sorted({k.split(".transformer_blocks")[0].rsplit(".", 1)[0] for k in missing})
    with torch.no_grad():
        for name, module in unet.named_modules():
            if name.endswith("proj_out") and any(name.startswith(b) for b in new_blocks):
                module.weight.zero_()  # a new attention block starts as the identity
                module.bias.zero_()
    te = components["text_encoder"]
    old_te = CLIPTextModel.from_pretrained(init / "text_encoder").state_dict()
    new_te = te.state_dict()
    for key, value in old_te.items():
        if new_te[key].shape == value.shape:
            new_te[key] = value
        elif key.endswith("embedding.weight"):  # token rows (new concept tokens) / positions
            rows = new_te[key].clone()
            rows[: len(value)] = value
            if "position" in key:  # later positions start from the last trained one
                rows[len(value) :] = value[-1]
            new_te[key] = rows
        else:
            raise ValueError(f"{init} does not fit this text encoder: {key}")
    te.load_state_dict(new_te)
    log(f"warm start from {init}: {len(missing)} new UNet tensors in {new_blocks}")


def train_base(
    model: ModelConfig,
    cfg: TrainConfig,
    out: Path | None = BASE_DIR,
    log: Any = print,
    vae_dir: Path | None = None,
    vae_only: bool = False,
) -> dict[str, Any]:
    """The whole recipe: build, train the VAE (or load it from ``vae_dir``), cache latents,
    train UNet + text encoder. ``vae_only`` stops after the VAE and saves it to ``out``."""
    from diffusers import AutoencoderKL

    torch.manual_seed(cfg.seed)
    components = build_components(model)
    if cfg.init is not None:
        warm_start(components, cfg.init, log)
    if vae_dir is not None:  # a trained VAE (with --init: replaces the init's)
        components["vae"] = AutoencoderKL.from_pretrained(vae_dir)
    if cfg.init is None and (vae_dir is None or cfg.vae_init):  # train it (further: vae_init)
        train_vae(components["vae"], cfg, log, out if vae_only else None)
    components["vae"].requires_grad_(False)
    if vae_only:
        if out is not None:
            components["vae"].save_pretrained(out)
        return components
    train_unet(components, cfg, out, log, keep_scale=cfg.init is not None and vae_dir is None)
    return components


def main(argv: list[str] | None = None) -> None:
    """The trainer's command line: long only because every TrainConfig field is an option."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=BASE_DIR)
    parser.add_argument("--vae-minutes", type=float, default=TrainConfig.vae_minutes)
    parser.add_argument("--minutes", type=float, default=TrainConfig.minutes)
    parser.add_argument("--steps", type=int, default=TrainConfig.steps)
    parser.add_argument("--vae-steps", type=int, default=TrainConfig.vae_steps)
    parser.add_argument("--n-data", type=int, default=TrainConfig.n_data)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tiny", action="store_true", help="tiny model (smoke tests)")
    parser.add_argument(
        "--vae-only", action="store_true", help="train the VAE and save it to --out"
    )
    parser.add_argument(
        "--vae", type=Path, default=None, help="a trained VAE folder (skips stage 1)"
    )
    parser.add_argument(
        "--vae-init",
        action="store_true",
        help="with --vae: fine-tune that VAE on --world's scenes instead of keeping it",
    )
    parser.add_argument("--vae-lr", type=float, default=TrainConfig.vae_lr)
    parser.add_argument(
        "--init", type=Path, default=None, help="warm start from a trained base (keeps its VAE)"
    )
    parser.add_argument("--world", type=int, default=VERSION, choices=(1, 2))
    parser.add_argument("--lr", type=float, default=TrainConfig.lr)
    parser.add_argument("--batch", type=int, default=TrainConfig.batch)
    parser.add_argument("--warmup", type=int, default=TrainConfig.warmup)
    parser.add_argument("--checkpoint-minutes", type=float, default=TrainConfig.checkpoint_minutes)
    parser.add_argument(
        "--regional",
        type=float,
        default=TrainConfig.regional,
        help="share of multi-sprite scenes trained with regional cross-attention",
    )
    parser.add_argument(
        "--decoder-minutes", type=float, default=0.0, help="only fine-tune --out's decoder"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from scenecraft.models import quiet_libraries

    quiet_libraries()
    cfg = TrainConfig(
        vae_minutes=args.vae_minutes,
        minutes=args.minutes,
        steps=args.steps,
        vae_steps=args.vae_steps,
        n_data=args.n_data,
        init=args.init,
        world=args.world,
        vae_init=args.vae_init,
        vae_lr=args.vae_lr,
        lr=args.lr,
        batch=args.batch,
        warmup=args.warmup,
        checkpoint_minutes=args.checkpoint_minutes,
        regional=args.regional,
    )
    if args.decoder_minutes:  # stage 3: sharpen the decoder of a trained base, in place
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(args.out / "vae")
        finetune_decoder(vae, cfg, args.decoder_minutes, lambda m: print(m, flush=True))
        tmp = args.out / "vae.tmp"
        vae.save_pretrained(tmp)
        shutil.rmtree(args.out / "vae")
        tmp.rename(args.out / "vae")
        return
    model = TINY if args.tiny else MODELS[args.world]
    train_base(model, cfg, args.out, lambda m: print(m, flush=True), args.vae, args.vae_only)


if __name__ == "__main__":
    main()
