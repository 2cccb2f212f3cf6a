"""What the API shows of a job, and what a client sends to ask for one (shared by the API modules)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from dicom_node.jobs.store import Job

PREVIEW_KINDS = ("source", "counterfactual", "overlay")


class JobRequest(BaseModel):
    """An edit of a study already in the spool (received over C-STORE or STOW-RS)."""

    study_instance_uid: str = Field(..., description="Study Instance UID of a study in the spool")
    instruction: str = Field(..., examples=["Add the finding of pleural effusion."])
    seed: int | None = None
    steps: int | None = Field(None, ge=1)
    destination: str | None = Field(None, description="destination name from the config; default: rules")


def job_view(job: Job) -> dict[str, Any]:
    out = job.to_dict()
    out.pop("source_path", None)  # a server path is of no use to a client
    out["previews"] = {kind: f"/jobs/{job.id}/previews/{kind}.png" for kind in PREVIEW_KINDS}
    return out
