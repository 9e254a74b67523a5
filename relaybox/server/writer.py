"""``python -m relaybox.server.writer FD``: the server's writer process.

Started by the server (``relaybox.store.writerproc.ProcessEventLog``), never by hand. It
logs in the server's format, with the same redaction, and then runs the store's writer
loop on the socket it inherited.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

from relaybox.config import Settings
from relaybox.server.logs import configure
from relaybox.store import writerproc


def _logs(spec: dict[str, Any]) -> None:
    configure(dataclasses.replace(Settings(), log_format=spec.get("log_format", "plain"),
                                  log_level=spec.get("log_level", "info")))


def main(argv: list[str]) -> int:
    return writerproc.run(argv, _logs)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
