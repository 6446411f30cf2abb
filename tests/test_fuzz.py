"""Fuzzing: thousands of mutated scene files never crash the language pipeline.

Starting from the example scenes and a built-in corpus of valid snippets, a seeded RNG mutates
characters and lines (delete, insert, duplicate, swap, truncate, keywords, braces, quotes,
unicode, NUL, very long lines). Every input must either load or raise `DiagnosticError`; when
it parses, formatting it must keep its meaning and its comments. A sample goes through the CLI.
"""

from __future__ import annotations

import functools
import random
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from scenecraft import cli
from scenecraft.api import load
from scenecraft.diagnostics import DiagnosticError
from scenecraft.language.fmt import format_file
from scenecraft.language.parser import parse

ROOT = Path(__file__).parent.parent
SEED = 20240617
MUTANTS = 3000
CLI_SAMPLE = 60

SNIPPETS = [
    'model "example-org/sd15-base" family sd15 revision "main"\n',
    'concept ziggy {\n  token "<Z>", "<Z2>"\n  class "man"\n  weight 0.8\n  kind subject\n}\n',
    "merge loraclr {\n  margin 0.5\n  iterations 10\n  spatial true\n}\n",
    "merge ties {\n  density 0.5\n}\n",
    'defaults {\n  size 512x512\n  seeds 1, 2, 10..12\n  sampler "Euler a"\n  negative "x"\n}\n',
    'scene a {\n  ziggy dressed as "a knight" waves at mira, b and c\n  setting "a library"\n}\n',
    'scene b {\n  object chair "a chair"\n  ziggy on top of chair\n  mira "high-fives" ziggy\n}\n',
    'scene c {\n  ziggy, mira\n  together """cooking\nin a kitchen"""\n  seeds 1..3\n}\n',
    'storyboard s {\n  columns 2\n  panel a "one"\n  panel "two" {\n    ziggy left of mira\n  }\n}\n',
    'scene t {\n  {% for x in xs %}\n  ziggy wears "{{ x }}"\n  {% endfor %}\n}\n',
    'scene u {\n  ziggy in "caf\\u00e9 \\"quoted\\" \\\\ back"  # comment\n  ziggy \\\n  hugs mira\n}\n',
]
INSERTS = [
    "{", "}", '"', '"""', "\\", "#", ",", "..", "x", "\n", "\t", "\r\n", "\x00", "é", "🦆",
    "\u2028", "\ufeff", "scene", "concept", "model", "include", "storyboard", "panel", "object",
    "together", "waves at", "left of", "wears", "and", "true", "512x512", "1..4", "-3", "1e9",
    "{{", "}}", "{%", "%}", "{#", " ", "9" * 40, "a" * 5000, 'include "x.scene"',
    'include "fuzz.scene"', "seeds 0..99999", "\\u12", "\\q",
]  # fmt: skip


@functools.cache
def _corpus() -> list[str]:
    files = sorted((ROOT / "scenes").glob("*.scene")) + [ROOT / "examples" / "storyboard.scene"]
    texts = [f.read_text(encoding="utf-8") for f in files if f.is_file()]
    header = SNIPPETS[0] + SNIPPETS[1] + SNIPPETS[1].replace("ziggy", "mira").replace("Z", "M")
    return texts + SNIPPETS + [header + s for s in SNIPPETS[2:]]


@functools.cache
def _vocabulary() -> list[str]:
    return sorted({w for text in _corpus() for w in re.findall(r'"[^"\n]*"|[^\s"]+', text)})


def mutate(rng: random.Random, text: str) -> str:
    """Apply 1-4 random edits to ``text``."""
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(10)
        i = rng.randint(0, len(text))
        j = rng.randint(i, min(len(text), i + 20))
        lines = text.split("\n")
        k = rng.randrange(len(lines))
        if op == 0:  # delete characters
            text = text[:i] + text[j:]
        elif op == 1:  # insert a token-ish string
            text = text[:i] + rng.choice(INSERTS) + text[i:]
        elif op == 2:  # duplicate characters
            text = text[:j] + text[i:j] + text[j:]
        elif op == 3:  # swap two characters
            if 0 < i < len(text):
                text = text[: i - 1] + text[i] + text[i - 1] + text[i + 1 :]
        elif op == 4:  # delete a line
            text = "\n".join(lines[:k] + lines[k + 1 :])
        elif op == 5:  # duplicate a line
            text = "\n".join(lines[: k + 1] + lines[k:])
        elif op == 6:  # swap two lines
            m = rng.randrange(len(lines))
            lines[k], lines[m] = lines[m], lines[k]
            text = "\n".join(lines)
        elif op == 7:  # truncate
            text = text[:i]
        elif op == 8:  # replace a word with a word of the corpus (keeps most files parseable)
            words = text.split(" ")
            words[rng.randrange(len(words))] = rng.choice(_vocabulary())
            text = " ".join(words)
        else:  # a random printable or odd unicode character
            ch = chr(rng.choice([rng.randint(32, 126), rng.randint(0x80, 0x2FFF), 0x1F600]))
            text = text[:i] + ch + text[i:]
    return text


def mutants() -> Iterator[str]:
    rng = random.Random(SEED)
    corpus = _corpus()
    for _ in range(MUTANTS):
        yield mutate(rng, rng.choice(corpus))


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A folder with the example concept library, so `include "concepts/cast.scene"` resolves."""
    shutil.copytree(ROOT / "scenes" / "concepts", tmp_path / "concepts")
    return tmp_path


def check_one(path: Path, text: str) -> str | None:
    """None if ``text`` loads or fails with diagnostics; otherwise a description of the crash."""
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        load(path, {"xs": ["a", "b"]})
    except DiagnosticError:
        pass
    except Exception as exc:  # noqa: BLE001 - the point is to catch anything else
        return f"load: {type(exc).__name__}: {exc}"
    try:
        tree = parse(text)
    except DiagnosticError:
        return None
    except Exception as exc:  # noqa: BLE001
        return f"parse: {type(exc).__name__}: {exc}"
    try:
        formatted = format_file(tree)
        again = parse(formatted)
        if again != tree:
            return "fmt changed the meaning"
        if sorted(c.text for c in again.comments) != sorted(c.text for c in tree.comments):
            return "fmt lost or changed a comment"
        if format_file(parse(formatted)) != formatted:
            return "fmt is not idempotent"
    except Exception as exc:  # noqa: BLE001
        return f"fmt: {type(exc).__name__}: {exc}"
    return None


def test_mutants_only_raise_diagnostics(workdir: Path) -> None:
    path = workdir / "fuzz.scene"
    failures = []
    for text in mutants():
        problem = check_one(path, text)
        if problem is not None:
            failures.append((problem, text))
    assert failures == [], f"{len(failures)} crashes; first: {failures[0][0]}\n{failures[0][1]!r}"


def test_mutants_through_the_cli(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = workdir / "fuzz.scene"
    rng = random.Random(SEED + 1)
    sample = rng.sample(list(mutants()), CLI_SAMPLE)
    for i, text in enumerate(sample):
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        argv = [["check"], ["compile", "--json"], ["fmt", "--stdout"]][i % 3] + [str(path)]
        code = cli.main(argv)
        out, err = capsys.readouterr()
        assert code in (0, 2), (argv, text, err)
        assert "Traceback" not in out + err
        assert "internal-error" not in err, (text, err)


# Inputs that crashed the pipeline once (regressions).
_HEAD = 'model "m"\nconcept d {\n  token "<D>"\n'
_TAIL = "}\nscene s {\n  d\n}\n"
REGRESSIONS = [
    'include "\U000e0001"\n',  # fmt wrote an astral character as a 5-digit \u escape
    _HEAD + '  lora ""\n' + _TAIL,  # the LoRA path named a folder: IsADirectoryError
    _HEAD + '  lora "/"\n' + _TAIL,
    _HEAD + '  lora "\\u0000"\n' + _TAIL,  # NUL in a path: ValueError
    _HEAD + '  embedding "x\\u0000"\n' + _TAIL,
    _HEAD + '  references "x\\u0000"\n' + _TAIL,
    'include "\\u0000"\n' + _HEAD + _TAIL,
    'model "./\\u0000"\n',
    _HEAD + '  lora "' + "a" * 5000 + '.safetensors"\n' + _TAIL,  # ENAMETOOLONG
    'model "./' + "a" * 5000 + '"\n',
    'include "\\uD800"\n',  # a lone surrogate: UnicodeEncodeError
    _HEAD + '  lora "\\udc80"\n' + _TAIL,
]


@pytest.mark.parametrize("text", REGRESSIONS)
def test_regressions(workdir: Path, text: str) -> None:
    assert check_one(workdir / "fuzz.scene", text) is None


def test_lone_surrogate_from_a_template_variable(workdir: Path) -> None:
    path = workdir / "t.scene.j2"
    path.write_text(_HEAD + _TAIL.replace("  d\n", '  d wears "{{ x }}"\n'), encoding="utf-8")
    with pytest.raises(DiagnosticError) as info:
        load(path, {"x": "\ud800"})
    assert [d.code for d in info.value.diagnostics] == ["unexpected-character"]
