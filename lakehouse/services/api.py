"""The REST read API over gold: FastAPI on deltalake, no JVM.

Every request but /health carries `Authorization: Bearer <token>`; the token's role (conf/access.yaml) decides
which tables it may read, and a hospital-scoped role (clinician) sees only the persons whose summary lists its
hospital (gold.patient_summary.hospitals): anyone else is "not found", so a token cannot probe who exists.
Every request, refused ones included, becomes a row of ops.audit_log. Errors are JSON
`{"error": kind, "message": text}`, never a stack trace.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import re
import secrets
import time
import urllib.request
from contextlib import asynccontextmanager
from typing import Annotated, Any

import pyarrow as pa
import pyarrow.compute as pc
from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from lakehouse import access
from lakehouse.access import AccessDenied, Principal
from lakehouse.catalog import COHORT_ATTRITION, PATIENT_SUMMARY, TIMELINE, cohort_table, predictions_table
from lakehouse.config import HOSPITAL_PATTERN, Settings
from lakehouse.services.audit import AuditLog
from lakehouse.services.daemon import Daemon
from lakehouse.services.store import DeltaStore, TableMissing, select

log = logging.getLogger(__name__)
SERVICE = "api"
INSTANCE_ENV, INSTANCE_HEADER = "LAKEHOUSE_SERVER_INSTANCE", "X-Lakehouse-Instance"

PERSON_KEY = r"^[0-9a-f]{64}$"  # HMAC-SHA256 hex (silver's keyed hash)
NAME = r"^[a-z][a-z0-9_]{0,63}$"
CODE_PREFIX = r"^[A-Za-z0-9]+//[^ \t\r\n]*$"  # explicit characters: JSON Schema's \s is not Python's
PersonKey = Annotated[str, Path(pattern=PERSON_KEY, description="a person's pseudonymous key (64 hex)")]


# --- responses ------------------------------------------------------------------------------------

class Error(BaseModel):
    error: str = Field(description="unauthorized, forbidden, not_found, invalid_request or internal")
    message: str
    detail: list[dict[str, Any]] | None = None


class Event(BaseModel):
    time: dt.datetime | None
    code: str
    numeric_value: float | None
    text_value: str | None
    unit: str | None
    hospital_id: str | None
    encounter_key: str | None

    @field_validator("numeric_value")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        return value if value is None or math.isfinite(value) else None  # JSON has no NaN


class Timeline(BaseModel):
    person_key: str
    events: list[Event]
    truncated: bool = Field(description="more events matched than one response returns (narrow the time range)")
    table_version: int


class LabValue(BaseModel):
    time: dt.datetime | None
    value: float | None
    unit: str | None


class Summary(BaseModel):
    person_key: str
    sex: str | None
    birth_year: int | None
    hospitals: list[str]
    first_encounter_time: dt.datetime | None
    last_encounter_time: dt.datetime | None
    encounters: int | None
    inpatient_stays: int | None
    outpatient_visits: int | None
    emergency_visits: int | None
    deceased: bool | None
    death_time: dt.datetime | None
    problems: list[str]
    latest_labs: dict[str, LabValue]


class Prediction(BaseModel):
    task: str
    encounter_key: str | None
    index_time: dt.datetime | None
    hospital_id: str | None
    probability: float | None
    model_name: str | None
    model_version: str | None
    scored_at: dt.datetime | None


class Predictions(BaseModel):
    person_key: str
    predictions: list[Prediction]


class Member(BaseModel):
    person_key: str
    index_time: dt.datetime | None
    encounter_key: str | None
    hospital_id: str | None
    age_at_index: int | None
    sex: str | None
    criteria_met: list[str]


class Members(BaseModel):
    cohort: str
    total: int = Field(description="members visible to the caller")
    members: list[Member]


class AttritionStep(BaseModel):
    step: int
    criterion: str
    kind: str | None
    persons: int | None
    index_events: int | None


class Attrition(BaseModel):
    cohort: str
    as_of: dt.date | None
    steps: list[AttritionStep]


class Health(BaseModel):
    status: str
    tables: dict[str, int | None] = Field(description="served table -> Delta version (null: not built yet)")


ERRORS = {code: {"model": Error} for code in (401, 403, 404, 422)}  # 422 replaces FastAPI's own body


class ApiError(HTTPException):
    def __init__(self, status: int, kind: str, message: str):
        super().__init__(status, message)
        self.kind = kind


BEARER = HTTPBearer(auto_error=False, description="a token from `lakehouse api-token`")


def caller(request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]
           ) -> Principal:
    """The token's holder, or 401."""
    if credentials is None or not credentials.credentials.strip():
        raise ApiError(401, "unauthorized", "send Authorization: Bearer <token>")
    principal = request.app.state.tokens.get(credentials.credentials.strip())
    if principal is None:
        raise ApiError(401, "unauthorized", "unknown token")
    request.state.principal = principal
    return principal


Caller = Annotated[Principal, Depends(caller)]
CohortName = Annotated[str, Path(pattern=NAME, description="a cohort of conf/cohorts")]


# --- the app --------------------------------------------------------------------------------------

def create_app(settings: Settings) -> FastAPI:
    api_settings = settings.main.services.api
    store = DeltaStore(settings.root, api_settings.refresh_seconds)
    audit = AuditLog(settings.root, api_settings.audit_flush_seconds)
    tokens = access.TokenBook(settings)  # a bad tokens file is refused before serving, naming its key

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        audit.start()
        yield
        audit.close()

    app = FastAPI(title="Lakehouse read API", version="1", lifespan=lifespan,
                  description="Read-only access to the region's gold tables: a person's timeline, summary and "
                              "latest predictions; cohort membership and attrition. Send `Authorization: Bearer "
                              "<token>` (`lakehouse api-token` issues one).")
    app.state.store, app.state.audit, app.state.tokens = store, audit, tokens

    @app.middleware("http")
    async def audited(request: Request, call_next):
        started = time.perf_counter()
        request.state.reads, request.state.rows, request.state.principal = {}, None, None
        status = 500  # unless the endpoint answers: an unexpected error is audited too
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            if request.url.path not in ("/health", "/openapi.json", "/docs", "/redoc"):
                who: Principal | None = request.state.principal
                audit.record(actor=who.name if who else None, role=who.role if who else None,
                             hospital_id=who.hospital_id if who else None, action="api.read",
                             target=f"{request.method} {request.url.path}"
                                    + (f"?{request.url.query}" if request.url.query else ""),
                             tables=sorted(request.state.reads), versions=request.state.reads,
                             rows=request.state.rows, purpose=request.headers.get("x-purpose"),
                             outcome="ok" if status < 400 else "refused" if status < 500 else "error", status=status,
                             duration_ms=(time.perf_counter() - started) * 1000)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, err: ApiError):
        return JSONResponse(Error(error=err.kind, message=str(err.detail)).model_dump(exclude_none=True),
                            status_code=err.status_code,
                            headers={"WWW-Authenticate": "Bearer"} if err.status_code == 401 else None)

    @app.exception_handler(StarletteHTTPException)  # the router's own 404 and 405 too
    async def http_error(_: Request, err: StarletteHTTPException):
        kind = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "bad_request")
        return JSONResponse(Error(error=kind, message=str(err.detail)).model_dump(exclude_none=True),
                            status_code=err.status_code)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, err: RequestValidationError):
        detail = [{"where": ".".join(str(p) for p in e["loc"]), "problem": e["msg"]} for e in err.errors()]
        return JSONResponse(Error(error="invalid_request", message="; ".join(
            f"{d['where']}: {d['problem']}" for d in detail), detail=detail).model_dump(), status_code=422)

    @app.exception_handler(Exception)
    async def internal(_: Request, err: Exception):
        log.exception("request failed")
        return JSONResponse(Error(error="internal", message="internal error; the server log has the details")
                            .model_dump(exclude_none=True), status_code=500)

    def allow(who: Principal, *refs) -> None:
        try:
            access.require(settings, who, [ref.qualified for ref in refs])
        except AccessDenied as err:
            raise ApiError(403, "forbidden", str(err)) from None

    def query(request: Request, who: Principal, tables: dict, sql: str) -> pa.Table:
        """`sql` over the named tables, each allowed to the caller; the versions read go to the audit row."""
        allow(who, *tables.values())
        try:
            rows, versions = store.query(tables, sql)
        except TableMissing as err:
            raise ApiError(404, "not_found", f"{err}: run `lakehouse build`") from None
        request.state.reads.update(versions)
        return rows

    def read(request: Request, who: Principal, ref, where: str | None = None,
             columns: list[str] | None = None) -> pa.Table:
        return query(request, who, {"t": ref}, select("t", where, columns))

    def visible_person(request: Request, who: Principal, person_key: str) -> dict[str, Any]:
        """The person's summary row; 404 unless they have one and, for a hospital-scoped role, it lists the
        role's hospital."""
        rows = read(request, who, PATIENT_SUMMARY, _equals("person_key", person_key, PERSON_KEY)).to_pylist()
        hospital = access.hospital_scope(settings, who)
        if not rows or (hospital and hospital not in (rows[0]["hospitals"] or [])):
            raise ApiError(404, "not_found", f"no person {person_key}")
        return rows[0]

    def counted(request: Request, n: int) -> None:
        request.state.rows = (request.state.rows or 0) + n

    instance = os.environ.get(INSTANCE_ENV, "")

    @app.get("/health", response_model=Health, tags=["service"])
    def health(response: Response) -> Health:
        response.headers[INSTANCE_HEADER] = instance  # lets `start` tell its own server from another one
        return Health(status="ok", tables={ref.qualified: store.version(ref)
                                           for ref in (TIMELINE, PATIENT_SUMMARY, COHORT_ATTRITION)})

    @app.get("/persons/{person_key}/timeline", response_model=Timeline, responses=ERRORS, tags=["persons"])
    def timeline(request: Request, who: Caller, person_key: PersonKey,
                 start: Annotated[dt.datetime | None, Query(description="events at or after (ISO 8601)")] = None,
                 end: Annotated[dt.datetime | None, Query(
                     description="events before (ISO 8601); an end at or before the start matches nothing")] = None,
                 code: Annotated[list[Annotated[str, Query(pattern=CODE_PREFIX, max_length=64)]] | None, Query(
                     description="code prefixes, any of (e.g. LOINC//4548-4, ICD10//E11)")] = None,
                 limit: Annotated[int | None, Query(ge=1, description="most events returned")] = None) -> Timeline:
        allow(who, TIMELINE)
        visible_person(request, who, person_key)
        rows = read(request, who, TIMELINE, _equals("person_key", person_key, PERSON_KEY))  # then narrowed here
        if start:
            rows = rows.filter(pc.greater_equal(rows.column("time"), _bound(start, rows)))
        if end:
            rows = rows.filter(pc.less(rows.column("time"), _bound(end, rows)))
        if code:
            rows = rows.filter(_any(pc.starts_with(rows.column("code"), prefix) for prefix in code))
        rows = rows.sort_by([("time", "ascending"), ("code", "ascending")])
        cap = min(limit or api_settings.max_events, api_settings.max_events)
        counted(request, min(rows.num_rows, cap))
        return Timeline(person_key=person_key, events=[Event(**e) for e in rows.slice(0, cap).select(
            list(Event.model_fields)).to_pylist()], truncated=rows.num_rows > cap,
            table_version=request.state.reads[TIMELINE.qualified])

    @app.get("/persons/{person_key}/summary", response_model=Summary, responses=ERRORS, tags=["persons"])
    def summary(request: Request, who: Caller, person_key: PersonKey) -> Summary:
        row = visible_person(request, who, person_key)
        counted(request, 1)
        row["latest_labs"] = dict(row["latest_labs"] or [])
        return Summary(**{**row, "hospitals": row["hospitals"] or [], "problems": row["problems"] or []})

    @app.get("/persons/{person_key}/predictions", response_model=Predictions, responses=ERRORS, tags=["persons"])
    def predictions(request: Request, who: Caller, person_key: PersonKey,
                    task: Annotated[str | None, Query(pattern=NAME, description="one task (default: all)")] = None
                    ) -> Predictions:
        if task is not None and task not in settings.tasks:
            raise ApiError(404, "not_found", f"no task {task}; known: {sorted(settings.tasks)}")
        allow(who, *(predictions_table(name) for name in ([task] if task else settings.tasks)))
        visible_person(request, who, person_key)
        found = []
        for name in [task] if task else sorted(settings.tasks):
            ref = predictions_table(name)
            if not store.exists(ref):
                continue
            rows = read(request, who, ref, _equals("person_key", person_key, PERSON_KEY)).to_pylist()
            latest: dict[tuple, dict] = {}  # the newest score of each index event
            for row in rows:
                event = (row["encounter_key"], row["index_time"])
                if event not in latest or row["scored_at"] > latest[event]["scored_at"]:
                    latest[event] = row
            found += [Prediction(task=name, **{k: v for k, v in row.items() if k in Prediction.model_fields})
                      for row in sorted(latest.values(), key=lambda r: (r["index_time"], r["encounter_key"] or ""))]
        counted(request, len(found))
        return Predictions(person_key=person_key, predictions=found)

    def cohort_name(name: str) -> str:
        if name not in settings.cohorts:
            raise ApiError(404, "not_found", f"no cohort {name}; known: {sorted(settings.cohorts)}")
        return name

    member_columns = list(Member.model_fields)

    @app.get("/cohorts/{name}/members", response_model=Members, responses=ERRORS, tags=["cohorts"])
    def members(request: Request, who: Caller, name: CohortName,
                limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                offset: Annotated[int, Query(ge=0)] = 0) -> Members:
        tables = {"c": cohort_table(cohort_name(name))}
        scope = ""
        hospital = access.hospital_scope(settings, who)
        if hospital:  # the members whose summary lists the caller's hospital, found by the engine
            tables["s"] = PATIENT_SUMMARY
            scope = (f"WHERE person_key IN (SELECT person_key FROM s WHERE array_has(hospitals, "
                     f"{_literal(hospital, HOSPITAL_PATTERN)}))")
        total = query(request, who, tables, f"SELECT count(*) AS n FROM c {scope}").column("n")[0].as_py()
        page = query(request, who, tables, f"SELECT {', '.join(member_columns)} FROM c {scope} "
                                           f"ORDER BY person_key, index_time LIMIT {limit} OFFSET {offset}").to_pylist()
        counted(request, len(page))
        return Members(cohort=name, total=total,
                       members=[Member(**{**r, "criteria_met": r["criteria_met"] or []}) for r in page])

    @app.get("/cohorts/{name}/members/{person_key}", response_model=Members, responses=ERRORS, tags=["cohorts"])
    def membership(request: Request, who: Caller, name: CohortName, person_key: PersonKey) -> Members:
        ref = cohort_table(cohort_name(name))
        allow(who, ref)
        visible_person(request, who, person_key)
        rows = read(request, who, ref, _equals("person_key", person_key, PERSON_KEY), member_columns).to_pylist()
        if not rows:
            raise ApiError(404, "not_found", f"person {person_key} is not in cohort {name}")
        counted(request, len(rows))
        return Members(cohort=name, total=len(rows),
                       members=[Member(**{**r, "criteria_met": r["criteria_met"] or []}) for r in rows])

    @app.get("/cohorts/{name}/attrition", response_model=Attrition, responses=ERRORS, tags=["cohorts"])
    def attrition(request: Request, who: Caller, name: CohortName) -> Attrition:
        rows = read(request, who, COHORT_ATTRITION, _equals("cohort", cohort_name(name), NAME)).sort_by("step")
        if rows.num_rows == 0:
            raise ApiError(404, "not_found", f"cohort {name} has not been built: run `lakehouse cohort --name "
                                             f"{name}` or `lakehouse build`")
        counted(request, rows.num_rows)
        steps = rows.to_pylist()
        return Attrition(cohort=name, as_of=steps[0]["as_of"],
                         steps=[AttritionStep(**{k: s[k] for k in AttritionStep.model_fields}) for s in steps])

    return app


def _literal(value: str, pattern: str) -> str:
    """A SQL string literal of a value that matched its validation pattern (so it cannot carry SQL)."""
    if not re.match(pattern, value):
        raise ValueError(f"{value!r} does not match {pattern}")
    return f"'{value}'"


def _equals(column: str, value: str, pattern: str) -> str:
    return f"{column} = {_literal(value, pattern)}"


def _bound(value: dt.datetime, rows: pa.Table) -> pa.Scalar:
    """A time filter as a scalar of the time column's type (a naive time is UTC). A time whose UTC equivalent
    falls outside the calendar (year 1 at +01:00) is the calendar's first or last instant."""
    try:
        utc = value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)
    except OverflowError:
        utc = (dt.datetime.min if value.year < 5000 else dt.datetime.max).replace(tzinfo=dt.UTC)
    return pa.scalar(utc, rows.schema.field("time").type)


def _any(masks) -> pa.ChunkedArray:
    result = None
    for mask in masks:
        result = mask if result is None else pc.or_(result, mask)
    return result



def daemon(settings: Settings) -> Daemon:
    return Daemon.of(settings, SERVICE)


def url(settings: Settings, port: int | None = None) -> str:
    api = settings.main.services.api
    return f"http://{api.host}:{port or api.port}"


def serve(settings: Settings, port: int | None = None) -> None:
    """Serve in this process until SIGTERM or Ctrl-C (`lakehouse serve-api --foreground`)."""
    import uvicorn

    api = settings.main.services.api
    uvicorn.run(create_app(settings), host=api.host, port=port or api.port, log_level="info", access_log=False)


def start(settings: Settings, argv: list[str], port: int | None = None) -> dict:
    """Start the API detached (`argv`: the serve-api command with --foreground); return its endpoints once
    /health answers."""
    base, instance = url(settings, port), secrets.token_hex(8)

    def healthy() -> bool:  # this start's server, not another one already on the port
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                return response.status == 200 and response.headers.get(INSTANCE_HEADER) == instance
        except OSError:
            return False

    return daemon(settings).start(argv, settings.main.services.api.start_timeout_seconds, healthy,
                                  {"url": base, "openapi": f"{base}/openapi.json", "docs": f"{base}/docs"},
                                  env={INSTANCE_ENV: instance})
