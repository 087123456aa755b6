"""Which carried wheels (in .whl/) a GPU machine's image needs before the project runs there.

Prints the image's versions of what the project uses (to stderr, for the log), then on stdout
the wheels to install: transformers when the image's is outside setup.py's range, and then each
of that wheel's own requirements that the image does not meet (transformers checks some of them,
regex for one, when it is imported). Exits 1, naming them, when a needed wheel is not carried.

    python benchmarks/gpu_suite_wheels.py [WHEEL_DIR]      (run by gpu_suite.sh from the repository root)
"""

from __future__ import annotations

import importlib.metadata as metadata
import re
import sys
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

REPORTED = ("torch", "triton", "transformers", "huggingface_hub", "tokenizers", "safetensors", "accelerate", "regex",
            "numpy", "pytest", "pytest-timeout", "matplotlib", "pyyaml", "tqdm")


def installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def wheel_requirements(wheel: Path) -> list[Requirement]:
    """The unconditional requirements (no extras) in a wheel's METADATA."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        lines = archive.read(name).decode().splitlines()
    requirements = [Requirement(line.split(":", 1)[1].strip()) for line in lines if line.startswith("Requires-Dist:")]
    return [r for r in requirements if r.marker is None or r.marker.evaluate({"extra": ""})]


def main(argv: list[str]) -> int:
    wheel_dir = Path(argv[0] if argv else ".whl")
    carried = {canonicalize_name(path.name.split("-")[0]): path for path in sorted(wheel_dir.glob("*.whl"))}
    print(f"python {sys.version.split()[0]} {sys.executable}", file=sys.stderr)
    for name in REPORTED:
        print(f"{name} {installed(name) or 'MISSING'}", file=sys.stderr)
    spec = SpecifierSet(re.search(r'"transformers([^";]*)"', Path("setup.py").read_text()).group(1))
    have = installed("transformers")
    print(f"transformers {have}; setup.py asks {spec}", file=sys.stderr)
    if have is not None and spec.contains(have, prereleases=True):
        return 0
    needed, missing = ["transformers"], []
    if "transformers" in carried:
        for requirement in wheel_requirements(carried["transformers"]):
            version = installed(requirement.name)
            if version is None or not requirement.specifier.contains(version, prereleases=True):
                print(f"the carried transformers needs {requirement}; the image has {version}", file=sys.stderr)
                needed.append(canonicalize_name(requirement.name))
    missing = [name for name in needed if name not in carried]
    if missing:
        print(f"FAILED: .whl/ lacks wheels for {', '.join(missing)}: run 'bash benchmarks/gpu_suite.sh --prepare' where "
              "PyPI is reachable (add the missing names there if they are not transformers or regex), then carry .whl",
              file=sys.stderr)
        return 1
    print("\n".join(str(carried[name]) for name in needed))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
