"""Check, in a few seconds, that a package index serves torch, before pip is pointed at it.

    python3 tools/check_torch_index.py https://download.pytorch.org/whl/cpu

`make lab TORCH=cpu` installs torch from PyTorch's CPU index (or ``CPU_TORCH_INDEX``). Where
that index cannot be reached, pip retries for minutes and then may take the CUDA build from
another index it knows; this check answers first, with one line that says what to do. It uses
only the standard library: it runs before the virtual environment exists.
"""

from __future__ import annotations

import argparse
import base64
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

#: Seconds to wait for the index: a reachable one answers in well under a second.
TIMEOUT_S = 10.0


def _request(url: str) -> urllib.request.Request:
    """A GET for ``url``, with any ``user:password@`` in it sent as HTTP basic auth (as pip does)."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None:
        return urllib.request.Request(url)
    host = parts.hostname + (f":{parts.port}" if parts.port else "")
    bare = urllib.parse.urlunsplit(parts._replace(netloc=host))
    credentials = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
    header = "Basic " + base64.b64encode(credentials.encode("utf-8")).decode("ascii")
    return urllib.request.Request(bare, headers={"Authorization": header})


def problem(index_url: str, package: str = "torch", timeout_s: float = TIMEOUT_S) -> str | None:
    """Why ``index_url`` cannot serve ``package`` (one phrase), or None when it can."""
    page = index_url.rstrip("/") + f"/{package}/"
    if page.startswith("file:"):  # a folder laid out as a simple index: FOLDER/torch/
        folder = Path(urllib.request.url2pathname(urllib.parse.urlsplit(page).path))
        return None if folder.is_dir() else f"the folder {folder} does not exist"
    try:
        with urllib.request.urlopen(_request(page), timeout=timeout_s) as response:
            response.read(1)
        return None
    except urllib.error.HTTPError as error:
        return f"{page} answered HTTP {error.code}"
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        return f"{page} cannot be reached ({reason}; waited at most {timeout_s:g} s)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("index_url", help="the index pip will be given with --index-url")
    parser.add_argument("--timeout", type=float, default=TIMEOUT_S, help=f"seconds to wait (default {TIMEOUT_S:g})")
    args = parser.parse_args(argv)
    why = problem(args.index_url, timeout_s=args.timeout)
    if why is None:
        return 0
    print(
        f"Cannot install PyTorch's CPU build: {why}. Set CPU_TORCH_INDEX to an index or mirror that serves "
        f"PyTorch's CPU wheels (make lab TORCH=cpu CPU_TORCH_INDEX=https://...), or leave out TORCH=cpu to "
        f"take torch from your usual index.",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
