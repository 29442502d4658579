"""OpenVINO's usage telemetry is declined for a user who never chose, and a choice is kept."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from expert_pipeline.adapters.openvino_telemetry import consent_file, decline_unless_chosen


def test_a_user_who_never_chose_is_recorded_as_declined(tmp_path: Path) -> None:
    decline_unless_chosen(tmp_path)
    assert consent_file(tmp_path).read_text().strip() == "0"


def test_a_choice_already_made_is_left_alone(tmp_path: Path) -> None:
    consent_file(tmp_path).parent.mkdir(parents=True)
    consent_file(tmp_path).write_text("1\n")
    decline_unless_chosen(tmp_path)
    assert consent_file(tmp_path).read_text() == "1\n"


def test_openvino_itself_then_sends_nothing(tmp_path: Path) -> None:
    # In a fresh home, what OpenVINO's own consent check concludes after we declined.
    code = (
        "from expert_pipeline.adapters.openvino_telemetry import decline_unless_chosen;"
        "decline_unless_chosen();"
        "from openvino_telemetry.utils.opt_in_checker import OptInChecker, ConsentCheckResult;"
        "print(OptInChecker().check(enable_opt_in_dialog=False) == ConsentCheckResult.DECLINED)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env={"HOME": str(tmp_path)}, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "True", done.stderr
