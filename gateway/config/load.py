"""Reading a config file: bounded text -> YAML with `${...}` substituted -> every section and
device validated -> a `LoadedConfig`, or `ConfigProblems` listing everything wrong at once.
"""

from __future__ import annotations

import difflib
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gateway.config.checks import topic_collisions
from gateway.config.problems import ConfigProblems, Problem, Reporter, yaml_problem
from gateway.config.sections import Config, RawConfig
from gateway.driver import DeviceOptions, DriverInfo, discover_drivers
from gateway.platforms import platform_problems
from gateway.redact import Masker
from gateway.substitute import Substituter
from gateway.yamlload import YamlProblem, load_yaml
from gateway.yamlpos import Loc

MAX_CONFIG_BYTES = 4 * 2**20
"""A config file larger than this is refused before parsing (100 devices x 100 inline
registers are 0.7 MiB)."""


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    """A config plus what was learnt loading it."""

    config: Config
    path: Path
    secrets: frozenset[str] = field(default_factory=frozenset)
    """Values substituted from ${ENV} or ${file:...}, for log redaction."""


def read_document(text: str, path: Path) -> tuple[Any, Reporter, Substituter]:
    """Parse a config text, bounded, with `${...}` substituted: the document, a reporter
    that places problems and masks the secrets, and the substituter (its problems, secrets)."""
    subst = Substituter()
    try:
        doc, _ = load_yaml(text, scalars=subst, positions=False)
    except YamlProblem as exc:
        raise yaml_problem(path, text, exc) from None
    # the same structure again, with positions and without reading secrets a second time,
    # only when a problem needs placing
    rep = Reporter(str(path), lambda: load_yaml(text)[1])
    rep.mask = Masker(subst.secrets)
    return doc, rep, subst


def parse_config(text: str, path: Path, drivers: Mapping[str, DriverInfo] | None = None
                 ) -> LoadedConfig:
    """Validate config `text` (read from `path`); raise `ConfigProblems` listing everything."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigProblems([Problem(str(path), 1, 1, "(file)", f"larger than "
                                      f"{MAX_CONFIG_BYTES // 2**20} MiB: not a config file?")])
    doc, rep, subst = read_document(text, path)
    if doc is None:
        rep.add((), "the file is empty: start from config/example.yaml")
        raise ConfigProblems(rep.problems)
    if not isinstance(doc, dict):
        rep.add((), "the top level must be a mapping with gateway:, uplink: and devices:")
        raise ConfigProblems(rep.problems)
    for loc, msg in subst.problems:
        rep.add(loc, msg)

    raw: RawConfig | None = None
    try:
        # the files substituted, so a validator can name the one with a bad value in it
        raw = RawConfig.model_validate(doc, context={"sources": subst.sources})
    except ValidationError as exc:
        rep.add_validation(exc, (), Config)

    raw_devices = doc.get("devices", [])
    devices = _validate_devices(raw_devices, rep, drivers)
    if raw is not None:
        for loc, message, key in platform_problems(raw, {d.name for d in devices}):
            rep.add(loc, message, key=key)
        for loc, message in topic_collisions(raw, [d.name for d in devices]):
            rep.add(loc, message)
    del doc, raw_devices  # the YAML tree and any positions go once validated
    rep.positions = rep.find_positions = None

    if rep.problems or raw is None:
        raise rep.result()
    # every part is validated already: assemble, do not validate (or dump) again
    sections = {name: getattr(raw, name) for name in Config.model_fields if name != "devices"}
    config = Config.model_construct(raw.model_fields_set | {"devices"}, **sections,
                                    devices=tuple(devices))
    return LoadedConfig(config=config, path=path, secrets=frozenset(subst.secrets))


def _validate_devices(raw_devices: Any, rep: Reporter,
                      drivers: Mapping[str, DriverInfo] | None) -> list[DeviceOptions]:
    if not isinstance(raw_devices, list):
        return []  # the top-level validation already reported the wrong type
    available = drivers if drivers is not None else discover_drivers()
    seen: dict[str, int] = {}
    out: list[DeviceOptions] = []
    for i, dev in enumerate(raw_devices):
        loc: Loc = ("devices", i)
        if rep.full:
            break  # the rest is not listed anyway: `result()` says there is more
        if not isinstance(dev, dict):
            continue  # reported by the top-level model as a wrong type
        name = dev.get("name")
        if isinstance(name, str):
            if name in seen:
                rep.add((*loc, "name"), f"duplicate device name '{name}' "
                                        f"(also devices.{seen[name]})")
            else:
                seen[name] = i
        driver = dev.get("driver")
        if not isinstance(driver, str):
            rep.add((*loc, "driver"), "required key is missing: which driver reads this device "
                                      f"({', '.join(sorted(available))})")
            continue
        info = available.get(driver)
        if info is None:
            close = difflib.get_close_matches(driver, list(available), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            rep.add((*loc, "driver"), f"unknown driver '{driver}': {hint}installed drivers are "
                                      f"{', '.join(sorted(available))}")
            continue
        if info.cls is None:
            rep.add((*loc, "driver"), f"driver '{driver}' is installed but failed to load: "
                                      f"{info.error}")
            continue
        try:
            out.append(info.cls.Options.model_validate(dev))
        except ValidationError as exc:
            rep.add_validation(exc, loc, info.cls.Options)
    return out


def read_config_text(path: Path, limit: int = MAX_CONFIG_BYTES) -> str:
    """The text of a config file, refused (as a `ConfigProblems`) when it is not a regular
    file of at most `limit` bytes of UTF-8."""

    def problem(message: str, line: int = 1, col: int = 1) -> ConfigProblems:
        return ConfigProblems([Problem(str(path), line, col, "(file)", message)])

    try:
        with path.open("rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise problem("not a regular file")
            data = f.read(limit + 1)
    except FileNotFoundError:
        raise problem("file not found") from None
    except OSError as exc:
        raise problem(f"cannot read: {exc.strerror}") from None
    if len(data) > limit:
        raise problem(f"larger than {limit // 2**20} MiB: not a config file?")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = data[:exc.start].decode("utf-8", "replace")
        line = before.count("\n") + 1
        col = len(before) - (before.rfind("\n") + 1) + 1
        raise problem(f"not UTF-8 text (byte 0x{data[exc.start]:02x})", line, col) from None


def load_config(path: Path, drivers: Mapping[str, DriverInfo] | None = None) -> LoadedConfig:
    """Read and validate the config file at `path`.

    Raises `ConfigProblems` and nothing else: an error nobody foresaw while loading
    (MemoryError included) becomes one problem line, so a reload keeps the running config
    and a start exits 2 with FILE:LINE:COL.
    """
    try:
        return parse_config(read_config_text(path), path, drivers)
    except ConfigProblems:
        raise
    except Exception as exc:  # whatever else fails here is a problem of this file
        raise ConfigProblems([Problem(str(path), 1, 1, "(file)",
                                      f"cannot load: {type(exc).__name__}: {exc}")]) from exc


def json_schema(drivers: Mapping[str, DriverInfo] | None = None) -> dict[str, Any]:
    """JSON Schema of the config file, with every loadable driver's options."""
    available = drivers if drivers is not None else discover_drivers()
    schema = RawConfig.model_json_schema(mode="validation")
    schema["title"] = "parkgate configuration"
    defs = schema.setdefault("$defs", {})
    variants = []
    for name, info in sorted(available.items()):
        if info.cls is None:
            continue
        sub = info.cls.Options.model_json_schema(mode="validation",
                                                 ref_template="#/$defs/{model}")
        defs.update(sub.pop("$defs", {}))
        key = f"driver_{name}"
        sub["properties"]["driver"] = {"const": name}
        defs[key] = sub
        variants.append({"$ref": f"#/$defs/{key}"})
    schema["properties"]["devices"] = {"type": "array", "items": {"oneOf": variants},
                                       "description": "The devices to read."}
    schema.setdefault("required", [])
    return schema
