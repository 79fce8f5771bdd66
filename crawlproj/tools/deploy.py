"""Deploy crawlproj to scrapyd hosts and run its nodes there as scrapyd jobs.

    crawlproj deploy --url http://a:6800/ --url http://b:6800/     # build the egg, upload it
    crawlproj schedule --crawl news --nodes 8 --scrapyd http://a:6800/ http://b:6800/ \\
        --dispatcher tcp://dispatcher-host:5570 -s MONGO_URI=mongodb://db:27017/
    crawlproj status --crawl news       # which scrapyd job is which node, with the dispatcher's view
    crawlproj stop --crawl news --wait 60

``deploy`` packs the project with scrapyd-client (``scrapyd-deploy --build-egg``, then
``scrapyd-deploy TARGET --egg``) from a staging copy of the checkout, so the checkout never gets
a ``setup.py``, ``build/`` or ``*.egg-info``; metadata and packages come from ``pyproject.toml``.

``schedule`` starts node ``i`` as job ``<crawl>-node<i>`` on scrapyd host ``(i - 1) mod hosts``
with ``DISPATCHER_NODE_NAME`` set to that job id: node names are stable, so a job scheduled
again under its name finds its politeness state in ``CRAWLPROJ_STATE_DIR/<name>/`` and the
dispatcher gives it its place back. A node already pending or running anywhere is left alone,
so the same command (re)starts exactly the nodes that are missing. What was scheduled is kept in
a small JSON record (``crawlproj-<crawl>.jobs.json``) that ``status`` and ``stop`` read.

What the egg holds: the ``crawlproj`` package and nothing else. The test harness
(``crawlproj_testing``: synthetic web, simulated nodes, fuzzer, test resolver and its add-on) is
never staged, so no scrapyd node can load it (tests/test_layout.py imports every module of the egg
and checks). ``crawlproj.tools`` (this operator CLI, the local cluster, the process runners) does
go in: it is small pure Python that imports only the node's dependencies (scrapyd-client, the
harness, matplotlib and py-spy are imported lazily by the commands that use them), and leaving it
out would ship modules that cannot be imported (``crawlproj.observability.top`` uses
``crawlproj.tools.dispatcher_process``) and a ``crawlproj`` entry point that points nowhere.
"""
from __future__ import annotations
import argparse
import configparser
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from crawlproj.tools.scrapyd import DEFAULT_PROJECT, DEFAULT_SPIDER, DeployError, credentials, public_url
from crawlproj.tools.jobs import schedule_command, status_command, stop_command

DEFAULT_CRAWL = "crawl"
# What the egg is built from: the Scrapy project file, the package metadata and the package.
STAGED_FILES = ("scrapy.cfg", "pyproject.toml", "README.md")
STAGED_PACKAGE = "crawlproj"  # only this package: never crawlproj_testing (see above)
# setuptools reads everything from pyproject.toml; scrapyd-deploy only needs a setup.py to run.
SETUP_PY_SHIM = "from setuptools import setup\n\nsetup()\n"


# -- deploy ---------------------------------------------------------------------------------------


def project_root(start: Path | None = None) -> Path:
    from scrapy.utils.conf import closest_scrapy_cfg

    found = closest_scrapy_cfg(str(start or Path.cwd()))
    if not found:
        raise DeployError("no scrapy.cfg here or above: run `crawlproj deploy` from the crawlproj checkout "
                          "(or pass --project-dir)")
    return Path(found).parent


@dataclass(frozen=True)
class Target:
    """A scrapyd host to upload the egg to."""

    name: str
    url: str
    project: str
    auth: tuple[str, str] | None = None


def deploy_targets(root: Path, urls: Sequence[str], names: Sequence[str], all_targets: bool,
                   project: str | None) -> list[Target]:
    """The ``--url``s, else scrapy.cfg's [deploy] / [deploy:NAME] targets ($VARS expanded, as
    scrapyd-client does; username/password of a target, else SCRAPYD_USERNAME/SCRAPYD_PASSWORD)."""
    if urls:
        return [Target(f"host{i}", public_url(url), project or DEFAULT_PROJECT, credentials(url))
                for i, url in enumerate(urls, 1)]
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(root / "scrapy.cfg")
    base = dict(cfg.items("deploy")) if cfg.has_section("deploy") else {}
    targets: dict[str, dict[str, str]] = {"default": base} if "url" in base else {}
    for section in cfg.sections():
        if section.startswith("deploy:"):
            targets[section[len("deploy:"):]] = {**base, **dict(cfg.items(section))}
    wanted = list(targets) if all_targets else list(names or ["default"])
    missing = [name for name in wanted if name not in targets]
    if missing or not wanted:
        raise DeployError(f"no deploy target {', '.join(missing) or '(none)'} in {root / 'scrapy.cfg'} "
                          f"(targets: {', '.join(targets) or 'none'}); or pass --url")
    found = []
    for name in wanted:
        target = {key: os.path.expandvars(value) for key, value in targets[name].items()}
        user = target.get("username", "")
        auth = (user, target.get("password", "")) if user else credentials(target["url"])
        found.append(Target(name, public_url(target["url"]), project or target.get("project") or DEFAULT_PROJECT,
                            auth))
    return found


def stage_project(root: Path, staging: Path) -> None:
    """Copy what the egg is built from; scrapyd-deploy may then write its files there, not here."""
    for name in STAGED_FILES:
        if (root / name).exists():
            shutil.copy2(root / name, staging / name)
    shutil.copytree(root / STAGED_PACKAGE, staging / STAGED_PACKAGE,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (staging / "setup.py").write_text(SETUP_PY_SHIM, encoding="utf-8")


def _scrapyd_deploy(args: Sequence[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run scrapyd-client's ``scrapyd-deploy`` with this interpreter; its stdout, or DeployError."""
    if importlib.util.find_spec("scrapyd_client") is None:
        raise DeployError("`crawlproj deploy` needs scrapyd-client: pip install 'crawlproj[deploy]'")
    proc = subprocess.run([sys.executable, "-m", "scrapyd_client.deploy", *args], cwd=cwd,
                          env={**os.environ, **(env or {})}, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise DeployError(f"scrapyd-deploy {' '.join(args)} failed (exit {proc.returncode}):\n"
                          f"{proc.stderr.strip()}\n{proc.stdout.strip()}".strip())
    return proc.stdout


def build_egg(root: Path, out: Path) -> Path:
    """Build the project's egg with ``scrapyd-deploy --build-egg`` from a staging copy."""
    with tempfile.TemporaryDirectory(prefix="crawlproj-egg-") as tmp:
        staging = Path(tmp)
        stage_project(root, staging)
        _scrapyd_deploy(["--build-egg", str(out.resolve())], cwd=staging)
    return out


def upload_egg(egg: Path, targets: Sequence[Target], version: str) -> list[dict[str, Any]]:
    """``scrapyd-deploy TARGET --egg EGG`` for each target; scrapyd's answers (project, version, spiders)."""
    answers = []
    with tempfile.TemporaryDirectory(prefix="crawlproj-upload-") as tmp:
        staging = Path(tmp)
        cfg = configparser.ConfigParser(interpolation=None)
        env: dict[str, str] = {}
        for i, target in enumerate(targets):
            section = {"url": target.url, "project": target.project}
            if target.auth is not None:
                # scrapyd-client expands $VARS in scrapy.cfg: the password never lands on disk
                env[f"CRAWLPROJ_DEPLOY_USER_{i}"], env[f"CRAWLPROJ_DEPLOY_PASSWORD_{i}"] = target.auth
                section["username"] = f"${{CRAWLPROJ_DEPLOY_USER_{i}}}"
                section["password"] = f"${{CRAWLPROJ_DEPLOY_PASSWORD_{i}}}"
            cfg[f"deploy:{target.name}"] = section
        with open(staging / "scrapy.cfg", "w", encoding="utf-8") as f:
            cfg.write(f)
        for target in targets:
            out = _scrapyd_deploy([target.name, "--egg", str(egg.resolve()), "--version", version],
                                  cwd=staging, env=env)
            answer = _last_json(out)
            if answer.get("status") != "ok":
                raise DeployError(f"{target.url}: addversion.json: {answer.get('message', answer)}")
            answers.append({"scrapyd": target.url, **answer})
    return answers


def _last_json(text: str) -> dict[str, Any]:
    for line in reversed(text.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    raise DeployError(f"scrapyd-deploy printed no JSON answer: {text.strip()[:300]!r}")


def deploy_command(args: argparse.Namespace) -> int:
    """Build the egg with scrapyd-client and upload it to scrapyd hosts."""
    root = Path(args.project_dir).resolve() if args.project_dir else project_root()
    version = args.version or str(int(time.time()))
    if args.build_egg:
        build_egg(root, Path(args.build_egg))
        print(f"egg written to {args.build_egg}")
        return 0
    targets = deploy_targets(root, args.url, args.target, args.all_targets, args.project)
    with tempfile.TemporaryDirectory(prefix="crawlproj-deploy-") as tmp:
        egg = Path(args.egg) if args.egg else build_egg(root, Path(tmp) / f"crawlproj-{version}.egg")
        for answer in upload_egg(egg, targets, version):
            print(f"{answer['scrapyd']}: project {answer['project']} version {answer['version']}, "
                  f"{answer['spiders']} spiders")
    return 0


# -- command line ---------------------------------------------------------------------------------


def _guarded(func: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return int(func(args))
        except DeployError as exc:
            print(f"crawlproj {args.command}: {exc}", file=sys.stderr)
            return 1
    return run


def _record_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--crawl", default=DEFAULT_CRAWL, help="crawl name (default %(default)s)")
    p.add_argument("--record", default=None,
                   help="JSON record of the scheduled jobs (default crawlproj-<crawl>.jobs.json)")


def add_arguments(sub: Any) -> None:
    p = sub.add_parser("deploy", help=deploy_command.__doc__)
    p.add_argument("--url", action="append", default=[], metavar="URL",
                   help="scrapyd host (repeatable; user:password@ allowed); default: scrapy.cfg targets")
    p.add_argument("--target", action="append", default=[], help="scrapy.cfg deploy target (default: default)")
    p.add_argument("--all-targets", action="store_true", help="every [deploy] target of scrapy.cfg")
    p.add_argument("--project", default=None, help=f"scrapyd project (default: the target's, else {DEFAULT_PROJECT})")
    p.add_argument("--version", default=None, help="egg version (default: the current epoch seconds)")
    p.add_argument("--egg", default=None, help="upload this egg instead of building one")
    p.add_argument("--build-egg", default=None, metavar="FILE", help="only build the egg, into FILE")
    p.add_argument("--project-dir", default=None, help="the checkout (default: where scrapy.cfg is found)")
    p.set_defaults(func=_guarded(deploy_command))

    p = sub.add_parser("schedule", help=schedule_command.__doc__)
    _record_options(p)
    p.add_argument("--nodes", type=int, required=True, help="node jobs in all")
    p.add_argument("--scrapyd", nargs="+", required=True, metavar="URL", help="scrapyd hosts, in a fixed order")
    p.add_argument("--dispatcher", required=True, metavar="ENDPOINT", help="e.g. tcp://dispatcher-host:5570")
    p.add_argument("--state-dir", default=None,
                   help="CRAWLPROJ_STATE_DIR on the hosts (default: the project's, relative to scrapyd's directory)")
    p.add_argument("--project", default=DEFAULT_PROJECT, help="scrapyd project")
    p.add_argument("--spider", default=DEFAULT_SPIDER, help="the spider the node jobs run")
    p.add_argument("--version", default=None, help="egg version to run (default: scrapyd's latest)")
    p.add_argument("-s", "--set", action="append", default=[], metavar="NAME=VALUE",
                   help="a Scrapy setting for every node")
    p.add_argument("-a", "--arg", action="append", default=[], metavar="NAME=VALUE", help="a spider argument")
    p.set_defaults(func=_guarded(schedule_command))

    p = sub.add_parser("status", help=status_command.__doc__)
    _record_options(p)
    p.add_argument("--json", action="store_true", help="print the joined status as JSON")
    p.set_defaults(func=_guarded(status_command))

    p = sub.add_parser("stop", help=stop_command.__doc__)
    _record_options(p)
    p.add_argument("--node", action="append", default=[], help="only this node (repeatable)")
    p.add_argument("--wait", type=float, default=0.0, help="seconds to wait for the jobs to end")
    p.add_argument("--kill", action="store_true", help="SIGKILL instead of SIGTERM (no handoff)")
    p.set_defaults(func=_guarded(stop_command))
