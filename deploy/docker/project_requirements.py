"""Print pyproject.toml's runtime dependencies, one per line, for `pip install -r`.

Used by the images so dependencies install in their own cached layer before the source is copied.
`--exclude NAME` drops a distribution (the CUDA image keeps the base image's own torch build,
whose version string, e.g. `2.11.0a0+git…`, does not satisfy `torch>=2.11` and would make pip
download another torch). Optional extras are not handled: only `[project].dependencies`.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib


def runtime_requirements(pyproject_path: str, exclude: set[str]) -> list[str]:
    with open(pyproject_path, "rb") as f:
        deps = tomllib.load(f)["project"]["dependencies"]
    out = []
    for dep in deps:
        name = re.split(r"[\s<>=!~;\[]", dep, maxsplit=1)[0]
        if name.lower().replace("_", "-") not in exclude:
            out.append(dep)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject")
    parser.add_argument("--exclude", action="append", default=[], help="distribution name to leave out")
    args = parser.parse_args(argv)
    exclude = {name.lower().replace("_", "-") for name in args.exclude}
    sys.stdout.write("".join(dep + "\n" for dep in runtime_requirements(args.pyproject, exclude)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
