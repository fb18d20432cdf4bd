"""Relative paths inside a submitted Ray job (``ray job submit -- python jobs/...``; docs/cluster.md).

A submitted job runs in Ray's temporary copy of ``--working-dir``, uploaded without what ``.gitignore``
excludes and deleted after the job. So inside a job a relative output path is refused (it would vanish
with the copy), and a relative input is made absolute in the copy when it is there (uploaded on purpose,
unpacked at the same place on every node), else refused with the reason. Outside a job, relative paths
mean what they mean in a shell.
"""

from __future__ import annotations

import os

from labeler.errors import LabelerError

#: What Ray's job supervisor sets for the process of a submitted job.
JOB_CONFIG_VARIABLE = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def in_submitted_job() -> bool:
    """True in the process of a job submitted with ``ray job submit`` (its working folder is Ray's copy)."""
    return bool(os.environ.get(JOB_CONFIG_VARIABLE))


def _is_relative_local(path: str) -> bool:
    return "://" not in path and not os.path.isabs(path)


def resolve_for_job(inputs: dict[str, str | None], outputs: dict[str, str | None]) -> dict[str, str | None]:
    """Paths by option (``{"--bank": "demo-out/bank.safetensors", ...}``) as the job must use them.

    Returns the same mapping (inputs and outputs together) with relative
    inputs made absolute inside a submitted job; unchanged outside one.

    Raises:
        LabelerError: inside a job, a relative output, or a relative input
            that the job's working directory does not hold.
    """
    resolved = {**inputs, **outputs}
    if not in_submitted_job():
        return resolved
    for option, path in outputs.items():
        if path and _is_relative_local(path):
            raise LabelerError(
                f"{option} {path}: a relative path inside a Ray job would be written into the job's temporary "
                "copy of --working-dir, which Ray deletes after the job; pass an absolute path on storage every "
                "node shares, or a URI such as s3://bucket/labels/"
            )
    for option, path in inputs.items():
        if not path or not _is_relative_local(path):
            continue
        local = os.path.abspath(path)
        if not os.path.exists(local):
            raise LabelerError(
                f"{option} {path}: not in the job's working directory (ray job submit uploads --working-dir "
                "without the files .gitignore excludes, such as *.safetensors); pass an absolute path on storage "
                "every node can read, or a URI such as s3://bucket/bank.safetensors"
            )
        resolved[option] = local
    return resolved


def require_local_inputs(inputs: dict[str, str | None]) -> None:
    """Every local input path (by option) exists; URIs are checked where they are read.

    Raises:
        LabelerError: naming the first option whose path does not exist.
    """
    for option, path in inputs.items():
        if path and "://" not in path and not os.path.exists(path):
            raise LabelerError(f"{option} {path}: no such file or folder")
