"""The login task (``tasks: {"login": "worker.logins:form_login"}``): log into a site through
its HTML form and keep the cookies it sets as a session of a pool (``shared.db.sessions``), for
the jobs whose ``sessions`` name that pool. Run it again (a schedule, ``POST /tasks``) to
refresh the session: its uses and bench start afresh. The credentials are read from the
worker's environment, by the variable names the task is given: they are never in a task's
arguments, its result or a log line."""

from __future__ import annotations

import os
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urljoin

import aiohttp
from yarl import URL

from shared.netguard import NetGuard, NetPolicy, refused
from shared.urls import host_key
from worker.sessions import SessionStore

MAX_FORM_BYTES = 1024 * 1024
# The worker's SSRF guard (``use_guard``, by ``worker.crawl.run`` before any task runs);
# without one, the strictest policy: no private, loopback ... address at all.
_guard: NetGuard | None = None


def use_guard(guard: NetGuard | None) -> None:
    """The guard the login's requests go through (the worker's settings)."""
    global _guard
    _guard = guard


class LoginFailed(Exception):
    """The site did not log us in (no form, an error status, no cookie)."""


class _Forms(HTMLParser):
    """The forms of a page: action, method and the inputs' names and values."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict[str, Any]] = []
        self._open: dict[str, Any] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self._open = {"action": a.get("action", ""), "method": a.get("method", "get"),
                          "inputs": {}}
            self.forms.append(self._open)
        elif tag == "input" and self._open is not None and a.get("name"):
            self._open["inputs"][a["name"]] = a.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._open = None


def _secret(env: str) -> str:
    value = os.environ.get(env)
    if not value:
        raise LoginFailed(f"environment variable {env} is not set")
    return value


async def form_login(sessions: SessionStore, pool: str, name: str, loginUrl: str,
                     usernameEnv: str, passwordEnv: str,
                     tokenField: str = "authenticity_token",
                     userField: str = "login", passField: str = "password",
                     cookie: str | None = None, timeout: float = 30.0) -> dict[str, str]:
    """GET ``loginUrl``, fill the form holding ``userField`` (its hidden fields, such as the
    CSRF ``tokenField``, kept as they are) with the user and password from the environment
    variables ``usernameEnv`` and ``passwordEnv``, POST it to its action (redirects followed),
    and put the cookies of the login URL's host as session ``name`` of ``pool``, for that host
    only. ``cookie``: a cookie the login must set (else it failed: LoginFailed). Returns
    ``{"pool", "name", "result"}``, result "new" or "updated"."""
    user, password = _secret(usernameEnv), _secret(passwordEnv)
    host = host_key(loginUrl)
    jar = aiohttp.CookieJar(unsafe=True)  # unsafe: a host given by its IP address keeps its
    guard = _guard if _guard is not None else NetGuard(NetPolicy())
    try:
        cookies = await _login(guard, jar, loginUrl, host, user, password, tokenField,
                               userField, passField, timeout)
    except aiohttp.ClientConnectorError as e:
        if (reason := refused(e)) is not None:  # never connected to
            raise LoginFailed(f"{loginUrl}: {reason}") from None
        raise
    if cookie is not None and cookie not in cookies:
        raise LoginFailed(f"the login set no {cookie!r} cookie (refused?)")
    if not cookies:
        raise LoginFailed("the login set no cookie")
    result = await sessions.put(pool, name, cookies=cookies, host=host)
    return {"pool": pool, "name": name, "result": result}


async def _login(guard: NetGuard, jar: aiohttp.CookieJar, loginUrl: str, host: str,
                 user: str, password: str, tokenField: str, userField: str,
                 passField: str, timeout: float) -> dict[str, str]:
    async with aiohttp.ClientSession(cookie_jar=jar, connector=guard.connector(),
                                     timeout=aiohttp.ClientTimeout(total=timeout)) as http:
        async with http.get(loginUrl) as resp:
            if resp.status >= 400:
                raise LoginFailed(f"GET {loginUrl}: HTTP {resp.status}")
            page = (await resp.content.read(MAX_FORM_BYTES)).decode(resp.charset or "utf-8",
                                                                     "replace")
            form_url = str(resp.url)
        parser = _Forms()
        parser.feed(page)
        form = next((f for f in parser.forms if userField in f["inputs"]), None)
        if form is None:
            raise LoginFailed(f"no form with a {userField!r} field at {loginUrl}")
        if tokenField and tokenField not in form["inputs"]:
            raise LoginFailed(f"the login form has no {tokenField!r} field")
        fields = {**form["inputs"], userField: user, passField: password}
        action = urljoin(form_url, form["action"] or form_url)
        if host_key(action) != host:
            raise LoginFailed(f"the login form posts to another host ({host_key(action)})")
        async with http.post(action, data=fields) as resp:
            await resp.read()
            if resp.status >= 400:
                raise LoginFailed(f"POST {action}: HTTP {resp.status}")
        return {k: m.value for k, m in jar.filter_cookies(URL(host + "/")).items()}
