"""Where the tests find the project's real data: ``genlib.data.default_data_root()`` (``$GENLIB_DATA_ROOT``,
else ``../shared/data``), or that default's path when it is absent, so tests skip with a clear reason."""

from pathlib import Path

from genlib.data import default_data_root

try:
    SHARED_DATA = default_data_root()
except FileNotFoundError:
    SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
