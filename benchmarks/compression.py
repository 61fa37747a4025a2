"""The old name of the ``wire`` benchmark: ``python -m benchmarks.compression`` still runs it."""

from __future__ import annotations

from benchmarks.wire import main

if __name__ == "__main__":
    main()
