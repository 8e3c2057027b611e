"""Settings from backuptools.conf, TOML, the environment and the command line, in that order."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import pytest

from vcbfs import config
from vcbfs.config import ConfigError, Secret, Settings, load_settings, read_backuptools_conf

THUMB = "AB:" * 31 + "AB"
WEIRD = "p@ss w'o\"rd$(x)\\ü"  # a password that would break naive quoting


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def toml_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def load(tmp_path: Path, cli=None, env=None, files=(), backuptools=None) -> Settings:
    """load_settings that never looks at the real /etc, home or environment."""
    return load_settings(
        cli,
        env=env or {},
        files=list(files),
        backuptools=backuptools or tmp_path / "absent-backuptools.conf",
    )


def test_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config.os, "geteuid", lambda: 1000)
    s = load(tmp_path, env={"HOME": "/home/u"})
    assert (s.host, s.port, s.user, s.password, s.thumbprint) == (None, 443, None, None, None)
    assert (s.insecure, s.quiesce, s.idle, s.transports) == (False, True, 300.0, ["local", "https"])
    assert s.state_dir == Path("/home/u/.local/state/vcbfs")
    assert s.vm_name_cache == Path("/home/u/.local/state/vcbfs/vmnames.json")
    assert s.journal_dir == Path("/home/u/.local/state/vcbfs/journal")
    assert s.origin("host") == "default"
    monkeypatch.setattr(config.os, "geteuid", lambda: 0)
    s = load(tmp_path, env={"HOME": "/root"})
    assert s.state_dir == Path("/var/lib/vcbfs")
    assert s.vm_name_cache == Path("/var/lib/vcbfs/vmnames.json")
    s = load(tmp_path, env={"VCBFS_STATE_DIR": "/srv/vcbfs"})
    assert s.vm_name_cache == Path("/srv/vcbfs/vmnames.json")


def test_default_config_files() -> None:
    assert config.default_config_files({"HOME": "/home/u"}) == [
        Path("/etc/vcbfs/config.toml"),
        Path("/home/u/.config/vcbfs/config.toml"),
    ]
    assert config.default_config_files({"HOME": "/h", "XDG_CONFIG_HOME": "/x"})[1] == Path(
        "/x/vcbfs/config.toml"
    )


def test_precedence(tmp_path: Path) -> None:
    bt = write(
        tmp_path / "backuptools.conf",
        'VCHOST="bt-host"\nUSERNAME="bt-user"\nPORT=8443\nTEMPDIR="/bt/tmp"\nPASSWORD="bt-pw"\n',
    )
    system = write(tmp_path / "system.toml", 'host = "sys-host"\nuser = "sys-user"\nidle = 10\n')
    user = write(tmp_path / "user.toml", 'user = "user-user"\nidle = 20.5\nquiesce = false\n')
    env = {"VCBFS_USER": "env-user", "VCBFS_PORT": "9443", "VCBFS_QUIESCE": "yes"}
    cli = {"user": "cli-user", "host": None, "verb": "mount"}
    s = load(tmp_path, cli, env, [system, user], bt)
    assert s.host == "sys-host" and s.origin("host") == str(system)
    assert s.user == "cli-user" and s.origin("user") == "command line"
    assert s.port == 9443 and s.origin("port") == "environment"
    assert s.idle == 20.5 and s.origin("idle") == str(user)
    assert s.quiesce is True
    assert s.temp_dir == Path("/bt/tmp") and s.origin("temp_dir") == f"{bt}:4"
    assert s.password == Secret("bt-pw") and s.origin("password") == f"{bt}:5"

    # Without the later layers, the earlier ones show through.
    assert load(tmp_path, backuptools=bt).host == "bt-host"
    assert load(tmp_path, files=[system], backuptools=bt).port == 8443


def test_argparse_namespace(tmp_path: Path) -> None:
    toml = write(tmp_path / "c.toml", "insecure = true\n")
    ns = argparse.Namespace(
        verb="mount", insecure=False, thumbprint=None, datastore_path=["ds1=/mnt/a"], idle=5
    )
    s = load(tmp_path, ns, files=[toml])
    assert s.insecure is True  # store_true's False is "not given"
    assert s.datastore_paths == [("ds1", Path("/mnt/a"))] and s.idle == 5.0
    assert s.origin("datastore_paths") == "command line"


def test_config_file_from_env_and_cli(tmp_path: Path) -> None:
    a = write(tmp_path / "a.toml", 'host = "a"\n')
    b = write(tmp_path / "b.toml", 'host = "b"\n')
    assert load(tmp_path, env={"VCBFS_CONFIG": str(a)}, files=[b]).host == "a"
    assert load(tmp_path, {"config": str(b)}, {"VCBFS_CONFIG": str(a)}).host == "b"
    # Missing files on the search list are skipped; a file the user named must exist.
    assert load(tmp_path, files=[tmp_path / "nope.toml"]).host is None
    with pytest.raises(ConfigError, match=r"nope\.toml: no such file"):
        load(tmp_path, env={"VCBFS_CONFIG": str(tmp_path / "nope.toml")})
    with pytest.raises(ConfigError, match=r"nope\.conf: no such file"):
        load(tmp_path, {"backuptools": str(tmp_path / "nope.conf")})


def test_backuptools_parsing(tmp_path: Path) -> None:
    text = r"""# VCB settings
VCHOST="vc.example.com"   # trailing comment
export USERNAME='dom\user $x `y`'
PLAIN=a#b\ c\"d
ESC="q\"b\\s\$d\`e\n"
LONG="one \
two"
CONT=abc\
def
EMPTY=""
JOINED=a"b c"'d e'
GLOB=*.vmdk
LONE="$"
DOLLAR=x$
TAB_INDENTED=1
export TRANSPORT_MODE
MULTI='line1
line2'
""".replace("TAB_", "\t  ")
    conf = write(tmp_path / "backuptools.conf", text)
    assert read_backuptools_conf(conf) == {
        "VCHOST": "vc.example.com",
        "USERNAME": "dom\\user $x `y`",
        "PLAIN": 'a#b c"d',
        "ESC": 'q"b\\s$d`e\\n',
        "LONG": "one two",
        "CONT": "abcdef",
        "EMPTY": "",
        "JOINED": "ab cd e",
        "GLOB": "*.vmdk",
        "LONE": "$",
        "DOLLAR": "x$",
        "INDENTED": "1",
        "MULTI": "line1\nline2",
    }
    s = load(tmp_path, backuptools=conf)
    assert s.host == "vc.example.com" and s.user == "dom\\user $x `y`"
    assert s.origin("user") == f"{conf}:3"


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ('VCHOST="$(touch {marker})"', r"\$\(\.\.\.\) \(command substitution\)"),
        ("VCHOST=`touch {marker}`", "backticks"),
        ('VCHOST="x`touch {marker}`"', "backticks"),
        ("VCHOST=$HOME", "variable expansion"),
        ('VCHOST="${HOME}"', "variable expansion"),
        ('PASSWORD="pa$$"', "variable expansion"),
        ("VCHOST=$'x'", "bash quoting"),
        ("touch {marker}", "not a KEY=value assignment"),
        ("VCHOST=a; touch {marker}", "';' is a shell operator"),
        ("VCHOST=a touch {marker}", "unexpected text after the value"),
        ("TEMPDIR=~/tmp", "home directory expansion"),
        ("VCHOST='open", "unterminated single quote"),
        ('VCHOST="open', "unterminated double quote"),
    ],
)
def test_backuptools_refuses_the_shell(tmp_path: Path, line: str, why: str) -> None:
    marker = tmp_path / "ran"
    conf = write(tmp_path / "backuptools.conf", f"# header\n\nUSERNAME=u\n{line}\n")
    conf.write_text(conf.read_text().replace("{marker}", str(marker)))
    with pytest.raises(ConfigError, match=why) as info:
        read_backuptools_conf(conf)
    assert str(info.value).startswith(f"{conf}:4: ")
    with pytest.raises(ConfigError, match=why):
        load(tmp_path, backuptools=conf)
    assert not marker.exists()


def test_backuptools_line_number_after_continuation(tmp_path: Path) -> None:
    conf = write(tmp_path / "b.conf", "A='x\ny'\nB=one\\\ntwo\nC=$(id)\n")
    with pytest.raises(ConfigError, match=r"b\.conf:5: "):
        read_backuptools_conf(conf)


def test_backuptools_crlf_and_no_secret_in_errors(tmp_path: Path) -> None:
    conf = write(tmp_path / "b.conf", 'VCHOST="vc"\r\nUSERNAME=u\r\n')
    assert read_backuptools_conf(conf) == {"VCHOST": "vc", "USERNAME": "u"}
    for value in ('"Zq$Xy7"', '"Zq${Xy7}"', "Zq$'Xy7'", "Zq\\$(Xy7)", '"Zq`Xy7`"', "Zq;Xy7"):
        write(conf, f"PASSWORD={value}\n")
        with pytest.raises(ConfigError, match=r"b\.conf:1: ") as info:
            read_backuptools_conf(conf)
        assert "Zq" not in str(info.value) and "Xy7" not in str(info.value)


def test_backuptools_unknown_keys_ignored_and_empty_unset(tmp_path: Path) -> None:
    conf = write(tmp_path / "b.conf", 'TRANSPORT_MODE="nbd"\nVCHOST=""\nPASSWORD=""\n', 0o644)
    s = load(tmp_path, backuptools=conf)
    assert s.host is None and s.password is None


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('hots = "vc"\n', r"c\.toml: unknown key 'hots'"),
        ("[vcenter]\nhost = 'vc'\n", r"c\.toml: unknown key 'vcenter'"),
        ('port = "443"\n', r"c\.toml: port must be an integer, not a string"),
        ("port = true\n", r"c\.toml: port must be an integer, not a boolean"),
        ('insecure = "yes"\n', r"c\.toml: insecure must be a boolean, not a string"),
        ("idle = true\n", r"c\.toml: idle must be a number, not a boolean"),
        ('transports = "local"\n', r"c\.toml: transports must be an array, not a string"),
        ("transports = ['ftp']\n", r"c\.toml: transports must be one or more of local, https"),
        ("transports = []\n", r"c\.toml: transports must be one or more"),
        ("[datastores]\nds1 = 5\n", r"c\.toml: datastores must give an absolute local path"),
        ("[datastores]\nds1 = 'rel/dir'\n", r"datastores must give an absolute local path"),
        ("port = 70000\n", r"c\.toml: port must be a port number from 1 to 65535, not 70000"),
        ("idle = 0\n", r"c\.toml: idle must be a number of seconds greater than 0"),
        ("thumbprint = 'abc'\n", r"c\.toml: thumbprint must be a SHA-256 fingerprint"),
        ("host = 'a b'\n", r"c\.toml: host must be a host name or address"),
        ("host = \n", r"c\.toml: not valid TOML"),
    ],
)
def test_toml_errors(tmp_path: Path, text: str, match: str) -> None:
    toml = write(tmp_path / "c.toml", text)
    with pytest.raises(ConfigError, match=match):
        load(tmp_path, files=[toml])


def test_toml_all_keys(tmp_path: Path) -> None:
    toml = write(
        tmp_path / "c.toml",
        f"""host = "vc"
port = 444
user = "backup"
password = "pw"
thumbprint = "{THUMB}"
insecure = true
ca_file = "ca.pem"
vm_name_cache = "/c/names.json"
state_dir = "state"
temp_dir = "/tmp/v"
quiesce = false
idle = 1.5
transports = ["https", "local", "https"]

[datastores]
zeta = "/mnt/z"
"[alpha]" = "/mnt/a"
mid = "/mnt/m"
""",
    )
    s = load(tmp_path, files=[toml])
    assert (s.host, s.port, s.user, s.insecure, s.quiesce, s.idle) == (
        *("vc", 444, "backup", True, False, 1.5),
    )
    assert s.thumbprint == "ab" * 32
    assert s.ca_file == str(tmp_path / "ca.pem")  # relative to the config file
    assert s.state_dir == tmp_path / "state" and s.vm_name_cache == Path("/c/names.json")
    assert s.temp_dir == Path("/tmp/v") and s.transports == ["https", "local"]
    assert [name for name, _ in s.datastore_paths] == ["zeta", "alpha", "mid"]
    assert s.datastore_path("alpha") == Path("/mnt/a") and s.datastore_path("nope") is None


def test_datastore_paths_order_and_merge(tmp_path: Path) -> None:
    toml = write(tmp_path / "c.toml", "[datastores]\nb = '/mnt/b'\na = '/mnt/a'\n")
    cli = {"datastore_paths": ["c=/mnt/c", "a=/srv/a", "d=/mnt/d=x"]}
    s = load(tmp_path, cli, files=[toml])
    assert s.datastore_paths == [
        ("b", Path("/mnt/b")),
        ("a", Path("/srv/a")),
        ("c", Path("/mnt/c")),
        ("d", Path("/mnt/d=x")),
    ]
    with pytest.raises(ConfigError, match=r"--datastore-paths names datastore 'c' twice"):
        load(tmp_path, {"datastore_paths": ["c=/x", "c=/y"]})
    with pytest.raises(ConfigError, match=r"--datastore-path must be DATASTORE=/local/path"):
        load(tmp_path, {"datastore_path": ["nopath"]})
    with pytest.raises(ConfigError, match=r"absolute local path for datastore 'ds'"):
        load(tmp_path, {"datastore_path": ["ds=mnt"]})


@pytest.mark.parametrize(
    ("var", "value", "match"),
    [
        ("VCBFS_PORT", "0", "environment: VCBFS_PORT must be a port number"),
        ("VCBFS_PORT", "https", "VCBFS_PORT must be a port number"),
        ("VCBFS_INSECURE", "maybe", "VCBFS_INSECURE must be true or false"),
        ("VCBFS_IDLE", "-1", "VCBFS_IDLE must be a number of seconds greater than 0"),
        ("VCBFS_IDLE", "nan", "VCBFS_IDLE must be a number of seconds"),
        ("VCBFS_TRANSPORTS", "local,ftp", "VCBFS_TRANSPORTS must be one or more"),
        ("VCBFS_TRANSPORTS", ",", "VCBFS_TRANSPORTS must be one or more"),
        ("VCBFS_THUMBPRINT", "ab" * 31, "VCBFS_THUMBPRINT must be a SHA-256 fingerprint"),
    ],
)
def test_env_validation(tmp_path: Path, var: str, value: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load(tmp_path, env={var: value})


def test_env_values(tmp_path: Path) -> None:
    env = {
        **{"VCBFS_HOST": "esx1", "VCBFS_INSECURE": "On", "VCBFS_QUIESCE": "0"},
        **{"VCBFS_IDLE": "2.5", "VCBFS_TRANSPORTS": " HTTPS ", "VCBFS_CA_FILE": "ca.pem"},
        **{"VCBFS_TEMP_DIR": "/t", "VCBFS_PASSWORD": "", "VCBFS_USER": ""},
    }
    s = load(tmp_path, env=env)
    assert (s.host, s.insecure, s.quiesce, s.idle, s.transports) == (
        *("esx1", True, False, 2.5, ["https"]),
    )
    assert s.ca_file == "ca.pem" and s.temp_dir == Path("/t")
    assert s.user is None and s.password is None  # empty variables are unset


def test_thumbprint_normalized(tmp_path: Path) -> None:
    s = load(tmp_path, {"thumbprint": THUMB.lower()}, {"VCBFS_THUMBPRINT": "00" * 32})
    assert s.thumbprint == "ab" * 32 and s.origin("thumbprint") == "command line"
    spaced = " ".join(["Ab:Cd"] * 16)
    assert load(tmp_path, env={"VCBFS_THUMBPRINT": spaced}).thumbprint == "abcd" * 16


def test_toml_password_permissions(tmp_path: Path) -> None:
    toml = write(tmp_path / "c.toml", f"password = {toml_str(WEIRD)}\n", 0o644)
    with pytest.raises(ConfigError) as info:
        load(tmp_path, files=[toml])
    assert str(info.value) == (
        f"{toml}: holds a password and is readable by others (mode 0644); run: chmod 600 {toml}"
    )
    toml.chmod(0o640)
    with pytest.raises(ConfigError, match="readable by its group"):
        load(tmp_path, files=[toml])
    toml.chmod(0o600)
    s = load(tmp_path, files=[toml])
    assert s.password is not None and s.password.reveal() == WEIRD
    assert s.origin("password") == str(toml)


def test_public_file_without_password_is_fine(tmp_path: Path) -> None:
    toml = write(tmp_path / "c.toml", 'host = "vc"\npassword_file = "pw"\n', 0o644)
    write(tmp_path / "pw", "secret\n")
    s = load(tmp_path, files=[toml])
    assert s.host == "vc" and s.password == Secret("secret")
    assert s.origin("password") == str(tmp_path / "pw")


def test_backuptools_password_permissions(tmp_path: Path) -> None:
    conf = write(tmp_path / "b.conf", 'VCHOST=vc\nPASSWORD="pw"\n', 0o604)
    for read in (read_backuptools_conf, lambda p: load(tmp_path, backuptools=p)):
        with pytest.raises(ConfigError, match=rf"holds a password .*chmod 600 {conf}"):
            read(conf)
    conf.chmod(0o600)
    assert load(tmp_path, backuptools=conf).password == Secret("pw")


def test_password_file(tmp_path: Path) -> None:
    pw = write(tmp_path / "pw", WEIRD + "\r\nsecond line\n")
    s = load(tmp_path, env={"VCBFS_PASSWORD_FILE": str(pw)})
    assert s.password == Secret(WEIRD)
    s = load(tmp_path, {"password_file": str(pw)}, {"VCBFS_PASSWORD": "env"})
    assert s.password == Secret(WEIRD) and s.origin("password") == str(pw)
    # A later layer's password beats an earlier layer's password file.
    toml = write(tmp_path / "c.toml", f'password_file = "{pw}"\n')
    assert load(tmp_path, env={"VCBFS_PASSWORD": "env"}, files=[toml]).password == Secret("env")

    pw.chmod(0o644)
    with pytest.raises(ConfigError, match=rf"{pw}: is a password file and is readable by others"):
        load(tmp_path, files=[toml])
    write(pw, "\nsecond\n")
    with pytest.raises(ConfigError, match=rf"{pw}: password file is empty.*in {toml}"):
        load(tmp_path, files=[toml])
    pw.write_bytes(b"\xffpw\n")
    with pytest.raises(ConfigError, match="not UTF-8") as info:
        load(tmp_path, files=[toml])
    assert "xff" not in str(info.value)
    with pytest.raises(ConfigError, match=r"missing: no such file"):
        load(tmp_path, {"password_file": str(tmp_path / "missing")})


def test_password_and_password_file_together(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="both VCBFS_PASSWORD and VCBFS_PASSWORD_FILE") as info:
        load(tmp_path, env={"VCBFS_PASSWORD": WEIRD, "VCBFS_PASSWORD_FILE": "/pw"})
    assert WEIRD not in str(info.value)


def test_no_password_on_the_command_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="visible to every user") as info:
        load(tmp_path, {"password": WEIRD})
    assert WEIRD not in str(info.value) and WEIRD not in repr(info.value)
    assert load(tmp_path, {"password": None}).password is None


def test_password_never_shown(tmp_path: Path) -> None:
    s = load(tmp_path, {"host": "vc", "user": "u"}, {"VCBFS_PASSWORD": WEIRD})
    assert s.password is not None and s.password.reveal() == WEIRD
    for text in (repr(s), str(s), f"{s.password}", repr(s.password), str(vars(s))):
        assert WEIRD not in text and "ss w" not in text
    assert "***" in repr(s.password)
    with pytest.raises(ConfigError) as info:
        load(tmp_path, {"host": "a b"}, {"VCBFS_PASSWORD": WEIRD})
    assert WEIRD not in str(info.value)
    for text in (f"password = {toml_str(WEIRD)}\nport = 0\n", f"password = {toml_str(WEIRD)}\n"):
        toml = write(tmp_path / "c.toml", text, 0o600 if "port" in text else 0o644)
        with pytest.raises(ConfigError) as info:
            load(tmp_path, files=[toml])
        assert WEIRD not in str(info.value) and WEIRD not in repr(info.value)


def test_require_host(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no vCenter/ESXi host: give -h HOST, VCBFS_HOST"):
        load(tmp_path).require_host()
    assert load(tmp_path, env={"VCBFS_HOST": "vc"}).require_host() == "vc"


def test_require_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []

    def prompt(text: str) -> str:
        asked.append(text)
        return WEIRD

    s = load(tmp_path, {"host": "vc", "user": "backup"})
    assert s.require_password(prompt, interactive=True) == Secret(WEIRD)
    assert asked == ["Password for backup@vc: "] and s.origin("password") == "prompt"
    assert s.require_password(prompt, interactive=True) == Secret(WEIRD) and len(asked) == 1

    s = load(tmp_path, {"host": "vc"}, {"VCBFS_PASSWORD": "set"})
    assert s.require_password(prompt, interactive=True) == Secret("set") and len(asked) == 1

    s = load(tmp_path, {"host": "vc", "user": "backup"})
    monkeypatch.setattr(config.sys, "stdin", io.StringIO())  # not a terminal
    with pytest.raises(ConfigError, match="no password for backup@vc: set VCBFS_PASSWORD_FILE"):
        s.require_password(prompt)
    assert len(asked) == 1
    with pytest.raises(ConfigError, match="no password given"):
        s.require_password(lambda _: "", interactive=True)


def test_allow_paths(tmp_path: Path) -> None:
    """Directories that names inside VM files may also lead to: TOML list, env, CLI."""
    toml = write(tmp_path / "c.toml", 'allow_paths = ["/srv/templates"]\n')
    assert load(tmp_path, files=[toml]).allow_paths == [Path("/srv/templates")]
    env = {"VCBFS_ALLOW_PATHS": "/a:/b"}
    assert load(tmp_path, env=env, files=[toml]).allow_paths == [Path("/a"), Path("/b")]
    s = load(tmp_path, {"allow_paths": ["/c"]}, env=env, files=[toml])
    assert s.allow_paths == [Path("/c")] and s.origin("allow_paths") == "command line"
    with pytest.raises(ConfigError, match="absolute"):
        load(tmp_path, {"allow_paths": ["relative/dir"]})
