"""A Dockerfile read as BuildKit reads it, as far as the deployment checks need, without Docker.

``Dockerfile.parse`` joins continuation lines, drops comments, substitutes ``ARG`` and ``ENV`` values
where Docker does (``FROM`` sees only the ARGs declared before the first ``FROM``), and gives each stage
its base image, ``COPY`` instructions, ``USER``, ``ENTRYPOINT``, ``CMD``, ``ENV``, ``LABEL`` and
``WORKDIR``. ``pinned`` says whether an image reference names one release.

Example::

    final = Dockerfile.parse(Path("Dockerfile")).final
    assert final.user == "10001" and final.entrypoint == ["tidings"]
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

__all__ = ["Copy", "Dockerfile", "Stage", "pinned"]

_VARIABLE = re.compile(r"\$(?:\{(?P<braced>\w+)(?::(?P<op>[-+])(?P<word>[^}]*))?\}|(?P<bare>\w+))")
_FULL_VERSION_PARTS = {"postgres": 2}
"""Images whose releases are numbered with fewer than three parts: PostgreSQL's are major.minor since 10."""


@dataclass(frozen=True)
class Copy:
    """One ``COPY``: its sources (context paths, or paths in stage ``from_stage``) and destination."""

    sources: tuple[str, ...]
    dest: str
    from_stage: str | None
    flags: dict[str, str]
    workdir: str
    line: int

    def destination(self) -> PurePosixPath:
        """The absolute destination in the image (a relative one is relative to the WORKDIR)."""
        return PurePosixPath(self.workdir) / self.dest


@dataclass
class Stage:
    """One ``FROM`` and what follows it, up to the next ``FROM``."""

    base: str
    name: str | None
    line: int
    copies: list[Copy] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    user: str | None = None
    workdir: str = "/"
    entrypoint: list[str] | str | None = None
    cmd: list[str] | str | None = None
    exposed: list[str] = field(default_factory=list)


@dataclass
class Dockerfile:
    """The stages of a Dockerfile and the ARGs declared before its first ``FROM``."""

    path: Path
    global_args: dict[str, str | None]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def stage(self, name: str) -> Stage:
        (found,) = [s for s in self.stages if s.name == name]
        return found

    def stage_names(self) -> set[str]:
        return {s.name for s in self.stages if s.name}

    @classmethod
    def parse(cls, path: Path, build_args: dict[str, str] | None = None) -> Dockerfile:
        """Read ``path``, with ``build_args`` as ``--build-arg`` values.

        Raises:
            ValueError: an instruction this reader does not know how to read (ADD, ONBUILD...) or a
                malformed one.
        """
        given = dict(build_args or {})
        global_args: dict[str, str | None] = {}
        stages: list[Stage] = []
        variables: dict[str, str] = {}
        for line, keyword, text in _instructions(path.read_text()):
            if keyword == "FROM":
                words = [w for w in text.split() if not w.startswith("--")]
                known = {k: v for k, v in global_args.items() if v is not None}
                base = _expand(words[0], known)
                name = words[2].lower() if len(words) == 3 and words[1].upper() == "AS" else None
                if len(words) not in (1, 3) or (len(words) == 3 and name is None):
                    raise ValueError(f"{path}:{line}: cannot read FROM {text!r}")
                stages.append(Stage(base=base, name=name, line=line))
                variables = {}
                continue
            if keyword == "ARG":
                for key, default in _arguments(text):
                    if not stages:
                        global_args[key] = given.get(key, default)
                        continue
                    value = given.get(key, default if default is not None else global_args.get(key))
                    if value is not None:
                        variables[key] = value
                continue
            if not stages:
                raise ValueError(f"{path}:{line}: {keyword} before the first FROM")
            stage = stages[-1]
            if keyword == "ENV":
                for key, value in _pairs(_expand(text, variables)):
                    stage.env[key] = value
                    variables[key] = value
            elif keyword == "LABEL":
                stage.labels.update(_pairs(_expand(text, variables)))
            elif keyword == "USER":
                stage.user = _expand(text, variables).strip()
            elif keyword == "WORKDIR":
                stage.workdir = str(PurePosixPath(stage.workdir) / _expand(text, variables).strip())
            elif keyword == "EXPOSE":
                stage.exposed.extend(_expand(text, variables).split())
            elif keyword == "COPY":
                stage.copies.append(_copy(_expand(text, variables), stage.workdir, line))
            elif keyword == "RUN":
                stage.runs.append(text)
            elif keyword == "ENTRYPOINT":
                stage.entrypoint = _command(text)
            elif keyword == "CMD":
                stage.cmd = _command(text)
            elif keyword not in {"SHELL", "STOPSIGNAL", "HEALTHCHECK", "VOLUME"}:
                raise ValueError(f"{path}:{line}: this reader does not know {keyword}")
        if not stages:
            raise ValueError(f"{path}: no FROM")
        return cls(path, global_args, stages)


def pinned(reference: str) -> bool:
    """Whether ``reference`` names one release: a digest, or a tag that starts with a full version.

    ``python:3.11.14-slim-bookworm`` and ``postgres:16.10-alpine`` are pinned; ``python:3.11-slim``,
    ``postgres:16-alpine``, ``kafka`` and ``kafka:latest`` are not.
    """
    name, _, digest = reference.partition("@")
    if digest:
        return re.fullmatch(r"sha256:[0-9a-f]{64}", digest) is not None
    last = name.rsplit("/", 1)[-1]
    if ":" not in last:
        return False
    repository, tag = name.rsplit(":", 1)
    parts = _FULL_VERSION_PARTS.get(repository.removeprefix("docker.io/").removeprefix("library/"), 3)
    return re.match(rf"v?\d+(\.\d+){{{parts - 1}}}(?![.\d])", tag) is not None


def _instructions(text: str) -> list[tuple[int, str, str]]:
    """(line, KEYWORD, arguments) per instruction, continuation lines joined and comments dropped."""
    found: list[tuple[int, str, str]] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1])
            continue
        pending.append(stripped)
        keyword, _, arguments = " ".join(pending).strip().partition(" ")
        found.append((start, keyword.upper(), arguments.strip()))
        pending = []
    if pending:
        raise ValueError("the last instruction ends with a continuation")
    return found


def _expand(text: str, variables: dict[str, str]) -> str:
    """``$NAME``, ``${NAME}``, ``${NAME:-word}``, ``${NAME:+word}``; an unknown NAME stays as written
    (it comes from the base image's environment, PATH for one)."""

    def substitute(match: re.Match[str]) -> str:
        name = match.group("braced") or match.group("bare")
        value = variables.get(name)
        if match.group("op") == "-":
            return value if value else match.group("word")
        if match.group("op") == "+":
            return match.group("word") if value else ""
        return value if value is not None else match.group(0)

    return _VARIABLE.sub(substitute, text)


def _arguments(text: str) -> list[tuple[str, str | None]]:
    found: list[tuple[str, str | None]] = []
    for word in shlex.split(text):
        key, sep, value = word.partition("=")
        found.append((key, value if sep else None))
    return found


def _pairs(text: str) -> list[tuple[str, str]]:
    """``key=value ...`` (quotes allowed), or the legacy ``key value`` form."""
    words = shlex.split(text)
    if words and "=" not in words[0]:
        return [(words[0], " ".join(words[1:]))]
    pairs = []
    for word in words:
        key, sep, value = word.partition("=")
        if not sep:
            raise ValueError(f"not key=value: {word!r}")
        pairs.append((key, value))
    return pairs


def _command(text: str) -> list[str] | str:
    """The exec form as a list, the shell form as the string a shell would run."""
    if text.startswith("["):
        words = json.loads(text)
        assert isinstance(words, list), text
        assert all(isinstance(w, str) for w in words), text
        return words
    return text


def _copy(text: str, workdir: str, line: int) -> Copy:
    flags: dict[str, str] = {}
    while match := re.match(r"--(\S+)\s+", text):
        key, _, value = match.group(1).partition("=")
        flags[key] = value
        text = text[match.end() :]
    words = json.loads(text) if text.startswith("[") else shlex.split(text)
    if len(words) < 2:
        raise ValueError(f"line {line}: COPY needs a source and a destination: {text!r}")
    return Copy(tuple(words[:-1]), words[-1], flags.pop("from", None), flags, workdir, line)
