"""MQTT credentials: ``upstairs mqtt credentials`` files, hashes, names and the command."""

from __future__ import annotations

import argparse
import stat
import subprocess
from pathlib import Path

import pytest

from core.building_file import load_building
from tests.mqtt_broker import (
    REF_TOWER,
)
from upstairs.mqtt_credentials import (
    CredentialsError,
    Principal,
    Role,
    check_name,
    hash_password,
    principals,
    register,
    verify_password,
    write_credentials,
)

pytestmark = pytest.mark.timeout(60)


def test_hashes_are_what_mosquitto_passwd_writes(tmp_path: Path) -> None:
    """Both ways: our verifier accepts mosquitto_passwd's hash, and mosquitto_passwd keeps
    (and the broker above accepts) ours."""
    salt = bytes(range(12))
    ours = hash_password("s3cret", salt=salt)
    assert ours.startswith("$7$101$AAECAwQFBgcICQoL$")
    assert verify_password("s3cret", ours) and not verify_password("s3cret!", ours)
    passwd = tmp_path / "passwd"
    passwd.write_text(f"ours:{ours}\n")
    subprocess.run(["mosquitto_passwd", "-b", str(passwd), "theirs", "hunter2"], check=True,
                   capture_output=True, timeout=10)  # fmt: skip
    lines = dict(line.split(":", 1) for line in passwd.read_text().splitlines())
    assert lines["ours"] == ours  # mosquitto_passwd parsed our line and kept it as it was
    assert lines["theirs"].startswith("$7$")
    assert verify_password("hunter2", lines["theirs"])


def test_files_and_modes(tmp_path: Path) -> None:
    creds = write_credentials([load_building(REF_TOWER)], tmp_path / "out")
    assert stat.S_IMODE(creds.secrets_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(creds.password_file.stat().st_mode) == 0o640
    assert stat.S_IMODE(creds.acl_file.stat().st_mode) == 0o640
    users = [p.name for p in creds.principals]
    assert users[:4] == ["upstairs-ingest", "upstairs-alerts", "upstairs-api", "upstairs-operator"]
    assert users[4:] == [f"ref-tower-f{n:02d}-gw" for n in range(1, 11)]
    hashes = dict(line.split(":", 1) for line in creds.password_file.read_text().splitlines())
    secrets_env = dict(
        line.split("=", 1)
        for line in creds.secrets_file.read_text().splitlines()
        if not line.startswith("#")
    )
    assert len(set(creds.passwords.values())) == len(users)  # one random password each
    for p in creds.principals:
        assert verify_password(secrets_env[p.env_var], hashes[p.name])
        assert len(creds.passwords[p.name]) >= 40
    assert "ref-tower-f03-gw\ntopic write upstairs/v1/ref-tower/3/telemetry\n" in (
        creds.acl_file.read_text()
    )


def test_rerun_keeps_passwords_and_rotate_replaces_them(tmp_path: Path) -> None:
    building = load_building(REF_TOWER)
    first = write_credentials([building], tmp_path)
    again = write_credentials([building], tmp_path)
    assert again.passwords == first.passwords and again.reused == len(first.principals)
    rotated = write_credentials([building], tmp_path, rotate=True)
    assert rotated.reused == 0
    assert not set(rotated.passwords.values()) & set(first.passwords.values())


def test_topic_prefix_is_respected(tmp_path: Path) -> None:
    creds = write_credentials([load_building(REF_TOWER)], tmp_path, "site-a/")
    topics = [r.topic for p in creds.principals for r in p.rules if r.topic != "$SYS/#"]
    assert topics and all(t.startswith("site-a/upstairs/v1/ref-tower/") for t in topics)


@pytest.mark.parametrize("name", ["a+b", "a#", "a/b", "+", "#", "a:b", "a b", "", "x\n"])
def test_names_with_wildcards_or_separators_are_refused(name: str) -> None:
    with pytest.raises(CredentialsError):
        check_name(name)
    with pytest.raises(CredentialsError):
        Principal(name, Role.OPERATOR, ())


@pytest.mark.parametrize("bad_id", ["ref/tower", "ref+tower", "ref#"])
def test_a_building_id_with_wildcards_is_refused(bad_id: str) -> None:
    """load_building refuses such ids already; the generator does not rely on it."""
    fake = load_building(REF_TOWER).model_copy(update={"id": bad_id})
    with pytest.raises((CredentialsError, ValueError)):
        principals([fake])


@pytest.mark.parametrize("prefix", ["site+a/", "#/", "no-slash", "site a/"])
def test_bad_prefixes_are_refused(prefix: str) -> None:
    with pytest.raises(CredentialsError):
        principals([load_building(REF_TOWER)], prefix)


def test_the_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``register`` adds ``mqtt credentials``; the prefix defaults to UPSTAIRS_TOPIC_PREFIX."""
    parser = argparse.ArgumentParser(prog="upstairs")
    register(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "creds"
    argv = ["mqtt", "credentials", "--building", str(REF_TOWER), "--out", str(out)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("UPSTAIRS_TOPIC_PREFIX", "site-b/")
        args = parser.parse_args(argv)
        assert args.func(args) == 0
    assert "14 MQTT users (10 floor gateways)" in capsys.readouterr().out
    assert "topic write site-b/upstairs/v1/ref-tower/1/status" in (out / "acl").read_text()
    args = parser.parse_args([*argv, "--topic-prefix", "bad+/"])
    assert args.func(args) == 2
    assert "bad+/" in capsys.readouterr().err
