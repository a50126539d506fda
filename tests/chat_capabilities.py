"""What our chat models declare to LangChain's standard suites (langchain-tests).

``ChatLocal`` (a local model behind its chat template) and ``ServiceChatModel`` (through
``llmapps serve``) take text in and give text out: no tool calling, no multimodal inputs, no
per-call model override; they report token usage. Both standard test modules mix this in.
``ChatLocal`` also has structured output and JSON mode (``StructuredChatCapabilities``):
``with_structured_output`` constrains decoding to the schema.
"""

from __future__ import annotations


class TextChatCapabilities:
    """The langchain-tests capability flags of a text-only chat model that reports usage."""

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_tool_choice(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def supports_json_mode(self) -> bool:
        return False

    @property
    def supports_image_inputs(self) -> bool:
        return False

    @property
    def supports_image_urls(self) -> bool:
        return False

    @property
    def supports_pdf_inputs(self) -> bool:
        return False

    @property
    def supports_audio_inputs(self) -> bool:
        return False

    @property
    def supports_video_inputs(self) -> bool:
        return False

    @property
    def supports_anthropic_inputs(self) -> bool:
        return False

    @property
    def supports_image_tool_message(self) -> bool:
        return False

    @property
    def supports_pdf_tool_message(self) -> bool:
        return False

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def supports_model_override(self) -> bool:
        return False


class StructuredChatCapabilities(TextChatCapabilities):
    """A text chat model whose ``with_structured_output`` constrains decoding (json_schema and
    json_mode)."""

    @property
    def has_structured_output(self) -> bool:
        return True

    @property
    def structured_output_kwargs(self) -> dict[str, str]:
        return {"method": "json_schema"}

    @property
    def supports_json_mode(self) -> bool:
        return True
