"""Meter profiles: register maps in YAML files, found by name in the profile directories.

A device says `profile: eastron-sdm630`; the file `eastron-sdm630.yaml` is looked up in,
first match wins:

1. the device's `profile_dirs` (relative paths are relative to the working directory),
2. `$PARKGATE_PROFILE_PATH` (directories separated by `:`),
3. `/etc/parkgate/profiles`,
4. the bundled `config/profiles` of this checkout, then `<prefix>/share/parkgate/profiles`
   of an installation.

`profile:` may also be a path to a file (anything with a `/` or ending in `.yaml`).
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from pydantic import Field, ValidationError

from gateway.driver import StrictModel
from gateway.yamlload import YamlProblem, load_yaml

from .registermap import RegisterDefaults, RegisterSpec

ENV_PATH = "PARKGATE_PROFILE_PATH"
SYSTEM_DIR = Path("/etc/parkgate/profiles")
BUNDLED_DIR = Path(__file__).resolve().parents[2] / "config" / "profiles"
INSTALLED_DIR = Path(sys.prefix) / "share" / "parkgate" / "profiles"
NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]*$"


class ProfileError(ValueError):
    """A profile cannot be found or does not parse; the message says which file and why."""


class Profile(StrictModel):
    """The register map of one meter model."""

    profile: str = Field(pattern=NAME_PATTERN, description="Name; equals the file name.")
    manufacturer: str
    model: str
    description: str | None = None
    defaults: RegisterDefaults = RegisterDefaults()
    max_registers: int | None = Field(default=None, ge=1, le=125, description=(
        "Most registers the meter returns in one read (some answer larger reads with an "
        "exception)."))
    max_gap: int | None = Field(default=None, ge=0, le=124)
    registers: list[RegisterSpec] = Field(min_length=1)


@dataclass(frozen=True, slots=True)
class LoadedProfile:
    """A parsed profile and the file it came from."""

    profile: Profile
    path: Path


def search_dirs(extra: Sequence[str] = ()) -> list[Path]:
    """Where profiles are looked up, in order."""
    dirs = [Path(d).expanduser() for d in extra]
    dirs += [Path(d).expanduser() for d in os.environ.get(ENV_PATH, "").split(os.pathsep) if d]
    dirs += [SYSTEM_DIR, BUNDLED_DIR, INSTALLED_DIR]
    return dirs


def available(extra: Sequence[str] = ()) -> dict[str, Path]:
    """Profile name -> file, for every profile in the search directories."""
    found: dict[str, Path] = {}
    for d in search_dirs(extra):
        if d.is_dir():
            for f in sorted(d.glob("*.yaml")):
                found.setdefault(f.stem, f)
    return found


def _is_path(ref: str) -> bool:
    return "/" in ref or ref.endswith((".yaml", ".yml"))


def find(ref: str, extra: Sequence[str] = ()) -> Path:
    """The file of profile `ref` (a name or a path); ProfileError if there is none."""
    if _is_path(ref):
        path = Path(ref).expanduser()
        if not path.is_file():
            raise ProfileError(f"profile file {path} does not exist")
        return path
    for d in search_dirs(extra):
        path = d / f"{ref}.yaml"
        if path.is_file():
            return path
    known = available(extra)
    close = difflib.get_close_matches(ref, list(known), n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    searched = ", ".join(str(d) for d in search_dirs(extra))
    raise ProfileError(f"profile '{ref}' not found: {hint}known profiles: "
                       f"{', '.join(sorted(known)) or 'none'} (searched {searched})")


def load(ref: str, extra: Sequence[str] = ()) -> LoadedProfile:
    """Find and parse profile `ref`; parsed files are cached until they change."""
    path = find(ref, extra).resolve()
    st = path.stat()
    loaded = _parse(path, st.st_mtime_ns, st.st_size)
    if not _is_path(ref) and loaded.profile.profile != ref:
        raise ProfileError(f"profile file {path} says `profile: {loaded.profile.profile}`; "
                           f"it must match its file name '{ref}'")
    return loaded


@lru_cache(maxsize=64)
def _parse(path: Path, _mtime_ns: int, _size: int) -> LoadedProfile:
    # the config's own bounded loader (libyaml events): one YAML library on the run path
    # instead of two (ruamel cost 1.6 MB of RSS), and positions for validation errors
    try:
        doc, positions = load_yaml(path.read_text(encoding="utf-8"))
    except YamlProblem as exc:
        raise ProfileError(f"profile file {path}: YAML error at line {exc.line} column "
                           f"{exc.col}: {exc.message.removeprefix('YAML syntax error: ')}"
                           ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(f"profile file {path}: {exc}") from None
    if not isinstance(doc, dict):
        raise ProfileError(f"profile file {path}: expected a mapping with `profile`, "
                           "`manufacturer`, `model` and `registers`")
    try:
        profile = Profile.model_validate(doc)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False, include_input=False):
            loc = ".".join(str(p) for p in err["loc"])
            msg = str(err["msg"]).removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            at = positions.find(tuple(err["loc"]), key=err["type"] == "extra_forbidden")
            where = f"line {at[0]}: " if at else ""
            problems.append(f"{where}{loc}: {msg}" if loc else f"{where}{msg}")
        raise ProfileError(f"profile file {path}: {'; '.join(problems)}") from None
    writable = [r.name for r in profile.registers if r.write is not None]
    if writable:
        # a profile describes a meter model; what a site may change is the site's decision
        raise ProfileError(f"profile file {path}: {', '.join(writable)}: `write:` belongs in "
                           "a device's own `registers:` (e.g. {name: setpoint, write: {...}}), "
                           "never in a profile")
    return LoadedProfile(profile, path)
