"""A goosebit plugin: register an abupdate bundle as software, through goosebit's plugin API.

goosebit reads the version and compatibility of an upload from an SWUpdate or
RAUC header; an abupdate bundle has neither, so this route takes them as form
fields next to the file (the test reads them from the bundle with bundle-tool)
and stores the file with goosebit's own storage, as its upload route does:

    POST /plugins/goosebit_abupdate/software   (multipart: file, version, hw_model, hw_revision)
    -> {"id": <software id>}

Runs inside goosebit's own virtual environment, never the project's.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Annotated

from anyio import Path
from fastapi import APIRouter, File, Form, HTTPException, Security, UploadFile
from goosebit.auth import validate_user_permissions
from goosebit.auth.permissions import GOOSEBIT_PERMISSIONS
from goosebit.db.models import Hardware, Software, SoftwareImageFormat
from goosebit.schema.plugins import PluginSchema
from goosebit.storage import storage

router = APIRouter()


@router.post(
    "/software",
    dependencies=[
        Security(validate_user_permissions, scopes=[GOOSEBIT_PERMISSIONS["software"]["write"]()])
    ],
)
async def add_bundle(
    file: Annotated[UploadFile, File()],
    version: Annotated[str, Form()],
    hw_model: Annotated[str, Form()],
    hw_revision: Annotated[str, Form()] = "default",
) -> dict[str, int]:
    name = Path(file.filename or "").name
    if not name:
        raise HTTPException(400, "the upload has no file name")
    data = await file.read()
    digest = hashlib.sha1(data).hexdigest()  # the hash goosebit's chunks carry
    temp = (await storage.get_temp_dir()).joinpath(secrets.token_hex(8) + ".tmp")
    await temp.write_bytes(data)
    try:
        uri = await storage.store_file(temp, Path(digest).joinpath(name))
    finally:
        await temp.unlink(missing_ok=True)
    software = await Software.create(
        uri=uri,
        version=version,
        size=len(data),
        hash=digest,
        image_format=SoftwareImageFormat.SWU,  # goosebit knows no other kind; unused here
    )
    hardware = (await Hardware.get_or_create(model=hw_model, revision=hw_revision))[0]
    await software.compatibility.add(hardware)
    await software.save()
    return {"id": software.id}


config = PluginSchema(name="goosebit_abupdate", router=router)
