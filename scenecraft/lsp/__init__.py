"""The language server (`scenecraft lsp`): a front door over `scenecraft.language`.

Diagnostics, completion, hover, navigation, formatting, code actions, symbols and semantic
tokens, each computed from the same phases `scenecraft check` runs. No torch. `server.py` wires
pygls (the optional ``[lsp]`` extra) to the feature modules, which take an `Analysis` and
positions and return lsprotocol types, so each is testable without a client.
"""
