"""The provisioning API (`/v1`): each endpoint names who may call it, then calls the service."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Response, status

from services.provisioning import repository, service
from services.provisioning import schemas as s
from shared.app import located
from shared.auth import Principal, SessionDep, require
from shared.errors import problem_responses
from shared.models import MailboxStatus, Role
from shared.models.provisioning import MailRule, ProvisioningRequest, RequestStatus
from shared.schemas import RowId

READERS = (Role.OPERATOR, Role.SUPPORT, Role.VIEWER, Role.MANAGER, Role.ONBOARDING)
Admin = Annotated[Principal, Depends(require())]
Operator = Annotated[Principal, Depends(require(Role.OPERATOR))]
Reader = Annotated[Principal, Depends(require(*READERS))]
Creator = Annotated[Principal, Depends(require(Role.OPERATOR, Role.ONBOARDING))]
Suspender = Annotated[Principal, Depends(require(Role.OPERATOR, Role.SUPPORT, Role.ONBOARDING))]
Supporter = Annotated[Principal, Depends(require(Role.OPERATOR, Role.SUPPORT))]
Requester = Annotated[Principal, Depends(require(Role.OPERATOR, Role.MANAGER))]
Auditor = Annotated[Principal, Depends(require(Role.OPERATOR, Role.SUPPORT, Role.VIEWER))]

router = APIRouter(prefix="/v1", responses=problem_responses(400, 401, 403, 404, 409, 422, 503))


# ---------------------------------------------------------------- domains


@router.post(
    "/domains",
    status_code=status.HTTP_201_CREATED,
    response_model=s.DomainOut,
    responses=located(201, "The domain"),
    tags=["domains"],
)
async def create_domain(
    body: s.DomainCreate, session: SessionDep, actor: Operator, response: Response
) -> s.DomainOut:
    domain = await service.create_domain(session, actor=actor, data=body)
    await session.refresh(domain)
    response.headers["Location"] = f"/v1/domains/{domain.id}"
    return s.DomainOut.model_validate(domain)


@router.get("/domains", response_model=list[s.DomainOut], tags=["domains"])
async def list_domains(session: SessionDep, _: Reader) -> list[s.DomainOut]:
    return [s.DomainOut.model_validate(d) for d in await repository.domains(session)]


@router.get("/domains/{domain_id}", response_model=s.DomainOut, tags=["domains"])
async def get_domain(domain_id: uuid.UUID, session: SessionDep, _: Reader) -> s.DomainOut:
    domain = await service.get_domain(session, domain_id=domain_id)
    return s.DomainOut.model_validate(domain)


@router.delete("/domains/{domain_id}", status_code=status.HTTP_204_NO_CONTENT, tags=["domains"])
async def delete_domain(domain_id: uuid.UUID, session: SessionDep, actor: Operator) -> Response:
    await service.delete_domain(session, actor=actor, domain_id=domain_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# ---------------------------------------------------------------- departments


@router.post(
    "/departments",
    status_code=status.HTTP_201_CREATED,
    response_model=s.DepartmentOut,
    responses=located(201, "The department"),
    tags=["departments"],
)
async def create_department(
    body: s.DepartmentCreate, session: SessionDep, actor: Operator, response: Response
) -> s.DepartmentOut:
    department = await service.create_department(session, actor=actor, data=body)
    response.headers["Location"] = f"/v1/departments/{department.id}"
    return await service.department_out(session, department)


@router.get("/departments", response_model=list[s.DepartmentOut], tags=["departments"])
async def list_departments(session: SessionDep, principal: Reader) -> list[s.DepartmentOut]:
    return await service.departments_out(
        session, await service.list_departments(session, principal=principal)
    )


@router.get("/departments/{department_id}", response_model=s.DepartmentOut, tags=["departments"])
async def get_department(
    department_id: uuid.UUID, session: SessionDep, principal: Reader
) -> s.DepartmentOut:
    department = await service.get_department(
        session, principal=principal, department_id=department_id
    )
    return await service.department_out(session, department)


@router.patch("/departments/{department_id}", response_model=s.DepartmentOut, tags=["departments"])
async def update_department(
    department_id: uuid.UUID, body: s.DepartmentUpdate, session: SessionDep, actor: Operator
) -> s.DepartmentOut:
    department = await service.update_department(
        session, actor=actor, department_id=department_id, data=body
    )
    return await service.department_out(session, department)


# ---------------------------------------------------------------- mailboxes


@router.post(
    "/mailboxes",
    status_code=status.HTTP_201_CREATED,
    response_model=s.MailboxOut,
    responses=located(201, "The mailbox"),
    tags=["mailboxes"],
    summary="Create a mailbox; its password is picked up once via credential.pickup_token",
)
async def create_mailbox(
    body: s.MailboxCreate,
    session: SessionDep,
    actor: Creator,
    response: Response,
    idempotency_key: Annotated[
        str | None, Header(max_length=200, description="Retry-safe creation")
    ] = None,
) -> s.MailboxOut:
    mailbox = await service.create_mailbox(
        session, actor=actor, data=body, idempotency_key=idempotency_key
    )
    response.headers["Location"] = f"/v1/mailboxes/{mailbox.id}"
    return mailbox


@router.get("/mailboxes", response_model=s.MailboxPage, tags=["mailboxes"])
async def list_mailboxes(
    session: SessionDep,
    principal: Reader,
    department_id: uuid.UUID | None = None,
    status_: Annotated[MailboxStatus | None, Query(alias="status")] = None,
    q: Annotated[str | None, Query(max_length=200, description="Address or name contains")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: str | None = None,
) -> s.MailboxPage:
    return await service.list_mailboxes(
        session,
        principal=principal,
        department_id=department_id,
        status=status_,
        text=q,
        limit=limit,
        cursor=cursor,
    )


@router.get("/mailboxes/{mailbox_id}", response_model=s.MailboxOut, tags=["mailboxes"])
async def get_mailbox(
    mailbox_id: uuid.UUID, session: SessionDep, principal: Reader
) -> s.MailboxOut:
    mailbox = await service.get_mailbox(session, principal=principal, mailbox_id=mailbox_id)
    return service.mailbox_out(mailbox)


@router.patch("/mailboxes/{mailbox_id}", response_model=s.MailboxOut, tags=["mailboxes"])
async def update_mailbox(
    mailbox_id: uuid.UUID, body: s.MailboxUpdate, session: SessionDep, actor: Operator
) -> s.MailboxOut:
    mailbox = await service.update_mailbox(session, actor=actor, mailbox_id=mailbox_id, data=body)
    return service.mailbox_out(mailbox)


@router.post(
    "/mailboxes/{mailbox_id}/suspend",
    response_model=s.MailboxOut,
    tags=["mailboxes"],
    summary="No more logins; incoming mail is still accepted",
)
async def suspend_mailbox(
    mailbox_id: uuid.UUID, session: SessionDep, actor: Suspender
) -> s.MailboxOut:
    return service.mailbox_out(
        await service.change_status(session, actor=actor, mailbox_id=mailbox_id, action="suspend")
    )


@router.post("/mailboxes/{mailbox_id}/reactivate", response_model=s.MailboxOut, tags=["mailboxes"])
async def reactivate_mailbox(
    mailbox_id: uuid.UUID, session: SessionDep, actor: Supporter
) -> s.MailboxOut:
    return service.mailbox_out(
        await service.change_status(
            session, actor=actor, mailbox_id=mailbox_id, action="reactivate"
        )
    )


@router.post(
    "/mailboxes/{mailbox_id}/reset-password",
    response_model=s.MailboxOut,
    tags=["mailboxes"],
    summary="A new password, picked up once via the new credential",
)
async def reset_password(
    mailbox_id: uuid.UUID, session: SessionDep, actor: Supporter
) -> s.MailboxOut:
    return await service.reset_password(session, actor=actor, mailbox_id=mailbox_id)


@router.delete(
    "/mailboxes/{mailbox_id}",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=s.MailboxOut,
    responses=located(202, "The mailbox: `deleting` until purged, its status_reason why"),
    tags=["mailboxes"],
    summary="Final backup now; mail purged and address freed after retention",
)
async def delete_mailbox(
    mailbox_id: uuid.UUID, session: SessionDep, actor: Operator, response: Response
) -> s.MailboxOut:
    mailbox = await service.delete_mailbox(session, actor=actor, mailbox_id=mailbox_id)
    response.headers["Location"] = f"/v1/mailboxes/{mailbox.id}"
    return service.mailbox_out(mailbox)


@router.put("/mailboxes/{mailbox_id}/forwarding", response_model=s.MailboxOut, tags=["mailboxes"])
async def set_forwarding(
    mailbox_id: uuid.UUID, body: s.Forwarding, session: SessionDep, actor: Operator
) -> s.MailboxOut:
    return service.mailbox_out(
        await service.set_forwarding(session, actor=actor, mailbox_id=mailbox_id, data=body)
    )


@router.put(
    "/mailboxes/{mailbox_id}/rules",
    response_model=s.RulesOut,
    tags=["rules"],
    summary="Validate a Sieve script (or the JSON rule form) and deploy it",
)
async def put_rules(
    mailbox_id: uuid.UUID, body: s.RulesIn, session: SessionDep, actor: Supporter
) -> s.RulesOut:
    rule = await service.put_rules(session, actor=actor, mailbox_id=mailbox_id, data=body)
    return rules_out(rule)


@router.get("/mailboxes/{mailbox_id}/rules", response_model=s.RulesOut, tags=["rules"])
async def get_rules(mailbox_id: uuid.UUID, session: SessionDep, principal: Reader) -> s.RulesOut:
    return rules_out(await service.get_rules(session, principal=principal, mailbox_id=mailbox_id))


def rules_out(rule: MailRule) -> s.RulesOut:
    return s.RulesOut(
        mailbox_id=rule.mailbox_id,
        script=rule.script,
        rules=(rule.form or {}).get("rules"),
        status=rule.status,
        status_reason=rule.status_reason,
        version=rule.version,
        updated_at=rule.updated_at,
        deployed_at=rule.deployed_at,
    )


# ---------------------------------------------------------------- credentials


@router.post(
    "/credentials/pickup",
    response_model=s.PickedUpCredential,
    tags=["credentials"],
    responses=problem_responses(410),
    summary="The generated password, once; the token itself is the authorisation",
    description="A POST with the token in its body, so that the token stays out of URLs "
    "(access logs, proxies) and a link scanner following a URL does not use it up.",
)
async def pick_up_credential(
    body: s.CredentialPickupIn, session: SessionDep, response: Response
) -> s.PickedUpCredential:
    response.headers["Cache-Control"] = "no-store"
    return await service.pick_up_credential(session, token=body.pickup_token)


# ---------------------------------------------------------------- aliases


@router.post(
    "/aliases", status_code=status.HTTP_201_CREATED, response_model=s.AliasOut, tags=["aliases"]
)
async def create_alias(body: s.AliasCreate, session: SessionDep, actor: Operator) -> s.AliasOut:
    alias = await service.create_alias(session, actor=actor, data=body)
    return s.AliasOut.model_validate(alias)


@router.get("/aliases", response_model=list[s.AliasOut], tags=["aliases"])
async def list_aliases(session: SessionDep, _: Reader) -> list[s.AliasOut]:
    return [s.AliasOut.model_validate(a) for a in await repository.aliases(session)]


@router.delete("/aliases/{alias_id}", status_code=status.HTTP_204_NO_CONTENT, tags=["aliases"])
async def delete_alias(alias_id: uuid.UUID, session: SessionDep, actor: Operator) -> Response:
    await service.delete_alias(session, actor=actor, alias_id=alias_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# ---------------------------------------------------------------- configuration requests


async def _request_out(
    session: SessionDep, request: ProvisioningRequest, viewer: Principal
) -> s.RequestOut:
    out = s.RequestOut.model_validate(request)
    credential = await service.request_credential(session, request, viewer)
    if out.result and credential:
        out.result = {**out.result, "credential": credential}
    return out


@router.post(
    "/requests",
    status_code=status.HTTP_201_CREATED,
    response_model=s.RequestOut,
    responses=located(201, "The request"),
    tags=["requests"],
    summary="File a configuration request form (pending approval)",
)
async def file_request(
    body: s.RequestCreate, session: SessionDep, actor: Requester, response: Response
) -> s.RequestOut:
    filed = await service.file_request(session, actor=actor, data=body)
    response.headers["Location"] = f"/v1/requests/{filed.id}"
    return await _request_out(session, filed, actor)


@router.get("/requests", response_model=list[s.RequestOut], tags=["requests"])
async def list_requests(
    session: SessionDep,
    principal: Reader,
    status_: Annotated[RequestStatus | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[s.RequestOut]:
    rows = await repository.requests(
        session, departments=service.visible_departments(principal), status=status_, limit=limit
    )
    return [await _request_out(session, r, principal) for r in rows]


@router.get("/requests/{request_id}", response_model=s.RequestOut, tags=["requests"])
async def get_request(
    request_id: uuid.UUID, session: SessionDep, principal: Reader
) -> s.RequestOut:
    found = await service.get_request(session, principal=principal, request_id=request_id)
    return await _request_out(session, found, principal)


@router.post("/requests/{request_id}/approve", response_model=s.RequestOut, tags=["requests"])
async def approve_request(
    request_id: uuid.UUID, session: SessionDep, actor: Operator, body: s.Decision | None = None
) -> s.RequestOut:
    return await _request_out(
        session,
        await service.decide_request(
            session,
            actor=actor,
            request_id=request_id,
            approve=True,
            reason=body.reason if body else "",
        ),
        actor,
    )


@router.post("/requests/{request_id}/reject", response_model=s.RequestOut, tags=["requests"])
async def reject_request(
    request_id: uuid.UUID, body: s.Decision, session: SessionDep, actor: Operator
) -> s.RequestOut:
    return await _request_out(
        session,
        await service.decide_request(
            session, actor=actor, request_id=request_id, approve=False, reason=body.reason
        ),
        actor,
    )


# ---------------------------------------------------------------- audit


@router.get("/audit-events", response_model=list[s.AuditEventOut], tags=["audit"])
async def list_audit_events(
    session: SessionDep,
    _: Auditor,
    target: Annotated[str | None, Query(description="Target id")] = None,
    actor: Annotated[str | None, Query(description="API key id or name")] = None,
    since: datetime | None = None,
    before_id: Annotated[RowId | None, Query(description="Page: events older than this id")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[s.AuditEventOut]:
    rows = await repository.audit_events(
        session, target=target, actor=actor, since=since, before_id=before_id, limit=limit
    )
    return [s.AuditEventOut.model_validate(e) for e in rows]


# ---------------------------------------------------------------- API keys (admin only)


@router.post(
    "/api-keys",
    status_code=status.HTTP_201_CREATED,
    response_model=s.ApiKeyCreated,
    tags=["api-keys"],
)
async def create_api_key(
    body: s.ApiKeyCreate, session: SessionDep, actor: Admin
) -> s.ApiKeyCreated:
    row, key = await service.create_api_key(session, actor=actor, data=body)
    return s.ApiKeyCreated(**s.ApiKeyOut.model_validate(row).model_dump(), key=key)


@router.get("/api-keys", response_model=list[s.ApiKeyOut], tags=["api-keys"])
async def list_api_keys(session: SessionDep, _: Admin) -> list[s.ApiKeyOut]:
    return [s.ApiKeyOut.model_validate(k) for k in await repository.api_keys(session)]


@router.delete("/api-keys/{key_id}", response_model=s.ApiKeyOut, tags=["api-keys"])
async def revoke_api_key(key_id: uuid.UUID, session: SessionDep, actor: Admin) -> s.ApiKeyOut:
    row = await service.revoke_api_key(session, actor=actor, key_id=key_id)
    return s.ApiKeyOut.model_validate(row)
