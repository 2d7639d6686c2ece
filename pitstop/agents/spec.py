"""An agent described in a file (YAML or TOML): :class:`AgentSpec`, loaded and checked by :func:`load_spec`.

    name: calculator
    model: SmolLM2-135M-Instruct          # in process (pitstop.LLM); or a table {name, dtype, kv_cache_memory}
    # endpoint: {base_url: "http://127.0.0.1:8000/v1", api_key_env: OPENAI_API_KEY}   (instead of model)
    loop: react                           # react | planner | sequential
    max_turns: 3
    forced_tool_turns: 1
    tools:
      - python: calc_tools:multiply        # a sandboxed call per tool call (trusted: true runs it in process)
      - shell: {wall_seconds: 5}           # the sandboxed shell tool
      - mcp: {command: python, args: [server.py]}   # every tool of an MCP server (or {url, headers})
    permissions: {tools: [multiply], read_paths: [data], write_paths: [out]}
    sandbox: {cpu_seconds: 5, memory_mb: 256}

Unknown keys are errors. Relative paths (python modules, MCP working directory, permission paths, a model folder)
resolve against the spec file's directory; an MCP ``command`` of ``python`` / ``python3`` is this interpreter.
An API key is never in the file: ``api_key_env`` names the environment variable that holds it.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from pitstop.agents.limits import MIB, SandboxLimits


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LimitsSpec(_Strict):
    """Sandbox limits of one non-trusted tool call (see ``SandboxLimits``): CPU seconds and wall seconds per call,
    memory in MiB (address space per process), output bytes per stream, processes at once."""

    cpu_seconds: float = Field(10.0, gt=0)
    memory_mb: int = Field(512, gt=0)
    wall_seconds: float = Field(30.0, gt=0)
    output_bytes: int = Field(MIB, gt=0)
    processes: int = Field(64, gt=0)

    def to_limits(self) -> SandboxLimits:
        return SandboxLimits(cpu_seconds=self.cpu_seconds, memory_bytes=self.memory_mb * MIB,
                             wall_seconds=self.wall_seconds, output_bytes=self.output_bytes,
                             processes=self.processes)


class LocalModelSpec(_Strict):
    """The in-process engine: ``name`` (a known model name, an HF folder or a .gguf file), ``dtype``
    (auto, bfloat16, float32), ``kv_cache_memory`` (e.g. ``1GiB``), ``max_model_len`` (tokens), and its program
    policies: ``scheduling_policy`` (default program-fcfs) and ``ttl_policy`` (default continuum: the run's KV
    is pinned across its tool calls)."""

    name: str = Field(min_length=1)
    dtype: Literal["auto", "bfloat16", "float32"] = "auto"
    kv_cache_memory: str | int = "1GiB"
    max_model_len: int | None = Field(None, gt=0)
    scheduling_policy: Literal["fcfs", "program-fcfs", "plas", "priority"] = "program-fcfs"
    ttl_policy: Literal["none", "fixed", "continuum"] = "continuum"


class EndpointSpec(_Strict):
    """An OpenAI-compatible endpoint: ``base_url`` (ending in ``/v1``), ``model`` (default: the first it lists),
    ``api_key_env`` (the environment variable holding the key), ``engine_link`` (auto: on against pitstop)."""

    base_url: str = Field(min_length=1)
    model: str | None = None
    api_key_env: str | None = None
    engine_link: Literal["auto"] | bool = "auto"

    def api_key(self) -> str:
        """The key from ``api_key_env`` (``EMPTY`` when no variable is named).

        Raises:
            ValueError: the named variable is not set.
        """
        if self.api_key_env is None:
            return "EMPTY"
        key = os.environ.get(self.api_key_env)
        if key is None:
            raise ValueError(f"endpoint.api_key_env: environment variable {self.api_key_env!r} is not set")
        return key


class PythonToolSpec(_Strict):
    """A typed Python function, ``module:function``; sandboxed per call unless ``trusted``."""

    python: str = Field(pattern=r"^[\w.]+:[\w.]+$")
    trusted: bool = False


class LimitsOverride(_Strict):
    """Some of ``LimitsSpec``'s limits (same units); the rest come from the spec's ``sandbox``."""

    cpu_seconds: float | None = Field(None, gt=0)
    memory_mb: int | None = Field(None, gt=0)
    wall_seconds: float | None = Field(None, gt=0)
    output_bytes: int | None = Field(None, gt=0)
    processes: int | None = Field(None, gt=0)

    def over(self, base: LimitsSpec) -> LimitsSpec:
        """``base`` with the limits given here replacing its own."""
        return base.model_copy(update=self.model_dump(exclude_none=True))


class ShellToolSpec(_Strict):
    """The ``shell`` tool; ``shell`` holds limits that replace the spec's ``sandbox`` ones (``{}``: none)."""

    shell: LimitsOverride = Field(default_factory=LimitsOverride)

    @pydantic.field_validator("shell", mode="before")
    @classmethod
    def _empty(cls, value: Any) -> Any:
        return {} if value is None else value


class MCPServerSpec(_Strict):
    """An MCP server: a subprocess (``command``, ``args``, ``env``, ``cwd``) or a streamable-HTTP ``url``
    (``headers``); ``timeout_s``: per tool call (seconds)."""

    command: str | None = None
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] | None = None
    cwd: str | None = None
    url: str | None = None
    headers: dict[str, str] | None = None
    timeout_s: float = Field(60.0, gt=0)

    @pydantic.model_validator(mode="after")
    def _one_transport(self) -> MCPServerSpec:
        if (self.command is None) == (self.url is None):
            raise ValueError("give exactly one of command (stdio) or url (streamable HTTP)")
        return self


class MCPToolSpec(_Strict):
    """Every tool of one MCP server."""

    mcp: MCPServerSpec


def _tool_kind(value: Any) -> str | None:
    """The tag of a tool entry: the one of ``python`` / ``shell`` / ``mcp`` it has (None: not exactly one)."""
    keys = set(value) if isinstance(value, dict) else {k for k in ("python", "shell", "mcp") if hasattr(value, k)}
    kinds = keys & {"python", "shell", "mcp"}
    return kinds.pop() if len(kinds) == 1 else None


ToolSpec = Annotated[Annotated[PythonToolSpec, Tag("python")] | Annotated[ShellToolSpec, Tag("shell")]
                     | Annotated[MCPToolSpec, Tag("mcp")],
                     Discriminator(_tool_kind, custom_error_type="tool_kind",
                                   custom_error_message="a tool entry needs exactly one of python, shell, mcp")]


class PermissionsSpec(_Strict):
    """What the agent may do: ``tools`` (default: every tool the spec lists), ``read_paths``, ``write_paths``."""

    tools: list[str] | None = None
    read_paths: list[str] = Field(default_factory=list)
    write_paths: list[str] = Field(default_factory=list)


class AgentSpec(_Strict):
    """One agent: its model (exactly one of ``model`` and ``endpoint``), loop, limits, tools and permissions.

    ``max_tokens``: per LLM call (tokens); ``temperature``: sampling (0: greedy); ``max_turns``,
    ``forced_tool_turns``, ``system_prompt``: the ReAct loop's (see ``Agent``; the planner loops ignore them);
    ``max_replans``: the planner's (``planner`` and ``sequential``). ``base_dir``: the directory relative paths
    resolve against (set by ``load_spec``; not a key of the file).
    """

    name: str = "agent"
    model: LocalModelSpec | None = None
    endpoint: EndpointSpec | None = None
    loop: Literal["react", "planner", "sequential"] = "react"
    max_turns: int = Field(8, ge=1)
    forced_tool_turns: int = Field(0, ge=0)
    max_replans: int = Field(2, ge=0)
    max_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.0, ge=0)
    system_prompt: str | None = None
    tools: list[ToolSpec] = Field(default_factory=list)
    permissions: PermissionsSpec = Field(default_factory=PermissionsSpec)
    sandbox: LimitsSpec = Field(default_factory=LimitsSpec)
    base_dir: Path = Field(default_factory=Path.cwd, exclude=True)

    @pydantic.field_validator("model", mode="before")
    @classmethod
    def _model_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @pydantic.model_validator(mode="after")
    def _one_model(self) -> AgentSpec:
        if (self.model is None) == (self.endpoint is None):
            raise ValueError("give exactly one of model (in process) or endpoint (an OpenAI-compatible URL)")
        return self

    def path(self, value: str) -> Path:
        """``value`` (a path from the file) resolved against ``base_dir``."""
        return (self.base_dir / Path(value).expanduser()).resolve()

    def model_location(self) -> str:
        """The in-process model: a path resolved against ``base_dir`` when one exists there, else the name as
        given (a known model name). Raises ValueError when the spec has an endpoint instead."""
        if self.model is None:
            raise ValueError("the spec has an endpoint, not an in-process model")
        candidate = self.path(self.model.name)
        return str(candidate) if candidate.exists() else self.model.name


def load_spec(path: str | os.PathLike[str]) -> AgentSpec:
    """Reads and checks an agent spec (``.yaml`` / ``.yml`` or ``.toml``); its ``base_dir`` is the file's directory.

    Raises:
        FileNotFoundError: no such file.
        ValueError: an unknown extension, a syntax error, or a bad field (the message names the file and the
            field).
    """
    file = Path(path)
    data = _read(file)
    if not isinstance(data, dict):
        raise ValueError(f"{file}: expected a mapping of keys at the top, got {type(data).__name__}")
    if "base_dir" in data:
        raise ValueError(f"{file}: base_dir: not a key of a spec (paths resolve against the file's directory)")
    base = file.resolve().parent
    try:
        spec = AgentSpec.model_validate({**data, "base_dir": base})
    except pydantic.ValidationError as e:
        raise ValueError(f"{file}: {_errors(e)}") from None
    return spec


def _read(file: Path) -> Any:
    """The file's data. Raises FileNotFoundError, or ValueError for a bad extension or syntax."""
    suffix = file.suffix.lower()
    if suffix not in (".yaml", ".yml", ".toml"):
        raise ValueError(f"{file}: an agent spec is a .yaml, .yml or .toml file")
    text = file.read_text(encoding="utf-8")
    try:
        return tomllib.loads(text) if suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as e:
        raise ValueError(f"{file}: not valid {'TOML' if suffix == '.toml' else 'YAML'}: {e}") from None


def _errors(e: pydantic.ValidationError) -> str:
    """pydantic's errors as ``field.path: message``, joined with ``; ``."""
    parts = []
    for err in e.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "spec"
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {msg}")
    return "; ".join(parts)
