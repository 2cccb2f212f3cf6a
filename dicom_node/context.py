"""What every stage of the node shares: settings, the database, the job store and a lazily loaded editor."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from dicom_node.config import Settings
from dicom_node.db.engine import Database
from dicom_node.jobs.store import JobStore

if TYPE_CHECKING:
    from editor import Editor

log = logging.getLogger("x2x.context")


def resolve_model_path(settings: Settings) -> Path:
    """The configured model, else the phantom demo model, else the tiny fixture (with a loud warning)."""
    if settings.model.path is not None:
        return settings.model.path
    try:
        from editor import demo_model_path  # the phantom demo model, when it ships

        demo = demo_model_path()
    except ImportError:
        demo = None
    if demo is not None:
        _announce_once(
            demo,
            "no [model] path configured: using the PHANTOM DEMO model at %s. It knows only "
            "synthetic phantoms (try `x2x dataset phantom-studies`); set [model] path to real InstructX2X "
            "weights for radiographs (README).",
        )
        return demo
    tiny = settings.var_dir / "models" / "tiny-random-fixture"
    if not (tiny / "model_index.json").exists():
        from editor import init_tiny_model

        init_tiny_model(tiny, seed=0)
    _announce_once(
        tiny,
        "!!! NO MODEL CONFIGURED: using the tiny RANDOM-WEIGHT test fixture at %s. Its edits are "
        "meaningless noise. Set [model] path to real InstructX2X weights (see README). !!!",
    )
    return tiny


_announced: set[Path] = set()


def _announce_once(path: Path, message: str) -> None:
    """Warn about a fallback model once per process (the path is resolved for every job)."""
    if path not in _announced:
        _announced.add(path)
        log.warning(message, path)


@dataclass
class NodeContext:
    settings: Settings
    db: Database
    store: JobStore
    _editor: Editor | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def model_path(self) -> Path:
        return resolve_model_path(self.settings)

    def editor(self) -> Editor:
        """Load the editor once (thread-safe); later calls return the same instance."""
        with self._lock:
            if self._editor is None:
                from dicom_node.threads import configure_torch
                from editor import Editor

                configure_torch(self.settings.worker)  # before the model loads: thread pools sized once
                self._editor = Editor.from_pretrained(
                    self.model_path,
                    device=self.settings.model.device,
                    dtype=self.settings.model.dtype,
                    single_file_config=self.settings.model.single_file_config,
                )
            return self._editor


def build_context(settings: Settings) -> NodeContext:
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.database_url, busy_timeout_s=settings.database.busy_timeout_seconds,
                  lock_retry_s=settings.database.lock_retry_seconds)
    return NodeContext(settings=settings, db=db, store=JobStore(db))
