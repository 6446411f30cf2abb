"""The rating page (a user study in miniature): ``scenecraft review OUT_DIR``.

`catalog` reads a run's manifests and PNG provenance and keeps the ratings file; `server` serves
the page on 127.0.0.1; the command is `scenecraft.cli.review`. Nothing here imports torch.
"""
