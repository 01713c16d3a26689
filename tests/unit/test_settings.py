"""ReconstructionSettings: defaults, validation naming the bad key, merging."""

import pytest

from holostream.shared.settings import (
    ReconstructionSettings,
    SettingsError,
    check_chain_syntax,
)


def test_defaults_match_the_protocol_contract():
    s = ReconstructionSettings()
    assert s.to_dict() == {
        "binning": 1,
        "angle_binning": 1,
        "phase": "paganin",
        "iterations": 10,
        "filter": "ram-lak",
        "publish_interval_s": 2.0,
        "pad_mode": "edge",
        "device": "cpu",
        "ring_filter": "none",
    }


def test_from_dict_roundtrip_and_hyphenated_keys():
    d = {"binning": 3, "angle-binning": 2, "phase": "ap", "iterations": 5, "filter": "hann",
         "publish_interval_s": 1, "pad_mode": "reflect", "device": "gpu"}
    s = ReconstructionSettings.from_dict(d)
    assert (s.binning, s.angle_binning, s.phase, s.iterations) == (3, 2, "ap", 5)
    assert s.publish_interval_s == 1.0 and isinstance(s.publish_interval_s, float)
    assert ReconstructionSettings.from_dict(s.to_dict()) == s


@pytest.mark.parametrize(
    "key, value, words",
    [
        ("binning", 0, "between 1"),
        ("binning", 2.0, "integer"),
        ("binning", True, "integer"),
        ("binning", "2", "integer"),
        ("angle_binning", -1, "between 1"),
        ("iterations", -3, "between 0"),
        ("phase", "pagannin", "unknown method"),
        ("phase", 3, "method name"),
        ("phase", "paganin,, ap", "empty step"),
        ("phase", "paganin, ap**8(delta_beta)", "key=value"),
        ("phase", "paganin, ap**0", ">= 1"),
        ("phase", "paganin, ap(delta_beta=200", "not a chain"),
        ("filter", "ramlak", "one of"),
        ("publish_interval_s", 0, "> 0"),
        ("publish_interval_s", float("nan"), "> 0"),
        ("publish_interval_s", "2", "number"),
        ("pad_mode", "zero", "one of"),
        ("device", "tpu", "one of"),
        ("colour", "blue", "unknown setting"),
    ],
)
def test_each_bad_key_is_named(key, value, words):
    with pytest.raises(SettingsError) as info:
        ReconstructionSettings.from_dict({key: value})
    assert info.value.key == key
    assert key in str(info.value)
    assert words in info.value.reason


def test_chain_texts_are_accepted():
    for text in ("paganin, ap**8(delta_beta=200), ap**2", "ctf, raar**3", "paganin(delta_beta=50)"):
        assert ReconstructionSettings.from_dict({"phase": text}).phase == text
    check_chain_syntax("paganin, ap**8(delta_beta=200, x=1), ap")
    for bad in ("ap**2)", "paganin,, ap", "paganin, ap**0", "ap(delta_beta)", "ap**8(x=1", "paganin,"):
        with pytest.raises(ValueError, match="not a chain"):
            check_chain_syntax(bad)


def test_merged_keeps_base_and_validates():
    base = ReconstructionSettings(binning=2, phase="ctf")
    m = base.merged({"iterations": 3})
    assert (m.binning, m.phase, m.iterations) == (2, "ctf", 3)
    assert base.iterations == 10
    with pytest.raises(SettingsError, match="angle_binning"):
        base.merged({"angle_binning": 0})
    with pytest.raises(SettingsError):
        ReconstructionSettings.from_dict(["binning", 2])


def test_direct_construction_is_validated_too():
    with pytest.raises(SettingsError, match="binning"):
        ReconstructionSettings(binning=0)
    assert ReconstructionSettings(publish_interval_s=3).publish_interval_s == 3.0
    assert ReconstructionSettings(phase=" ap ").phase == "ap"
