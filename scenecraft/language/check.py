"""Semantic checks: names, references, settings and ranges, all errors of a file in one run.

`check(program)` walks the parsed files once, builds the symbol tables (concepts, scenes,
objects) and returns a `Checked` program with every value read and validated, or raises a
DiagnosticError holding every problem found.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from scenecraft.diagnostics import Collector, Diagnostic, DiagnosticError, Label, did_you_mean
from scenecraft.files import looks_like_hub_id, path_problem
from scenecraft.language import check_family, schema
from scenecraft.language import nodes as n
from scenecraft.language.check_scene import SceneBody, check_scene_body
from scenecraft.language.loader import Program, is_file, remap, resolve_path
from scenecraft.merge.config import rule_errors
from scenecraft.names import SAMPLERS


@dataclass
class ConceptInfo:
    name: str
    node: n.Concept
    tokens: tuple[str, ...]
    lora: str | None  # resolved path
    weight: float = 1.0
    class_noun: str | None = None
    kind: str = "subject"
    embedding: str | None = None
    references: tuple[str, ...] = ()
    placeholder: bool = False  # the LoRA file is missing (allowed by allow_missing)
    negative: str | None = None  # negative prompt of the concept's region


@dataclass
class SceneInfo:
    name: str
    node: n.Scene
    body: SceneBody  # what the scene says: settings, objects, areas, subjects, clauses
    storyboard: str | None = None  # set for inline storyboard panels

    @property
    def settings(self) -> dict[str, Any]:  # overrides read from the scene body
        return self.body.settings

    @property
    def objects(self) -> dict[str, str]:  # object name -> prompt words
        return self.body.objects

    @property
    def anchor(self) -> n.Span:
        """Where diagnostics about the whole scene point: its name, or the inline panel."""
        return self.node.name.span if self.node.name.name else self.node.span


@dataclass(frozen=True)
class ModelInfo:
    source: str  # hub id, or a resolved local path
    family: str | None  # declared family; None: detected when loading
    revision: str | None  # hub revision
    node: n.Model


@dataclass
class PanelInfo:
    scene: str
    caption: str | None
    node: n.Panel


@dataclass
class StoryboardInfo:
    name: str
    node: n.Storyboard
    columns: int
    title: str | None
    panels: list[PanelInfo]


@dataclass
class Checked:
    program: Program
    model: ModelInfo | None
    concepts: dict[str, ConceptInfo]
    merge_method: str
    merge_params: dict[str, Any]
    defaults: dict[str, Any]
    scenes: dict[str, SceneInfo]
    storyboards: dict[str, StoryboardInfo]
    warnings: list[Diagnostic] = field(default_factory=list)


DEFAULTS: dict[str, Any] = {
    "size": (512, 512),
    "steps": 30,
    "guidance": 7.5,
    "sampler": "DPM++ 2M Karras",
    "negative": "",
    "seeds": [1],
    "images_per_seed": 1,
    "batch_size": 1,
}


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError):  # a name the OS rejects (NUL, too long)
        return False


def _base_dir(node: n.Node) -> Path:
    return Path(node.span.file).parent


class Checker:
    def __init__(
        self, program: Program, allow_missing: bool, max_images: int | None = None
    ) -> None:
        self.program = program
        self.allow_missing = allow_missing
        self.max_images = max_images  # stop at once past this many images (memory stays bounded)
        self.images = 0
        self.c = Collector()
        self.concepts: dict[str, ConceptInfo] = {}
        self.scenes: dict[str, SceneInfo] = {}
        self.folders: dict[str, tuple[str, n.Ident]] = {}  # casefolded output folder names
        self.tokens: dict[str, ConceptInfo] = {}
        self.missing: list[tuple[str, n.Concept, Diagnostic]] = []  # reported once usage is known
        self.defaults: dict[str, Any] = dict(DEFAULTS)  # filled before scenes are checked

    # -- top level --------------------------------------------------------------------------
    def run(self) -> Checked:
        files = [*self.program.includes, self.program.main]
        model = None
        merge: n.Merge | None = None
        defaults = self.defaults
        user_defaults: dict[str, Any] = {}
        for f in files:
            is_main = f is self.program.main
            for item in f.items:
                if isinstance(item, n.Model):
                    model = self.check_model(item, model)
                elif isinstance(item, n.Concept):
                    self.check_concept(item)
                elif isinstance(item, n.Merge):
                    merge = self.check_merge_dup(item, merge)
                elif isinstance(item, n.Defaults):
                    user_defaults.update(self.check_defaults(item))
                    defaults.update(user_defaults)
                elif isinstance(item, n.Scene | n.Storyboard) and not is_main:
                    self.c.error(
                        "scene-in-include",
                        "included files may define concepts, model, merge and defaults only",
                        item.span,
                        label="scene or storyboard in an included file",
                        help="move it into the file that includes this one",
                    )
        method, params = self.check_merge(merge)
        family = check_family.model_family(model)
        defaults.update(check_family.family_defaults(family, user_defaults))
        if model is None:
            self.c.error(
                "missing-model",
                "no base model is declared",
                n.Span(self.program.main.path, 1, 1, 1, 2),
                help='add a line like `model "runwayml/stable-diffusion-v1-5"` (or include a library that has one)',
            )
        for item in self.program.main.items:
            if isinstance(item, n.Scene):
                self.check_scene_decl(item)
        storyboards = self.check_storyboards()
        if family == "flux":
            method = check_family.check_flux(self, merge, method)
        if not self.scenes and not any(
            isinstance(i, n.Storyboard) for i in self.program.main.items
        ):
            self.c.warn(
                "no-scenes",
                "this file defines no scenes; nothing will be rendered",
                n.Span(self.program.main.path, 1, 1, 1, 2),
                help="add a `scene NAME { ... }`, or check the file that includes this library",
            )
        self.warn_unused()
        self.warn_tokens_in_text(files)
        self.report_missing()
        if self.c.has_errors:
            raise DiagnosticError(self.c.diagnostics)
        return Checked(
            self.program,
            model,
            self.concepts,
            method,
            params,
            defaults,
            self.scenes,
            storyboards,
            self.c.warnings,
        )

    def check_model(self, item: n.Model, prev: ModelInfo | None) -> ModelInfo | None:
        if prev is not None and prev.node.span.file == item.span.file:
            self.duplicate("model", item, prev.node)
            return prev
        src = item.source
        if not isinstance(src, n.Str):
            self.c.error(
                "wrong-value-type",
                "the model must be a quoted hub id or path",
                src.span,
                help='e.g. `model "runwayml/stable-diffusion-v1-5"`',
            )
            return prev
        opts = schema.read_block(self.c, item.options, schema.MODEL_KEYS, "`model`")
        source = src.value
        # a path is relative to the file that writes it, whatever folder render runs from
        local = not looks_like_hub_id(source)
        if not local and _exists(resolve_path(_base_dir(item), source)):
            self._warn_hub_like_path(source, src, "beside the scene file: read as that folder")
            local = True
        elif not local and _exists(resolve_path(Path.cwd(), source)):
            self._warn_hub_like_path(
                source, src, "in the current folder: render reads the hub id, not the folder"
            )
        if local and not source.startswith("~"):
            resolved = resolve_path(_base_dir(item), source)
            if not _exists(resolved):
                self.c.warn(
                    "model-not-found",
                    f"model path `{source}` does not exist",
                    src.span,
                    label="not found",
                    help="render needs it; give a hub id or an existing folder or file",
                )
            source = str(resolved)
        return ModelInfo(
            source, opts.get("family", (None,))[0], opts.get("revision", (None,))[0], item
        )

    def _warn_hub_like_path(self, source: str, src: n.Str, where: str) -> None:
        self.c.warn(
            "model-path-ambiguous",
            f"`{source}` reads like a hub id but names a local folder {where}",
            src.span,
            label="hub id or folder?",
            help=f'write `"./{source}"` for the folder next to the scene file, or rename the folder',
        )

    def duplicate(self, what: str, item: n.Node, first: n.Node, name: str = "") -> None:
        self.c.error(
            "duplicate-definition",
            f"{what} {f'`{name}` ' if name else ''}is defined twice",
            item.span,
            label="defined again here",
            labels=(Label(first.span, "first defined here"),),
            help="remove one, or rename it",
        )

    # -- concepts ---------------------------------------------------------------------------
    def check_concept(self, item: n.Concept) -> None:
        name = item.name.name
        if name in self.concepts:
            self.duplicate("concept", item.name, self.concepts[name].node.name, name)
            return
        vals = schema.read_block(self.c, item.settings, schema.CONCEPT_KEYS, f"concept `{name}`")
        get = {k: v for k, (v, _) in vals.items()}
        tokens = tuple(get.get("token", [f"<{name.upper()}>"]))
        info = ConceptInfo(
            name,
            item,
            tokens,
            None,
            weight=get.get("weight", 1.0),
            class_noun=get.get("class"),
            kind=get.get("kind", "subject"),
            negative=get.get("negative"),
            references=tuple(
                str(resolve_path(_base_dir(item), r)) for r in get.get("references", [])
            ),
        )
        if "lora" in vals:
            info.lora, info.placeholder = self.check_file(vals["lora"][1], "lora", name, item)
        if "embedding" in vals:
            info.embedding, _ = self.check_file(vals["embedding"][1], "embedding", name, item)
        if "lora" not in vals and "embedding" not in vals:
            self.c.warn(
                "concept-without-weights",
                f"concept `{name}` has neither `lora` nor `embedding`",
                item.name.span,
                help="it will render as its token and class noun with the base model",
            )
        token_span = vals["token"][1].span if "token" in vals else item.name.span
        for tok in tokens:
            prev = self.tokens.get(tok)
            if prev is not None:
                self.c.error(
                    "duplicate-token",
                    f"token `{tok}` is used by concepts `{prev.name}` and `{name}`",
                    token_span,
                    label="token already taken",
                    labels=(Label(prev.node.name.span, "first used here"),),
                    help="each concept needs its own trigger token",
                )
            self.tokens[tok] = info
        self.concepts[name] = info

    def check_file(
        self, setting: n.Setting, what: str, concept: str, item: n.Concept
    ) -> tuple[str, bool]:
        value = setting.values[0]
        assert isinstance(value, n.Str)
        path = resolve_path(_base_dir(setting), value.value)
        if is_file(path):
            return str(path), False
        code = "lora-not-found" if what == "lora" else "file-not-found"
        problem = path_problem(path)
        state = "does not exist" if problem in (None, "missing") else f"is {problem}, not a file"
        diag = Diagnostic(
            code,
            f"{what} file `{value.value}` of concept `{concept}` {state}",
            value.span,
            severity="warning" if self.allow_missing else "error",
            label="no such file",
            notes=(f"looked for {path}",),
            help=(
                "merge and render need it; paths are relative to the file that declares them"
                if self.allow_missing
                else "fix the path (relative to the declaring file); "
                "`scenecraft check` accepts drafts with missing files"
            ),
        )
        self.missing.append((concept, item, diag))
        return str(path), True

    # -- merge and defaults -----------------------------------------------------------------
    def check_merge_dup(self, item: n.Merge, prev: n.Merge | None) -> n.Merge:
        if prev is not None and prev.span.file == item.span.file:
            self.duplicate("merge", item, prev)
            return prev
        return item

    def check_merge(self, item: n.Merge | None) -> tuple[str, dict[str, Any]]:
        if item is None:
            return "loraclr", {}
        method = item.method.name
        table = schema.MERGE_KEYS.get(method)
        if table is None:
            self.c.error(
                "unknown-merge-method",
                f"unknown merge method `{method}`",
                item.method.span,
                label="not a merge method",
                notes=("methods: " + ", ".join(f"`{m}`" for m in schema.MERGE_KEYS),),
                help=did_you_mean(method, schema.MERGE_KEYS),
            )
            return "none", {}
        vals = schema.read_block(self.c, item.settings, table, f"merge `{method}`")
        values = {k: v for k, (v, _) in vals.items()}
        for rule in rule_errors(method, values):  # rules between parameters, at check time
            setting = vals[rule.param][1] if rule.param in vals else None
            self.c.error(
                "conflicting-merge-params",
                rule.message,
                setting.span if setting else item.method.span,
                label="conflicts with " + ", ".join(f"`{o}`" for o in rule.others or ("these",)),
                labels=tuple(Label(vals[o][1].span, "set here") for o in rule.others if o in vals),
                help=rule.help,
            )
        return method, values

    def check_defaults(self, item: n.Defaults) -> dict[str, Any]:
        vals = schema.read_block(self.c, item.settings, schema.DEFAULTS_KEYS, "`defaults`")
        out = {k: v for k, (v, _) in vals.items()}
        if "sampler" in vals:
            self.check_sampler(vals["sampler"][1])
        return out

    def check_sampler(self, setting: n.Setting) -> None:
        value = setting.values[0]
        assert isinstance(value, n.Str)
        names = SAMPLERS
        if value.value not in names:
            lowered = {x.lower(): x for x in names}
            self.c.error(
                "unknown-sampler",
                f"unknown sampler `{value.value}`",
                value.span,
                label="not a known sampler",
                notes=("samplers: " + ", ".join(names),),
                help=(
                    f"did you mean `{lowered[value.value.lower()]}`?"
                    if value.value.lower() in lowered
                    else did_you_mean(value.value, names)
                ),
            )

    # -- scenes -----------------------------------------------------------------------------
    def check_scene_decl(self, item: n.Scene) -> None:
        name = item.name.name
        if name in self.scenes:
            self.duplicate("scene", item.name, self.scenes[name].node.name, name)
            return
        self.check_case("scene", item.name)
        self.scenes[name] = self.check_scene(item, name)

    def check_case(self, what: str, name: n.Ident) -> None:
        """`case-collision`: scenes and storyboards name output folders, and on macOS and
        Windows `Scene1` and `scene1` (or `CON` and `con`) are one folder."""
        first = self.folders.setdefault(name.name.casefold(), (what, name))
        if first[1].name == name.name:
            return
        self.c.error(
            "case-collision",
            f"{what} `{name.name}` differs from {first[0]} `{first[1].name}` only in case",
            name.span,
            label="same folder as the first on macOS and Windows",
            labels=(Label(first[1].span, "first defined here"),),
            notes=("each scene and storyboard writes into a folder named after it",),
            help="rename one so the names differ in more than upper and lower case",
        )

    def check_scene(self, item: n.Scene, name: str, storyboard: str | None = None) -> SceneInfo:
        body = check_scene_body(self, item)
        settings = body.settings
        images = len(settings.get("seeds", self.defaults["seeds"])) * settings.get(
            "images_per_seed", self.defaults["images_per_seed"]
        )
        if images > schema.MAX_SEEDS:
            self.c.error(
                "too-many-images",
                f"scene `{name}` asks for {images} images (at most {schema.MAX_SEEDS})",
                item.name.span if item.name.name else item.span,
                help="use fewer seeds or a smaller `images_per_seed`",
            )
        self.images += images
        if self.max_images is not None and self.images > self.max_images:
            raise DiagnosticError(  # now: checking on would hold every scene's seeds in memory
                [
                    Diagnostic(
                        "too-many-jobs",
                        f"the file asks for more than {self.max_images:,} images (at least "
                        f"{self.images:,} up to scene `{name}`)",
                        item.name.span if item.name.name else item.span,
                        label="the cap is passed here",
                        help="render fewer scenes or seeds per file, or raise the cap with "
                        "`--max-jobs N`",
                    )
                ]
            )
        return SceneInfo(name, item, body, storyboard)

    def check_storyboards(self) -> dict[str, StoryboardInfo]:
        out: dict[str, StoryboardInfo] = {}
        for item in self.program.main.items:
            if not isinstance(item, n.Storyboard):
                continue
            name = item.name.name
            if name in out:
                self.duplicate("storyboard", item.name, out[name].node.name, name)
                continue
            self.check_case("storyboard", item.name)
            vals = schema.read_block(
                self.c, item.settings, schema.STORYBOARD_KEYS, f"storyboard `{name}`"
            )
            panels = [self.check_panel(p, name, i) for i, p in enumerate(item.panels)]
            if not item.panels:
                self.c.error(
                    "empty-storyboard",
                    f"storyboard `{name}` has no panels",
                    item.name.span,
                    help='add `panel SCENE "caption"` lines',
                )
            out[name] = StoryboardInfo(
                name,
                item,
                vals.get("columns", (min(max(len(panels), 1), 4), None))[0],
                vals.get("title", (None, None))[0],
                [p for p in panels if p is not None],
            )
        return out

    def check_panel(self, p: n.Panel, board: str, index: int) -> PanelInfo | None:
        caption = p.caption.value if p.caption else None
        if p.scene is not None:
            scene_name = f"{board}-{index + 1}"
            if scene_name in self.scenes:
                self.duplicate("scene", p, self.scenes[scene_name].node.name, scene_name)
                return None
            self.scenes[scene_name] = self.check_scene(p.scene, scene_name, board)
            return PanelInfo(scene_name, caption, p)
        assert p.ref is not None
        if p.ref.name not in self.scenes:
            self.c.error(
                "unknown-scene",
                f"storyboard `{board}` refers to unknown scene `{p.ref.name}`",
                p.ref.span,
                label="no scene of this name",
                help=did_you_mean(p.ref.name, self.scenes)
                or "define it with `scene NAME { ... }` in this file",
            )
            return None
        return PanelInfo(p.ref.name, caption, p)

    def report_missing(self) -> None:
        """Missing files matter for concepts this file uses or defines, not a library's others."""
        used: set[str] = set()
        for scene in self.scenes.values():
            used |= scene.body.mentions
        for concept, item, diag in self.missing:
            if concept in used or item.span.file == self.program.main.path:
                self.c.add(diag)

    def warn_unused(self) -> None:
        used: set[str] = set()
        for scene in self.scenes.values():
            used.update(scene.body.mentions)
        if not self.scenes:
            return
        for name, info in self.concepts.items():
            if name not in used and info.node.span.file == self.program.main.path:
                self.c.warn(
                    "unused-concept",
                    f"concept `{name}` is never used in a scene",
                    info.node.name.span,
                    help="unused concepts are left out of the merged model",
                )

    def warn_tokens_in_text(self, files: list[n.File]) -> None:
        """`token-in-text`: a concept's trigger token written inside prompt text (`setting
        "next to <ZIGGY>"`) reaches the prompt as written, but the concept is not merged, placed
        or given a region for it: only naming the concept does that."""
        for text, span in prompt_texts(files, self.program.main):
            for token, info in self.tokens.items():
                if contains_token(text, token):
                    self.c.warn(
                        "token-in-text",
                        f"the token `{token}` of concept `{info.name}` is written inside text",
                        span,
                        label="reaches the prompt as written",
                        help=(
                            f"write `style {info.name}`: a style concept named so is merged"
                            if info.kind == "style"
                            else f"name the concept instead (`{info.name}`, e.g. `{info.name} "
                            "beside ...`): a concept named in a scene is merged, placed and "
                            "given its own region"
                        ),
                    )


PROMPT_TEXT = ("prefix", "setting", "time", "lighting", "style", "extra")  # settings written
# into the prompt as they are (not `negative`: a token there asks the model to avoid it)


def prompt_texts(files: list[n.File], main: n.File) -> list[tuple[str, n.Span]]:
    """Every piece of text a scene's prompt takes as written, with its span: prompt settings
    (in `defaults` and scenes), attributes, quoted verbs, object and `together` texts."""
    bodies: list[tuple[n.Setting | n.SceneStmt, ...]] = []
    for f in files:
        for item in f.items:
            if isinstance(item, n.Defaults):
                bodies.append(item.settings)
            elif isinstance(item, n.Scene) and f is main:
                bodies.append(item.body)
            elif isinstance(item, n.Storyboard) and f is main:
                bodies += [p.scene.body for p in item.panels if p.scene is not None]
    out: list[tuple[str, n.Span]] = []
    for body in bodies:
        for stmt in body:
            if isinstance(stmt, n.Setting) and stmt.key.name in PROMPT_TEXT:
                out += [(v.value, v.span) for v in stmt.values if isinstance(v, n.Str)]
            elif isinstance(stmt, n.SubjectStmt):
                out += [(a.text.value, a.text.span) for a in stmt.attributes]
                action = stmt.action
                if isinstance(action, n.Interaction) and action.free:
                    out.append((action.verb, action.span))
            elif isinstance(stmt, n.ObjectDecl | n.Together) and stmt.text is not None:
                out.append((stmt.text.value, stmt.text.span))
    return out


def contains_token(text: str, token: str) -> bool:
    """Whether ``token`` occurs in ``text`` as a whole word (`<ZIGGY>`, `ohwx`; not `sks` in
    `asks`)."""
    return token in text and _token_pattern(token).search(text) is not None


@lru_cache(maxsize=1024)
def _token_pattern(token: str) -> re.Pattern[str]:
    return re.compile(rf"(?<!\w){re.escape(token)}(?!\w)")


def check(
    program: Program, *, allow_missing: bool = True, max_images: int | None = None
) -> Checked:
    """Check a loaded program; raises DiagnosticError with every error (mapped to templates).

    ``max_images`` stops the check with `too-many-jobs` as soon as the scenes ask for more.
    """
    checker = Checker(program, allow_missing, max_images)
    try:
        checked = checker.run()
    except DiagnosticError as exc:
        raise DiagnosticError([remap(d, program.sources) for d in exc.diagnostics]) from None
    checked.warnings = [remap(d, program.sources) for d in checked.warnings]
    return checked
