"""A merge as files other tools load (docs/export.md): one LoRA (`lora`), token embeddings
(`embeddings`), a single-file checkpoint and a diffusers folder (`checkpoint`), ComfyUI
workflows of the plan's jobs (`comfyui`); `api.export_merge` writes them from a cache entry."""
