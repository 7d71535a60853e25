"""A local Azurite blob server for development and tests, started and stopped from Python.

Azurite speaks the Azure Blob REST API, so the pipeline publishes to it through the same
client code it uses against a real storage account.
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import logging
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)

# Azurite's fixed development account; its key is published in Microsoft's documentation.
DEV_ACCOUNT_NAME = "devstoreaccount1"
DEV_ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
BINARY_ENV = "SPAMGEO_AZURITE_BIN"
REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_BINARY = REPO_ROOT / "node_modules" / ".bin" / "azurite-blob"

_LISTENING = re.compile(r"successfully listens on https?://\S+:(\d+)")


class AzuriteError(RuntimeError):
    """Azurite could not be found, started or reached."""


def find_binary(binary: Path | None = None) -> Path:
    """The azurite-blob executable: the argument, then $SPAMGEO_AZURITE_BIN, then node_modules."""
    if binary is not None:
        candidate, source = Path(binary), "the binary argument"
    elif os.environ.get(BINARY_ENV):
        candidate, source = Path(os.environ[BINARY_ENV]), BINARY_ENV
    else:
        candidate, source = DEFAULT_BINARY, "the default location"
    if not candidate.is_file():
        raise AzuriteError(
            f"azurite-blob not found at {candidate} (from {source}): run `npm ci` in {REPO_ROOT} "
            f"or set {BINARY_ENV} to the azurite-blob executable"
        )
    return candidate


class Azurite:
    """An azurite-blob process serving one storage folder; use as a context manager.

    With `port=0` Azurite binds a free port itself and the chosen port is read from its
    start-up line, which avoids the race of probing for a free port and handing it over.
    """

    def __init__(
        self,
        location: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        binary: Path | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        self.location = Path(location)
        self.host = host
        self.port = port
        self._requested_port = port
        self.binary = binary
        self.startup_timeout = startup_timeout
        self._process: subprocess.Popen[str] | None = None
        self._output: collections.deque[str] = collections.deque(maxlen=40)
        self._listening = threading.Event()
        self._reader: threading.Thread | None = None

    @property
    def blob_endpoint(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/{DEV_ACCOUNT_NAME}"

    @property
    def connection_string(self) -> str:
        """The development-storage connection string for this server's port."""
        return (
            f"DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT_NAME};"
            f"AccountKey={DEV_ACCOUNT_KEY};BlobEndpoint={self.blob_endpoint};"
        )

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> Azurite:
        """Start Azurite and wait (bounded) until it answers HTTP."""
        if self.running:
            return self
        binary = find_binary(self.binary)
        self.location.mkdir(parents=True, exist_ok=True)
        command = [
            str(binary),
            "--blobHost",
            self.host,
            "--blobPort",
            str(self._requested_port),
            "--location",
            str(self.location),
            "--skipApiVersionCheck",
            "--disableTelemetry",
            "--silent",
        ]
        started = time.monotonic()
        try:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
        except OSError as exc:
            raise AzuriteError(
                f"cannot run {binary} ({exc}); Azurite needs Node.js on PATH: run `npm ci` in "
                f"{REPO_ROOT} after installing Node 20"
            ) from exc
        self._listening.clear()
        self._reader = threading.Thread(target=self._read_output, daemon=True)
        self._reader.start()
        try:
            self._wait_until_ready(started + self.startup_timeout)
        except BaseException:
            self.stop()
            raise
        log.info(
            "azurite started: pid %d, %s, data in %s, %.2f s",
            self._process.pid,
            self.blob_endpoint,
            self.location,
            time.monotonic() - started,
        )
        return self

    def _read_output(self) -> None:
        # Draining the pipe for the whole life of the process keeps Azurite from blocking on a
        # full pipe; the last lines are kept for error messages.
        process = self._process
        if process is None or process.stdout is None:
            return
        for line in process.stdout:
            self._output.append(line.rstrip())
            match = _LISTENING.search(line)
            if match and not self._listening.is_set():
                self.port = int(match.group(1))
                self._listening.set()

    def _wait_until_ready(self, deadline: float) -> None:
        while not self._listening.wait(timeout=0.05):
            if not self.running:
                raise AzuriteError(f"azurite exited during start-up: {self._recent_output()}")
            if time.monotonic() > deadline:
                raise AzuriteError(
                    f"azurite did not listen within {self.startup_timeout:.0f} s: "
                    f"{self._recent_output()}"
                )
        while not self._answers():
            if time.monotonic() > deadline:
                raise AzuriteError(
                    f"azurite at {self.blob_endpoint} did not answer within "
                    f"{self.startup_timeout:.0f} s"
                )
            time.sleep(0.05)

    def _answers(self) -> bool:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=2)
        try:
            connection.request("GET", f"/{DEV_ACCOUNT_NAME}?comp=list")
            connection.getresponse().read()
        except OSError:
            return False
        finally:
            connection.close()
        return True

    def _recent_output(self) -> str:
        return " | ".join(self._output) or "(no output)"

    def stop(self) -> None:
        """Stop Azurite and anything it started; safe to call more than once."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            self._signal_group(process, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._signal_group(process, signal.SIGKILL)
                process.wait(timeout=10)
        else:
            # The leader may be gone while children it started linger in the group.
            self._signal_group(process, signal.SIGKILL)
        if self._reader is not None:
            self._reader.join(timeout=5)
        if process.stdout is not None:
            process.stdout.close()
        log.info("azurite stopped: pid %d, exit code %s", process.pid, process.returncode)

    @staticmethod
    def _signal_group(process: subprocess.Popen[str], signum: int) -> None:
        # start_new_session made the process the leader of its own group, so its pid is the
        # group id: this reaches its children without touching anything else.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signum)

    def __enter__(self) -> Azurite:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
