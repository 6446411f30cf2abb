"""`scenecraft lsp`: the pygls server that answers an editor over stdio.

It keeps one `Analysis` per open document (the latest) and the index of the latest that parsed
(completion and navigation keep working while a statement is half typed). Edits are analysed
after a short pause (`DEBOUNCE_SECONDS`), parsing again only the items they touched; open and
save at once, and then the open documents that include the edited one; a request on a document
whose analysis is stale analyses it first. Diagnostics go to every file they point into (an
error in an included file shows in that file), merged over the open documents that read it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Generator
from pathlib import Path
from typing import Any

from lsprotocol import types as t
from pygls.lsp.server import LanguageServer
from pygls.protocol import LanguageServerProtocol
from pygls.protocol.language_server import lsp_method
from pygls.uris import to_fs_path

from scenecraft import __version__
from scenecraft.diagnostics import Diagnostic
from scenecraft.language.loader import resolve_path
from scenecraft.lsp import completion, edits, hover, navigation, semantic
from scenecraft.lsp.analysis import Analysis, analyse
from scenecraft.lsp.index import Index, build_index
from scenecraft.lsp.navigation import Texts, uri
from scenecraft.lsp.reparse import Reparser

DEBOUNCE_SECONDS = 0.15  # pause after the last keystroke before an edit is analysed
SEVERITY = {"error": t.DiagnosticSeverity.Error, "warning": t.DiagnosticSeverity.Warning}


class _Protocol(LanguageServerProtocol):
    """Positions are UTF-16 throughout (the LSP default, what `positions` converts to)."""

    @lsp_method(t.INITIALIZE)
    def lsp_initialize(self, params: t.InitializeParams) -> Generator[Any, Any, t.InitializeResult]:
        if params.capabilities.general is not None:
            params.capabilities.general.position_encodings = [t.PositionEncodingKind.Utf16]
        return (yield from super().lsp_initialize(params))


class SceneServer(LanguageServer):
    def __init__(self) -> None:
        super().__init__("scenecraft", __version__, protocol_cls=_Protocol)
        self.analyses: dict[str, Analysis] = {}  # uri -> the latest analysis
        self.indexes: dict[str, Index] = {}  # uri -> the index of the latest that parsed
        self.pending: dict[str, asyncio.Task[None]] = {}  # uri -> a debounced analysis
        self.published: dict[str, dict[str, list[t.Diagnostic]]] = {}  # by document, by target
        self.reparser = Reparser()  # parses again only the items an edit touched
        self.reads: dict[str, set[Path]] = {}  # uri -> the files its latest parsed program read

    # -- analysis -----------------------------------------------------------------------------
    def text(self, doc_uri: str) -> str:
        return self.workspace.get_text_document(doc_uri).source

    def unsaved(self) -> dict[Path, str]:
        out = {}
        for doc_uri, doc in self.workspace.text_documents.items():
            path = to_fs_path(doc_uri)
            if path:
                out[Path(path).resolve()] = doc.source
        return out

    def analyse(self, doc_uri: str) -> Analysis:
        task = self.pending.pop(doc_uri, None)
        if task is not None:
            task.cancel()
        path = Path(to_fs_path(doc_uri) or doc_uri)
        result = analyse(path, self.text(doc_uri), self.unsaved(), self.reparser)
        self.analyses[doc_uri] = result
        if result.program is not None:
            self.indexes[doc_uri] = build_index(result.program)
            self.reads[doc_uri] = {resolve_path(Path(), f) for f in result.program.sources}
        self.publish(doc_uri, result)
        return result

    def readers(self, doc_uri: str) -> list[str]:
        """The other open documents that include this one (their analyses read it)."""
        path = Path(to_fs_path(doc_uri) or doc_uri).resolve()
        return [u for u, files in self.reads.items() if u != doc_uri and path in files]

    def current(self, doc_uri: str) -> tuple[Analysis, Index]:
        """The document's analysis, redone first if the text changed since."""
        found = self.analyses.get(doc_uri)
        if found is None or found.text != self.text(doc_uri):
            found = self.analyse(doc_uri)
        return found, self.indexes.get(doc_uri, Index())

    def schedule(self, doc_uri: str, readers: bool = True) -> None:
        """Analyse after the pause (and then the documents that include this one)."""
        task = self.pending.pop(doc_uri, None)
        if task is not None:
            task.cancel()

        async def later() -> None:
            await asyncio.sleep(DEBOUNCE_SECONDS)
            self.pending.pop(doc_uri, None)
            self.analyse(doc_uri)
            for other in self.readers(doc_uri) if readers else ():
                self.schedule(other, readers=False)

        self.pending[doc_uri] = asyncio.ensure_future(later())

    # -- diagnostics --------------------------------------------------------------------------
    def publish(self, doc_uri: str, result: Analysis) -> None:
        texts = Texts(result)
        mine: dict[str, list[t.Diagnostic]] = {doc_uri: []}
        for file, found in result.by_file().items():
            target = doc_uri if file == result.name else uri(file)
            mine.setdefault(target, []).extend(to_lsp(d, texts, file) for d in found)
        before = self.published.get(doc_uri, {})
        self.published[doc_uri] = mine
        for target in {*before, *mine}:
            merged = [d for per in self.published.values() for d in per.get(target, [])]
            self.text_document_publish_diagnostics(
                t.PublishDiagnosticsParams(uri=target, diagnostics=merged)
            )

    def forget(self, doc_uri: str) -> None:
        self.analyses.pop(doc_uri, None)
        self.reads.pop(doc_uri, None)
        self.indexes.pop(doc_uri, None)
        task = self.pending.pop(doc_uri, None)
        if task is not None:
            task.cancel()
        before = self.published.pop(doc_uri, {})
        for target in before:
            merged = [d for per in self.published.values() for d in per.get(target, [])]
            self.text_document_publish_diagnostics(
                t.PublishDiagnosticsParams(uri=target, diagnostics=merged)
            )


def to_lsp(d: Diagnostic, texts: Texts, file: str) -> t.Diagnostic:
    """A scenecraft diagnostic as the editor shows it: message, then notes and help lines."""
    rng = (
        texts.lines(file).range_of(d.span)
        if d.span
        else t.Range(t.Position(0, 0), t.Position(0, 0))
    )
    lines = [d.message, *(f"note: {x}" for x in d.notes)]
    if d.help:
        lines.append(f"help: {d.help}")
    related = [
        t.DiagnosticRelatedInformation(texts.location(lb.span), lb.message) for lb in d.labels
    ]
    return t.Diagnostic(
        range=rng,
        message="\n".join(lines),
        severity=SEVERITY[d.severity],
        code=d.code,
        source="scenecraft",
        related_information=related or None,
        data={"help": d.help} if d.help else None,
    )


server = SceneServer()
LEGEND = t.SemanticTokensLegend(token_types=semantic.TOKEN_TYPES, token_modifiers=[])


@server.feature(t.TEXT_DOCUMENT_DID_OPEN)
def did_open(ls: SceneServer, params: t.DidOpenTextDocumentParams) -> None:
    ls.analyse(params.text_document.uri)


@server.feature(t.TEXT_DOCUMENT_DID_CHANGE)
def did_change(ls: SceneServer, params: t.DidChangeTextDocumentParams) -> None:
    ls.schedule(params.text_document.uri)


@server.feature(t.TEXT_DOCUMENT_DID_SAVE)
def did_save(ls: SceneServer, params: t.DidSaveTextDocumentParams) -> None:
    ls.analyse(params.text_document.uri)
    for other in ls.readers(params.text_document.uri):
        ls.schedule(other, readers=False)


@server.feature(t.TEXT_DOCUMENT_DID_CLOSE)
def did_close(ls: SceneServer, params: t.DidCloseTextDocumentParams) -> None:
    ls.forget(params.text_document.uri)


@server.feature(t.TEXT_DOCUMENT_COMPLETION, t.CompletionOptions(trigger_characters=[" ", '"', "/"]))
def on_completion(ls: SceneServer, params: t.CompletionParams) -> t.CompletionList:
    doc_uri = params.text_document.uri
    index = ls.indexes.get(doc_uri)  # the last that parsed: the text is often half typed
    path = Path(to_fs_path(doc_uri) or doc_uri)
    return completion.complete(index, path, ls.text(doc_uri), params.position)


@server.feature(t.TEXT_DOCUMENT_HOVER)
def on_hover(ls: SceneServer, params: t.HoverParams) -> t.Hover | None:
    analysis, index = ls.current(params.text_document.uri)
    return hover.hover(analysis, index, params.position)


@server.feature(t.TEXT_DOCUMENT_DEFINITION)
def on_definition(ls: SceneServer, params: t.DefinitionParams) -> list[t.Location]:
    analysis, index = ls.current(params.text_document.uri)
    return navigation.definition(analysis, index, params.position)


@server.feature(t.TEXT_DOCUMENT_REFERENCES)
def on_references(ls: SceneServer, params: t.ReferenceParams) -> list[t.Location]:
    analysis, index = ls.current(params.text_document.uri)
    return navigation.references(
        analysis, index, params.position, params.context.include_declaration
    )


@server.feature(t.TEXT_DOCUMENT_RENAME)
def on_rename(ls: SceneServer, params: t.RenameParams) -> t.WorkspaceEdit | None:
    analysis, index = ls.current(params.text_document.uri)
    return navigation.rename(analysis, index, params.position, params.new_name)


@server.feature(t.TEXT_DOCUMENT_FORMATTING)
def on_formatting(ls: SceneServer, params: t.DocumentFormattingParams) -> list[t.TextEdit]:
    analysis, _ = ls.current(params.text_document.uri)
    return edits.formatting(analysis)


@server.feature(
    t.TEXT_DOCUMENT_CODE_ACTION, t.CodeActionOptions(code_action_kinds=[t.CodeActionKind.QuickFix])
)
def on_code_action(ls: SceneServer, params: t.CodeActionParams) -> list[t.CodeAction]:
    analysis, _ = ls.current(params.text_document.uri)
    return edits.code_actions(analysis, params.range, list(params.context.diagnostics))


@server.feature(t.TEXT_DOCUMENT_DOCUMENT_SYMBOL)
def on_symbols(ls: SceneServer, params: t.DocumentSymbolParams) -> list[t.DocumentSymbol]:
    analysis, _ = ls.current(params.text_document.uri)
    return navigation.symbols(analysis)


@server.feature(t.TEXT_DOCUMENT_SEMANTIC_TOKENS_FULL, LEGEND)
def on_semantic_tokens(ls: SceneServer, params: t.SemanticTokensParams) -> t.SemanticTokens:
    doc_uri = params.text_document.uri
    analysis, _ = ls.current(doc_uri)
    index = ls.indexes.get(doc_uri)
    return t.SemanticTokens(data=semantic.tokens(ls.text(doc_uri), analysis.name, index))


def run() -> int:
    """Serve on stdin/stdout until the editor exits."""
    server.start_io()
    return 0
