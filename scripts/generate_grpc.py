"""Regenerate ``service/oip/inference_pb2.py`` (and its ``.pyi`` type stub) from ``inference.proto``.

    python scripts/generate_grpc.py            # write the modules
    python scripts/generate_grpc.py --check    # exit 1 if the shipped modules differ from a fresh build

Needs grpcio-tools (the dev extra pins the version whose protoc made the shipped files: its generated code
requires a protobuf runtime at least as new as that protoc). The service itself needs only protobuf and
grpcio at run time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROTO = Path("service/oip/inference.proto")
OUTPUTS = ("inference_pb2.py", "inference_pb2.pyi")


def generate(out: Path) -> None:
    """Run protoc (from grpcio-tools) on the proto, writing the modules under ``out``."""
    from grpc_tools import protoc

    code = protoc.main(["protoc", f"-I{REPO}", f"--python_out={out}", f"--pyi_out={out}", str(REPO / PROTO)])
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="compare with a fresh build, write nothing")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        generate(Path(scratch))
        built = Path(scratch) / PROTO.parent
        shipped = REPO / PROTO.parent
        stale = [
            n
            for n in OUTPUTS
            if not (shipped / n).is_file() or (built / n).read_bytes() != (shipped / n).read_bytes()
        ]
        if args.check:
            if stale:
                stale_names = ", ".join(stale)
                print(f"out of date: {stale_names}; run python scripts/generate_grpc.py", file=sys.stderr)
                return 1
            return 0
        for name in OUTPUTS:
            (REPO / PROTO.parent / name).write_bytes((built / name).read_bytes())
    return 0


if __name__ == "__main__":
    sys.exit(main())
