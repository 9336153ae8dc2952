"""Assembles a StreamComplete stream into the CompleteResponse a Complete call would return,
and a StreamCompleteStructured stream into the CompleteStructuredResponse of CompleteStructured.

The assembly is driven by the message descriptors, not by a list of today's fields, so delta
kinds added to the contract later are assembled without a change here:

- ``start`` and ``end``: every field whose name CompleteResponse also has is copied over;
- ``delta``: a string field is appended to CompleteResponse's field of the same name; a
  repeated message field whose element has an ``index`` (tool calls) is merged piece by piece
  into the element at that index (strings appended, messages merged); any other repeated field
  is appended whole; a message field is merged.

A delta field that CompleteResponse lacks is skipped, as a newer server's additions should be
by an older client. ``_RENAMED`` holds the one name that differs between a piece and the whole.
A stream that ends without its ``end`` message did not complete: ``IncompleteStreamError``.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Iterable

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from llmgateway.v1 import completion_service_pb2 as pb

# A delta's field name -> the assembled message's field name, where they differ.
_RENAMED = {"arguments": "arguments_json"}


class IncompleteStreamError(Exception):
    """The stream ended (with OK) before its ``end`` message: the answer is not complete."""

    def __init__(self, partial: pb.CompleteResponse) -> None:
        super().__init__("the stream ended without its end message")
        self.partial = partial


class StreamAssembler:
    """Feed it every message of a stream (``add``), then take the ``result``."""

    def __init__(self) -> None:
        self._response = pb.CompleteResponse()
        self._ended = False

    @property
    def ended(self) -> bool:
        return self._ended

    def add(self, message: pb.StreamCompleteResponse) -> None:
        kind = message.WhichOneof("event")
        if kind == "start":
            _copy_same_names(message.start, self._response)
        elif kind == "delta":
            _append(message.delta, self._response)
        elif kind == "end":
            _copy_same_names(message.end, self._response)
            self._ended = True

    def result(self) -> pb.CompleteResponse:
        """The whole answer; raises IncompleteStreamError when no ``end`` arrived."""
        if not self._ended:
            raise IncompleteStreamError(self.partial())
        return self.partial()

    def partial(self) -> pb.CompleteResponse:
        """What arrived so far (a copy)."""
        copy = pb.CompleteResponse()
        copy.CopyFrom(self._response)
        return copy


def assemble(stream: Iterable[pb.StreamCompleteResponse]) -> pb.CompleteResponse:
    """Reads a whole sync stream (``stub.StreamComplete(...)``) into one CompleteResponse."""
    assembler = StreamAssembler()
    for message in stream:
        assembler.add(message)
    return assembler.result()


async def assemble_async(stream: AsyncIterable[pb.StreamCompleteResponse]) -> pb.CompleteResponse:
    """Reads a whole asyncio stream into one CompleteResponse."""
    assembler = StreamAssembler()
    async for message in stream:
        assembler.add(message)
    return assembler.result()


class StructuredStreamAssembler:
    """``StreamAssembler`` for StreamCompleteStructured: ``result`` is the validated answer as a
    CompleteStructuredResponse (one attempt: a stream is never re-asked); ``text`` is the
    model's raw text so far, for showing it as it arrives."""

    def __init__(self) -> None:
        self._response = pb.CompleteStructuredResponse(attempts=1)
        self._pieces: list[str] = []
        self._ended = False

    @property
    def ended(self) -> bool:
        return self._ended

    @property
    def text(self) -> str:
        return "".join(self._pieces)

    def add(self, message: pb.StreamCompleteStructuredResponse) -> None:
        kind = message.WhichOneof("event")
        if kind == "start":
            _copy_same_names(message.start, self._response)
        elif kind == "delta":
            self._pieces.append(message.delta.json)
        elif kind == "end":
            _copy_same_names(message.end, self._response)
            self._ended = True

    def result(self) -> pb.CompleteStructuredResponse:
        """The validated answer; without ``end``, IncompleteStreamError (whose ``partial``
        holds the raw text in ``content``)."""
        if not self._ended:
            raise IncompleteStreamError(pb.CompleteResponse(content=self.text))
        copy = pb.CompleteStructuredResponse()
        copy.CopyFrom(self._response)
        return copy


def assemble_structured(
    stream: Iterable[pb.StreamCompleteStructuredResponse],
) -> pb.CompleteStructuredResponse:
    """Reads a whole sync structured stream into one CompleteStructuredResponse."""
    assembler = StructuredStreamAssembler()
    for message in stream:
        assembler.add(message)
    return assembler.result()


async def assemble_structured_async(
    stream: AsyncIterable[pb.StreamCompleteStructuredResponse],
) -> pb.CompleteStructuredResponse:
    """Reads a whole asyncio structured stream into one CompleteStructuredResponse."""
    assembler = StructuredStreamAssembler()
    async for message in stream:
        assembler.add(message)
    return assembler.result()


def _copy_same_names(source: Message, target: Message) -> None:
    fields = target.DESCRIPTOR.fields_by_name
    for fd, value in source.ListFields():
        name = _RENAMED.get(fd.name, fd.name)
        if name not in fields:
            continue
        if fd.is_repeated:
            getattr(target, name).extend(value)
        elif fd.type == FieldDescriptor.TYPE_MESSAGE:
            getattr(target, name).CopyFrom(value)
        else:
            setattr(target, name, value)


def _append(piece: Message, whole: Message, skip: str = "") -> None:
    """Adds one piece into the whole, field by field (see the module's rules)."""
    fields = whole.DESCRIPTOR.fields_by_name
    for fd, value in piece.ListFields():
        name = _RENAMED.get(fd.name, fd.name)
        if fd.name == skip or name not in fields:
            continue
        if fd.is_repeated and fd.type == FieldDescriptor.TYPE_MESSAGE and _indexed(fd):
            elements = getattr(whole, name)
            for element in value:
                while len(elements) <= element.index:
                    elements.add()
                _append(element, elements[element.index], skip="index")
        elif fd.is_repeated:
            getattr(whole, name).extend(value)
        elif fd.type == FieldDescriptor.TYPE_STRING:
            setattr(whole, name, getattr(whole, name) + value)
        elif fd.type == FieldDescriptor.TYPE_MESSAGE:
            getattr(whole, name).MergeFrom(value)
        else:
            setattr(whole, name, value)


def _indexed(fd: FieldDescriptor) -> bool:
    return fd.message_type is not None and "index" in fd.message_type.fields_by_name
