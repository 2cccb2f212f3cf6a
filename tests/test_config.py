"""Configuration: TOML + X2X_* environment, masked secrets, one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dicom_node.config import ConfigError, load_settings

X2X = [sys.executable, "-m", "dicom_node.cli"]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "x2x.toml"
    path.write_text(text)
    return path


def test_defaults_are_the_embedded_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("X2X_CONFIG", raising=False)
    s = load_settings()
    assert s.node.port == 11112 and s.api.port == 8000 and s.node.ae_title == "X2X"
    assert s.node.max_associations > 10  # pynetdicom's default of 10 rejects the 11th sender
    assert s.database_url.startswith("sqlite:///") and s.database_url.endswith("jobs.sqlite")
    assert s.broker_url.startswith("sqla+sqlite:///") and s.result_backend.startswith("db+sqlite:///")
    assert s.edit.steps == 100 and s.edit.tau == pytest.approx(0.1)


def test_toml_then_environment_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _write(
        tmp_path,
        '[node]\nport = 11113\nallowed_calling_aes = ["PACS"]\n'
        '[[rules]]\ncalled_ae = "X2X_EFFUSION"\ninstruction = "Add the finding of pleural effusion."\n'
        '[destinations.pacs]\ntype = "cstore"\nae_title = "ORTHANC"\nhost = "127.0.0.1"\nport = 4242\n',
    )
    s = load_settings(cfg)
    assert s.node.port == 11113 and s.node.allowed_calling_aes == ["PACS"]
    assert s.rule_for("X2X_EFFUSION") is not None and s.rule_for("OTHER") is None
    assert s.destinations["pacs"].port == 4242
    monkeypatch.setenv("X2X_NODE__PORT", "2000")
    assert load_settings(cfg).node.port == 2000


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[node]\nport = 99999\n", "node.port"),
        ("[node]\nprot = 1\n", "node.prot"),
        ('[node]\nae_title = "THIS_AE_TITLE_IS_TOO_LONG"\n', "node.ae_title"),
        ("[edit]\ntau = 2\n", "edit.tau"),
    ],
)
def test_invalid_config_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(_write(tmp_path, text))
    message = str(err.value)
    assert key in message and "\n" not in message


def test_config_show_masks_secrets_and_bad_config_exits_2(tmp_path: Path) -> None:
    cfg = _write(tmp_path, '[api]\ntoken = "super-secret-token"\n')
    out = subprocess.run([*X2X, "--config", str(cfg), "config", "show"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert shown["api"]["token"] == "**********"
    assert "super-secret-token" not in out.stdout

    bad = _write(tmp_path, "[node]\nport = 0\n")
    out = subprocess.run([*X2X, "--config", str(bad), "config", "show"], capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "node.port" in out.stderr


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    out = subprocess.run(
        [*X2X, "--config", str(tmp_path / "nope.toml"), "config", "check"], capture_output=True, text=True
    )
    assert out.returncode == 2 and "not found" in out.stderr


def test_edit_section_maps_onto_the_editor_params(tmp_path: Path) -> None:
    import dataclasses

    from dicom_node.config import EditConfig
    from dicom_node.edit_params import resolve_params
    from editor.types import EditParams

    fields = {f.name for f in dataclasses.fields(EditParams)}
    assert set(EditConfig.model_fields) - {"seed"} <= fields  # seed travels as the job's own column
    s = load_settings(_write(tmp_path, "[edit]\nsteps = 7\nresolution = 256\nblend_timestep = \"next\"\n"))
    params = resolve_params(s)
    assert (params.steps, params.resolution, params.blend_timestep) == (7, 256, "next")
    assert resolve_params(s, {"steps": 3}).steps == 3
    # the paper's defaults when nothing is configured
    assert resolve_params(load_settings()) == EditParams()
