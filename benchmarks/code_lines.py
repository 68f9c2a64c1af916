"""Lines of a package at a git revision: all lines, and code lines (no docstrings, comments or blank lines).

    python -m benchmarks.code_lines genlib/optim --rev a3b7acc^ --rev HEAD

Counts what ``git show REV:PATH`` holds for every ``.py`` file under the path, so any revision can be compared
with the working tree's (``--rev WORKTREE`` reads the files on disk). Python's own ``ast`` and ``tokenize``
tell docstrings and comments from code; a line counts as code when a token other than a comment starts or
runs on it outside a docstring.
"""

from __future__ import annotations

import argparse
import ast
import io
import subprocess
import tokenize
from pathlib import Path

SKIP = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}


def code_lines(source: str) -> int:
    """Lines holding code: not blank, not only a comment, not in a module, class or function docstring."""
    docs: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body:
            first = body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(
                    first.value.value, str):
                docs.update(range(first.lineno, first.end_lineno + 1))
    lines: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in SKIP:
            lines.update(n for n in range(tok.start[0], tok.end[0] + 1) if n not in docs)
    return len(lines)


def sources(path: str, rev: str) -> dict[str, str]:
    """``{file: text}`` of the ``.py`` files under ``path`` at ``rev`` (``WORKTREE``: on disk)."""
    if rev == "WORKTREE":
        return {str(p): p.read_text() for p in sorted(Path(path).rglob("*.py"))}
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], check=True, capture_output=True, text=True).stdout

    names = git("ls-tree", "-r", "--name-only", rev, path).split()
    return {n: git("show", f"{rev}:{n}") for n in names if n.endswith(".py")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path", help="a package folder, e.g. genlib/optim")
    ap.add_argument("--rev", action="append", default=None, help="git revision(s); default WORKTREE")
    args = ap.parse_args(argv)
    print(f"{'revision':<12}{'file':<40}{'lines':>8}{'code':>8}")
    for rev in args.rev or ["WORKTREE"]:
        try:
            files = sources(args.path, rev)
        except subprocess.CalledProcessError as err:
            ap.error(f"--rev {rev}: git cannot read {args.path} there ({err.stderr.strip()})")
        if not files:
            ap.error(f"no .py files under {args.path} at {rev}")
        total = [0, 0]
        for name, text in files.items():
            n, c = text.count("\n"), code_lines(text)
            total[0] += n
            total[1] += c
            print(f"{rev:<12}{name:<40}{n:>8}{c:>8}")
        print(f"{rev:<12}{'total':<40}{total[0]:>8}{total[1]:>8}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
