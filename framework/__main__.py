from __future__ import annotations

from framework.cli import main

main()
