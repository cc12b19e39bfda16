"""Typed settings built once from the loaded config: defaults written once, coercion, one-line errors."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from distillguard.config import load_config, settings_from_config
from distillguard.errors import UserError
from distillguard.monitor.decisions import DecisionLog, Policy
from distillguard.monitor.jobs import reference_path, scan_options, sketch_key
from distillguard.monitor.scan import ScanOptions
from distillguard.monitor.settings import MonitorSettings


@dataclass(frozen=True)
class Knobs:
    name: str = "a"
    size: int = 3
    ratio: float | None = None
    tags: tuple[str, ...] = ()
    on: bool = False


def test_settings_from_config_precedence_types_and_errors(tmp_path, monkeypatch):
    toml = tmp_path / "c.toml"
    toml.write_text('[knob]\nname = "b"\nsize = 5\ntags = ["x", "y"]\n')
    monkeypatch.setenv("DISTILLGUARD_KNOB_SIZE", "7")  # env beats the file
    monkeypatch.setenv("DISTILLGUARD_KNOB_ON", "yes")
    cfg = load_config(toml)
    assert settings_from_config(Knobs, cfg, "knob_") == Knobs("b", 7, None, ("x", "y"), True)
    # flags beat the config; None is "not given"; a base replaces the defaults, not the config
    got = settings_from_config(Knobs, cfg, "knob_", base=Knobs(ratio=0.5), name="c", size=None)
    assert got == Knobs("c", 7, 0.5, ("x", "y"), True)
    assert settings_from_config(Knobs, {"knob_tags": "p, q,"}, "knob_").tags == ("p", "q")
    assert settings_from_config(Knobs, {"knob_ratio": "none"}, "knob_").ratio is None
    with pytest.raises(UserError, match="^setting knob_size = 2.5 is not a valid int$"):
        settings_from_config(Knobs, {"knob_size": 2.5}, "knob_")
    with pytest.raises(TypeError, match="no setting 'colour'"):  # a misspelt flag is a programming error
        settings_from_config(Knobs, {}, "knob_", colour="red")


def test_monitor_settings_leave_scan_defaults_to_the_scan(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILLGUARD_HOME", str(tmp_path / "home"))
    assert scan_options({}) == ScanOptions()
    assert scan_options({"monitor_sample_size": "64"}) == ScanOptions(sample_size=64)
    assert reference_path({}) == tmp_path / "home" / "monitor" / "reference.npz"
    assert reference_path({"monitor_reference": str(tmp_path / "r.npz")}) == tmp_path / "r.npz"
    assert DecisionLog.open_default({"monitor_dir": str(tmp_path / "m")}).root == tmp_path / "m"
    assert MonitorSettings.from_config({"monitor_min_queries": 9}, min_queries=5).min_queries == 5
    with pytest.raises(UserError, match="^monitor_min_queries must be >= 1, got 0$"):
        scan_options({"monitor_min_queries": 0})


def test_the_monitor_sketch_key_is_made_once_private_and_shared_by_configuration(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILLGUARD_HOME", str(tmp_path / "home"))
    key = sketch_key({})
    path = tmp_path / "home" / "monitor" / "sketch.key"
    assert len(key) == 32 and path.read_bytes() == key and path.stat().st_mode & 0o777 == 0o600
    assert sketch_key({}) == key and scan_options({}).sketch_key == key  # made once, then read
    assert "sketch_key" not in repr(scan_options({}))  # a secret stays out of logs
    assert sketch_key({"monitor_dir": str(tmp_path / "m")}) != key  # the state dir's own
    shared = tmp_path / "shared.key"  # one file for every follower and node reading a ledger
    shared.write_bytes(b"s" * 32)
    assert scan_options({"monitor_sketch_key_file": str(shared)}).sketch_key == b"s" * 32
    shared.write_bytes(b"short")
    with pytest.raises(UserError, match="sketch key .* is shorter than 16 bytes$"):
        sketch_key({"monitor_sketch_key_file": str(shared)})
    path.write_bytes(b"short")
    with pytest.raises(UserError, match="sketch key .* is shorter than 16 bytes$"):
        sketch_key({})
    # a file named in the config must exist: a typo or an unmounted share is an error, not a new key
    with pytest.raises(UserError, match="^cannot read the monitor's sketch key .*missing.key"):
        sketch_key({"monitor_sketch_key_file": str(tmp_path / "missing.key")})
    assert not (tmp_path / "missing.key").exists()


def test_policy_from_config_reads_the_policy_fields_once():
    assert Policy.from_config({}) == Policy()
    p = Policy.from_config(
        {"monitor_allowlist": "ci-bot, eval", "monitor_hold_s": "60", "monitor_throttle_p": "0.01"}
    )
    assert p.allowlist == frozenset({"ci-bot", "eval"}) and p.hold_s == 60.0
    assert p.threshold("throttled") == 0.01 and p.down_factor == Policy().down_factor
    assert Policy.from_config({"monitor_allowlist": ["a"]}).allowlist == frozenset({"a"})
    with pytest.raises(UserError, match="^setting monitor_throttle_p = 'high' is not a valid float$"):
        Policy.from_config({"monitor_throttle_p": "high"})
    with pytest.raises(UserError, match="^monitor_down_factor must be >= 1"):
        Policy.from_config({"monitor_down_factor": 0.5})
