"""A Docker build context without Docker: the files ``.dockerignore`` lets through, and ``COPY`` replayed.

``DockerIgnore`` follows Docker's rules (moby/patternmatcher): patterns are cleaned paths relative to
the context, ``*`` and ``?`` stay within one path segment, ``**`` spans any number of them, a pattern
that matches a directory matches everything under it, ``!`` re-includes, and the last pattern that
matches a path decides.

Example::

    files = context_files(ROOT)                # what `docker build ROOT` sends to the builder
    replay(copy, ROOT, files, into=tmp)        # what one COPY puts into the image, under tmp/
"""

from __future__ import annotations

import os
import posixpath
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from tests.deploy.dockerfile import Copy

__all__ = ["DockerIgnore", "context_files", "replay", "sources_of"]


@dataclass(frozen=True)
class _Pattern:
    text: str
    exclusion: bool
    regex: re.Pattern[str]


class DockerIgnore:
    """The patterns of one ``.dockerignore``."""

    def __init__(self, text: str) -> None:
        self.patterns: list[_Pattern] = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            exclusion = line.startswith("!")
            line = line.removeprefix("!").strip()
            cleaned = posixpath.normpath(line).lstrip("/")
            self.patterns.append(_Pattern(cleaned, exclusion, _compile(cleaned)))

    @classmethod
    def of(cls, root: Path) -> DockerIgnore:
        path = root / ".dockerignore"
        return cls(path.read_text() if path.exists() else "")

    def excludes(self, path: str) -> bool:
        """Whether the context leaves out ``path`` (relative, with ``/``), file or directory."""
        parts = path.split("/")
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        excluded = False
        for pattern in self.patterns:
            if any(pattern.regex.fullmatch(candidate) for candidate in candidates):
                excluded = not pattern.exclusion
        return excluded

    def may_include_below(self, directory: str) -> bool:
        """Whether some ``!`` pattern could bring back a path under an excluded ``directory``."""
        return any(
            p.exclusion and (p.text.startswith(directory + "/") or p.text.startswith("*"))
            for p in self.patterns
        )


def context_files(root: Path) -> list[str]:
    """Every file ``docker build root`` sends, as sorted paths relative to ``root``."""
    ignore = DockerIgnore.of(root)
    found: list[str] = []
    for directory, subdirectories, files in os.walk(root):
        relative = Path(directory).relative_to(root).as_posix()
        prefix = "" if relative == "." else relative + "/"
        subdirectories[:] = [
            d
            for d in subdirectories
            if not ignore.excludes(prefix + d) or ignore.may_include_below(prefix + d)
        ]
        found.extend(prefix + f for f in files if not ignore.excludes(prefix + f))
    return sorted(found)


def sources_of(copy: Copy, files: list[str]) -> dict[str, list[str]]:
    """Each source of ``copy`` and the context files it stands for (a file, or a directory's files)."""
    found: dict[str, list[str]] = {}
    for source in copy.sources:
        if any(ch in source for ch in "*?["):
            raise ValueError(f"line {copy.line}: wildcards in COPY sources are not replayed: {source}")
        name = posixpath.normpath(source)
        if name in files:
            found[source] = [name]
        else:
            found[source] = [f for f in files if f.startswith(name + "/")]
    return found


def replay(copy: Copy, root: Path, files: list[str], into: Path) -> list[Path]:
    """Copy what ``copy`` copies from the context at ``root`` to ``into`` (the image's ``/``).

    Raises:
        FileNotFoundError: a source that is not in the context.
    """
    destination = copy.destination()
    into_directory = copy.dest.endswith("/") or len(copy.sources) > 1
    written: list[Path] = []
    for source, matched in sources_of(copy, files).items():
        if not matched:
            raise FileNotFoundError(f"COPY {source} (line {copy.line}): not in the build context")
        name = posixpath.normpath(source)
        for file in matched:
            if file == name:
                target = destination / posixpath.basename(file) if into_directory else destination
            else:
                target = destination / file[len(name) + 1 :]
            path = into / target.relative_to("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / file, path)
            written.append(path)
    return written


def _compile(pattern: str) -> re.Pattern[str]:
    """Docker's translation of one pattern into a regular expression."""
    regex = ""
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if pattern.startswith("**/", i):
            regex += "(.*/)?"
            i += 3
            continue
        if pattern.startswith("**", i):
            regex += ".*"
            i += 2
            continue
        if ch == "*":
            regex += "[^/]*"
        elif ch == "?":
            regex += "[^/]"
        elif ch == "[":
            end = pattern.index("]", i + 1)
            regex += "[" + pattern[i + 1 : end] + "]"  # Go's classes: [abc], [a-z], [^abc]
            i = end
        elif ch == "\\" and i + 1 < len(pattern):
            i += 1
            regex += re.escape(pattern[i])
        else:
            regex += re.escape(ch)
        i += 1
    return re.compile(regex)
