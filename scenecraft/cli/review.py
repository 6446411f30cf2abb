"""``scenecraft review OUT_DIR``: serve the rating page, or print the ratings' summary.

No torch: the page and the summary read PNG metadata and ratings.json only."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

from scenecraft.cli.args import ReviewSettings
from scenecraft.diagnostics import error
from scenecraft.review.catalog import format_summary, load_ratings, ratings_path, summarize
from scenecraft.review.server import ReviewServer


def run(args: ReviewSettings) -> int:
    out = Path(args.out_dir)
    if not out.is_dir():
        raise error(
            "review-folder-not-found",
            f"`{out}` is not a folder",
            help="pass the folder given to `scenecraft render --out` (default ./out)",
        )
    if args.summary:
        root = out.resolve()
        if not ratings_path(root).is_file():
            print(
                f"no ratings yet in {root} (run `scenecraft review {out}` first)", file=sys.stderr
            )
        rows = summarize(load_ratings(root))
        if args.json:
            print(json.dumps([asdict(r) for r in rows]))
        else:
            print(format_summary(rows))
        return 0
    try:
        server = ReviewServer(out, args.port)
    except OSError as exc:
        raise error(
            "review-port-busy",
            f"cannot listen on 127.0.0.1:{args.port}: {exc.strerror or exc}",
            help="pass --port 0 to pick a free port",
        ) from None
    cat = server.catalog
    for problem in cat.problems:
        print(f"skipped: {problem}", file=sys.stderr)
    print(f"{len(cat.items)} image(s) to rate; ratings go to {cat.root / 'ratings.json'}")
    print(f"serving {server.url}  (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
