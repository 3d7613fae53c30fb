"""A minimal ManageSieve (RFC 5804) client: check, upload and activate Sieve scripts."""

from __future__ import annotations

import asyncio
import base64
import re
from types import TracebackType

from shared.imap import master_login, quoted
from shared.settings import Settings, get_settings

_STATUS = re.compile(rb"^(OK|NO|BYE)\b(.*)$")
_LITERAL = re.compile(rb"\{(\d+)\+?\}$")


class SieveError(RuntimeError):
    """The server refused a command; `message` is its human-readable reason."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class SieveUnavailable(RuntimeError):
    """The ManageSieve server could not be reached."""


def _literal(text: str) -> bytes:
    data = text.encode()
    return b"{%d+}\r\n" % len(data) + data


class ManageSieve:
    """One ManageSieve session as a mailbox, opened with the master user.

    With `address=None` the session only reads the server's greeting (`capabilities`) and
    does not log in: enough to see that the server is up.
    """

    def __init__(
        self, address: str | None, settings: Settings | None = None, timeout: float = 10.0
    ) -> None:
        self.address = address
        self.settings = settings or get_settings()
        self.timeout = timeout
        self.capabilities: dict[str, str] = {}
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> ManageSieve:
        try:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_connection(self.settings.mail_host, self.settings.sieve_port),
                self.timeout,
            )
        except (OSError, TimeoutError) as exc:
            raise SieveUnavailable(
                f"ManageSieve {self.settings.mail_host}:"
                f"{self.settings.sieve_port} unreachable: {exc}"
            ) from exc
        greeting: list[bytes] = []
        await self._response(greeting)
        for line in greeting:
            name, _, value = line.partition(b" ")
            self.capabilities[name.strip(b'"').decode()] = value.strip(b'"').decode()
        if self.address is None:
            return self
        credentials = "\0".join(
            (
                "",
                master_login(self.address, self.settings),
                self.settings.master_password.get_secret_value(),
            )
        )
        encoded = base64.b64encode(credentials.encode()).decode()
        await self._command(b'AUTHENTICATE "PLAIN" ' + quoted(encoded).encode())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._writer is not None:
            try:
                self._writer.write(b"LOGOUT\r\n")
                await self._writer.drain()
            except OSError:
                pass
            self._writer.close()

    async def check(self, script: str) -> None:
        """Compile the script on the server; SieveError carries the compiler's message."""
        await self._command(b"CHECKSCRIPT " + _literal(script))

    async def put(self, name: str, script: str) -> None:
        await self._command(b"PUTSCRIPT " + quoted(name).encode() + b" " + _literal(script))

    async def activate(self, name: str) -> None:
        await self._command(b"SETACTIVE " + quoted(name).encode())

    async def _command(self, line: bytes) -> str:
        assert self._writer is not None
        self._writer.write(line + b"\r\n")
        await self._writer.drain()
        return await self._response()

    async def _read_line(self) -> bytes:
        assert self._reader is not None
        line = await asyncio.wait_for(self._reader.readline(), self.timeout)
        if not line:
            raise SieveUnavailable("ManageSieve server closed the connection")
        return line.rstrip(b"\r\n")

    async def _response(self, data: list[bytes] | None = None) -> str:
        """Read up to the status line; return its text, or raise SieveError on NO/BYE.

        The lines before the status line go into `data` if given.
        """
        while True:
            line = await self._read_line()
            status = _STATUS.match(line)
            if status is None:
                if data is not None:
                    data.append(line)
                continue
            kind, rest = status.group(1), status.group(2).strip()
            literal = _LITERAL.search(rest)
            if literal:
                assert self._reader is not None
                rest = await self._reader.readexactly(int(literal.group(1)))
                await self._read_line()
            text = rest.decode(errors="replace")
            # Human text may follow a response code: NO (WARNINGS) "..." or NO "..."
            text = re.sub(r"^\([^)]*\)\s*", "", text).strip().strip('"')
            if kind != b"OK":
                raise SieveError(text or kind.decode())
            return text
