"""The CLI reference page, generated from the real parsers (`jaxtar.cli.build_parser`), never written by hand.

Two ways in:

- as a mkdocs hook (``hooks:`` in ``mkdocs.yml``): `on_files` adds ``cli.md`` to the site at build time, in
  memory, so nothing is written into ``docs/`` and nothing generated is committed;
- as a script: ``python scripts/gen_cli_docs.py [OUT.md]`` prints the page (or writes it to OUT.md).

Every command and sub-command (``defend tar|random-mapping|mlac`` included) gets the text its ``-h`` prints: the
same code path a user runs, so a preset-aware ``-h`` shows the default preset's values. The width is fixed so the
page does not depend on the terminal that builds it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys

WIDTH = "100"
INTRO = """# Command-line reference

Generated when the docs are built, from the parsers the `jaxtar` command itself uses (`jaxtar.cli.build_parser`,
by `scripts/gen_cli_docs.py`): each section is exactly what `jaxtar ... -h` prints. Flags that set a config field
(`--SECTION.FIELD`) accept hyphens or underscores; `-h` after `--preset NAME` shows that preset's values (here: the
default preset's). How presets and flags fit together: [Architecture](architecture.md#one-config-mechanism).
Exit codes: 0 done, 2 refused input (nothing written), 3 a defence diverged, 130 interrupted (resumable).
"""


def _command_paths(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """Every (sub)command path of ``parser``, depth first, in the parser's own order."""
    yield path
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _command_paths(sub, (*path, name))


def _help_text(path: tuple[str, ...]) -> str:
    """What ``jaxtar PATH -h`` prints (a fresh parser each time: a preset-aware ``-h`` rewrites help texts)."""
    from jaxtar.cli import build_parser

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        build_parser().parse_args([*path, "-h"])
    return out.getvalue().rstrip()


def render() -> str:
    """The whole CLI reference page as Markdown."""
    os.environ["COLUMNS"] = WIDTH  # argparse wraps to the terminal width; fix it
    from jaxtar.cli import build_parser

    paths = list(_command_paths(build_parser()))
    parts = [INTRO, "Commands: " + ", ".join(f"[`jaxtar {' '.join(p)}`](#{_anchor(p)})" for p in paths if p) + "\n"]
    for path in paths:
        title = " ".join(("jaxtar", *path))
        parts.append(f"## `{title}` {{ #{_anchor(path)} }}\n\n```text\n{_help_text(path)}\n```\n")
    return "\n".join(parts)


def _anchor(path: tuple[str, ...]) -> str:
    return "-".join(("jaxtar", *path))


def on_files(files, config):
    """mkdocs hook: add the generated ``cli.md`` to the site's files (in memory only)."""
    from mkdocs.structure.files import File

    files.append(File.generated(config, "cli.md", content=render()))
    return files


def main(argv: list[str]) -> int:
    page = render()
    if argv:
        with open(argv[0], "w", encoding="utf-8") as f:
            f.write(page)
    else:
        sys.stdout.write(page)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
