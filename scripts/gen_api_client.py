"""Generate ``fedgrpc/api/_generated.py``: a typed sync client for the control service.

Usage::

    python scripts/gen_api_client.py            # rewrite fedgrpc/api/_generated.py
    python scripts/gen_api_client.py --check    # exit 1 if the committed file is out of date
    python scripts/gen_api_client.py --root DIR # work on another checkout (used by the tests)

protoc (in-process, from grpc_tools) compiles ``control.proto`` into a ``FileDescriptorSet`` with
source info, so every RPC's and request field's ``.proto`` comment becomes the docstring of the
matching method. One snake_case method per RPC takes the request's fields as keyword-only
arguments. The output is emitted already in ``ruff format`` style (signatures and calls are
always exploded with a trailing comma, which ruff keeps as they are), so generation needs no
formatter and gives the same bytes on every machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import keyword
import re
import sys
import tempfile
import textwrap
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import _devenv  # type: ignore[import-not-found]  # a sibling; checked as scripts._devenv

_devenv.ensure(["grpc_tools", "google.protobuf"])

from google.protobuf import descriptor_pb2  # noqa: E402 - imported once the tools are present
from grpc_tools import protoc  # noqa: E402

DEFAULT_ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = "protos"
SERVICE_PROTO = "fedgrpc/control/v1/control.proto"
SERVICE_NAME = "ControlService"
TARGET = PurePosixPath("fedgrpc/api/_generated.py")
CLASS_NAME = "ControlClientBase"
LINE_LENGTH = 100
# Arguments every generated method takes besides the request fields.
CALL_OPTIONS = ("timeout", "metadata")
RESERVED_NAMES = frozenset({"self", "request", "messages", *CALL_OPTIONS})

Field = descriptor_pb2.FieldDescriptorProto
SCALAR_TYPES: dict[int, tuple[str, str]] = {  # proto type -> (annotation, proto3 default)
    Field.TYPE_STRING: ("str", '""'),
    Field.TYPE_BYTES: ("bytes", 'b""'),
    Field.TYPE_BOOL: ("bool", "False"),
    Field.TYPE_DOUBLE: ("float", "0.0"),
    Field.TYPE_FLOAT: ("float", "0.0"),
    **{
        kind: ("int", "0")
        for kind in (
            Field.TYPE_INT32,
            Field.TYPE_INT64,
            Field.TYPE_UINT32,
            Field.TYPE_UINT64,
            Field.TYPE_SINT32,
            Field.TYPE_SINT64,
            Field.TYPE_FIXED32,
            Field.TYPE_FIXED64,
            Field.TYPE_SFIXED32,
            Field.TYPE_SFIXED64,
        )
    },
}
STRUCT = ".google.protobuf.Struct"
# Source-info paths: FileDescriptorProto.message_type = 4, .service = 6;
# DescriptorProto.field = 2, .nested_type = 3; ServiceDescriptorProto.method = 2.
MESSAGE_TYPE, SERVICE, FIELD, NESTED_TYPE, METHOD = 4, 6, 2, 3, 2
ENUM_TYPE = 5
INDENT = "    "


class GenerationError(Exception):
    """The generation could not run (protoc failure, or a proto shape this script cannot map)."""


# ---------------------------------------------------------------------------------------------
# Reading the descriptors


def compile_descriptors(root: Path) -> descriptor_pb2.FileDescriptorSet:
    """Run protoc in-process on the service's proto; the set includes imports and comments."""
    well_known = Path(protoc.__file__).resolve().parent / "_proto"
    with tempfile.TemporaryDirectory(prefix="gen_api_client_") as scratch:
        output = Path(scratch) / "descriptors.pb"
        arguments = [
            "grpc_tools.protoc",
            "--include_source_info",
            "--include_imports",
            f"--descriptor_set_out={output}",
            "-I",
            str(root / PROTO_DIR),
            "-I",
            str(well_known),
            str(root / PROTO_DIR / SERVICE_PROTO),
        ]
        if protoc.main(arguments) != 0:
            raise GenerationError(f"protoc failed on {PROTO_DIR}/{SERVICE_PROTO} (see above)")
        return descriptor_pb2.FileDescriptorSet.FromString(output.read_bytes())


@dataclass(frozen=True)
class ProtoType:
    """A message or enum, where it is defined and what its comment says."""

    module: str  # "fedgrpc.proto.common.v1.common_pb2"
    python_name: str  # "PageRequest" (dotted for nested types)
    comment: str
    message: descriptor_pb2.DescriptorProto | None = None
    enum: descriptor_pb2.EnumDescriptorProto | None = None
    field_comments: dict[str, str] = dataclasses.field(
        default_factory=dict
    )  # a message's, by field name

    @property
    def reference(self) -> str:
        return f"{module_alias(self.module)}.{self.python_name}"


def python_module(proto_file: str) -> str:
    """``fedgrpc/<area>/v1/x.proto`` -> ``fedgrpc.proto.<area>.v1.x_pb2`` (see gen_protos.py)."""
    parts = PurePosixPath(proto_file).with_suffix("").parts
    if parts[0] == "fedgrpc":
        parts = ("fedgrpc", "proto", *parts[1:])
    return ".".join(parts) + "_pb2"


def module_alias(module: str) -> str:
    return module.rpartition(".")[2]


def comments_by_path(file: descriptor_pb2.FileDescriptorProto) -> dict[tuple[int, ...], str]:
    """Leading (else trailing) comment of every commented element, keyed by its source path."""
    found = {}
    for location in file.source_code_info.location:
        text = location.leading_comments or location.trailing_comments
        if text.strip():
            found[tuple(location.path)] = clean_comment(text)
    return found


def clean_comment(text: str) -> str:
    """Strip the single space after ``//`` and surrounding blank lines."""
    lines = [line[1:] if line.startswith(" ") else line for line in text.splitlines()]
    return "\n".join(lines).strip()


def index_types(files: Sequence[descriptor_pb2.FileDescriptorProto]) -> dict[str, ProtoType]:
    """Every message and enum of every file, by full name."""
    types: dict[str, ProtoType] = {}
    for file in files:
        comments = comments_by_path(file)
        module = python_module(file.name)
        prefix = f".{file.package}" if file.package else ""
        for index, message in enumerate(file.message_type):
            types.update(
                _index_message(message, prefix, "", (MESSAGE_TYPE, index), module, comments)
            )
        for index, enum in enumerate(file.enum_type):
            comment = comments.get((ENUM_TYPE, index), "")
            types[f"{prefix}.{enum.name}"] = ProtoType(module, enum.name, comment, enum=enum)
    return types


def _index_message(
    message: descriptor_pb2.DescriptorProto,
    prefix: str,
    outer: str,
    path: tuple[int, ...],
    module: str,
    comments: dict[tuple[int, ...], str],
) -> Iterator[tuple[str, ProtoType]]:
    full = f"{prefix}.{message.name}"
    python_name = f"{outer}{message.name}"
    field_comments = {
        item.name: comments.get((*path, FIELD, number), "")
        for number, item in enumerate(message.field)
    }
    comment = comments.get(path, "")
    yield full, ProtoType(module, python_name, comment, message, None, field_comments)
    for index, nested in enumerate(message.nested_type):
        nested_path = (*path, NESTED_TYPE, index)
        yield from _index_message(nested, full, f"{python_name}.", nested_path, module, comments)


# ---------------------------------------------------------------------------------------------
# The model of what to emit


@dataclass(frozen=True)
class Argument:
    """One keyword-only argument: a request field."""

    name: str
    annotation: str
    default: str
    comment: str
    conversion: str  # the expression that turns the argument into the field's value


@dataclass(frozen=True)
class Rpc:
    name: str
    comment: str
    request: ProtoType
    response: ProtoType
    client_streaming: bool
    server_streaming: bool
    arguments: tuple[Argument, ...]

    @property
    def method_name(self) -> str:
        return re.sub(r"(?<!^)(?=[A-Z])", "_", self.name).lower()


class Imports:
    """What the generated code refers to, collected while the model is built."""

    def __init__(self) -> None:
        self.modules: set[str] = set()  # generated *_pb2 / *_pb2_grpc modules
        self.typing: set[str] = {"Sequence"}  # every method takes metadata: Sequence[...]
        self.helpers: set[str] = {"RpcClient"}  # names from fedgrpc.api._rpc


def field_argument(
    field: descriptor_pb2.FieldDescriptorProto,
    comment: str,
    types: dict[str, ProtoType],
    imports: Imports,
) -> Argument:
    name = field.name
    if keyword.iskeyword(name) or name in RESERVED_NAMES:
        raise GenerationError(f"request field {name!r} clashes with a Python or call-option name")
    repeated = field.label == Field.LABEL_REPEATED
    # Presence: proto3 optional (a synthetic oneof), a real oneof member, or a message field.
    has_presence = field.HasField("oneof_index") or field.type == Field.TYPE_MESSAGE
    if field.type == Field.TYPE_MESSAGE:
        if repeated:
            raise GenerationError(f"repeated message field {name!r} is not supported; extend me")
        return _message_argument(field, comment, types, imports)
    annotation, default = _scalar_type(field, types, imports)
    comment = comment or _undocumented(field, has_presence)
    if repeated:
        imports.typing.add("Sequence")
        return Argument(name, f"Sequence[{annotation}]", "()", comment, name)
    if has_presence:
        return Argument(name, f"{annotation} | None", "None", comment, name)
    return Argument(name, annotation, default, comment, name)


def _undocumented(field: descriptor_pb2.FieldDescriptorProto, has_presence: bool) -> str:
    """What a field without a comment can still say about itself: its proto type."""
    kind = Field.Type.Name(field.type).removeprefix("TYPE_").lower()
    if has_presence:
        return f"The request's ``{field.name}`` ({kind}); None leaves it unset."
    return f"The request's ``{field.name}`` ({kind})."


def _scalar_type(
    field: descriptor_pb2.FieldDescriptorProto, types: dict[str, ProtoType], imports: Imports
) -> tuple[str, str]:
    if field.type == Field.TYPE_ENUM:
        enum_type = types[field.type_name]
        assert enum_type.enum is not None
        imports.modules.add(enum_type.module)
        first = enum_type.enum.value[0].name
        return f"{enum_type.reference}.ValueType", f"{enum_type.reference}.{first}"
    if field.type not in SCALAR_TYPES:
        raise GenerationError(f"field {field.name!r} has an unsupported type ({field.type})")
    return SCALAR_TYPES[field.type]


def _message_argument(
    field: descriptor_pb2.FieldDescriptorProto,
    comment: str,
    types: dict[str, ProtoType],
    imports: Imports,
) -> Argument:
    name = field.name
    message_type = types[field.type_name]
    imports.modules.add(message_type.module)
    imports.typing.update({"Mapping", "Any"})
    if field.type_name == STRUCT:
        imports.helpers.add("as_struct")
        comment = comment or "A JSON-like dict (sent as a ``google.protobuf.Struct``)."
        annotation = f"Mapping[str, Any] | {message_type.reference} | None"
        return Argument(name, annotation, "None", comment, f"as_struct({name})")
    imports.helpers.add("as_message")
    described = message_type.comment.rstrip(".") or f"The request's ``{name}``"
    comment = comment or f"{described} (a ``{message_type.python_name}`` or a dict)."
    annotation = f"{message_type.reference} | Mapping[str, Any] | None"
    conversion = f"as_message({message_type.reference}, {name})"
    return Argument(name, annotation, "None", comment, conversion)


def service_rpcs(descriptors: descriptor_pb2.FileDescriptorSet, imports: Imports) -> list[Rpc]:
    files = {file.name: file for file in descriptors.file}
    if SERVICE_PROTO not in files:
        raise GenerationError(f"{SERVICE_PROTO} is missing from the descriptor set")
    file = files[SERVICE_PROTO]
    types = index_types(list(files.values()))
    comments = comments_by_path(file)
    for service_index, service in enumerate(file.service):
        if service.name == SERVICE_NAME:
            return [
                _rpc(method, comments.get((SERVICE, service_index, METHOD, i), ""), types, imports)
                for i, method in enumerate(service.method)
            ]
    raise GenerationError(f"service {SERVICE_NAME} not found in {SERVICE_PROTO}")


def _rpc(
    method: descriptor_pb2.MethodDescriptorProto,
    comment: str,
    types: dict[str, ProtoType],
    imports: Imports,
) -> Rpc:
    request, response = types[method.input_type], types[method.output_type]
    imports.modules.update({request.module, response.module})
    arguments: tuple[Argument, ...] = ()
    if not method.client_streaming:
        assert request.message is not None
        arguments = tuple(
            field_argument(item, request.field_comments[item.name], types, imports)
            for item in request.message.field
        )
    return Rpc(
        name=method.name,
        comment=comment,
        request=request,
        response=response,
        client_streaming=method.client_streaming,
        server_streaming=method.server_streaming,
        arguments=arguments,
    )


# ---------------------------------------------------------------------------------------------
# Rendering


HEADER = f'''\
# Generated by scripts/gen_api_client.py from {PROTO_DIR}/{SERVICE_PROTO}. DO NOT EDIT.
# Regenerate with `python scripts/gen_api_client.py`; CI fails on drift (`--check`).
"""Typed synchronous client of ``{SERVICE_NAME}``: one method per RPC (generated, do not edit)."""

from __future__ import annotations
'''

CLASS_DOC = f'''\
    """Calls ``{SERVICE_NAME}`` over a sync ``grpc.Channel``; one snake_case method per RPC.

    Request fields are keyword-only arguments (proto3 ``optional`` ones default to None, i.e.
    unset; message fields take the message or a dict). Every method also takes ``timeout``
    (seconds) and ``metadata`` (extra ``(key, value)`` pairs, sent after the client's default
    metadata), returns the response message, and raises the :mod:`fedgrpc.errors` exception for
    the call's status code instead of ``grpc.RpcError``.
    """
'''

TIMEOUT_DOC = "Seconds to wait for the call; None waits as long as it takes."
METADATA_DOC = "Extra (key, value) gRPC metadata sent with this call."
RAISES_DOC = "The subclass for the call's status (e.g. NotFound); ``.code`` holds the code."


def render(rpcs: Sequence[Rpc], imports: Imports) -> str:
    methods = "\n".join(render_method(rpc, imports) for rpc in rpcs)
    parts = [
        HEADER,
        render_imports(imports),
        "\n\n",
        f"class {CLASS_NAME}(RpcClient):\n",
        CLASS_DOC,
        "\n",
        render_init(),
        "\n",
        methods,
    ]
    return "".join(parts)


def render_imports(imports: Imports) -> str:
    """isort order as ruff applies it: stdlib, third-party, first-party sections; in each,
    straight imports first, then ``from`` imports sorted by module."""
    stdlib = []
    collections = sorted(imports.typing - {"Any"})
    if collections:
        stdlib.append(f"from collections.abc import {', '.join(collections)}\n")
    if "Any" in imports.typing:
        stdlib.append("from typing import Any\n")
    grouped: dict[str, set[str]] = {"fedgrpc.api._rpc": set(imports.helpers)}
    for module in imports.modules:
        package, _, name = module.rpartition(".")
        grouped.setdefault(package, set()).add(name)
    third_party: list[str] = ["import grpc\n"]
    first_party: list[str] = []
    for package in sorted(grouped):
        names = ", ".join(sorted(grouped[package], key=_isort_key))
        section = first_party if package.split(".")[0] == "fedgrpc" else third_party
        section.append(f"from {package} import {names}\n")
    sections = [stdlib, third_party, first_party]
    return "\n" + "\n".join("".join(section) for section in sections if section)


def _isort_key(name: str) -> tuple[int, str]:
    # ruff's isort puts CONSTANTS, then Classes, then functions/modules ("order-by-type").
    kind = 0 if name.isupper() else 1 if name[:1].isupper() else 2
    return kind, name


def render_init() -> str:
    return (
        f"{INDENT}def __init__(\n"
        f"{INDENT * 2}self,\n"
        f"{INDENT * 2}channel: grpc.Channel,\n"
        f"{INDENT * 2}*,\n"
        f"{INDENT * 2}metadata: Sequence[tuple[str, str]] = (),\n"
        f"{INDENT}) -> None:\n"
        f"{INDENT * 2}super().__init__(channel, metadata=metadata)\n"
        f"{INDENT * 2}self._stub = control_pb2_grpc.{SERVICE_NAME}Stub(channel)\n"
    )


def render_method(rpc: Rpc, imports: Imports) -> str:
    lines = [f"{INDENT}def {rpc.method_name}(", f"{INDENT * 2}self,"]
    if rpc.client_streaming:
        imports.typing.add("Iterable")
        lines.append(f"{INDENT * 2}messages: Iterable[{rpc.request.reference}],")
    lines.append(f"{INDENT * 2}*,")
    for argument in rpc.arguments:
        lines.append(f"{INDENT * 2}{argument.name}: {argument.annotation} = {argument.default},")
    lines.append(f"{INDENT * 2}timeout: float | None = None,")
    lines.append(f"{INDENT * 2}metadata: Sequence[tuple[str, str]] | None = None,")
    returns = rpc.response.reference
    if rpc.server_streaming:
        imports.typing.add("Iterator")
        returns = f"Iterator[{returns}]"
    lines.append(f"{INDENT}) -> {returns}:")
    lines.extend(render_docstring(rpc))
    lines.extend(render_body(rpc))
    return "\n".join(lines) + "\n"


def render_body(rpc: Rpc) -> list[str]:
    body = INDENT * 2
    lines = []
    if rpc.client_streaming:
        source = "messages"
    else:
        source = "request"
        if rpc.arguments:
            lines.append(f"{body}request = {rpc.request.reference}(")
            lines.extend(f"{body}{INDENT}{a.name}={a.conversion}," for a in rpc.arguments)
            lines.append(f"{body})")
        else:
            lines.append(f"{body}request = {rpc.request.reference}()")
    helper = {
        (False, False): "_unary_unary",
        (False, True): "_unary_stream",
        (True, False): "_stream_unary",
        (True, True): "_stream_stream",
    }[(rpc.client_streaming, rpc.server_streaming)]
    lines += [
        f"{body}return self.{helper}(",
        f"{body}{INDENT}self._stub.{rpc.name},",
        f"{body}{INDENT}{source},",
        f"{body}{INDENT}{rpc.response.reference},",
        f"{body}{INDENT}timeout=timeout,",
        f"{body}{INDENT}metadata=metadata,",
        f"{body})",
    ]
    return lines


def render_docstring(rpc: Rpc) -> list[str]:
    indent = INDENT * 2
    summary = rpc.comment or f"Calls ``{SERVICE_NAME}.{rpc.name}``."
    lines = [*_paragraphs(summary, indent)]
    lines[0] = f'{indent}"""{lines[0].lstrip()}'
    lines += ["", f"{indent}Args:"]
    if rpc.client_streaming:
        lines += _entry("messages", f"The ``{rpc.request.python_name}`` stream, in order.", indent)
    for argument in rpc.arguments:
        lines += _entry(argument.name, argument.comment, indent)
    lines += _entry("timeout", TIMEOUT_DOC, indent)
    lines += _entry("metadata", METADATA_DOC, indent)
    returns = f"The ``{rpc.response.python_name}`` response."
    if rpc.server_streaming:
        returns = f"The ``{rpc.response.python_name}`` stream; errors surface while iterating."
    lines += ["", f"{indent}Returns:", f"{indent}{INDENT}{returns}"]
    lines += ["", f"{indent}Raises:", *_entry("fedgrpc.errors.FedgrpcError", RAISES_DOC, indent)]
    lines.append(f'{indent}"""')
    return lines


def _entry(name: str, text: str, indent: str) -> list[str]:
    """``name: text`` under a section, wrapped, continuation lines indented once more."""
    width = LINE_LENGTH - len(indent) - len(INDENT)
    paragraphs = [" ".join(p.split()) for p in _escape(text).split("\n\n")]
    first = textwrap.wrap(
        f"{name}: {paragraphs[0]}",
        width=width,
        subsequent_indent=INDENT,
        break_on_hyphens=False,
        break_long_words=False,
    )
    lines = [f"{indent}{INDENT}{line}" for line in first]
    for paragraph in paragraphs[1:]:
        lines += [""] + [
            f"{indent}{INDENT * 2}{line}"
            for line in textwrap.wrap(paragraph, width=width - len(INDENT), break_on_hyphens=False)
        ]
    return lines


def _paragraphs(text: str, indent: str) -> list[str]:
    """Free text reflowed to the line length, blank lines between paragraphs kept."""
    lines: list[str] = []
    # The opening quotes share the first line, so it has three characters less.
    width = LINE_LENGTH - len(indent) - 3
    for paragraph in _escape(text).split("\n\n"):
        if lines:
            lines.append("")
        wrapped = textwrap.wrap(" ".join(paragraph.split()), width=width, break_on_hyphens=False)
        lines += [f"{indent}{line}" for line in wrapped]
    return lines


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')


# ---------------------------------------------------------------------------------------------
# Entry points


def generate(root: Path) -> str:
    """The complete source of the generated module for the checkout at ``root``."""
    imports = Imports()
    imports.modules.add(python_module(SERVICE_PROTO) + "_grpc")
    rpcs = service_rpcs(compile_descriptors(root), imports)
    source = render(rpcs, imports)
    try:
        compile(source, str(TARGET), "exec")  # never write a module that cannot import
    except SyntaxError as error:
        raise GenerationError(f"the generated code does not compile: {error}") from error
    return source


def check(root: Path) -> int:
    expected = generate(root)
    target = root / TARGET
    actual = target.read_text(encoding="utf-8") if target.is_file() else None
    if actual != expected:
        state = "missing" if actual is None else "out of date"
        print(
            f"{TARGET} is {state} with {PROTO_DIR}/{SERVICE_PROTO}: "
            "run `python scripts/gen_api_client.py` and commit the result",
            file=sys.stderr,
        )
        return 1
    print(f"OK: {TARGET} is up to date with {PROTO_DIR}/{SERVICE_PROTO}")
    return 0


def regenerate(root: Path) -> int:
    source = generate(root)  # complete before touching the tree: a failure leaves it intact
    target = root / TARGET
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(source.encode("utf-8"))
    print(f"wrote {TARGET}")
    return 0


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--check",
        action="store_true",
        help=f"do not write; exit 1 if {TARGET} differs from a fresh generation",
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=DEFAULT_ROOT,
        help="repository root holding protos/ and fedgrpc/api/ (default: %(default)s)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    root: Path = arguments.root.resolve()
    try:
        return check(root) if arguments.check else regenerate(root)
    except GenerationError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
