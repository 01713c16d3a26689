"""What the documentation says the defaults are is what the code uses."""

import re
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from holostream.service.config import load_config

ROOT = Path(__file__).resolve().parents[2]


def test_the_example_configuration_shows_the_built_in_defaults_or_says_it_does_not():
    text = (ROOT / "deploy" / "holostream.toml").read_text()
    example = tomllib.loads(text)
    built_in = load_config(None).to_dict()
    section = None
    for line in text.splitlines():
        if re.match(r"^\[(\w+)\]", line):
            section = line.strip("[] ")
            continue
        match = re.match(r"^(\w+) = ", line)
        if not match:
            continue
        key = match.group(1)
        value, default = example[section][key], built_in[section].get(key)
        value = None if value == "" else value  # an empty path is the built-in "none" (config._optional_dir)
        if "# default:" in line:
            assert value != default, f"{section}.{key} is marked as differing but is the default"
        else:
            assert value == default, f"{section}.{key} = {value!r} in the example, {default!r} built in"


def test_the_docs_name_the_default_phase_chain():
    default = load_config(None).reconstruction.phase
    for doc in ("README.md", "docs/phase-retrieval.md", "docs/protocol.md"):
        text = (ROOT / doc).read_text()
        assert not re.search(r'"(?!' + re.escape(default) + r')\w+"` \(default\)', text), doc
    assert f'`"{default}"` (default)' in (ROOT / "docs/phase-retrieval.md").read_text()
