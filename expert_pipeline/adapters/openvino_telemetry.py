"""OpenVINO's usage telemetry, declined unless this user has chosen.

Importing `openvino` sends a usage event to Google Analytics from a forked child process,
unless the user has declined in OpenVINO's consent file (`~/intel/openvino_telemetry`, what its
`opt_in_out --opt_out` writes). A pipeline reading people's documents should not report home on
their behalf, and a fork from a library thread is unsafe next to LanceDB's runtime. So before
the first import, a user who has made no choice is recorded as declined (once, logged); an
existing choice, either way, is left as it is.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

_DECLINED = "0"


def consent_file(home: Path | None = None) -> Path:
    return (home or Path.home()) / "intel" / "openvino_telemetry"


def decline_unless_chosen(home: Path | None = None) -> None:
    path = consent_file(home)
    if path.exists():
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_DECLINED + "\n")
    except OSError as exc:  # a read-only home: OpenVINO then finds no consent directory either
        log.debug("cannot record the OpenVINO telemetry choice in %s: %s", path, exc)
        return
    log.info("OpenVINO usage telemetry declined for this user in %s (its opt_in_out tool changes it)", path)
