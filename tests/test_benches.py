"""The `x2x bench` commands added for issue 17 run end to end and report what they claim (tiny sizes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

X2X = str(Path(sys.executable).with_name("x2x"))


def _run(args: list[str], timeout: float = 900, env: dict[str, str] | None = None) -> dict:
    r = subprocess.run([X2X, "bench", *args], capture_output=True, text=True, timeout=timeout,
                       env=dict(os.environ, TCP_NODELAY="1", **(env or {})))
    assert r.returncode == 0, r.stderr[-3000:]
    return dict(json.loads(r.stdout))


def test_bench_edit_batch_reports_edits_per_second() -> None:
    out = _run(["edit", "--arch", "tiny", "--batch", "2", "--steps", "2", "--resolution", "64", "--repeats", "1"])
    assert out["batch"] == 2 and out["resolution"] == 64 and out["steps"] == 2
    assert out["single_edits_per_s_median"] > 0 and out["batch_edits_per_s_median"] > 0
    assert out["ratio_batch_over_single_median"] == pytest.approx(
        out["batch_edits_per_s_median"] / out["single_edits_per_s_median"], abs=0.01)


@pytest.mark.slow
def test_bench_stages_composite_matches_the_full_image_reference() -> None:
    out = _run(["stages", "--repeats", "1"])
    assert out["composite_identical_to_reference"] is True
    assert 0 < out["coverage"] < 1
    stages = out["stages"]
    for name in ("composite", "counterfactual_sc", "binary_seg", "fractional_seg", "parametric_map",
                 "encode_five_objects", "write_five_objects", "write_outputs", "edit_stage_save_arrays",
                 "delivery_stage_load_arrays", "delivery_stage_read_source"):
        assert stages[name]["median_s"] > 0, name
    assert out["hand_over_file_bytes"] > 1955 * 1841 * 2, "the arrays of the CR, at full size"
    assert set(stages["write_outputs"]["last_run_parts_s"]) == {"objects_s", "previews_s", "write_s"}


@pytest.mark.slow
def test_bench_node_measures_studies_through_a_running_node(tiny_model_dir: Path) -> None:
    out = _run(["node", "--studies", "2", "--alone", "1", "--steps", "2", "--size", "64", "--no-busy",
                "--quiet-seconds", "0.3", "--model", str(tiny_model_dir), "--timeout", "300"])
    quiet = out["quiet"]
    assert quiet["alone"]["studies"] == 1 and quiet["queued"]["studies"] == 2
    assert quiet["alone"]["latency_s"]["median"] > 0.3  # includes the quiet period
    assert quiet["queued"]["throughput_studies_per_s"] > 0
    assert {"edit_s", "encode_s", "send_s"} <= set(quiet["alone"]["stage_medians_s"])
    assert "busy_core" not in out
