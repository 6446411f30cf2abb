"""``scenecraft watch FILE``: build on every save, print one line per build, serve the live page.

Diagnostics go to stderr (as `check` prints them) and to the page. Ctrl-C stops the watch, the
page and any render under way (every finished image is kept, as in `render`), and exits 130.
"""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

from scenecraft.cli.args import WatchSettings
from scenecraft.cli.common import Output, variables_of
from scenecraft.diagnostics import DiagnosticError, error
from scenecraft.watch.builder import Builder, KeptPipeline, Outcome, watch_loop
from scenecraft.watch.changes import require_watchfiles, saves
from scenecraft.watch.server import LiveServer
from scenecraft.watch.state import LiveState

EXIT_INTERRUPTED = 130


def run(s: WatchSettings) -> int:
    require_watchfiles()  # before any model loads: a missing extra is a one-line error
    src = s.source
    state = LiveState(file=src.file)
    builder = Builder(
        state,
        src.file,
        s.out,
        variables=partial(variables_of, src.vars_files, src.var),
        vars_files=src.vars_files,
        only=s.only,
        max_jobs=s.max_jobs,
        cache_dir=s.cache_dir,
        pipeline=KeptPipeline(s.device, s.dtype),
    )
    try:
        server = LiveServer(state, s.port).start()
    except OSError as exc:
        raise error(
            "watch-port-busy",
            f"cannot listen on 127.0.0.1:{s.port}: {exc.strerror or exc}",
            help="pass --port 0 to pick a free port",
        ) from None
    print(f"live page {server.url}  watching {src.file}  (Ctrl-C stops)", flush=True)
    try:
        for outcome in watch_loop(builder, saves(lambda: builder.watched)):
            report(outcome)
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        server.stop()
    return 0


def report(outcome: Outcome) -> None:
    """One line per build on stdout; its diagnostics on stderr."""
    out = Output()
    if outcome.diagnostics:
        out.collect_sources(DiagnosticError(outcome.diagnostics))
        out.show(outcome.diagnostics)
    if outcome.ok:
        names = ", ".join("/".join(Path(p).parts[-2:]) for p in outcome.written[:4])
        more = f" ({names}{', ...' if len(outcome.written) > 4 else ''})" if names else ""
        print(
            f"rendered {len(outcome.written)} image(s){more}, {len(outcome.skipped)} up to date "
            f"in {outcome.seconds:.1f} s",
            flush=True,
        )
    else:
        print("the file has errors: the page keeps the last good pictures", flush=True)
