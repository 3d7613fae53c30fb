"""The backup API (`/v1`): each endpoint names who may call it, then calls the service."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response, status
from fastapi.responses import StreamingResponse

from services.backup import repository, service
from services.backup import schemas as s
from shared.app import is_head, located
from shared.auth import Principal, SessionDep, require
from shared.errors import NotFound, Unprocessable, openapi_header, problem_responses
from shared.models import Role
from shared.schemas import BIGINT_MAX, NO_NUL, UtcTime

Admin = Annotated[Principal, Depends(require())]
Operator = Annotated[Principal, Depends(require(Role.OPERATOR))]
Restorer = Annotated[Principal, Depends(require(Role.OPERATOR, Role.SUPPORT))]
Reader = Annotated[Principal, Depends(require(Role.OPERATOR, Role.SUPPORT, Role.VIEWER))]

router = APIRouter(prefix="/v1", responses=problem_responses(400, 401, 403, 404, 422))
JOB_RESPONSES = {**located(202, "The job's status, to follow"), **problem_responses(503)}
PAGED: dict[int | str, dict[str, Any]] = {
    200: {"headers": {"Link": openapi_header('RFC 8288: rel="next", the next page')}}
}


@router.post(
    "/backups",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=s.Accepted,
    responses=JOB_RESPONSES,
    tags=["backups"],
)
async def request_backup(
    body: s.BackupRequest, session: SessionDep, actor: Operator, response: Response
) -> s.Accepted:
    run = await service.request_backup(session, actor=actor, data=body)
    return _accepted(response, run)


def _accepted(response: Response, job: service.Job) -> s.Accepted:
    """A 202's body, its Location the job's status to follow."""
    response.headers["Location"] = service.job_location(job)
    return s.Accepted(id=job.id, status=job.status)


@router.get("/backups/{run_id}", response_model=s.BackupRunOut, tags=["backups"])
async def get_backup(run_id: uuid.UUID, session: SessionDep, _: Reader) -> s.BackupRunOut:
    run = await service.get_run(session, run_id=run_id)
    return service.run_out(run)


@router.get("/snapshots", response_model=list[s.SnapshotOut], responses=PAGED, tags=["snapshots"])
async def list_snapshots(
    request: Request,
    response: Response,
    session: SessionDep,
    _: Reader,
    mailbox_id: uuid.UUID | None = None,
    held: Annotated[bool | None, Query(description="Only held (true) or unheld (false)")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before: Annotated[
        uuid.UUID | None,
        Query(description="The next page: snapshots older than this one (see the Link header)"),
    ] = None,
    before_time: Annotated[
        UtcTime | None,
        Query(
            description="With `before`, when that snapshot was completed: the page follows "
            "even if prune has deleted the snapshot since (the Link header gives both)"
        ),
    ] = None,
) -> list[s.SnapshotOut]:
    if mailbox_id is not None and await repository.mailbox(session, mailbox_id) is None:
        raise NotFound(f"no mailbox {mailbox_id}", field="mailbox_id")
    after = None
    if before_time is not None and before is None:
        raise Unprocessable(
            "before_time goes with before (see the Link header)", field="before_time"
        )
    if before is not None:
        anchor = await repository.snapshot(session, before)
        if anchor is not None and anchor.completed_at is not None:
            after = (anchor.completed_at, anchor.id)
        elif before_time is not None:  # pruned since the page before was read
            after = (before_time, before)
        else:
            raise NotFound(f"no snapshot {before}", field="before")
    rows = await repository.snapshots(
        session, mailbox_id=mailbox_id, held=held, limit=limit + 1, before=after
    )
    if len(rows) > limit:
        rows = rows[:limit]
        last = rows[-1]
        assert last.completed_at is not None  # committed
        _link_next(
            request, response, before=str(last.id), before_time=last.completed_at.isoformat()
        )
    return [s.SnapshotOut.model_validate(r) for r in rows]


def _link_next(request: Request, response: Response, **page: str) -> None:
    """RFC 8288: the body stays a list, the next page is a link (the request's own query
    with `page` in it)."""
    response.headers["Link"] = f'<{request.url.include_query_params(**page)}>; rel="next"'


@router.get("/snapshots/{snapshot_id}", response_model=s.SnapshotDetail, tags=["snapshots"])
async def get_snapshot(snapshot_id: uuid.UUID, session: SessionDep, _: Reader) -> s.SnapshotDetail:
    snap = await service.get_snapshot(session, snapshot_id=snapshot_id)
    folders = await repository.snapshot_folders(session, snap)
    base = s.SnapshotOut.model_validate(snap)
    return s.SnapshotDetail(**base.model_dump(), folders=[s.FolderOut(**f) for f in folders])


@router.put(
    "/snapshots/{snapshot_id}/hold",
    response_model=s.SnapshotOut,
    tags=["snapshots"],
    summary="Keep a snapshot from prune, whatever retention says (a legal or audit hold)",
)
async def hold_snapshot(
    snapshot_id: uuid.UUID, body: s.HoldIn, session: SessionDep, actor: Operator
) -> s.SnapshotOut:
    snap = await service.hold_snapshot(session, actor=actor, snapshot_id=snapshot_id, data=body)
    return s.SnapshotOut.model_validate(snap)


@router.delete(
    "/snapshots/{snapshot_id}/hold",
    status_code=status.HTTP_204_NO_CONTENT,
    tags=["snapshots"],
    summary="Release a snapshot's hold: retention applies to it again (admin only)",
)
async def release_snapshot(snapshot_id: uuid.UUID, session: SessionDep, actor: Admin) -> None:
    await service.release_snapshot(session, actor=actor, snapshot_id=snapshot_id)


@router.get(
    "/snapshots/{snapshot_id}/messages",
    response_model=list[s.MessageOut],
    response_model_by_alias=True,
    responses=PAGED,
    tags=["snapshots"],
)
async def search_messages(
    request: Request,
    response: Response,
    snapshot_id: uuid.UUID,
    session: SessionDep,
    _: Restorer,
    folder: Annotated[str | None, Query(max_length=1000, pattern=NO_NUL)] = None,
    q: Annotated[str | None, Query(max_length=500, pattern=NO_NUL)] = None,
    sender: Annotated[str | None, Query(alias="from", max_length=500, pattern=NO_NUL)] = None,
    since: Annotated[UtcTime | None, Query(description="Received at or after (naive: UTC)")] = None,
    until: Annotated[UtcTime | None, Query(description="Received before (naive: UTC)")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=BIGINT_MAX)] = 0,
) -> list[s.MessageOut]:
    if since is not None and until is not None and until <= since:
        raise Unprocessable("until must be later than since", field="until")
    snap = await service.get_snapshot(session, snapshot_id=snapshot_id)
    if folder:  # as a restore or an export of it would say
        service.check_folders(await repository.snapshot_folder_names(session, snap), [folder])
    rows = await repository.snapshot_messages(
        session,
        snap,
        folders=[folder] if folder else None,
        q=q,
        sender=sender,
        since=since,
        until=until,
        limit=limit + 1,
        offset=offset,
    )
    if len(rows) > limit:
        rows = rows[:limit]
        _link_next(request, response, offset=str(offset + limit))
    return [
        s.MessageOut(
            id=m.id,
            folder=name,
            uid=m.uid,
            flags=m.flags,
            internal_date=m.internal_date,
            size=m.size,
            sent_at=m.sent_at,
            from_=m.from_addr,
            to=m.to_addr,
            subject=m.subject,
            message_id=m.message_id,
            sha256=bytes(m.blob_hash).hex(),
        )
        for m, name in rows
    ]


class MboxResponse(StreamingResponse):
    """An mbox file (RFC 4155), streamed; documented under its own media type."""

    media_type = "application/mbox"


@router.get(
    "/snapshots/{snapshot_id}/export",
    tags=["snapshots"],
    response_class=MboxResponse,
    responses={
        200: {
            "description": "The snapshot's messages as one mbox file, streamed",
            "content": {"application/mbox": {"schema": {"type": "string", "format": "binary"}}},
            "headers": {"Content-Disposition": openapi_header("attachment; its file name")},
        },
        **problem_responses(503),
    },
)
async def export_snapshot(
    request: Request,
    snapshot_id: uuid.UUID,
    actor: Operator,
    format: Annotated[s.ExportFormat, Query()] = "mbox",
    folder: Annotated[list[str] | None, Query(max_length=1000)] = None,
) -> MboxResponse:
    head = is_head(request)
    stream = service.export_mbox(snapshot_id, folder, actor=actor, audited=not head)
    await anext(stream)  # the snapshot pinned and found, or a 4xx or 503 before anything is sent
    body: AsyncIterator[bytes] | Iterator[bytes] = stream
    if head:  # the headers a GET would have, without reading the snapshot
        await stream.aclose()
        body = iter(())
    return MboxResponse(
        body,
        headers={"Content-Disposition": f'attachment; filename="snapshot-{snapshot_id}.mbox"'},
    )


@router.post(
    "/restores",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=s.Accepted,
    responses=JOB_RESPONSES,
    tags=["restores"],
)
async def request_restore(
    body: s.RestoreRequest, session: SessionDep, actor: Restorer, response: Response
) -> s.Accepted:
    job = await service.request_restore(session, actor=actor, data=body)
    return _accepted(response, job)


@router.get("/restores/{restore_id}", response_model=s.RestoreOut, tags=["restores"])
async def get_restore(restore_id: uuid.UUID, session: SessionDep, _: Reader) -> s.RestoreOut:
    job = await service.get_restore(session, restore_id=restore_id)
    return s.RestoreOut.model_validate(job)


@router.put(
    "/departments/{department_id}/backup-policy",
    response_model=s.PolicyOut,
    tags=["policies"],
    responses={201: {"model": s.PolicyOut, "description": "The department had no policy"}},
)
async def put_policy(
    department_id: uuid.UUID,
    body: s.PolicyIn,
    session: SessionDep,
    actor: Operator,
    response: Response,
) -> s.PolicyOut:
    if await service.set_policy(session, actor=actor, department_id=department_id, data=body):
        response.status_code = status.HTTP_201_CREATED
    return s.PolicyOut(department_id=department_id, is_default=False, **body.model_dump())


@router.get("/policies", response_model=list[s.PolicyOut], tags=["policies"])
async def list_policies(session: SessionDep, _: Reader) -> list[s.PolicyOut]:
    return await service.list_policies(session)


@router.post(
    "/verify",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=s.Accepted,
    responses=JOB_RESPONSES,
    tags=["verify"],
)
async def request_verify(
    session: SessionDep, actor: Operator, response: Response, body: s.VerifyRequest | None = None
) -> s.Accepted:
    run = await service.request_verify(session, actor=actor, data=body or s.VerifyRequest())
    return _accepted(response, run)


@router.get("/verify/{verify_id}", response_model=s.VerifyOut, tags=["verify"])
async def get_verify(verify_id: uuid.UUID, session: SessionDep, _: Reader) -> s.VerifyOut:
    run = await service.get_verify(session, verify_id=verify_id)
    return s.VerifyOut.model_validate(run)
