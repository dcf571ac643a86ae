"""`python -m ccpo_pl.fit --info [group=option key=value ...]`: the composed run config with each key's comment.

The comments of `conf/` are the documentation of every setting (meaning, source, unit). Hydra's `--help` and
`--cfg job` print the composed config without them; `describe(overrides)` prints it with them: the config composed
as `ccpo_pl.fit` would (interpolations resolved), each key followed by the comment of the last file (in the
composition order: `config.yaml`, then the chosen `env/`, `algo/` (with the files it includes), `algo_run/`,
`trainer/`, `experiment/`) that comments it, and `[<file>]` where a later file than that one sets the value
(`[command line]` where an override does: the comment then describes the key, not that value).
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from ccpo_pl.conf import CONF_DIR

#: groups in the order conf/config.yaml composes them
GROUP_ORDER = ("env", "algo", "algo_run", "trainer", "experiment")
_KEY = re.compile(r"(\s*)([A-Za-z_][\w-]*)\s*:(.*)$")
_COMMENT = re.compile(r"\s#\s?(.*)$")


def file_comments(path: Path, package: list[str]) -> dict[str, tuple[str, int | None]]:
    """Dotted key -> (comment, column of its `#`; None without comment) of every key a commented YAML file sets,
    under `package` (the keys' prefix; `# @package _global_` files have none). A comment-only line whose `#` is in
    the column of the previous key's comment continues it."""
    out: dict[str, tuple[str, int | None]] = {}
    stack: list[tuple[int, str]] = []
    last: str | None = None
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            column = len(line) - len(line.lstrip())
            if last is not None and out[last][1] == column:
                out[last] = (f"{out[last][0]} {stripped[1:].strip()}", column)
            continue
        match = _KEY.match(line)
        if not match:
            last = None  # a list item or a blank line ends a comment
            continue
        indent, key, rest = len(match.group(1)), match.group(2), match.group(3)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key))
        dotted = ".".join([*package, *(k for _, k in stack)])
        comment = _COMMENT.search(rest) if "#" in rest else None
        column = line.index("#", len(line) - len(rest)) if comment else None
        out[dotted] = (comment.group(1).strip() if comment else "", column)
        last = dotted if comment else None
    return out


def _package(path: Path, group: str | None) -> list[str]:
    head = path.read_text().split("\n", 1)[0]
    return [] if "@package _global_" in head or group is None else [group]


def composed_files(choices: dict[str, str | None]) -> list[tuple[str, Path, list[str]]]:
    """(name, file, package) of the files a run config is composed from, in order (`hydra.runtime.choices`)."""
    files = [("config.yaml", CONF_DIR / "config.yaml", [])]

    def add(group: str, option: str) -> None:
        path = CONF_DIR / group / f"{option}.yaml"
        if not path.is_file():
            return
        for included in (yaml.safe_load(path.read_text()) or {}).get("defaults", []):
            if isinstance(included, str) and included != "_self_":
                add(group, included)
        files.append((f"{group}/{option}.yaml", path, _package(path, group)))

    for group in GROUP_ORDER:
        if choices.get(group):
            add(group, choices[group])
    return files


def key_docs(choices: dict[str, str | None]) -> dict[str, tuple[str, str, str]]:
    """Dotted key -> (comment, file with the comment, last file to set it)."""
    docs: dict[str, tuple[str, str, str]] = {}
    for name, path, package in composed_files(choices):
        for key, (comment, _) in file_comments(path, package).items():
            old_comment, commented_in, _ = docs.get(key, ("", "", ""))
            docs[key] = (comment, name, name) if comment else (old_comment, commented_in, name)
    return docs


def annotate(text: str, docs: dict[str, tuple[str, str, str]], column: int = 48) -> str:
    """`text`, a block-style YAML dump, with each key's comment appended (aligned at `column`)."""
    lines, stack = [], []
    for line in text.splitlines():
        match = _KEY.match(line)
        if match:
            indent = len(match.group(1))
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, match.group(2)))
            comment, commented_in, set_in = docs.get(".".join(k for _, k in stack), ("", "", ""))
            if set_in and set_in != commented_in and match.group(3).strip():  # a value, not a section
                comment = f"{comment} [{set_in}]".strip()
            if comment:
                line = f"{line.ljust(column - 1)} # {comment}"
        lines.append(line)
    return "\n".join(lines) + "\n"


class _Dumper(yaml.SafeDumper):
    """Mappings in block style (a line, and a comment, per key), lists in flow style (`[20, 40, 60]`)."""


_Dumper.add_representer(list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data,
                                                                             flow_style=True))


def describe(overrides: list[str]) -> str:
    """The run config `ccpo_pl.fit <overrides>` would use, with each key's comment."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf, open_dict

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
    choices = OmegaConf.to_container(cfg.hydra.runtime.choices)
    with open_dict(cfg):
        del cfg["hydra"]
    plain = OmegaConf.to_container(cfg, resolve=True)
    dump = yaml.dump(plain, Dumper=_Dumper, sort_keys=False, width=10_000, allow_unicode=True)
    head = (f"# python -m ccpo_pl.fit {' '.join(overrides)}".rstrip() + ": the run config, each key with the comment "
            "of its file in conf/ ([file]: the value comes from a later file; [command line]: from an override)\n")
    docs = key_docs(choices)
    for arg in overrides:  # key=value on the command line: its value is not the one the comment's file gives
        key, sep, _ = arg.lstrip("+").partition("=")
        if sep and key not in GROUP_ORDER and "/" not in key and not key.startswith("hydra"):
            comment, commented_in, _ = docs.get(key, ("", "", ""))
            docs[key] = (comment, commented_in, "command line")
    return head + annotate(dump, docs)
