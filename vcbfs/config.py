"""Settings: which vCenter/ESXi host to use, how to log in to it, where state and caches live.

Values come from four layers, each overriding the one before it:

1. VCB's ``/etc/vmware/backuptools.conf``, a Bourne-shell file of ``KEY="value"`` lines.  It is
   read, never run: a value that would need a shell (``$(...)``, backticks, ``$VAR``, ``~``,
   operators) is refused with its line number.  Keys vcbfs does not use are ignored, and an
   empty value (as VCB's template ships them) counts as unset;
2. TOML files: ``/etc/vcbfs/config.toml`` then ``~/.config/vcbfs/config.toml`` (or only
   ``$VCBFS_CONFIG``); relative paths in them are relative to the file;
3. ``VCBFS_*`` environment variables (an empty one counts as unset);
4. the command line.

Every value remembers where it came from, so errors name the file (and key or line).  The
password is a :class:`Secret` that shows as ``***`` everywhere; a file holding one must be private
(like ssh keys: no group or other permission bits), and no command-line option takes a password,
since every user can read another's argv.
"""

from __future__ import annotations

import errno as _errno
import getpass
import hmac
import math
import os
import re
import sys
import tomllib
from argparse import Namespace
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

from vcbfs.blocks import budget as _budget
from vcbfs.errors import VcbfsError

__all__ = [
    "BACKUPTOOLS_CONF",
    "TRANSPORTS",
    "ConfigError",
    "Secret",
    "Settings",
    "default_config_files",
    "default_state_dir",
    "load_settings",
    "read_backuptools_conf",
]

BACKUPTOOLS_CONF = Path("/etc/vmware/backuptools.conf")
SYSTEM_CONFIG = Path("/etc/vcbfs/config.toml")
TRANSPORTS = ("local", "https")


class ConfigError(VcbfsError, ValueError):
    """A setting is missing, malformed or contradictory, or kept where others can read it."""

    errno = _errno.EINVAL


class Secret:
    """A string that never shows itself: ``repr``, ``str`` and f-strings all give ``***``."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself, for the one place that needs it (the login)."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and hmac.compare_digest(
            self._value.encode(), other._value.encode()
        )


def _home(env: Mapping[str, str]) -> Path:
    return Path(env["HOME"]) if env.get("HOME") else Path.home()


def _xdg(env: Mapping[str, str], var: str, fallback: str) -> Path:
    value = env.get(var, "")
    return Path(value) if os.path.isabs(value) else _home(env) / fallback


def default_state_dir(env: Mapping[str, str] | None = None) -> Path:
    """``/var/lib/vcbfs`` for root, else ``$XDG_STATE_HOME/vcbfs`` (``~/.local/state/vcbfs``)."""
    if os.geteuid() == 0:
        return Path("/var/lib/vcbfs")
    return _xdg(os.environ if env is None else env, "XDG_STATE_HOME", ".local/state") / "vcbfs"


def default_config_files(env: Mapping[str, str] | None = None) -> list[Path]:
    """The system file, then the user's (``$XDG_CONFIG_HOME``, ``~/.config``) which wins."""
    user = _xdg(os.environ if env is None else env, "XDG_CONFIG_HOME", ".config")
    return [SYSTEM_CONFIG, user / "vcbfs/config.toml"]


@dataclass
class Settings:
    """Everything vcbfs needs to reach vSphere and keep its state; see :func:`load_settings`."""

    host: str | None = None
    port: int = 443
    user: str | None = None
    password: Secret | None = field(default=None, repr=False)
    thumbprint: str | None = None  # SHA-256, 64 lower-case hex digits, no colons
    insecure: bool = False
    ca_file: str | None = None
    vm_name_cache: Path = field(default_factory=lambda: default_state_dir() / "vmnames.json")
    state_dir: Path = field(default_factory=default_state_dir)
    temp_dir: Path | None = None
    datastore_paths: list[tuple[str, Path]] = field(default_factory=list)
    allow_paths: list[Path] = field(default_factory=list)  # widen where VM files may lead
    transports: list[str] = field(default_factory=lambda: list(TRANSPORTS))
    quiesce: bool = True
    idle: float = 300.0
    # bytes all caches of the process share (vcbfs.blocks.budget); applied when loaded
    memory_budget: int = _budget.DEFAULT_BUDGET
    origins: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    @property
    def journal_dir(self) -> Path:
        """Where the snapshot journal lives (snapshots vcbfs made and must remove)."""
        return self.state_dir / "journal"

    def origin(self, name: str) -> str:
        """Where setting ``name`` came from: a file (``path`` or ``path:line``), ``environment``,
        ``command line``, ``prompt`` or ``default``."""
        return self.origins.get(name, "default")

    def datastore_path(self, datastore: str) -> Path | None:
        """The local path configured for ``datastore``, if any."""
        return dict(self.datastore_paths).get(datastore)

    def require_host(self) -> str:
        """The host, or a ConfigError saying how to give one."""
        if not self.host:
            raise ConfigError(
                "no vCenter/ESXi host: give -h HOST, VCBFS_HOST or host in config.toml"
            )
        return self.host

    def require_password(
        self, prompt: Callable[[str], str] = getpass.getpass, *, interactive: bool | None = None
    ) -> Secret:
        """The password; if none is set, ask with ``prompt`` when stdin is a terminal."""
        if self.password is not None:
            return self.password
        who = f"{self.user}@{self.host}" if self.user else (self.host or "the server")
        if interactive is None:
            interactive = sys.stdin is not None and sys.stdin.isatty()
        if not interactive:
            raise ConfigError(
                f"no password for {who}: set VCBFS_PASSWORD_FILE (or VCBFS_PASSWORD), give "
                "--password-file or password_file in config.toml, or run on a terminal to be asked"
            )
        answer = prompt(f"Password for {who}: ")
        if not answer:
            raise ConfigError(f"no password given for {who}")
        self.password, self.origins["password"] = Secret(answer), "prompt"
        return self.password


# -- converters: raw value (typed, or a string from env/sh/argv) -> setting; errors read "KEY ..."


class _PasswordFile(NamedTuple):
    path: Path


def _text(v: Any) -> str:
    if not isinstance(v, str) or not v.strip():
        raise ValueError("must be a non-empty string")
    return v


def _host(v: Any) -> str:
    if not re.fullmatch(r"[^\s/]+", _text(v)):
        raise ValueError(f"must be a host name or address, not {v!r}")
    return v


def _port(v: Any) -> int:
    if isinstance(v, str) and re.fullmatch(r"\s*\d{1,5}\s*", v):
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 65535:
        raise ValueError(f"must be a port number from 1 to 65535, not {v!r}")
    return v


def _bool(v: Any) -> bool:
    word = v.strip().lower() if isinstance(v, str) else v
    if word in ("1", "true", "yes", "on") or word is True:
        return True
    if word in ("0", "false", "no", "off") or word is False:
        return False
    raise ValueError(f"must be true or false (yes/no, on/off, 1/0), not {v!r}")


def _path(v: Any) -> Path:
    if not isinstance(v, str | os.PathLike) or not str(v).strip():
        raise ValueError("must be a non-empty path")
    return Path(v).expanduser()


def _idle(v: Any) -> float:
    try:
        seconds = float(v) if not isinstance(v, bool) else math.nan
    except (TypeError, ValueError):
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"must be a number of seconds greater than 0, not {v!r}")
    return seconds


def _thumbprint(v: Any) -> str:
    fp = re.sub(r"[:\s]", "", _text(v)).lower()
    if not re.fullmatch(r"[0-9a-f]{64}", fp):
        raise ValueError("must be a SHA-256 fingerprint: 64 hex digits, colons optional")
    return fp


def _transports(v: Any) -> list[str]:
    items = v.split(",") if isinstance(v, str) else v
    names = [t.strip().lower() if isinstance(t, str) else t for t in items]
    if not names or not all(isinstance(t, str) and t in TRANSPORTS for t in names):
        raise ValueError(f"must be one or more of {', '.join(TRANSPORTS)}, not {v!r}")
    return list(dict.fromkeys(names))


def _datastores(v: Any) -> list[tuple[str, Path]]:
    items = list(v.items()) if isinstance(v, Mapping) else [v] if isinstance(v, str) else list(v)
    out: dict[str, Path] = {}
    for item in items:
        if isinstance(item, str):
            name, eq, path = item.partition("=")
            if not eq:
                raise ValueError(f"must be DATASTORE=/local/path, not {item!r}")
        else:
            name, path = item
        name = name.strip().removeprefix("[").removesuffix("]")
        if not name or not isinstance(path, str | os.PathLike) or not os.path.isabs(path):
            raise ValueError(
                f"must give an absolute local path for datastore {name!r}, not {path!r}"
            )
        if name in out:
            raise ValueError(f"names datastore {name!r} twice")
        out[name] = Path(path)
    return list(out.items())


def _allow_paths(v: Any) -> list[Path]:
    items = v.split(":") if isinstance(v, str) else list(v)
    out = []
    for item in items:
        if not isinstance(item, str | os.PathLike) or not os.path.isabs(item):
            raise ValueError(f"must be absolute directories, not {item!r}")
        out.append(Path(item))
    return out


# setting -> (converter, the TOML types it takes); "datastore_paths" is the TOML [datastores]
_SCHEMA: dict[str, tuple[Callable[[Any], Any], tuple[type, ...]]] = {
    "host": (_host, (str,)),
    "port": (_port, (int,)),
    "user": (_text, (str,)),
    "password": (lambda v: Secret(_text(v)), (str,)),  # _text never echoes the value
    "password_file": (lambda v: _PasswordFile(_path(v)), (str,)),
    "thumbprint": (_thumbprint, (str,)),
    "insecure": (_bool, (bool,)),
    "ca_file": (lambda v: str(_path(v)), (str,)),
    "vm_name_cache": (_path, (str,)),
    "state_dir": (_path, (str,)),
    "temp_dir": (_path, (str,)),
    "datastore_paths": (_datastores, (dict,)),
    "allow_paths": (_allow_paths, (list,)),
    "transports": (_transports, (list,)),
    "quiesce": (_bool, (bool,)),
    "idle": (_idle, (float, int)),
    "memory_budget": (_budget.parse_size, (str, int)),
}
_FILE_PATHS = ("password_file", "ca_file", "vm_name_cache", "state_dir", "temp_dir")


# -- the layers: each gives {setting: _Value} in the raw, then _convert checks it


class _Value(NamedTuple):
    value: Any
    source: str  # a file (path, or path:line), "environment" or "command line"
    label: str  # the key as that source spells it


def _require_private(path: Path, mode: int, what: str) -> None:
    if mode & 0o077:
        how = "readable" if mode & 0o044 else "writable"
        who = "others" if mode & 0o007 else "its group"
        raise ConfigError(
            f"{what} and is {how} by {who} (mode {mode & 0o7777:04o}); run: chmod 600 {path}",
            source=str(path),
        )


def _open(path: Path, required: bool) -> tuple[bytes, int] | None:
    """The bytes and mode of ``path``; None if it is missing and not ``required``."""
    try:
        with open(path, "rb") as f:
            return f.read(), os.fstat(f.fileno()).st_mode
    except FileNotFoundError:
        if not required:
            return None
        raise ConfigError("no such file", source=str(path)) from None
    except OSError as exc:
        raise ConfigError(exc.strerror or "cannot read", source=str(path)) from None


def _in_dir(value: str, base: Path) -> str:
    return str(base / Path(value).expanduser())


_TOML_NAMES = {str: "a string", bool: "a boolean", int: "an integer", float: "a number"}
_TOML_NAMES |= {list: "an array", dict: "a table"}


def _from_toml(path: Path, required: bool) -> dict[str, _Value]:
    opened = _open(path, required)
    if opened is None:
        return {}
    try:
        data = tomllib.loads(opened[0].decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        why = str(exc) if isinstance(exc, tomllib.TOMLDecodeError) else "not UTF-8 text"
        raise ConfigError(f"not valid TOML: {why}", source=str(path)) from None
    out = {}
    for name, value in data.items():
        key = "datastore_paths" if name == "datastores" else name
        if key not in _SCHEMA or name == "datastore_paths":
            raise ConfigError(f"unknown key {name!r}", source=str(path))
        wanted = _SCHEMA[key][1]
        if not isinstance(value, wanted) or (isinstance(value, bool) and bool not in wanted):
            got = _TOML_NAMES.get(type(value), type(value).__name__)
            raise ConfigError(
                f"{name} must be {_TOML_NAMES[wanted[0]]}, not {got}", source=str(path)
            )
        if key == "password":
            _require_private(path, opened[1], "holds a password")
        if key in _FILE_PATHS:
            value = _in_dir(value, path.parent)
        out[key] = _Value(value, str(path), name)
    return out


_BACKUPTOOLS_KEYS = {
    "VCHOST": "host",
    "PORT": "port",
    "USERNAME": "user",
    "PASSWORD": "password",
    "VMNAMECACHE": "vm_name_cache",
    "TEMPDIR": "temp_dir",
}


def _from_backuptools(path: Path, required: bool) -> dict[str, _Value]:
    out = {}
    for key, (value, line) in _read_backuptools(path, required).items():
        if key in _BACKUPTOOLS_KEYS and value:
            setting = _BACKUPTOOLS_KEYS[key]
            value = _in_dir(value, path.parent) if setting in _FILE_PATHS else value
            out[setting] = _Value(value, f"{path}:{line}", key)
    return out


_ENV_KEYS = {f"VCBFS_{key.upper()}": key for key in _SCHEMA if key != "datastore_paths"}
_CLI_ALIASES = {"datastore_path": "datastore_paths"}


def _from_env(env: Mapping[str, str]) -> dict[str, _Value]:
    return {
        key: _Value(env[var], "environment", var) for var, key in _ENV_KEYS.items() if env.get(var)
    }


def _from_cli(items: Mapping[str, object]) -> dict[str, _Value]:
    out = {}
    for name, value in items.items():
        key = _CLI_ALIASES.get(name, name)
        if value is None or key not in _SCHEMA or (key == "insecure" and value is False):
            continue  # argparse's unset options, other options; --insecure can only turn it on
        if key == "password":
            raise ConfigError(
                "a password on the command line is visible to every user: "
                "give --password-file, VCBFS_PASSWORD_FILE or VCBFS_PASSWORD instead"
            )
        out[key] = _Value(value, "command line", "--" + name.replace("_", "-"))
    return out


def _convert(layer: dict[str, _Value]) -> dict[str, _Value]:
    if "password" in layer and "password_file" in layer:
        a, b = layer["password"], layer["password_file"]
        raise ConfigError(f"both {a.label} and {b.label} are given; keep one", source=b.source)
    out = {}
    for key, v in layer.items():
        try:
            value = _SCHEMA[key][0](v.value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{v.label} {exc}", source=v.source) from None
        out["password" if key == "password_file" else key] = v._replace(value=value)
    return out


def _read_password_file(path: Path, named_by: str) -> Secret:
    data, mode = _open(path, required=True) or (b"", 0)
    _require_private(path, mode, "is a password file")
    try:
        first = data.decode().split("\n", 1)[0].removesuffix("\r")
    except UnicodeDecodeError:
        first = None  # the exception would quote a byte of the password
    if not first:
        why = "is not UTF-8 text" if first is None else "is empty (its first line is the password)"
        raise ConfigError(f"password file {why}; named by {named_by}", source=str(path))
    return Secret(first)


def load_settings(
    cli: Mapping[str, object] | Namespace | None = None,
    *,
    env: Mapping[str, str] | None = None,
    files: Sequence[Path] | None = None,
    backuptools: Path | None = None,
) -> Settings:
    """Settings from backuptools.conf < TOML files < environment < ``cli``, checked.

    ``cli`` maps setting names to values (None means not given; other names are ignored, so an
    argparse Namespace can be passed whole); its ``config`` and ``backuptools`` name files that
    must exist.  Otherwise ``$VCBFS_CONFIG``, then ``files``, then :func:`default_config_files`
    give the TOML files, and ``backuptools`` (default :data:`BACKUPTOOLS_CONF`) the VCB file;
    files found there but missing are skipped.  ``env`` defaults to ``os.environ``.
    """
    env = os.environ if env is None else env
    items = dict(vars(cli) if isinstance(cli, Namespace) else cli or {})
    bt = items.get("backuptools")
    layers = [_from_backuptools(Path(bt or backuptools or BACKUPTOOLS_CONF), required=bool(bt))]
    explicit = items.get("config") or env.get("VCBFS_CONFIG")
    paths = [explicit] if explicit else default_config_files(env) if files is None else files
    layers += [_from_toml(Path(p), required=bool(explicit)) for p in paths]
    layers += [_from_env(env), _from_cli(items)]

    merged: dict[str, _Value] = {}
    for layer in map(_convert, layers):
        for key, v in layer.items():
            if key == "datastore_paths" and key in merged:  # merged by name, earlier order kept
                v = v._replace(value=list({**dict(merged[key].value), **dict(v.value)}.items()))
            merged[key] = v
    values = {key: v.value for key, v in merged.items()}
    origins = {key: v.source for key, v in merged.items()}
    if isinstance(values.get("password"), _PasswordFile):
        pw = merged["password"]
        values["password"] = _read_password_file(pw.value.path, f"{pw.label} in {pw.source}")
        origins["password"] = str(pw.value.path)
    values.setdefault("state_dir", default_state_dir(env))
    values.setdefault("vm_name_cache", values["state_dir"] / "vmnames.json")
    if "memory_budget" in merged:  # the process-wide budget, unless a higher source set it
        source = origins["memory_budget"]
        rank = source if source in ("environment", "command line") else "file"
        _budget.configure(values["memory_budget"], rank)
    return Settings(**values, origins=origins)


# -- backuptools.conf: sh assignments, read without a shell


def read_backuptools_conf(path: Path) -> dict[str, str]:
    """Every ``KEY=value`` of VCB's sh-syntax ``path``, unquoted as sh would, never run.

    Refused, with the line: commands, ``$(...)``, backticks, unescaped ``$VAR``/``${VAR}``, a
    leading ``~`` and shell operators.  ``export KEY=value`` is an assignment, ``export KEY``
    alone is ignored; glob characters are literal, as sh leaves them in assignments.  A file that
    sets a non-empty PASSWORD must not be readable by group or others.
    """
    return {key: value for key, (value, _line) in _read_backuptools(Path(path), True).items()}


def _read_backuptools(path: Path, required: bool) -> dict[str, tuple[str, int]]:
    opened = _open(path, required)
    if opened is None:
        return {}
    try:
        text = opened[0].decode()
    except UnicodeDecodeError:
        raise ConfigError("not UTF-8 text", source=str(path)) from None
    result = _ShReader(text.replace("\r\n", "\n"), str(path)).assignments()
    if result.get("PASSWORD", ("", 0))[0]:
        _require_private(path, opened[1], "holds a password")
    return result


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NO_SHELL = "needs a shell, and vcbfs never runs one"


class _ShReader:
    """A cursor over sh text that understands quoting, escapes and comments, and nothing more."""

    def __init__(self, text: str, source: str) -> None:
        self.text, self.source, self.i, self.line = text, source, 0, 1

    def fail(self, why: str, line: int | None = None) -> NoReturn:
        raise ConfigError(why, source=f"{self.source}:{line or self.line}")

    def peek(self, ahead: int = 0) -> str:
        return self.text[self.i + ahead : self.i + ahead + 1]

    def take(self) -> str:
        c = self.peek()
        self.i += 1
        self.line += c == "\n"
        return c

    def blanks(self) -> None:
        """Skip spaces, tabs and backslash-newlines (sh drops those before anything else)."""
        while True:
            if self.peek() in (" ", "\t"):
                self.take()
            elif self.peek() == "\\" and self.peek(1) == "\n":
                self.i += 1
                self.take()
            else:
                return

    def end_of_line(self) -> None:
        """Skip blanks and a comment; anything else before the newline is an error."""
        self.blanks()
        if self.peek() == "#":
            nl = self.text.find("\n", self.i)
            self.i = nl if nl >= 0 else len(self.text)
        if self.peek() not in ("", "\n"):
            self.fail("unexpected text after the value: only one KEY=value per line, no commands")

    def name(self) -> str:
        m = _NAME.match(self.text, self.i)
        if not m:
            return ""
        self.i = m.end()
        return m.group()

    def assignments(self) -> dict[str, tuple[str, int]]:
        out: dict[str, tuple[str, int]] = {}
        while self.peek():
            self.blanks()
            if self.peek() not in ("#", "\n", ""):
                self.assignment(out)
            self.end_of_line()
            self.take()
        return out

    def assignment(self, out: dict[str, tuple[str, int]]) -> None:
        first, key = self.line, self.name()
        if key == "export" and self.peek() in (" ", "\t"):
            self.blanks()
            key = self.name()
            if key and self.peek() != "=":
                return  # `export KEY` alone changes nothing we read
        if not key or self.peek() != "=":
            self.fail(f"not a KEY=value assignment: a command {_NO_SHELL}")
        self.take()
        out[key] = (self.word(), first)

    def word(self) -> str:
        out: list[str] = []
        tilde_ok = True  # sh expands ~ at the start of an assignment and after an unquoted ':'
        while (c := self.peek()) not in ("", "\n", " ", "\t"):
            if c == "'":
                opened = self.line
                self.take()
                while (c := self.take()) != "'":
                    if not c:
                        self.fail("unterminated single quote", opened)
                    out.append(c)
            elif c == '"':
                self.double_quoted(out)
            elif c == "\\":
                self.take()
                if not (c := self.take()):
                    self.fail("backslash at the end of the file")
                out.append(c if c != "\n" else "")
            elif c in "|&;<>()":
                self.fail(f"{c!r} is a shell operator; quote the value")
            elif c == "~" and tilde_ok:
                self.fail(f"~ (home directory expansion) {_NO_SHELL}; write the full path")
            else:
                self.check_special(quoted=False)
                out.append(self.take())
            tilde_ok = c == ":"
        return "".join(out)

    def double_quoted(self, out: list[str]) -> None:
        opened = self.line
        self.take()
        while (c := self.peek()) != '"':
            if not c:
                self.fail("unterminated double quote", opened)
            if c == "\\" and self.peek(1) in ('"', "\\", "$", "`", "\n"):
                self.take()
                out.append(self.take().replace("\n", ""))
            else:
                self.check_special(quoted=True)
                out.append(self.take())
        self.take()

    def check_special(self, quoted: bool) -> None:
        """Refuse a backtick, or a ``$`` that sh would expand (a lone ``$`` is literal)."""
        c, nxt = self.peek(), self.peek(1)
        if c == "`":
            self.fail(f"backticks (command substitution) {_NO_SHELL}")
        if c != "$":
            return
        if nxt == "(":
            self.fail(f"$(...) (command substitution) {_NO_SHELL}")
        if nxt == "{" or re.fullmatch(r"[A-Za-z0-9_@*#?!$-]", nxt):  # never quote the value
            self.fail(f"$NAME or ${{...}} (variable expansion) {_NO_SHELL}; write \\$ or use '...'")
        if not quoted and nxt in ("'", '"'):
            self.fail(f"$'...' or $\"...\" (bash quoting) {_NO_SHELL}")
