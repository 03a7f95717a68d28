"""Stealth (CC-6, a job's ``browser.stealth``): what a browser tab shows a site to look like
a reader's Chrome rather than an automated headless one. Opt-in per job; without it the tab
says who it is (``Settings.user_agent``, the crawler's HTTP identity, which robots.txt rules
match). See docs/browser.md for what it does and does not hide."""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

ACCEPT_LANGUAGE = "en-US,en;q=0.9"
LOCALE = "en-US"

# Desktop Chrome user agents, the major version filled in from the running browser's.
_PLATFORMS = ("Windows NT 10.0; Win64; x64", "Macintosh; Intel Mac OS X 10_15_7",
              "X11; Linux x86_64")
_CHROME_UA = ("Mozilla/5.0 ({platform}) AppleWebKit/537.36 (KHTML, like Gecko) "
              "Chrome/{major}.0.0.0 Safari/537.36")

# Run in every frame before the page's own scripts.
INIT_SCRIPT = r"""
(() => {
  const define = (obj, name, get) => {
    try { Object.defineProperty(obj, name, {get, configurable: true}); } catch (e) {}
  };
  define(Navigator.prototype, 'webdriver', () => undefined);
  define(Navigator.prototype, 'languages', () => ['en-US', 'en']);
  if (!window.chrome) {
    window.chrome = {runtime: {}, loadTimes: function () {}, csi: function () {}, app: {}};
  }
  if (!navigator.plugins || navigator.plugins.length === 0) {
    const names = ['PDF Viewer', 'Chrome PDF Viewer', 'Chromium PDF Viewer',
                   'Microsoft Edge PDF Viewer', 'WebKit built-in PDF'];
    const plugins = names.map((name) => ({name, filename: 'internal-pdf-viewer',
                                          description: 'Portable Document Format', length: 1}));
    plugins.item = (i) => plugins[i] || null;
    plugins.namedItem = (n) => plugins.find((p) => p.name === n) || null;
    plugins.refresh = () => {};
    define(Navigator.prototype, 'plugins', () => plugins);
  }
  const perms = window.navigator.permissions;
  if (perms && perms.query) {
    const query = perms.query.bind(perms);
    perms.query = (p) => (p && p.name === 'notifications')
      ? Promise.resolve({state: Notification.permission, onchange: null})
      : query(p);
  }
})();
"""


def user_agent_pool(configured: Sequence[str], browser_version: str) -> tuple[str, ...]:
    """The user agents a stealthy tab picks from: the configured pool (``userAgents``) without
    any saying "HeadlessChrome", else desktop Chrome ones at the browser's major version."""
    pool = tuple(ua for ua in configured if "headlesschrome" not in ua.lower())
    if pool:
        return pool
    m = re.match(r"\d+", browser_version)
    major = m.group(0) if m else "120"
    return tuple(_CHROME_UA.format(platform=p, major=major) for p in _PLATFORMS)


def pick_user_agent(configured: Sequence[str], browser_version: str) -> str:
    return random.choice(user_agent_pool(configured, browser_version))
