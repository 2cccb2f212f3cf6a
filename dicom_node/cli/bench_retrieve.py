"""`x2x bench retrieve`: instances/s `x2x batch` retrieves per route, against a plain loop, same run.

A temporary Orthanc (`/usr/sbin/Orthanc`, DICOMweb plugin, on 127.0.0.1) holds one study of N full-size
chest CRs (pydicom-data's RG1_UNCR, 1955 x 1841 x 16 bit, ~7 MB, new UIDs). For each route — DICOMweb
(WADO-RS), PACS C-GET, PACS C-MOVE — the batch's own source (tools/sources/) retrieves every instance
of the study through its prefetch pool exactly as `x2x batch` does (retrieve + eligibility check +
pixel decode per instance), with `--fetch-workers` threads and with one; the reference is the plain
loop a script would run: dicomweb-client `retrieve_instance`, or pynetdicom C-GET / C-MOVE (to a plain
pynetdicom storage SCP) instance by instance over one association. The query is not timed. Prints
JSON: best and median instances/s of `repeats` runs, and ratios ours/reference of the medians.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from dicom_node.cli.apps import bench_app
from dicom_node.cli.bench_support import free_port

ORTHANC = "/usr/sbin/Orthanc"
PLUGINS = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so", "/usr/lib/orthanc/libOrthancDicomWeb.so")
MOVE_AE, REF_AE = "X2XBENCH", "REFMOVE"


def _start_orthanc(work: Path, move_port: int, ref_port: int) -> tuple[subprocess.Popen[bytes], int, int]:
    import requests

    plugin = next((p for p in PLUGINS if Path(p).exists()), None)
    if not Path(ORTHANC).exists() or plugin is None:
        raise FileNotFoundError(f"{ORTHANC} with the DICOMweb plugin is required for this benchmark")
    http, dicom = free_port(), free_port()
    config = {
        "Name": "x2x-bench", "StorageDirectory": str(work / "db"), "IndexDirectory": str(work / "db"),
        "HttpPort": http, "DicomPort": dicom, "DicomAet": "ORTHANC", "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False, "Plugins": [plugin], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "DicomModalities": {"x2x": [MOVE_AE, "127.0.0.1", move_port], "ref": [REF_AE, "127.0.0.1", ref_port]},
    }
    (work / "orthanc.json").write_text(json.dumps(config))
    log = open(work / "orthanc.log", "wb")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen([ORTHANC, str(work / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT, cwd=work)
    log.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{http}/system", timeout=1).ok:
                return proc, http, dicom
        except requests.RequestException:
            time.sleep(0.1)
    proc.terminate()
    raise RuntimeError("Orthanc did not start")


def _load_study(http: int, count: int) -> tuple[str, list[tuple[str, str]], int]:
    """Study UID, [(series, SOP)] and bytes per instance."""
    import io

    import pydicom
    import requests
    from data_store import data as data_pkg  # type: ignore[import-not-found]
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(Path(data_pkg.__path__[0]) / "RG1_UNCR.dcm")
    study, series = str(generate_uid()), str(generate_uid())
    uids = []
    for _ in range(count):
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        requests.post(f"http://127.0.0.1:{http}/instances", data=buf.getvalue(), timeout=60).raise_for_status()
        uids.append((series, str(ds.SOPInstanceUID)))
    return study, uids, len(buf.getvalue())


def _ours(source: Any, workers: int) -> Callable[[], int]:
    from dicom_node.tools.sources import Instructions
    from dicom_node.tools.sources.prefetch import prefetched

    items = source.plan(Instructions(seed=0, default="Add the finding of pleural effusion."))

    def run() -> int:
        done = 0
        for _, future in prefetched(items, source.fetch, workers=workers, window=max(8, workers)):
            assert future is not None
            future.result()
            done += 1
        return done

    return run


def _reference_dicomweb(url: str, study: str, uids: list[tuple[str, str]], *, gzip: bool) -> Callable[[], int]:
    """dicomweb-client as a script uses it (requests asks for gzip by default), or with identity encoding."""
    from dicomweb_client.api import DICOMwebClient

    client = DICOMwebClient(url, headers=None if gzip else {"Accept-Encoding": "identity"})
    return lambda: sum(1 for series, sop in uids if client.retrieve_instance(study, series, sop) is not None)


def _reference_dimse(port: int, study: str, uids: list[tuple[str, str]], move_to: str | None,
                     moved: list[Any] | None = None) -> Callable[[], int]:
    """C-GET (move_to None) or C-MOVE to `move_to`, whose SCP appends what it receives to `moved`."""
    from pydicom.dataset import Dataset
    from pynetdicom import AE, build_role, evt
    from pynetdicom.sop_class import (  # type: ignore[attr-defined]
        ComputedRadiographyImageStorage,
        StudyRootQueryRetrieveInformationModelGet,
        StudyRootQueryRetrieveInformationModelMove,
    )

    def run() -> int:
        got: list[Any] = moved if moved is not None else []
        got.clear()
        ae = AE(MOVE_AE)
        model = StudyRootQueryRetrieveInformationModelMove if move_to else StudyRootQueryRetrieveInformationModelGet
        ae.add_requested_context(model)
        kwargs: dict[str, Any] = {}
        def on_store(event: Any) -> int:
            got.append(event.dataset)
            return 0x0000

        if not move_to:
            ae.add_requested_context(ComputedRadiographyImageStorage)
            kwargs = {"ext_neg": [build_role(ComputedRadiographyImageStorage, scp_role=True)],
                      "evt_handlers": [(evt.EVT_C_STORE, on_store)]}
        assoc = ae.associate("127.0.0.1", port, ae_title="ORTHANC", **kwargs)
        assert assoc.is_established
        try:
            for series, sop in uids:
                q = Dataset()
                q.QueryRetrieveLevel, q.StudyInstanceUID, q.SeriesInstanceUID, q.SOPInstanceUID = \
                    "IMAGE", study, series, sop
                responses = assoc.send_c_move(q, move_to, model) if move_to else assoc.send_c_get(q, model)
                for _ in responses:
                    pass
        finally:
            assoc.release()
        return len(got)

    return run


def _rates(run: Callable[[], int], count: int, repeats: int) -> dict[str, float]:
    run()  # warm-up (connections, caches), not timed
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        got = run()
        rates.append(count / (time.perf_counter() - t0))
        if got != count:
            raise RuntimeError(f"retrieved {got} of {count}")
    return {"best": round(max(rates), 1), "median": round(statistics.median(rates), 1)}


def run_bench(count: int, workers: int, repeats: int, work: Path) -> dict[str, Any]:
    from pynetdicom import AE, AllStoragePresentationContexts, evt

    from dicom_node.tools.sources.dicomweb import DicomwebSource
    from dicom_node.tools.sources.move_scp import MoveDestination
    from dicom_node.tools.sources.pacs import PacsSource
    from dicom_node.tools.sources.query import Query

    move_port, ref_port = free_port(), free_port()
    orthanc, http, dicom = _start_orthanc(work, move_port, ref_port)
    mover = MoveDestination(MOVE_AE, move_port, host="127.0.0.1").start()
    moved: list[Any] = []

    def on_store(event: Any) -> int:
        moved.append(event.dataset)
        return 0x0000

    ref_ae = AE(REF_AE)
    ref_ae.supported_contexts = AllStoragePresentationContexts
    ref_scp = ref_ae.start_server(("127.0.0.1", ref_port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        study, uids, size = _load_study(http, count)
        query = Query(study_uids=(study,))
        url = f"http://127.0.0.1:{http}/dicom-web"
        pacs = f"ORTHANC@127.0.0.1:{dicom}"
        routes: dict[str, tuple[Callable[[], Any], Callable[[], int]]] = {
            "dicomweb_wado_rs": (lambda: DicomwebSource(url, query), _reference_dicomweb(url, study, uids, gzip=True)),
            "pacs_c_get": (lambda: PacsSource(pacs, query, calling_ae=MOVE_AE),
                           _reference_dimse(dicom, study, uids, None)),
            "pacs_c_move": (lambda: PacsSource(pacs, query, calling_ae=MOVE_AE, retrieve="move", move_to=mover),
                            _reference_dimse(dicom, study, uids, REF_AE, moved)),
        }
        result: dict[str, Any] = {
            "instances": count, "instance_mb": round(size / 1e6, 1), "fetch_workers": workers,
            "repeats": repeats,
            "notes": "instances/s; ours = x2x batch's source + prefetch pool (retrieve + eligibility + pixel "
                     "decode); reference = plain sequential loop over one client / association (retrieve only; "
                     "dicomweb-client with requests' default gzip, and with identity encoding as ours). "
                     "Orthanc 1.10 on 127.0.0.1, same machine.",
        }
        for name, (make, reference) in routes.items():
            rates: dict[str, Any] = {}
            for label, n in ((f"ours_{workers}_workers", workers), ("ours_1_worker", 1)):
                source = make()
                try:
                    rates[label] = _rates(_ours(source, n), count, repeats)
                finally:
                    source.close()
            rates["reference"] = _rates(reference, count, repeats)
            if name.startswith("dicomweb"):
                rates["reference_identity_encoding"] = _rates(
                    _reference_dicomweb(url, study, uids, gzip=False), count, repeats)
            for ref_label in [k for k in rates if k.startswith("reference")]:
                for label in (f"ours_{workers}_workers", "ours_1_worker"):
                    rates[f"ratio_{label}_over_{ref_label}"] = round(
                        rates[label]["median"] / rates[ref_label]["median"], 3)
            result[name] = rates
        return result
    finally:
        mover.stop()
        if ref_scp is not None:
            ref_scp.shutdown()
        orthanc.terminate()
        orthanc.wait(30)


@bench_app.command("retrieve")
def bench_retrieve(
    count: int = typer.Option(10, min=1, help="Chest CRs in the study (~7 MB each)."),
    workers: int = typer.Option(4, min=1, help="Fetch workers of the batch's pool (x2x batch --fetch-workers)."),
    repeats: int = typer.Option(3, min=1, help="Timed runs per loop (best and median reported)."),
    workdir: Path = typer.Option(None, help="Scratch folder (default: a temp dir, removed after)."),
) -> None:
    """Instances/s retrieved per route (DICOMweb, C-GET, C-MOVE) vs a plain loop; prints JSON with ratios."""
    keep = workdir is not None
    work = workdir or Path(tempfile.mkdtemp(prefix="x2x-bench-retrieve-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        out = run_bench(count, workers, repeats, work)
    except FileNotFoundError as exc:
        typer.echo(f"x2x: {exc}", err=True)
        raise typer.Exit(code=2) from None
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    typer.echo(json.dumps(out, indent=2))
