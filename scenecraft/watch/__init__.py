"""``scenecraft watch``: re-check and re-render a scene file on every save, and a live page.

state.py (what the page shows; no torch) <- builder.py (load, plan, render the changed images,
the pipeline kept loaded) <- changes.py (file saves via watchfiles) ; server.py serves the state
on 127.0.0.1 with server-sent events. The CLI (`scenecraft.cli.watch`) wires them together.
"""
