"""Everything about a configuration that can be checked before traffic arrives (`x2x config check`; `x2x
serve` runs the same checks first and does not start on an error).

The model folder and its metadata (no weights are loaded), every destination (typed per `type` when the
config is loaded; reachable with `probe=True`), rules and `[send]` naming destinations that exist, rule and
default instructions the grammar accepts, TLS files readable, the DICOM and API ports free, the folders
writable. Each problem is one line: the key, what is wrong, what to do. Warnings do not stop the node.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from dicom_node.config import Settings
from dicom_node.config_keys import closest
from dicom_node.edit_params import InvalidEditParams, resolve_params
from editor import InstructionError, ModelLoadError, demo_model_path, describe_model, parse_instruction

INSTRUCTION_FIX = ("write it as 'Add the finding of X.', 'Remove the finding of X.' or 'Change the level of X "
                   "from A to B.' naming findings the editor knows (the message suggests the closest)")


@dataclass(frozen=True)
class Problem:
    key: str  # the config key, as written in the TOML file
    message: str  # what is wrong
    fix: str  # what to do about it
    severity: Literal["error", "warning"] = "error"

    def line(self) -> str:
        tag = "warning: " if self.severity == "warning" else ""
        return f"{tag}{self.key}: {self.message}. To fix: {self.fix}"


def errors(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if p.severity == "error"]


def check_settings(settings: Settings, *, probe: bool = False, ports: bool = True) -> list[Problem]:
    """Every problem found, errors and warnings; `probe` also contacts each destination."""
    found: list[Problem] = []
    found += _model(settings)
    found += _references(settings)
    found += _instructions(settings)
    found += _tls(settings)
    found += _folders(settings)
    if ports:
        found += _ports(settings)
    if probe:
        found += _probes(settings)
    return found


# model ---------------------------------------------------------------------------------------------
def _model(s: Settings) -> list[Problem]:
    out: list[Problem] = []
    path = s.model.path
    if path is None:
        if demo_model_path() is None:
            out.append(Problem("model.path", "not set and this install has no phantom demo model: the node "
                               "will edit with the tiny RANDOM-weight fixture (meaningless output)",
                               "set [model] path to the InstructX2X weights (README)", "warning"))
    else:
        try:
            describe_model(path)
        except ModelLoadError as exc:
            out.append(Problem("model.path", str(exc), "point [model] path at a diffusers model folder (with "
                               "model_index.json) or a .ckpt/.safetensors file (docs/models.md)"))
        else:
            if path.is_file():
                cfg = s.model.single_file_config
                if cfg is None:
                    out.append(Problem("model.single_file_config", f"{path} is a single-file checkpoint and no "
                                       "config folder is given", "set it to a local diffusers config folder of "
                                       "the SD1.5 InstructPix2Pix layout, or convert once with x2x model convert"))
                elif not (cfg / "model_index.json").is_file():
                    out.append(Problem("model.single_file_config", f"{cfg} has no model_index.json",
                                       "give the diffusers config folder (docs/models.md)"))
    if s.model.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            out.append(Problem("model.device", "'cuda' but torch sees no CUDA device",
                               "set device = \"auto\" (or \"cpu\"), or check the GPU driver with nvidia-smi"))
    return out


# names that must refer to [destinations] -------------------------------------------------------------
def _unknown_destination(key: str, name: str, s: Settings) -> Problem:
    defined = list(s.destinations)
    guess = closest(name, defined)
    hint = f" (did you mean '{guess}'?)" if guess else ""
    fix = (f"define [destinations.{name}] or use one of: {', '.join(defined)}" if defined
           else f"define [destinations.{name}] (type cstore, stow or folder; README 'Where the results go')")
    return Problem(key, f"destination {name!r} is not defined in [destinations]{hint}", fix)


def _references(s: Settings) -> list[Problem]:
    out: list[Problem] = []
    used: set[str] = set()
    seen: dict[str, int] = {}
    for i, rule in enumerate(s.rules):
        title = rule.called_ae.strip()
        if title in seen:
            out.append(Problem(f"rules.{i}.called_ae", f"{title!r} is already the called_ae of rules.{seen[title]}",
                               "give every rule its own AE title (the first rule would always win)"))
        seen.setdefault(title, i)
        if rule.destination is not None:
            used.add(rule.destination)
            if rule.destination not in s.destinations:
                out.append(_unknown_destination(f"rules.{i}.destination", rule.destination, s))
        try:
            resolve_params(s, {"steps": rule.steps})
        except InvalidEditParams as exc:
            out.append(Problem(f"rules.{i}.steps", str(exc), "use a value inside the [edit] steps bounds"))
    default = s.send.default_destination
    if default is not None:
        used.add(default)
        if default not in s.destinations:
            out.append(_unknown_destination("send.default_destination", default, s))
    allowed = {a.strip() for a in s.node.allowed_calling_aes}
    for calling, name in s.send.peers.items():
        used.add(name)
        if name not in s.destinations:
            out.append(_unknown_destination(f"send.peers.{calling}", name, s))
        if allowed and calling.strip() not in allowed:
            out.append(Problem(f"send.peers.{calling}", f"{calling!r} is not in node.allowed_calling_aes, so it "
                               "can never send a study", "add it to allowed_calling_aes or remove the peer",
                               "warning"))
    for name in s.destinations:
        if name not in used:
            out.append(Problem(f"destinations.{name}", "no rule, peer or send.default_destination names it, so "
                               "no result is ever sent there", "set [send] default_destination = "
                               f"\"{name}\" or name it in a rule", "warning"))
    return out


def _instructions(s: Settings) -> list[Problem]:
    texts = [(f"rules.{i}.instruction", r.instruction) for i, r in enumerate(s.rules)]
    if s.requests.default_instruction is not None:
        texts.append(("requests.default_instruction", s.requests.default_instruction))
    out: list[Problem] = []
    for key, text in texts:
        try:
            parse_instruction(text)
        except InstructionError as exc:  # its message carries the "did you mean"
            out.append(Problem(key, f"{text!r} is not an instruction: {exc}", INSTRUCTION_FIX))
    return out


# files, folders, ports -------------------------------------------------------------------------------
def _readable(path: Path) -> str | None:
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except OSError as exc:
        return f"{path} cannot be read: {exc.strerror or exc}"
    return None


def _tls(s: Settings) -> list[Problem]:
    tls = s.node.tls
    out: list[Problem] = []
    if not tls.enabled:
        if tls.cert_file or tls.key_file or tls.require_client_cert:
            out.append(Problem("node.tls.enabled", "false, but TLS files or options are set: the SCP runs "
                               "WITHOUT TLS", "set [node.tls] enabled = true, or remove the TLS settings",
                               "warning"))
        return out
    for key, path in (("cert_file", tls.cert_file), ("key_file", tls.key_file), ("ca_file", tls.ca_file)):
        if path is None:
            if key != "ca_file":
                out.append(Problem(f"node.tls.{key}", "not set but TLS is enabled", f"set [node.tls] {key} to a "
                                   "PEM file"))
            elif tls.require_client_cert:
                out.append(Problem("node.tls.ca_file", "not set but require_client_cert = true",
                                   "set it to the CA bundle client certificates must chain to"))
            continue
        if (why := _readable(path)) is not None:
            out.append(Problem(f"node.tls.{key}", why, "fix the path or its permissions"))
    if not out:
        import ssl

        from dicom_node.inbound.scp import build_ssl_context

        try:
            build_ssl_context(tls)
        except (ssl.SSLError, ValueError, OSError) as exc:
            out.append(Problem("node.tls", f"the certificate, key or CA cannot be used: {exc}",
                               "check that cert_file and key_file are a matching PEM pair"))
    return out


def _writable(path: Path) -> str | None:
    """Why `path` (a folder, maybe not created yet) cannot be written; None when it can. Creates nothing."""
    target = path.resolve()
    probe = target
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is a file, so {target} cannot be a folder"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable by this user"
    return None


def _folders(s: Settings) -> list[Problem]:
    out: list[Problem] = []
    folders = [("paths.var_dir", s.var_dir), ("paths.spool_dir", s.spool_dir), ("paths.results_dir", s.results_dir)]
    folders += [(f"destinations.{n}.path", d.path) for n, d in s.destinations.items() if d.type == "folder"]
    for key, folder in folders:
        if (why := _writable(folder)) is not None:
            out.append(Problem(key, why, "choose a folder this user may write, or fix its permissions"))
    return out


def _port_problem(key: str, host: str, port: int) -> Problem | None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a TIME_WAIT socket is no obstacle
        try:
            sock.bind((host, port))
        except PermissionError:
            return Problem(key, f"port {port} needs root (ports below 1024)", "use a port >= 1024")
        except OSError as exc:
            if exc.errno == 98:  # EADDRINUSE
                return Problem(key, f"port {port} on {host} is already in use (another x2x serve, or another "
                               "program)", f"stop it (`ss -ltnp 'sport = :{port}'` shows which) or choose another")
            return Problem(key, f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                           "use an address of this machine (0.0.0.0 = all)")
    return None


def _ports(s: Settings) -> list[Problem]:
    found = [_port_problem("node.port", s.node.host, s.node.port)]
    if s.api.enabled:
        if s.api.port == s.node.port:
            found.append(Problem("api.port", f"{s.api.port} is also node.port", "give the API its own port"))
        else:
            found.append(_port_problem("api.port", s.api.host, s.api.port))
    return [p for p in found if p is not None]


def _probes(s: Settings) -> list[Problem]:
    from dicom_node.send.probe import probe

    out: list[Problem] = []
    for name, dest in s.destinations.items():
        why = probe(dest, calling_ae=s.node.ae_title)
        if why is not None:
            fix = {"cstore": "check host, port and ae_title, and that the PACS knows this node's AE title "
                             f"{s.node.ae_title!r}",
                   "stow": "check url, username and password, and that the DICOMweb service is up",
                   "folder": "fix the path or its permissions"}[dest.type]
            out.append(Problem(f"destinations.{name}", why, fix))
    return out
