"""`x2x batch`: edit a folder tree (DICOM, PNG, JPG), a MIMIC-EDIT-INSTRUCTION table, a DICOMweb archive
(`--from-dicomweb URL`) or a PACS (`--from-pacs AE@HOST:PORT`). The work is in dicom_node/tools/batch.py
and dicom_node/tools/sources/; this module turns options into a source, stores and a run.

Exit codes: 0 finished (every item edited or skipped); 1 the source could not be used (unreachable,
refused, query matched nothing), stopped part way, or some items failed; 2 bad arguments; 130 Ctrl-C.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Optional

import typer

from dicom_node.cli.apps import app, settings
from dicom_node.cli.errors import fail

if TYPE_CHECKING:
    from dicom_node.tools.batch import BatchSummary, Store
    from dicom_node.tools.sources import Source

ARCHIVE = "Archive sources (DICOMweb, PACS)"
TABLE = "MIMIC-EDIT-INSTRUCTION table (SRC is a CSV file)"
STORE = "Where results go besides --out"
RUN = "Run"


def _fail(message: str, code: int = 2) -> NoReturn:
    fail("batch", message, "see `x2x batch --help` for the sources and their options", code=code)


@app.command()
def batch(
    src: Optional[Path] = typer.Argument(
        None, exists=True, help="Folder tree of DICOM / PNG / JPG files, or a MIMIC-EDIT-INSTRUCTION CSV "
        "(instructions.csv of `x2x dataset build`). Omit with --from-dicomweb / --from-pacs."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (manifest.csv + one folder per edit)."),
    instruction: Optional[str] = typer.Option(None, "--instruction", "-i", help="One instruction for every image."),
    instructions_csv: Optional[Path] = typer.Option(
        None, "--instructions-csv", exists=True, dir_okay=False,
        help="CSV: path (relative to SRC), sop_instance_uid or study_instance_uid; instruction[, seed].",
    ),
    model: Optional[Path] = typer.Option(None, "--model", help="Model folder (default: [model] path)."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="DDIM steps (default: [edit] steps)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed (default: [edit] seed)."),
    from_dicomweb: Optional[str] = typer.Option(
        None, "--from-dicomweb", metavar="URL", rich_help_panel=ARCHIVE,
        help="DICOMweb base URL (QIDO-RS search, WADO-RS retrieve), e.g. http://pacs/dicom-web."),
    from_pacs: Optional[str] = typer.Option(
        None, "--from-pacs", metavar="AE@HOST:PORT", rich_help_panel=ARCHIVE,
        help="PACS to C-FIND (Study Root) and C-GET / C-MOVE from."),
    query: Optional[list[str]] = typer.Option(
        None, "--query", "-q", metavar="KEY=VALUE", rich_help_panel=ARCHIVE,
        help="Match attribute (repeat): Modality=CR, StudyDate=20240101-20240131, AccessionNumber=..."),
    level: str = typer.Option("study", "--level", rich_help_panel=ARCHIVE,
                              help="Query level the filters match at: study | series | instance."),
    study_uids: Optional[Path] = typer.Option(
        None, "--study-uids", exists=True, dir_okay=False, rich_help_panel=ARCHIVE,
        help="File of Study Instance UIDs (one per line) to search within."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, rich_help_panel=RUN,
                                        help="Plan at most N inputs (a trial run)."),
    token: Optional[str] = typer.Option(
        None, "--token", envvar="X2X_DICOMWEB_TOKEN", rich_help_panel=ARCHIVE,
        help="DICOMweb bearer token (prefer the environment variable or --token-file; never printed)."),
    token_file: Optional[Path] = typer.Option(None, "--token-file", exists=True, dir_okay=False,
                                              rich_help_panel=ARCHIVE, help="File holding the bearer token."),
    user: Optional[str] = typer.Option(None, "--user", rich_help_panel=ARCHIVE, help="DICOMweb basic-auth user."),
    password: Optional[str] = typer.Option(
        None, "--password", envvar="X2X_DICOMWEB_PASSWORD", rich_help_panel=ARCHIVE,
        help="Basic-auth password (prefer the environment variable; never printed)."),
    retrieve: str = typer.Option("get", "--retrieve", rich_help_panel=ARCHIVE,
                                 help="PACS retrieval: get (C-GET) | move (C-MOVE to --move-ae)."),
    move_ae: str = typer.Option("X2XBATCH", "--move-ae", rich_help_panel=ARCHIVE,
                                help="AE title of the batch's own C-MOVE destination (configure it in the PACS)."),
    move_port: Optional[int] = typer.Option(None, "--move-port", min=1, max=65535, rich_help_panel=ARCHIVE,
                                            help="Port the C-MOVE destination listens on ([node] host)."),
    calling_ae: Optional[str] = typer.Option(None, "--calling-ae", rich_help_panel=ARCHIVE,
                                             help="Our AE title towards the PACS (default: [node] ae_title)."),
    http_compression: bool = typer.Option(False, "--http-compression", rich_help_panel=ARCHIVE,
                                          help="Let the DICOMweb server gzip responses (slow links; off: faster "
                                          "on a LAN, pixel data barely compresses)."),
    timeout: float = typer.Option(60.0, "--timeout", min=1.0, rich_help_panel=ARCHIVE,
                                  help="Seconds to wait for the archive per request."),
    split: str = typer.Option("test", "--split", rich_help_panel=TABLE, help="Rows of this split; 'all' = every row."),
    images: Optional[Path] = typer.Option(None, "--images", file_okay=False, rich_help_panel=TABLE,
                                          help="Image root (images/, past/); default: the table's folder."),
    jpg_root: Optional[Path] = typer.Option(None, "--jpg-root", file_okay=False, rich_help_panel=TABLE,
                                            help="MIMIC-CXR-JPG root (files/pXX/...); needs --metadata."),
    metadata: Optional[Path] = typer.Option(None, "--metadata", dir_okay=False, rich_help_panel=TABLE,
                                            help="mimic-cxr-2.0.0-metadata.csv(.gz) for --jpg-root."),
    store_back: bool = typer.Option(False, "--store-back", rich_help_panel=STORE,
                                    help="Store the DICOM objects into the source archive (STOW-RS / C-STORE)."),
    destination: Optional[list[str]] = typer.Option(None, "--destination", rich_help_panel=STORE,
                                                    help="Also deliver to this [destinations] name (repeat)."),
    send: Optional[str] = typer.Option(None, "--send", rich_help_panel=STORE,
                                       help="Also C-STORE the objects to AE@host:port."),
    fetch_workers: int = typer.Option(4, "--fetch-workers", min=1, max=32, rich_help_panel=RUN,
                                      help="Retrievals running at once (they overlap the editing)."),
    prefetch: int = typer.Option(8, "--prefetch", min=1, max=256, rich_help_panel=RUN,
                                 help="Retrieved inputs held ahead of the editor at most."),
    retry_failed: bool = typer.Option(False, "--retry-failed", rich_help_panel=RUN,
                                      help="Redo items whose manifest row says failed."),
) -> None:
    """Edit every eligible chest radiograph of a folder, table or archive; skip the rest with a reason.
    Output is SYNTHETIC.

    Writes the DICOM objects (DICOM inputs) or image files (PNG/JPG inputs), PNG previews and a manifest
    CSV. Rerun the same command to resume after an interruption: items already in the manifest are not
    fetched or edited again. Ctrl-C stops cleanly.
    """
    from dicom_node.edit_params import InvalidEditParams, default_seed, resolve_params
    from dicom_node.logs import setup_logging
    from dicom_node.tools.batch import BatchRunner, Manifest, read_instructions_csv
    from dicom_node.tools.sources import Instructions, SourceError

    kinds = [k for k, v in (("SRC", src), ("--from-dicomweb", from_dicomweb), ("--from-pacs", from_pacs)) if v]
    if len(kinds) != 1:
        _fail("give one source: SRC, --from-dicomweb URL or --from-pacs AE@HOST:PORT"
              + (f" (got {', '.join(kinds)})" if kinds else ""))
    is_table = src is not None and src.is_file()
    if is_table and src is not None and src.suffix.lower() != ".csv":
        _fail(f"SRC must be a folder or a MIMIC-EDIT-INSTRUCTION .csv table, got the file {src}")
    archive = src is None
    if is_table and (instruction or instructions_csv):
        _fail("a MIMIC-EDIT-INSTRUCTION table gives each row's instruction: drop --instruction/--instructions-csv")
    if not is_table and (instruction is None) == (instructions_csv is None):
        hint = (f" (SRC holds instructions.csv: pass {src / 'instructions.csv'} to edit by its rows)"
                if src is not None and (src / "instructions.csv").is_file() else "")
        _fail("give exactly one of --instruction or --instructions-csv" + hint)
    if not archive and (query or study_uids or store_back or move_port or token or token_file or user):
        _fail("--query, --study-uids, --store-back and the archive options need --from-dicomweb or --from-pacs")
    if is_table and (send or destination):
        _fail("a table's images give image files only: --send / --destination need DICOM inputs")
    s = settings()
    setup_logging(s.logging.level if s.logging.level.upper() != "INFO" else "WARNING", s.logging.json_format)
    if s.logging.level.upper() != "DEBUG":  # our messages say what failed; pynetdicom's repeat it at ERROR
        logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    if instruction is not None:
        from editor import InstructionError, parse_instruction

        try:
            parse_instruction(instruction)
        except InstructionError as exc:
            _fail(f"invalid instruction: {exc}")
    try:
        params = resolve_params(s, {"steps": steps})
    except InvalidEditParams as exc:
        _fail(str(exc))
    try:
        per_input = read_instructions_csv(instructions_csv) if instructions_csv else None
    except (ValueError, OSError) as exc:
        _fail(str(exc))
    instructions = Instructions(seed=default_seed(s, seed), default=instruction, per_input=per_input)
    stores = _stores(s, destination or [], send)

    source = _source(s, src=src, from_dicomweb=from_dicomweb, from_pacs=from_pacs, query=query or [], level=level,
                     study_uids=study_uids, limit=limit, token=token, token_file=token_file, user=user,
                     password=password, retrieve=retrieve, move_ae=move_ae, move_port=move_port,
                     calling_ae=calling_ae or s.node.ae_title, timeout=timeout, http_compression=http_compression,
                     split=split, images=images, jpg_root=jpg_root, metadata=metadata)
    try:
        if store_back:
            from dicom_node.tools.batch import Store

            stores.insert(0, Store(name="source", send=source.store_back))  # type: ignore[arg-type]
        try:
            items = source.plan(instructions)
        except SourceError as exc:
            _fail(str(exc), 1)
        except KeyboardInterrupt:
            _fail("interrupted while querying the source", 130)
        if limit is not None:
            items = items[:limit]
        out.mkdir(parents=True, exist_ok=True)
        try:
            manifest = Manifest(out)
        except ValueError as exc:
            _fail(str(exc))
        finished = manifest.finished_keys(retry_failed=retry_failed)
        todo = [it for it in items if it.key not in finished]
        runner = BatchRunner(out_dir=out, editor_factory=_editor_loader(s, model), params=params, settings=s,
                             stores=stores)
        summary = _run(runner, source, items, todo, manifest, fetch_workers=fetch_workers, prefetch=prefetch,
                       stores=stores)
    finally:
        source.close()
        mover = getattr(source, "move_to", None)
        if mover is not None:
            mover.stop()
    _finish(summary, manifest.path)


def _editor_loader(s: Any, model: Path | None) -> Any:
    def load():  # type: ignore[no-untyped-def]
        from dicom_node.context import resolve_model_path
        from dicom_node.threads import configure_torch
        from editor import Editor, disable_progress_bars

        disable_progress_bars()  # the batch's own progress bar is the one to read
        configure_torch(s.worker)
        path = model or resolve_model_path(s)
        return Editor.from_pretrained(path, device=s.model.device, dtype=s.model.dtype,
                                      single_file_config=s.model.single_file_config)

    return load


def _stores(s: Any, destinations: list[str], send: str | None) -> list[Store]:
    from dicom_node.config import CStoreDestination
    from dicom_node.send import SendError, get_sender
    from dicom_node.tools.batch import Store, parse_peer

    stores: list[Store] = []
    for name in destinations:
        dest = s.destinations.get(name)
        if dest is None:
            known = ", ".join(sorted(s.destinations)) or "none configured"
            _fail(f"--destination {name!r} is not in [destinations] ({known})")
        try:
            stores.append(Store(name=name, send=get_sender(dest, name=name, calling_ae=s.node.ae_title).send))
        except SendError as exc:
            _fail(str(exc))
    if send:
        try:
            ae, host, port = parse_peer(send)
        except ValueError as exc:
            _fail(f"--send: {exc}")
        peer = CStoreDestination(type="cstore", ae_title=ae, host=host, port=port)
        stores.append(Store(name=send, send=get_sender(peer, name=send, calling_ae=s.node.ae_title).send))
    return stores


def _source(s: Any, *, src: Path | None, from_dicomweb: str | None, from_pacs: str | None, query: list[str],
            level: str, study_uids: Path | None, limit: int | None, token: str | None, token_file: Path | None,
            user: str | None, password: str | None, retrieve: str, move_ae: str, move_port: int | None,
            calling_ae: str, timeout: float, http_compression: bool, split: str, images: Path | None,
            jpg_root: Path | None,
            metadata: Path | None) -> Source:
    from dicom_node.tools.sources import SourceError
    from dicom_node.tools.sources.query import parse_query

    try:
        if src is not None and src.is_file():
            from dicom_node.tools.sources.table import TableSource

            return TableSource(src, split=None if split == "all" else split, images=images, jpg_root=jpg_root,
                               metadata=metadata, limit=limit)
        if src is not None:
            from dicom_node.tools.sources.folder import FolderSource

            return FolderSource(src)
        parsed = parse_query(query, level=level, study_uids_file=study_uids)
        if from_dicomweb:
            from dicom_node.tools.sources.dicomweb import DicomwebSource, HttpAuth

            if token_file is not None:
                token = token_file.read_text(encoding="utf-8").strip() or None
            if token and user:
                raise ValueError("give a bearer token or --user/--password, not both")
            if user and password is None:
                raise ValueError("--user needs --password (or X2X_DICOMWEB_PASSWORD)")
            return DicomwebSource(from_dicomweb, parsed, auth=HttpAuth(token=token, username=user, password=password),
                                  timeout=timeout, limit=limit, compression=http_compression)
        from dicom_node.tools.sources.move_scp import MoveDestination
        from dicom_node.tools.sources.pacs import PacsSource

        if token or token_file or user:
            raise ValueError("--token / --user are for --from-dicomweb")
        if retrieve not in ("get", "move"):
            raise ValueError("--retrieve must be get or move")
        mover = None
        if retrieve == "move":
            if move_port is None:
                raise ValueError("--retrieve move needs --move-port (the port the PACS has configured for "
                                 f"{move_ae})")
            mover = MoveDestination(move_ae, move_port, host=s.node.host, timeout=timeout)
        assert from_pacs is not None
        source = PacsSource(from_pacs, parsed, calling_ae=calling_ae, retrieve=retrieve, move_to=mover,
                            timeout=timeout, limit=limit)
        if mover is not None:
            mover.start()
        return source
    except (ValueError, SourceError) as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(str(exc), 1)


def _run(runner: Any, source: Source, items: list[Any], todo: list[Any], manifest: Any, *, fetch_workers: int,
         prefetch: int, stores: list[Store]) -> BatchSummary:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    from dicom_node.tools.batch import BatchSummary, run_batch

    class RateColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"{speed:.2f} items/s" if speed else "- items/s")

    console = Console(stderr=True, soft_wrap=True)  # messages are not broken into lines (logs, greps)
    where = f"; results also to {', '.join(st.name for st in stores)}" if stores else ""
    console.print(f"{len(items)} item(s) from {source.describe()}; {len(items) - len(todo)} already in the manifest, "
                  f"{len(todo)} to go{where}. Outputs are SYNTHETIC.")
    summary = BatchSummary(already=len(items) - len(todo))
    try:
        with Progress(
            TextColumn("[bold]batch"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[counts]}"),
            RateColumn(), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console,
        ) as progress:
            task = progress.add_task("batch", total=len(todo), counts="")

            def on_row(row: dict[str, Any], s: BatchSummary) -> None:
                progress.update(task, advance=1, counts=s.counts)

            run_batch(runner, source, todo, manifest, workers=fetch_workers, window=prefetch, on_row=on_row,
                      summary=summary)
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        manifest.close()
    return summary


def _finish(summary: BatchSummary, manifest_path: Path) -> None:
    from rich.console import Console

    console = Console(stderr=True, soft_wrap=True)
    console.print(f"{summary.counts} in {summary.seconds:.1f} s; manifest {manifest_path}")
    if summary.retrieved:
        console.print(f"retrieved {summary.retrieved} editable input(s), "
                      f"{summary.retrieve_seconds / summary.retrieved:.2f} s each (overlapping the edits)")
    for title, counter in (("skipped", summary.reasons), ("failed", summary.failures)):
        if counter:
            top = "; ".join(f"{n} x {reason}" for reason, n in counter.most_common(8))
            more = f"; {len(counter) - 8} more reason(s) in the manifest" if len(counter) > 8 else ""
            console.print(f"{title}: {top}{more}", markup=False, highlight=False)
    if summary.interrupted:
        console.print("[yellow]interrupted: rerun the same command to resume[/yellow]")
        raise typer.Exit(130)
    if summary.stopped:
        console.print(f"stopped: {summary.stopped}. Rerun the same command to resume.", markup=False)
        raise typer.Exit(1)
    if summary.failed:
        console.print(f"{summary.failed} item(s) failed (reasons in the manifest): rerun with --retry-failed "
                      "to redo them", markup=False)
        raise typer.Exit(1)
