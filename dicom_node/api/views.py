"""What the API shows of a job, and what a client sends to ask for one."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from dicom_node.db.tables import Job

PREVIEW_KINDS = ("source", "counterfactual", "overlay")


class JobRequest(BaseModel):
    """An edit of a study already in the spool (received over C-STORE or STOW-RS)."""

    study_instance_uid: str = Field(..., description="Study Instance UID of a study in the spool")
    instruction: str = Field(..., examples=["Add the finding of pleural effusion."])
    seed: int | None = None
    steps: int | None = Field(None, ge=1, description="DDIM steps (default: [edit] steps)")
    params: dict[str, Any] | None = Field(
        None, description="other edit parameters (editor.EditParams fields, e.g. {\"tau\": 0.2}); "
        "default: the node's [edit] section",
    )
    destination: str | None = Field(None, description="destination name from the config; default: rules")

    def param_overrides(self) -> dict[str, Any]:
        return dict(self.params or {}) | ({"steps": self.steps} if self.steps is not None else {})


def job_view(job: Job) -> dict[str, Any]:
    out = job.to_dict()
    out.pop("source_path", None)  # a server path is of no use to a client
    out["previews"] = {kind: f"/jobs/{job.id}/previews/{kind}.png" for kind in PREVIEW_KINDS}
    return out
