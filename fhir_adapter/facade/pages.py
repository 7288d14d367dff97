"""The consent pages: the CASUS team finds a young person, reads, records and changes their consent; the young
person reads a summary in plain English.

Server-rendered and usable without JavaScript.  The views are as thin as the
API's: they call the same ``ConsentService`` (so every read and write is
audited by the same code) and the same ``form.parse_form`` (so every rule the
API enforces shows here, at its field).  Saving names the version the page was
opened on, as the API's If-Match does; a stale page is told what changed.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from flask import Blueprint, abort, current_app, make_response, redirect, render_template, request
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response

from .. import decision, plain_english
from ..access import PasswordUser, Refusal, authenticate, check_password
from ..consent_service import NotADraft
from ..form import ConsentForm, parse_form
from ..mappings.codes import INFORMATION_TYPES, PERSON_ROLES
from ..nhs_number import is_valid as nhs_number_is_valid
from ..outcome import InvalidInput
from ..store.forms import AlreadyExists, FormVersion, NotFound, VersionConflict
from . import consent_form_fields as fields
from . import sessions
from .protocol import service

bp = Blueprint("pages", __name__, url_prefix="/consent", template_folder="templates", static_folder="static")
#: Stylesheets and the one script from this site only; forms post only here; no framing.
PAGE_CSP = "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
UK = ZoneInfo("Europe/London")
BASES = (
    ("aged-16-17", "The young person, aged 16 or 17", "The law treats 16 and 17 year olds as adults for confidentiality."),
    (
        "competent-under-16",
        "The young person, under 16 and assessed as competent",
        "They understand and can decide about their treatment and confidentiality. Record who assessed this and when.",
    ),
    (
        "parental-responsibility",
        "A person with parental responsibility",
        "For an under-16 not assessed as competent. Choose that person in their row below.",
    ),
)
IDENTIFIER_SYSTEMS = (("gmc", "GMC"), ("nmc", "NMC"), ("hcpc", "HCPC"), ("gphc", "GPhC"), ("sds-user-id", "NHS smartcard (SDS user id)"))


def now() -> datetime:
    """The consent service's clock, so what a page stamps and what the service checks it against never disagree."""
    return service().clock()


def _page(template: str, status: int = 200, **context: Any) -> Response:
    response = make_response(render_template(f"consent/{template}", **context), status)
    response.headers["Content-Security-Policy"] = PAGE_CSP
    return response


@bp.app_template_global()
def type_rows() -> list[Any]:
    return list(INFORMATION_TYPES)


@bp.app_template_global()
def role_rows() -> list[Any]:
    return list(PERSON_ROLES)


@bp.app_template_filter("long_date")
def long_date_filter(value: Any) -> str:
    return plain_english.long_date(value) if value else ""


@bp.app_template_filter("type_name")
def type_name(code: str) -> str:
    return INFORMATION_TYPES.row(code).display


@bp.app_template_filter("role_name")
def role_name(code: str) -> str:
    return PERSON_ROLES.row(code).display


@bp.errorhandler(HTTPException)
def http_problem(exc: HTTPException) -> Response:
    return _page("problem.html", exc.code or 500, title=exc.name, message=exc.description, session=None)


@bp.errorhandler(NotFound)
def not_found(_: NotFound) -> Response:
    return _page("problem.html", 404, title="Not found", message="There is no such consent.", session=None)


# --------------------------------------------------------------------------- sign-in


@bp.get("/sign-in")
def sign_in_page() -> Response:
    return _sign_in(None, 200)


def _sign_in(problem: str | None, status: int) -> Response:
    token = sessions.sign_in_token()
    response = _page(
        "sign_in.html",
        status,
        csrf=token,
        problem=problem,
        next=sessions.safe_next(request.values.get("next")),
        with_passwords=bool(_users()),
        session=None,
    )
    sessions.set_sign_in_cookie(response, token)
    return response


def _users() -> tuple[PasswordUser, ...]:
    return current_app.config["CASUS_USERS"]


def _who_signs_in(moment: datetime) -> tuple[str, str, frozenset[str]] | Refusal:
    """(audit name, name shown, scopes) of whoever the sign-in form names: by API token, else by password."""
    token = request.form.get("token", "").strip()
    if token:
        principal = authenticate(f"Bearer {token}", current_app.config["CASUS_GRANTS"], moment)
        return principal if isinstance(principal, Refusal) else (principal.name, principal.name, principal.scopes)
    user = check_password(request.form.get("username", "").strip(), request.form.get("password", ""), _users())
    return user if isinstance(user, Refusal) else (user.username, user.display_name, user.scopes)


@bp.post("/sign-in")
def sign_in() -> Response:
    if not sessions.sign_in_token_matches():
        return _sign_in("This sign-in form has expired. Please try again.", 400)
    username, address = request.form.get("username", "").strip(), request.remote_addr
    if sessions.throttle().refuses(username, address):
        service().record_session(actor="-", action="session.sign-in", outcome="throttled")
        window = int(sessions.throttle().failures.window.total_seconds())
        response = _sign_in(f"Too many unsuccessful sign-ins. Wait {window // 60} minutes, then try again.", 429)
        response.headers["Retry-After"] = str(window)
        return response
    who = _who_signs_in(now())
    if isinstance(who, Refusal):
        sessions.throttle().failed(username, address)
        service().record_session(actor="-", action="session.sign-in", outcome="refused")
        return _sign_in("The details you entered are not recognised. Check them and try again.", 401)
    actor, display, scopes = who
    sessions.throttle().succeeded(username)
    if not ({"consent.read", "admin"} & scopes):
        service().record_session(actor=actor, action="session.sign-in", outcome="refused")
        return _sign_in("This account may not read consents, so it cannot use these pages.", 403)
    sessions.book().end(request.cookies.get(sessions.COOKIE))  # signing in again never keeps the old session
    started = sessions.book().start(actor=actor, display_name=display, scopes=scopes)
    service().record_session(actor=actor, action="session.sign-in", outcome="ok")
    response = redirect(sessions.safe_next(request.form.get("next")), 303)
    sessions.set_session_cookie(response, started)
    return response


@bp.post("/sign-out")
@sessions.signed_in(None)
def sign_out(session: sessions.PageSession) -> Response:
    sessions.book().end(session.session_id)
    service().record_session(actor=session.actor, action="session.sign-out", outcome="ok")
    response = redirect("/consent/sign-in", 303)
    sessions.clear_session_cookie(response)
    return response


# --------------------------------------------------------------------------- find


@bp.get("/")
@sessions.signed_in("consent.read")
def find(session: sessions.PageSession) -> Response:
    typed = request.args.get("nhs-number")
    if typed is None:
        return _page("find.html", session=session, typed="", problem=None)
    digits = "".join(typed.split())
    problem = None
    if not digits:
        problem = "Enter the young person's NHS number"
    elif not digits.isdigit() or len(digits) != 10:
        problem = "An NHS number is 10 digits, like 943 476 5919"
    elif not nhs_number_is_valid(digits):
        problem = "This is not a valid NHS number: check the digits (the last one is a check digit)"
    if problem:
        return _page("find.html", 400, session=session, typed=typed, problem=problem)
    return redirect(f"/consent/patients/{digits}", 303)


def _checked(nhs_number: str) -> str:
    if not nhs_number_is_valid(nhs_number):
        abort(404, "That is not a valid NHS number.")
    return nhs_number


# --------------------------------------------------------------------------- the team's view


@dataclass
class FormView:
    """One form as the consent page lists it: its latest version, its history in words, a pending proposal."""

    latest: FormVersion
    history: list[tuple[FormVersion, list[str]]]  # newest first, each with what it changed
    proposal: decision.Proposal | None = None
    proposal_lines: list[str] = field(default_factory=list)


def _form_view(history: tuple[FormVersion, ...], proposals: dict[str, decision.Proposal], versions: list[FormVersion]) -> FormView:
    described = [(v, plain_english.change_lines(history[k - 1].form if k else None, v.form)) for k, v in enumerate(history)]
    view = FormView(history[-1], list(reversed(described)), proposals.get(history[-1].form_id))
    if view.proposal is not None and view.proposal.in_force is not None:
        replaced = next((v.form for v in versions if (v.form_id, v.version) == view.proposal.in_force), None)
        view.proposal_lines = plain_english.change_lines(replaced, view.latest.form) if replaced else []
    return view


@bp.get("/patients/<nhs_number>")
@sessions.signed_in("consent.read")
def patient(session: sessions.PageSession, nhs_number: str) -> Response:
    found = service().overview(_checked(nhs_number), actor=session.actor)
    versions = [v for history in found.histories for v in history]
    proposals = {p.form_id: p for p in found.proposals}
    forms = [_form_view(history, proposals, versions) for history in found.histories]
    return _page(
        "patient.html",
        session=session,
        nhs_number=found.nhs_number,
        forms=forms,
        in_force=found.in_force,
        in_period={s.person_id: s for s in found.summary},
        flags=found.review_flags,
        young_person=(forms[0].latest.form.young_person if forms else None),
        message=request.args.get("saved"),
    )


# --------------------------------------------------------------------------- record and change


@bp.get("/patients/<nhs_number>/new")
@sessions.signed_in("form.write")
def new_form(session: sessions.PageSession, nhs_number: str) -> Response:
    nhs = _checked(nhs_number)
    values = fields.PageValues(
        form_id=str(uuid.uuid4()), nhs_number=nhs, recorded_by=session.display_name, people=fields.with_blank_rows([], blank=2)
    )
    return _edit_page(session, values, new=True)


@bp.get("/forms/<form_id>/edit")
@sessions.signed_in("form.write")
def edit_form(session: sessions.PageSession, form_id: str) -> Response:
    latest = service().read(form_id, actor=session.actor)
    return _edit_page(session, fields.values_from_form(latest.form, latest.version, session.display_name), new=False)


def _edit_page(
    session: sessions.PageSession,
    values: fields.PageValues,
    *,
    new: bool,
    status: int = 200,
    problems: list[fields.FieldIssue] | None = None,
    conflict: dict[str, Any] | None = None,
) -> Response:
    return _page(
        "edit.html",
        status,
        session=session,
        v=values,
        new=new,
        problems=problems or [],
        errors=fields.issues_by_field(problems or []),
        conflict=conflict,
        bases=BASES,
        id_systems=IDENTIFIER_SYSTEMS,
    )


@bp.post("/forms/<form_id>")
@sessions.signed_in("form.write")
def save_form(session: sessions.PageSession, form_id: str) -> Response:
    nhs = _checked(request.form.get("nhs-number", ""))
    values = fields.values_from_post(request.form, form_id, nhs)
    new = values.version is None
    action = request.form.get("action", "")
    if action == "add-person":
        values.people = fields.with_blank_rows(values.people, blank=1 + sum(1 for r in values.people if r.is_blank))
        return _edit_page(session, values, new=new)
    status = {"draft": "draft", "active": "active"}.get(action)
    if status is None:
        abort(400, "choose Save as a proposal or Save and make active")
    try:
        form = parse_form(fields.document(values, status=status, recorded_at=now().replace(microsecond=0)))
        if values.version is None:
            service().create(form, actor=session.actor)
        else:
            service().update(form, form_id=form_id, expected_version=values.version, actor=session.actor)
    except InvalidInput as exc:
        values.people = fields.with_blank_rows([r for r in values.people if not r.remove])
        return _edit_page(session, values, new=new, status=422, problems=fields.field_issues(exc.issues, values))
    except (VersionConflict, AlreadyExists):  # AlreadyExists: a new consent's page sent twice, or both saved at once
        return _stale(session, values, new=False)
    return redirect(f"/consent/patients/{nhs}?saved={'proposal' if status == 'draft' else 'active'}", 303)


def _stale(session: sessions.PageSession, values: fields.PageValues, *, new: bool) -> Response:
    """Someone saved since this page was opened: say what they changed, keep what was typed, and let it be saved over."""
    current = service().read(values.form_id, actor=session.actor)
    opened = service().read(values.form_id, values.version, actor=session.actor) if values.version else None
    lines = plain_english.change_lines(opened.form if opened else None, current.form)
    values.version = current.version
    return _edit_page(
        session, values, new=new, status=409, conflict={"version": current.version, "lines": lines, "by": current.form.recorded.by.name}
    )


@bp.post("/forms/<form_id>/withdraw")
@sessions.signed_in("form.write")
def withdraw(session: sessions.PageSession, form_id: str) -> Response:
    version = fields.version_number(request.form.get("version", ""))
    if version is None:
        abort(400, "the page did not say which version it showed; reload it")
    try:
        saved = service().withdraw(form_id, expected_version=version, actor=session.actor)
    except VersionConflict:
        return _changed_meanwhile(session, form_id)
    return redirect(f"/consent/patients/{saved.form.young_person.nhs_number}?saved=withdrawn", 303)


@bp.post("/forms/<form_id>/activate")
@sessions.signed_in("form.write")
def activate(session: sessions.PageSession, form_id: str) -> Response:
    version = fields.version_number(request.form.get("version", ""))
    if version is None:
        abort(400, "the page did not say which version it showed; reload it")
    try:
        saved = service().activate(form_id, expected_version=version, by=session.display_name, actor=session.actor)
    except (VersionConflict, NotADraft):  # someone else activated, withdrew or changed it since the page was drawn
        return _changed_meanwhile(session, form_id)
    except InvalidInput as exc:
        current = service().read(form_id, actor=session.actor)
        return _page(
            "problem.html",
            422,
            session=session,
            title="This proposal cannot be made active yet",
            message="; ".join(i.diagnostics for i in exc.issues),
            back=f"/consent/patients/{current.form.young_person.nhs_number}",
        )
    return redirect(f"/consent/patients/{saved.form.young_person.nhs_number}?saved=active", 303)


def _changed_meanwhile(session: sessions.PageSession, form_id: str) -> Response:
    current = service().read(form_id, actor=session.actor)
    return _page(
        "problem.html",
        409,
        session=session,
        title="Someone else changed this consent",
        message=f"It is now version {current.version}, saved by {current.form.recorded.by.name}. "
        "Nothing was changed by you: read the consent again and repeat your action if it is still right.",
        back=f"/consent/patients/{current.form.young_person.nhs_number}",
    )


# --------------------------------------------------------------------------- the young person's summary


@bp.get("/patients/<nhs_number>/summary")
@sessions.signed_in("consent.read")
def young_person_summary(session: sessions.PageSession, nhs_number: str) -> Response:
    nhs = _checked(nhs_number)
    moment = now()
    in_force = service().summary(nhs, at=moment, actor=session.actor)
    form: ConsentForm | None = None
    sentences: list[plain_english.Sentence] = []
    if in_force.in_force is not None:
        form = in_force.in_force.form
        sentences = plain_english.young_person_sentences(form, in_force.recipients, moment.astimezone(UK).date())
    return _page(
        "summary.html",
        session=session,
        nhs_number=nhs,
        form=form,
        sentences=sentences,
        exceptions=plain_english.EXCEPTIONS,
        exceptions_after=plain_english.EXCEPTIONS_AFTER,
        today=moment.astimezone(UK).date(),
    )
