"""The file-parser plugin's cost through a real gateway and the simulator: pages read with
``mistral-ocr`` billed as OpenRouter's fee in Usage, the ledger and GetUsage, exact; the
free engines and a model that reads files itself cost none; and the reservation prices a
file that may be OCR'd at Mistral OCR's 1,000-page limit."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import grpc
import pytest
from llmgateway.v1 import completion_service_pb2 as pb

from service.domain.accounting import ocr_files, worst_case
from service.domain.callers import Caller, CallerLimits, hash_key
from service.domain.completion import (
    Blob,
    CompletionRequest,
    FileParser,
    FilePart,
    Message,
    Modality,
    Part,
    PdfEngine,
    Role,
    SamplingParams,
    TextPart,
)
from service.domain.models import ModelInfo, ModelPricing
from service.simulator import SimulatorConfig
from tests.api.support import chat_requests
from tests.content.support import pdf, text, user_parts
from tests.harness import Harness, auth, rich_error, start_gateway
from tests.surface.support import exact, ledger_rows

TEXT_MODEL = "meta-llama/llama-3.1-8b-instruct"  # cannot read files: OpenRouter parses them
FILE_MODEL = "openai/gpt-4o-mini"  # reads files itself
# Three pages (and the page tree's root, which is no page).
THREE_PAGES = (
    b"%PDF-1.7\n1 0 obj << /Type /Pages /Count 3 >> endobj\n"
    b"2 0 obj << /Type /Page >> endobj 3 0 obj << /Type/Page >> endobj\n"
    b"4 0 obj <</Type /Page/Parent 1 0 R>> endobj\n%%EOF"
)


@pytest.fixture
async def gw() -> AsyncIterator[Harness]:
    async with start_gateway(sim_config=SimulatorConfig(keepalive_comments=0)) as harness:
        yield harness


def ask(model: str, engine: pb.PdfEngine.ValueType | None = None) -> pb.CompleteRequest:
    request = pb.CompleteRequest(
        model=model,
        messages=[user_parts(text("Summarise"), pdf(THREE_PAGES, name="q3.pdf"))],
        sampling=pb.SamplingParams(max_tokens=64),
    )
    if engine is not None:
        request.file_parser.pdf_engine = engine
    return request


async def test_ocr_pages_are_openrouters_fee_in_usage_the_ledger_and_getusage(
    gw: Harness,
) -> None:
    reply = await gw.stub.Complete(ask(TEXT_MODEL), metadata=auth())
    assert [a.file.name for a in reply.annotations] == ["q3.pdf"]
    usage = reply.usage
    fee = 3 * Decimal("0.002")  # mistral-ocr, OpenRouter's default engine: $2 per 1,000 pages
    assert usage.HasField("tool_cost_usd")
    assert exact(usage.tool_cost_usd) == fee
    assert exact(usage.cost_usd) == exact(usage.upstream_inference_cost_usd) + fee
    assert usage.web_search_requests == 0
    await gw.rows_written(1)
    (row,) = ledger_rows(gw.server.settings.ledger_path)
    assert Decimal(row["tool_cost_usd"]) == fee
    assert Decimal(row["cost_usd"]) == exact(usage.cost_usd)
    assert row["file_inputs"] == 1
    totals = await gw.stub.GetUsage(pb.GetUsageRequest(), metadata=auth())
    assert exact(totals.tool_cost_usd) == fee
    assert exact(totals.cost_usd) == exact(usage.cost_usd)


@pytest.mark.parametrize(
    ("model", "engine", "plugin"),
    [
        (TEXT_MODEL, pb.PDF_ENGINE_CLOUDFLARE_AI, "cloudflare-ai"),  # parsed, free
        (FILE_MODEL, None, None),  # the model reads it
        (FILE_MODEL, pb.PDF_ENGINE_NATIVE, "native"),
    ],
)
async def test_the_free_ways_to_read_a_file_cost_no_fee(
    gw: Harness, model: str, engine: pb.PdfEngine.ValueType | None, plugin: str | None
) -> None:
    reply = await gw.stub.Complete(ask(model, engine), metadata=auth())
    body = chat_requests(gw.sim)[-1].body
    sent = [p["pdf"]["engine"] for p in body.get("plugins", []) if p["id"] == "file-parser"]
    assert sent == ([plugin] if plugin else [])
    assert reply.usage.HasField("tool_cost_usd")
    assert reply.usage.tool_cost_usd == 0
    assert exact(reply.usage.cost_usd) == exact(reply.usage.upstream_inference_cost_usd)


async def test_mistral_ocr_named_bills_pages_even_for_a_model_that_reads_files(
    gw: Harness,
) -> None:
    reply = await gw.stub.Complete(ask(FILE_MODEL, pb.PDF_ENGINE_MISTRAL_OCR), metadata=auth())
    assert exact(reply.usage.tool_cost_usd) == Decimal("0.006")


async def test_the_reservation_prices_a_file_that_may_be_ocrd() -> None:
    key = "key-ocr-CALLERSECRET"
    caller = Caller("ocr", hash_key(key), ("*",), CallerLimits(usd_per_day=Decimal("1.5")))
    async with start_gateway(
        sim_config=SimulatorConfig(keepalive_comments=0), callers=[caller]
    ) as gw:
        # Default engine on a model that cannot read files: 1,000 pages may be OCR'd ($2).
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await gw.stub.Complete(ask(TEXT_MODEL), metadata=auth(key))
        error = rich_error(caught.value)
        assert (error.code, error.info.reason) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "QUOTA_EXCEEDED",
        )
        assert chat_requests(gw.sim) == []
        # The free engine, and a model that reads the file itself, fit the budget.
        await gw.stub.Complete(ask(TEXT_MODEL, pb.PDF_ENGINE_CLOUDFLARE_AI), metadata=auth(key))
        await gw.stub.Complete(ask(FILE_MODEL), metadata=auth(key))
        assert len(chat_requests(gw.sim)) == 2


def _request(engine: PdfEngine | None, files: int) -> CompletionRequest:
    document = Blob("application/pdf", b"%PDF-1.7")
    files_ = tuple(FilePart(document, filename=f"d{i}.pdf") for i in range(files))
    parts: tuple[Part, ...] = (TextPart("read"), *files_)
    return CompletionRequest(
        model="m",
        messages=(Message(Role.USER, "", parts=parts),),
        sampling=SamplingParams(max_tokens=10),
        file_parser=FileParser(engine) if engine is not None else None,
    )


TEXT_ONLY = ModelInfo(
    "t", context_length=1000, pricing=ModelPricing(prompt=Decimal(0), completion=Decimal(0))
)
READS_FILES = ModelInfo(
    "f",
    context_length=1000,
    input_modalities=frozenset({Modality.TEXT, Modality.FILE}),
)
ROUTER = ModelInfo(
    "r",
    context_length=1000,
    pricing=ModelPricing(variable=True),
    input_modalities=frozenset({Modality.TEXT, Modality.FILE}),
)


@pytest.mark.parametrize(
    ("engine", "model", "files"),
    [
        (None, TEXT_ONLY, 2),  # OpenRouter's default for a model that cannot read files
        (None, READS_FILES, 0),
        (None, ROUTER, 2),  # may route to a model that cannot
        (PdfEngine.MISTRAL_OCR, READS_FILES, 2),
        (PdfEngine.CLOUDFLARE_AI, TEXT_ONLY, 0),
        (PdfEngine.NATIVE, READS_FILES, 0),
    ],
)
def test_which_files_may_be_ocrd(engine: PdfEngine | None, model: ModelInfo, files: int) -> None:
    request = _request(engine, 2)
    assert ocr_files(request, model) == files
    # Free tokens: the reservation is the OCR fee alone, $2 a file.
    if model is not ROUTER:
        assert worst_case(request, [model]).usd == files * Decimal(2)
