"""Parser: one test per construct, exact spans for a few nodes, syntax errors as diagnostics."""

from __future__ import annotations

import pytest

from scenecraft.diagnostics import DiagnosticError, Span
from scenecraft.language import nodes as n
from scenecraft.language.parser import parse


def scene_body(text: str) -> tuple[n.SceneStmt, ...]:
    """Parse ``text`` as the body of one scene."""
    indented = "".join(f"  {line}\n" for line in text.strip("\n").split("\n"))
    [scene] = parse(f"scene s {{\n{indented}}}\n").items
    assert isinstance(scene, n.Scene)
    return scene.body


def syntax_error(text: str) -> str:
    with pytest.raises(DiagnosticError) as info:
        parse(text, "f.scene")
    [diag] = info.value.diagnostics
    return diag.code


# ------------------------------------------------------------------------------ top level


def test_model_with_options() -> None:
    [model] = parse('model "org/name" family sd15 revision "main"\n').items
    assert model == n.Model(
        n.Str("org/name"),
        (
            n.Setting(n.Ident("family"), (n.Ident("sd15"),)),
            n.Setting(n.Ident("revision"), (n.Str("main"),)),
        ),
    )


def test_include() -> None:
    assert parse('include "lib/cast.scene"\n').items == (n.Include(n.Str("lib/cast.scene")),)


def test_concept_settings_and_lists() -> None:
    [concept] = parse(
        'concept dog {\n  token "<V1>", "<V2>"\n  weight 0.8\n  kind subject\n}\n'
    ).items
    assert concept == n.Concept(
        n.Ident("dog"),
        (
            n.Setting(n.Ident("token"), (n.Str("<V1>"), n.Str("<V2>"))),
            n.Setting(n.Ident("weight"), (n.Num(0.8, False),)),
            n.Setting(n.Ident("kind"), (n.Ident("subject"),)),
        ),
    )


def test_merge_with_and_without_block() -> None:
    a, b = parse("merge linear\nmerge loraclr {\n  margin 0.5\n}\n").items
    assert a == n.Merge(n.Ident("linear"))
    assert b == n.Merge(n.Ident("loraclr"), (n.Setting(n.Ident("margin"), (n.Num(0.5, False),)),))


def test_every_value_form() -> None:
    [defaults] = parse(
        "defaults {\n  a 512x768\n  b 1, -2, 10..12\n  c 7.5\n  d .5\n  e 1e-4\n"
        "  f true\n  g false\n  h word\n}\n"
    ).items
    assert isinstance(defaults, n.Defaults)
    values = {s.key.name: s.values for s in defaults.settings}
    assert values["a"] == (n.Size(512, 768),)
    assert values["b"] == (n.Num(1, True), n.Num(-2, True), n.Range(10, 12))
    assert values["c"] == (n.Num(7.5, False),)
    assert values["d"] == (n.Num(0.5, False),)
    assert values["e"] == (n.Num(1e-4, False),)
    assert values["f"] == (n.Bool(True),) and values["g"] == (n.Bool(False),)
    assert values["h"] == (n.Ident("word"),)


def test_string_escapes_and_triple_quoted_strings() -> None:
    [a, b] = scene_body('setting "a \\"quoted\\" \\\\ tab\\t \\u00e9"\nstyle """raw \\n\ntwo"""')
    assert isinstance(a, n.Setting) and isinstance(b, n.Setting)
    assert a.values == (n.Str('a "quoted" \\ tab\t é'),)
    assert b.values == (n.Str("raw \\n\n  two"),)  # raw: no escapes, the newline is kept


def test_line_continuation() -> None:
    [stmt] = scene_body('gosling in "a coat" \\\n    holding "a map"')
    assert isinstance(stmt, n.SubjectStmt)
    assert [a.verb for a in stmt.attributes] == ["in", "holding"]


def test_names_with_dashes_and_underscores() -> None:
    [scene] = parse("scene vase-on_chair2 {\n  old_man\n}\n").items
    assert isinstance(scene, n.Scene)
    assert scene.name.name == "vase-on_chair2"


# ------------------------------------------------------------------------- scene statements


def test_attributes_bind_to_their_subject() -> None:
    [stmt] = scene_body('taylor wears "a crown" dressed as "a queen" holding "a rose"')
    assert stmt == n.SubjectStmt(
        n.Ident("taylor"),
        (
            n.Attribute("wears", n.Str("a crown")),
            n.Attribute("dressed as", n.Str("a queen")),
            n.Attribute("holding", n.Str("a rose")),
        ),
    )


@pytest.mark.parametrize(
    "verb", ["wears", "wearing", "with", "has", "holds", "holding", "is", "in", "dressed as"]
)
def test_every_attribute_verb(verb: str) -> None:
    [stmt] = scene_body(f'gosling {verb} "x"')
    assert stmt == n.SubjectStmt(n.Ident("gosling"), (n.Attribute(verb, n.Str("x")),))


def test_interaction_with_target_list() -> None:
    [stmt] = scene_body("gosling waves at lebron, taylor and messi")
    assert stmt == n.SubjectStmt(
        n.Ident("gosling"),
        (),
        n.Interaction("waves at", (n.Ident("lebron"), n.Ident("taylor"), n.Ident("messi"))),
    )


@pytest.mark.parametrize("verb", ["shakes hands with", "holding hands with", "hugs", "talks to"])
def test_multi_word_interactions(verb: str) -> None:
    [stmt] = scene_body(f"a {verb} b")
    assert isinstance(stmt, n.SubjectStmt)
    assert stmt.action == n.Interaction(verb, (n.Ident("b"),))


def test_free_interaction_after_attributes() -> None:
    [stmt] = scene_body('taylor in "a dress" "high-fives" messi')
    assert stmt == n.SubjectStmt(
        n.Ident("taylor"),
        (n.Attribute("in", n.Str("a dress")),),
        n.Interaction("high-fives", (n.Ident("messi"),), free=True),
    )


@pytest.mark.parametrize(
    ("words", "relation"),
    [
        ("left of", "left-of"),
        ("right of", "right-of"),
        ("above", "above"),
        ("below", "below"),
        ("on top of", "on-top-of"),
        ("in front of", "in-front-of"),
        ("behind", "behind"),
        ("beside", "beside"),
        ("next to", "beside"),
        ("back to back with", "back-to-back"),
    ],
)
def test_placements(words: str, relation: str) -> None:
    [stmt] = scene_body(f"vase {words} chair")
    assert stmt == n.SubjectStmt(n.Ident("vase"), (), n.Placement(relation, n.Ident("chair")))


def test_presence_reads_a_plain_english_list() -> None:
    # issue 11: the parser suggested `and` after `chris, taylor`, then rejected it
    names = (n.Ident("chris"), n.Ident("taylor"), n.Ident("margot"))
    assert scene_body("chris, taylor and margot") == (n.Presence(names),)
    assert scene_body("chris and taylor") == (n.Presence(names[:2]),)
    assert syntax_error("scene s {\n  chris and taylor, margot\n}\n") == "unexpected-token"


def test_objects_presence_and_together() -> None:
    body = scene_body(
        'object chair "a wooden chair"\nobject vase\ngosling, messi\ntaylor\n'
        'together "working in a kitchen"\nseeds 1..4'
    )
    assert body == (
        n.ObjectDecl(n.Ident("chair"), n.Str("a wooden chair")),
        n.ObjectDecl(n.Ident("vase")),
        n.Presence((n.Ident("gosling"), n.Ident("messi"))),
        n.Presence((n.Ident("taylor"),)),
        n.Together(n.Str("working in a kitchen")),
        n.Setting(n.Ident("seeds"), (n.Range(1, 4),)),
    )


def test_storyboard_reference_and_inline_panels() -> None:
    [board] = parse(
        'storyboard trip {\n  columns 2\n  panel meet "They meet"\n  panel arrive\n'
        '  panel "Inline" {\n    a left of b\n  }\n}\n'
    ).items
    assert isinstance(board, n.Storyboard)
    assert board.settings == (n.Setting(n.Ident("columns"), (n.Num(2, True),)),)
    ref, bare, inline = board.panels
    assert (ref.ref, ref.caption, ref.scene) == (n.Ident("meet"), n.Str("They meet"), None)
    assert (bare.ref, bare.caption) == (n.Ident("arrive"), None)
    assert inline.ref is None and inline.caption == n.Str("Inline")
    assert inline.scene is not None
    assert inline.scene.body == (
        n.SubjectStmt(n.Ident("a"), (), n.Placement("left-of", n.Ident("b"))),
    )


def test_comments_are_collected_but_not_in_the_tree() -> None:
    text = '# head\nmodel "m"  # trailing\nscene s {\n  setting "a # b"  # c\n}\n'
    f = parse(text)
    assert [c.text for c in f.comments] == ["# head", "# trailing", "# c"]
    assert f == parse('model "m"\nscene s {\n  setting "a # b"\n}\n')


def test_blank_lines_crlf_and_missing_final_newline() -> None:
    a = parse('\n\nmodel "m"\r\n\r\n\r\nscene s {\r\n\r\n  x\r\n}')
    b = parse('model "m"\nscene s {\n  x\n}\n')
    assert a == b


# ------------------------------------------------------------------------------------ spans


def test_exact_spans() -> None:
    text = 'model "m"\n\nscene library {\n  gosling wears "a hat" waves at taylor\n}\n'
    f = parse(text, "lib.scene")
    scene = f.items[1]
    assert isinstance(scene, n.Scene)
    assert scene.span == Span("lib.scene", 3, 1, 5, 2)
    assert scene.name.span == Span("lib.scene", 3, 7, 3, 14)
    [stmt] = scene.body
    assert isinstance(stmt, n.SubjectStmt)
    assert stmt.span == Span("lib.scene", 4, 3, 4, 40)
    assert stmt.attributes[0].span == Span("lib.scene", 4, 11, 4, 24)
    assert stmt.attributes[0].text.span == Span("lib.scene", 4, 17, 4, 24)
    assert isinstance(stmt.action, n.Interaction)
    assert stmt.action.targets[0].span == Span("lib.scene", 4, 34, 4, 40)


def test_spans_do_not_affect_equality() -> None:
    assert parse('model "m"\n') == parse('\n\n   model    "m"   \n')
    assert parse('model "m"\n').items[0].span != parse('\n\n   model    "m"\n').items[0].span


# ----------------------------------------------------------------------------- syntax errors


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("scene s {\n  a waves at at b\n}\n", "unexpected-token"),
        ("scene s {\n  a ; b\n}\n", "unexpected-character"),
        ('scene s {\n  a wears "hat\n}\n', "unterminated-string"),
        ('scene s {\n  a wears "\\q"\n}\n', "invalid-escape"),
        ("scene s {\n  a\n", "unclosed-block"),
        ('concept a {\n  token "<A>"\nscene s {\n  a\n}\n', "unclosed-block"),
        ('concept a { token "<A>" }\n', "brace-on-same-line"),
        ('concept a {\n  token "<A>" }\n', "brace-on-same-line"),
        ('include "x" {\n}\n', "unexpected-block"),
        ("defaults\n  steps 3\n}\n", "missing-block"),
        ("scene s {\n  a wears\n}\n", "missing-value"),
        ("scene s {\n  together waves at b\n}\n", "reserved-word"),
        ("scene s {\n  object, b\n}\n", "reserved-word"),
        ("scene s {\n  a\u0000\n}\n", "unexpected-character"),
    ],
)
def test_syntax_error_codes(text: str, code: str) -> None:
    assert syntax_error(text) == code


def test_syntax_error_points_at_the_offending_token() -> None:
    with pytest.raises(DiagnosticError) as info:
        parse("scene s {\n  gosling waves at at taylor\n}\n", "f.scene")
    [diag] = info.value.diagnostics
    assert diag.span == Span("f.scene", 2, 23, 2, 29)
    assert diag.message == "unexpected `taylor`"


def test_unquoted_free_text_suggests_quotes() -> None:
    with pytest.raises(DiagnosticError) as info:
        parse("scene s {\n  together working hard\n}\n")
    [diag] = info.value.diagnostics
    assert diag.code == "unexpected-token"
    assert diag.help is not None and "quoted" in diag.help


def test_nul_byte_position() -> None:
    with pytest.raises(DiagnosticError) as info:
        parse('model "m"\nscene \x00\n', "f.scene")
    assert info.value.diagnostics[0].span == Span("f.scene", 2, 7, 2, 8)
