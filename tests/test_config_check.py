"""`x2x config check` catches before traffic what used to fail hours later (a model folder that is not
there, a destination missing its host, a rule naming no destination, a misspelt instruction, unreadable
TLS files, a port in use), one line per problem with what to do; `--probe` talks to each destination;
`x2x serve` refuses to start on the same errors."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from dicom_node.config import ConfigError, load_settings
from tests.conftest import free_port
from tests.support.orthanc import Orthanc, orthanc  # noqa: F401  (fixture)

X2X = [sys.executable, "-m", "dicom_node.cli"]


def _check(tmp_path: Path, toml: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    cfg = tmp_path / "x2x.toml"
    cfg.write_text(toml)
    return subprocess.run([*X2X, "--config", str(cfg), "config", "check", *args], capture_output=True, text=True,
                          timeout=timeout)


def _problem_lines(out: subprocess.CompletedProcess[str]) -> list[str]:
    return [ln for ln in out.stderr.splitlines() if ln.strip()]


def _base(tmp_path: Path, tiny_model_dir: Path) -> str:
    return (f'[paths]\nvar_dir = "{tmp_path / "var"}"\n[model]\npath = "{tiny_model_dir}"\n'
            f"[node]\nhost = \"127.0.0.1\"\nport = {free_port()}\n[api]\nhost = \"127.0.0.1\"\nport = {free_port()}\n")


def test_misspelt_keys_get_a_did_you_mean_one_line_each(tmp_path: Path) -> None:
    out = _check(tmp_path, '[node]\nprot = 11112\n[destinations.pacs]\ntype = "cstore"\nae_title = "ORTHANC"\n'
                           'hots = "pacs.local"\nport = 104\n[destinations.web]\ntype = "stwo"\nurl = "http://x"\n')
    assert out.returncode == 2, out.stderr
    lines = _problem_lines(out)
    assert "Traceback" not in out.stderr
    assert any("'node.prot'" in ln and "did you mean 'port'" in ln for ln in lines), lines
    assert any("'destinations.pacs.hots'" in ln and "did you mean 'host'" in ln for ln in lines), lines
    assert any("destinations.web.type" in ln and "did you mean 'stow'" in ln for ln in lines), lines
    assert all(ln.startswith("x2x config check: ") for ln in lines), lines


def test_destination_keys_are_checked_when_the_config_loads() -> None:
    """A destination's own keys are no longer a send-time surprise: every command refuses the config."""
    with pytest.raises(ConfigError, match=r"'destinations\.pacs\.host'.*needs ae_title, host, port"):
        load_settings(None, destinations={"pacs": {"type": "cstore", "ae_title": "ORTHANC", "port": 104}})
    with pytest.raises(ConfigError, match=r"destinations\.web\.url.*http://"):
        load_settings(None, destinations={"web": {"type": "stow", "url": "pacs:8042/dicom-web"}})
    with pytest.raises(ConfigError, match=r"'destinations\.share\.path'"):
        load_settings(None, destinations={"share": {"type": "folder"}})
    with pytest.raises(ConfigError, match=r"'destinations\.share\.host' \(host is a key of type cstore"):
        load_settings(None, destinations={"share": {"type": "folder", "path": "/x", "host": "y"}})
    legacy = load_settings(None, destinations={"pacs": {"ae_title": "O", "host": "h", "port": 104}})
    assert legacy.destinations["pacs"].type == "cstore"  # `type` may still be omitted


def test_every_problem_before_traffic_one_line_each(tmp_path: Path, tiny_model_dir: Path) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    busy_port = busy.getsockname()[1]
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    toml = f"""
[paths]
var_dir = "{tmp_path / 'var'}"
[model]
path = "/nope/model"
[node]
host = "127.0.0.1"
port = {busy_port}
[node.tls]
enabled = true
cert_file = "{tmp_path / 'missing-cert.pem'}"
key_file = "{tmp_path / 'missing-key.pem'}"
[api]
host = "127.0.0.1"
port = {free_port()}
[[rules]]
called_ae = "X2X_EFFUSION"
instruction = "Add the finding of pleural efusion."
destination = "pcas"
[destinations.pacs]
type = "cstore"
ae_title = "ORTHANC"
host = "127.0.0.1"
port = 4242
[destinations.share]
type = "folder"
path = "{blocker / 'out'}"
[send]
default_destination = "nowhere"
"""
    try:
        out = _check(tmp_path, toml)
    finally:
        busy.close()
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr and "config OK" not in out.stdout
    lines = _problem_lines(out)
    by_key = {key: [ln for ln in lines if f": {key}:" in ln] for key in (
        "model.path", "node.port", "node.tls.cert_file", "node.tls.key_file", "rules.0.destination",
        "rules.0.instruction", "send.default_destination", "destinations.share.path")}
    missing = [key for key, found in by_key.items() if len(found) != 1]
    assert not missing, f"not reported exactly once: {missing}\n" + "\n".join(lines)
    assert "does not exist" in by_key["model.path"][0]
    assert "in use" in by_key["node.port"][0]
    assert "did you mean 'pacs'" in by_key["rules.0.destination"][0]
    assert by_key["rules.0.instruction"][0].count("did you mean") == 1
    assert "pleural effusion" in by_key["rules.0.instruction"][0]
    assert all("To fix: " in ln for ln in lines), lines


def test_a_good_config_is_ok_and_warnings_do_not_fail(tmp_path: Path, tiny_model_dir: Path) -> None:
    toml = _base(tmp_path, tiny_model_dir) + f'[destinations.unused]\ntype = "folder"\npath = "{tmp_path / "o"}"\n'
    out = _check(tmp_path, toml)
    assert out.returncode == 0, out.stderr
    assert "config OK" in out.stdout
    assert "warning: destinations.unused" in out.stderr  # defined but nothing sends there


@pytest.mark.integration
def test_probe_reaches_each_destination(tmp_path: Path, tiny_model_dir: Path, orthanc: Orthanc) -> None:  # noqa: F811
    dead = free_port()
    good = (f'[destinations.pacs]\ntype = "cstore"\nae_title = "{orthanc.ae_title}"\nhost = "127.0.0.1"\n'
            f"port = {orthanc.dicom_port}\n"
            f'[destinations.web]\ntype = "stow"\nurl = "{orthanc.dicomweb_url}"\n'
            f'[destinations.share]\ntype = "folder"\npath = "{tmp_path / "share"}"\n'
            '[send]\ndefault_destination = "pacs"\npeers = {MOD1 = "web", MOD2 = "share"}\n')
    out = _check(tmp_path, _base(tmp_path, tiny_model_dir) + good, "--probe")
    assert out.returncode == 0, out.stderr
    assert "reachable" in out.stdout
    bad = (f'[destinations.down]\ntype = "cstore"\nae_title = "NOBODY"\nhost = "127.0.0.1"\nport = {dead}\n'
           f'[destinations.webdown]\ntype = "stow"\nurl = "http://127.0.0.1:{dead}/dicom-web"\n'
           '[send]\ndefault_destination = "down"\npeers = {MOD1 = "webdown"}\n')
    out = _check(tmp_path, _base(tmp_path, tiny_model_dir) + bad, "--probe")
    assert out.returncode == 2
    lines = _problem_lines(out)
    assert any(": destinations.down:" in ln and "no DICOM answer" in ln for ln in lines), lines
    assert any(": destinations.webdown:" in ln and "no HTTP answer" in ln for ln in lines), lines
    # without --probe nothing is contacted: the same config passes
    assert _check(tmp_path, _base(tmp_path, tiny_model_dir) + bad).returncode == 0


def test_serve_refuses_to_start_on_a_config_error(tmp_path: Path, tiny_model_dir: Path) -> None:
    cfg = tmp_path / "x2x.toml"
    cfg.write_text(_base(tmp_path, tiny_model_dir).replace(str(tiny_model_dir), "/nope/model"))
    out = subprocess.run([*X2X, "--config", str(cfg), "serve"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "x2x serve: model.path: model path /nope/model does not exist" in out.stderr
    assert "not starting" in out.stderr and "Traceback" not in out.stderr
    assert "DICOM SCP listening" not in out.stdout + out.stderr
