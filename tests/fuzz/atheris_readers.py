"""Coverage-guided fuzzing of the file readers with atheris (optional; not run in CI).

    .venv/bin/pip install atheris
    .venv/bin/python tests/fuzz/atheris_readers.py tests/fuzz/corpus -max_total_time=600

The first input byte picks the format; the rest is the file. Crashes (any
exception but SourceError) are written by libFuzzer as crash-* files.
"""

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

with atheris.instrument_imports():
    from tests.fuzz.readers import check_file_bytes

SUFFIXES = (".safetensors", ".pt")


def one_input(data: bytes) -> None:
    if not data:
        return
    check_file_bytes(data[1:], SUFFIXES[data[0] % len(SUFFIXES)])


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
