"""Varnish in front of the api (``EDGE_CACHE=1 make run``, the edge tests, ``make bench``).

Runs Debian's ``varnishd`` (package ``varnish``, 7.1; the xkey vmod from ``varnish-modules``)
in the foreground with the repository's ``deploy/varnish/default.vcl``, its backend rendered
to the api it fronts (:func:`render_vcl`, as the chart does), on two listeners: ``http``
(the public one) and ``purge`` (the fetcher's ``PURGE``; see the VCL). Everything it writes
(its working directory: shared memory log, compiled VCL, CLI secret; the rendered VCL) lives
under one directory of ours. ``-p http_gzip_support=off``: the api's own encodings are kept.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from devstack.procs import pdeathsig_preexec, terminate, wait_until

VCL = Path(__file__).resolve().parents[4] / "deploy" / "varnish" / "default.vcl"
SBIN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
# The backend's address lines of the VCL, which devstack and the chart render.
_BACKEND_LINE = re.compile(r'^(\s*\.(host|port) = )"[^"]*";$', re.MULTILINE)


def varnishd_binary() -> str | None:
    """Debian's varnishd is /usr/sbin/varnishd, which a non-root user's PATH may leave out."""
    return shutil.which("varnishd", path=SBIN_PATH)


def render_vcl(host: str, port: int, vcl: str | None = None) -> str:
    """The repository's VCL with its backend at ``host``:``port``."""
    text = VCL.read_text() if vcl is None else vcl
    values = {"host": host, "port": str(port)}
    rendered, count = _BACKEND_LINE.subn(lambda m: f'{m[1]}"{values[m[2]]}";', text)
    if count != 2:
        raise ValueError(f"{VCL} has {count} backend .host/.port lines, not 2")
    return rendered


@dataclass
class Varnish:
    """One varnishd, listening on 127.0.0.1 (``http_port`` public, ``purge_port`` for PURGE),
    in front of ``backend_port``; its files under ``workdir``."""

    workdir: Path
    http_port: int
    purge_port: int
    backend_port: int
    backend_host: str = "127.0.0.1"
    cpu: int | None = None  # pinned to this CPU (taskset) when set: the bench
    memory: str = "256m"
    # A VCL of its own (the chart's render, its backends set), instead of the repository's
    # rendered to ``backend_host``:``backend_port``.
    vcl: str | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def purge_url(self) -> str:
        return f"http://127.0.0.1:{self.purge_port}/"

    @property
    def log(self) -> Path:
        return self.workdir / "varnishd.log"

    def argv(self) -> list[str]:
        binary = varnishd_binary()
        if binary is None:
            raise RuntimeError(
                "varnishd is not installed: apt-get install varnish varnish-modules "
                "(.ci/install-tools)"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o755)  # the rendered VCL is read by varnishd's unprivileged user
        vcl = self.workdir / "default.vcl"
        vcl.write_text(
            render_vcl(self.backend_host, self.backend_port) if self.vcl is None else self.vcl
        )
        vcl.chmod(0o644)
        argv = [
            binary,
            "-F",
            "-n",
            str(self.workdir / "n"),
            "-a",
            f"http=127.0.0.1:{self.http_port},HTTP",
            "-a",
            f"purge=127.0.0.1:{self.purge_port},HTTP",
            "-T",
            "127.0.0.1:0",
            "-f",
            str(vcl),
            "-s",
            f"malloc,{self.memory}",
            "-p",
            "http_gzip_support=off",
        ]
        if self.cpu is not None and shutil.which("taskset"):
            argv = ["taskset", "-c", str(self.cpu), *argv]
        return argv

    def start(self, timeout: float = 60.0) -> None:
        """Start varnishd (its output to :attr:`log`) and wait until it listens."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = self.argv()
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=pdeathsig_preexec(),
            )
        self.wait_listening(self.process, timeout)

    def wait_listening(self, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
        """Wait until both listeners answer (the VCL compiled and loaded)."""
        self.process = process

        def listening() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"varnishd exited with status {process.returncode}")
            return _answers(self.purge_url) and _answers(f"{self.url}/healthz")

        wait_until(listening, timeout, interval=0.1, what="varnishd to listen")

    def stop(self) -> None:
        if self.process is not None:
            terminate(self.process, timeout=10.0)

    def _tool(self, name: str, *arguments: str) -> str:
        """The output of one of Varnish's tools (varnishadm, varnishlog, varnishstat) on this
        instance's workdir."""
        binary = shutil.which(name, path=SBIN_PATH) or name
        result = subprocess.run(
            [binary, "-n", str(self.workdir / "n"), *arguments],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        return result.stdout

    def admin(self, *command: str) -> str:
        """A varnishadm command's output (``backend.list``, ``ban ...``)."""
        return self._tool("varnishadm", *command)

    def varnishlog(self, *options: str) -> str:
        """``varnishlog -d`` (what its shared memory log holds now) with ``options``."""
        return self._tool("varnishlog", "-d", *options)

    def backend_healthy(self) -> bool:
        """What the api's probe says now (``backend.list``: ``healthy`` / ``sick``)."""
        for line in self.admin("backend.list").splitlines():
            if ".api " in f"{line} " or line.split(" ", 1)[0].endswith(".api"):
                return "healthy" in line
        raise RuntimeError("varnishadm backend.list names no api backend")

    def counters(self, *names: str) -> dict[str, int]:
        """varnishstat counters, ``MAIN.cache_hit`` and such."""
        fields_wanted = [argument for name in names for argument in ("-f", name)]
        data = json.loads(self._tool("varnishstat", "-1", "-j", *fields_wanted))
        fields = data.get("counters", data)  # varnishstat 7: {"version": 1, "counters": {...}}
        return {name: int(fields[name]["value"]) for name in names if name in fields}


def _answers(url: str) -> bool:
    """Anything answers at ``url`` over HTTP (an error status too)."""
    try:
        with urllib.request.urlopen(url, timeout=2):  # noqa: S310 - local URL
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError):
        return False
